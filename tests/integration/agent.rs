//! `loopspy agent` scraped by a real Prometheus (Debian's `prometheus`, started here with a
//! 1 s scrape interval on 127.0.0.1): asyncio workers running before the agent (one blocking,
//! one quiet), one started after it, and a Python process with no event loop; what Prometheus
//! stored is read back through its HTTP API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of `GET path` (HTTP/1.0: no chunking), or None when nothing answers yet.
fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some(body.to_string())
}

/// The series an instant PromQL query returns: (labels, value).
fn query(port: u16, promql: &str) -> Vec<(Value, f64)> {
    let Some(body) = get(port, &format!("/api/v1/query?query={}", encode(promql))) else {
        return Vec::new();
    };
    let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    json["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .map(|s| {
                    let value = s["value"][1]
                        .as_str()
                        .unwrap_or("nan")
                        .parse()
                        .unwrap_or(f64::NAN);
                    (s["metric"].clone(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pids_of(series: &[(Value, f64)]) -> Vec<i32> {
    let mut pids: Vec<i32> = series
        .iter()
        .filter_map(|(m, _)| m["pid"].as_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Polls `check` until it returns Some, or fails with `what` and the last state it saw.
fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(state) if Instant::now() > deadline => {
                panic!("{what}: not seen within {timeout:?}; last: {state}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn start_prometheus(dir: &Path, agent_port: u16, port: u16) -> ChildGuard {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: loopspy\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting prometheus");
    ChildGuard(child)
}

#[test]
fn prometheus_scrapes_the_agent_watching_a_fleet_that_changes() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    if !Path::new(PROMETHEUS).exists() {
        missing("Prometheus (`apt-get install prometheus`)");
    }
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let token = format!("agent-test-{}", std::process::id());
    let worker = fixture("agent_worker.py");
    let worker = worker.to_str().unwrap();
    let blocking = start_python(&python, &[worker, "blocking", &token]);
    let quiet = start_python(&python, &[worker, "quiet", &token]);
    let noloop = start_python(&python, &[worker, "noloop", &token]);

    let agent_port = free_port();
    let incidents_dir = dir.path().join("incidents");
    let mut agent = loopspy();
    agent
        .args(["agent", "--match", &token, "--scan-every", "500ms"])
        .args(["--probe-for", "3s", "--listen"])
        .arg(format!("127.0.0.1:{agent_port}"))
        .arg("--incidents-dir")
        .arg(&incidents_dir);
    let mut agent = Running::start(agent);
    agent.wait_for_stderr("metrics on http://", Duration::from_secs(10));
    let prometheus_port = free_port();
    let _prometheus = start_prometheus(dir.path(), agent_port, prometheus_port);
    std::thread::sleep(Duration::from_secs(2));
    let late = start_python(&python, &[worker, "quiet", &token]);
    let all = {
        let mut all = vec![blocking.pid(), quiet.pid(), late.pid()];
        all.sort_unstable();
        all
    };

    let blocking_pid = blocking.pid().to_string();
    // The blocking worker's site and cause, counted.
    let incidents = eventually(
        "incidents of block_briefly",
        Duration::from_secs(40),
        || {
            let series = query(prometheus_port, "loopspy_incidents_total");
            let ours: Vec<_> = series
                .iter()
                .filter(|(m, v)| {
                    m["pid"].as_str() == Some(blocking_pid.as_str())
                        && m["cause"] == "sleep"
                        && m["site"].as_str().is_some_and(|s| {
                            s.starts_with("block_briefly (") && s.ends_with("agent_worker.py:13)")
                        })
                        && *v >= 3.0
                })
                .cloned()
                .collect();
            if ours.is_empty() {
                Err(format!("{series:?}"))
            } else {
                Ok(series)
            }
        },
    );
    assert!(
        incidents
            .iter()
            .all(|(m, _)| m["pid"].as_str() == Some(blocking_pid.as_str())),
        "only the blocking worker blocks: {incidents:?}"
    );

    // Busy ratios of all three loops, the late one included; the loop-less process let go.
    let ratios = eventually(
        "busy ratios of every worker",
        Duration::from_secs(30),
        || {
            let series = query(prometheus_port, "loopspy_loop_busy_ratio");
            if pids_of(&series) == all {
                Ok(series)
            } else {
                Err(format!("pids {:?}, want {all:?}", pids_of(&series)))
            }
        },
    );
    for (labels, ratio) in &ratios {
        let pid: i32 = labels["pid"].as_str().unwrap().parse().unwrap();
        assert!(
            labels["command"].as_str().unwrap().contains(&token),
            "{labels}"
        );
        if pid == blocking.pid() {
            // 120 ms of every ~520 ms.
            assert!((0.1..0.5).contains(ratio), "blocking worker: {ratio}");
        } else {
            assert!(*ratio < 0.05, "quiet worker {pid}: {ratio}");
        }
    }
    eventually(
        "the loop-less process let go",
        Duration::from_secs(20),
        || {
            let gone = query(prometheus_port, "loopspy_without_loop_total")
                .first()
                .is_some_and(|(_, v)| *v >= 1.0);
            let targets = pids_of(&query(prometheus_port, "loopspy_target_info"));
            if gone && !targets.contains(&noloop.pid()) {
                Ok(())
            } else {
                Err(format!("targets {targets:?}"))
            }
        },
    );
    let stalls = query(
        prometheus_port,
        &format!("loopspy_stall_seconds_count{{pid=\"{}\"}}", blocking.pid()),
    );
    assert!(stalls.first().is_some_and(|(_, n)| *n >= 3.0), "{stalls:?}");

    // A worker that exits disappears from what Prometheus has now.
    let quiet_pid = quiet.pid();
    drop(quiet);
    eventually("the exited worker gone", Duration::from_secs(20), || {
        let targets = pids_of(&query(prometheus_port, "loopspy_target_info"));
        if targets.contains(&quiet_pid) {
            Err(format!("{targets:?}"))
        } else {
            Ok(())
        }
    });
    agent.wait_for_stderr(&format!("pid {quiet_pid} exited"), Duration::from_secs(5));

    // SIGTERM (how Kubernetes stops it) stops the agent cleanly; the incidents are on disk.
    let _ = Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status();
    let run = agent.finish(Duration::from_secs(15));
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("loopspy agent: stopped"),
        "{}",
        run.stderr
    );
    let lines = std::fs::read_to_string(incidents_dir.join("incidents.jsonl")).unwrap();
    let incidents: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(incidents.len() >= 3, "{lines}");
    for incident in &incidents {
        assert_eq!(incident["pid"], blocking.pid(), "{incident}");
        assert_eq!(incident["cause"]["category"], "sleep", "{incident}");
        assert_eq!(incident["culprit"]["function"], "block_briefly");
        assert!(incident["command"].as_str().unwrap().contains(&token));
    }
    drop(noloop);
    drop(late);
}

#[test]
fn agent_input_errors_are_one_line_before_anything_is_attached() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().to_string();
    let cases: [(&[&str], i32, &str); 4] = [
        (&["--match", "("], 2, "is not a regular expression"),
        (
            &["--no-listen", "--incidents-dir", "/proc/1/nope"],
            1,
            "choose another --incidents-dir",
        ),
        (
            &["--listen", &busy],
            1,
            "choose another address with --listen",
        ),
        (&["--listen", "localhost"], 2, "is not an address"),
    ];
    for (args, code, needle) in cases {
        let mut all = vec!["agent", "--duration", "5s"];
        all.extend_from_slice(args);
        let run = run_loopspy(&all, Duration::from_secs(10));
        assert_eq!(run.code(), code, "{args:?}: {}", run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", run.stderr);
        assert!(
            lines[0].starts_with("loopspy: error: ") && lines[0].contains(needle),
            "{}",
            lines[0]
        );
    }
}
