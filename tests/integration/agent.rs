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

/// One request a fake ingest endpoint received: method, path, query parameters, body.
struct Received {
    method: String,
    path: String,
    query: std::collections::HashMap<String, String>,
    body: String,
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// A local HTTP endpoint that answers 200 to everything and keeps what it received.
fn fake_ingest() -> (u16, std::sync::mpsc::Receiver<Received>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut data = Vec::new();
            let mut buf = [0u8; 65536];
            // Head, then as much body as Content-Length says.
            let (head, body_start) = loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break (String::new(), 0);
                }
                data.extend_from_slice(&buf[..n]);
                if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    break (String::from_utf8_lossy(&data[..at]).into_owned(), at + 4);
                }
            };
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while data.len() < body_start + length {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let mut words = head.lines().next().unwrap_or("").split_whitespace();
            let method = words.next().unwrap_or("").to_string();
            let target = words.next().unwrap_or("");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let query = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (percent_decode(k), percent_decode(v)))
                .collect();
            let body = String::from_utf8_lossy(&data[body_start.min(data.len())..]).into_owned();
            let _ = tx.send(Received {
                method,
                path: path.to_string(),
                query,
                body,
            });
        }
    });
    (port, rx)
}

#[test]
fn busy_profiles_are_pushed_to_a_pyroscope_ingest_endpoint() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let _serial = timing_lock();
    let token = format!("agent-push-{}", std::process::id());
    let worker = fixture("agent_worker.py");
    let blocking = start_python(&python, &[worker.to_str().unwrap(), "blocking", &token]);
    let (port, received) = fake_ingest();
    let mut agent = loopspy();
    agent
        .args(["agent", "--pid", &blocking.pid().to_string(), "--no-listen"])
        .args([
            "--scan-every",
            "200ms",
            "--pyroscope-every",
            "1s",
            "--duration",
            "4s",
        ])
        .arg("--pyroscope")
        .arg(format!("http://127.0.0.1:{port}/"));
    let run = Running::start(agent).finish(Duration::from_secs(20));
    assert_eq!(run.code(), 0, "{}", run.stderr);
    let pushes: Vec<Received> = received.try_iter().collect();
    assert!(pushes.len() >= 2, "{} pushes\n{}", pushes.len(), run.stderr);
    let mut folded = String::new();
    for push in &pushes {
        assert_eq!(
            (push.method.as_str(), push.path.as_str()),
            ("POST", "/ingest")
        );
        let q = &push.query;
        assert_eq!(
            q["name"],
            format!(
                "loopspy.busy{{pid={},command=python3.12_agent_worker.py_blocking_{token}}}",
                blocking.pid()
            )
        );
        assert_eq!(q["format"], "folded");
        assert_eq!(q["sampleRate"], "100");
        assert_eq!(q["spyName"], "loopspy");
        assert_eq!(q["units"], "samples");
        let (from, until): (u64, u64) = (q["from"].parse().unwrap(), q["until"].parse().unwrap());
        assert!(from < until && until - from <= 3, "{from}..{until}");
        for line in push.body.lines() {
            let (stack, count) = line.rsplit_once(' ').unwrap();
            assert!(count.parse::<u64>().unwrap() >= 1, "{line}");
            assert!(!stack.is_empty());
        }
        folded.push_str(&push.body);
    }
    // 120 ms of block_briefly every ~520 ms at 100 Hz: about 23 samples a second there.
    let blocked: u64 = folded
        .lines()
        .filter(|l| l.rsplit_once(' ').unwrap().0.contains("block_briefly"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert!(
        blocked >= 30,
        "{blocked} samples in block_briefly\n{folded}"
    );
}
