//! A saturated loop with real blocks in between (issue #12): dozens of tasks each stepping
//! every fraction of a millisecond keep the loop busy all the time, and every ~half second one
//! of them blocks it for 60-120 ms (`tests/fixtures/saturated.py`, which logs each block).
//! On uvloop nothing in the frames marks where a callback or an iteration ends; the thread's
//! callback clock does. Every block must be found (recall), nothing else reported (precision),
//! with the right culprit and cause and the duration within a few milliseconds.
//! And a real `uvicorn[standard]` service saturated by keep-alive clients.
//! Not here: asyncio's own loop on this fixture. `_run_once`'s handle index read with the
//! callback clock tells most of its ~1 ms iterations apart, but a 20-block run under the suite
//! still had 2-3 false 51-65 ms incidents on 3.12 and 3.14 (precision 0.87 and 0.91; 3.8-3.11,
//! 3.13 and 3.15 passed the 0.95 bars in the same run): issue #12, docs/how-it-works.md.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Loop machinery is never a culprit: an incident there is the analyzer's invention.
const MACHINERY: &[&str] = &[
    "run",
    "Runner.run",
    "run_forever",
    "BaseEventLoop.run_forever",
    "run_until_complete",
    "BaseEventLoop.run_until_complete",
];

/// Blocks per run: enough that the 0.95 bars are bars (at 13, one miss was 0.92),
/// the fixture's 60-120 ms blocks half a second apart.
const BLOCKS: &str = "20";

struct Scores {
    precision: f64,
    recall: f64,
    median_error_ms: f64,
}

fn record_saturated(python: &Path, uvloop: bool) -> (Vec<Value>, Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (go, truth, out) = (
        dir.path().join("go"),
        dir.path().join("truth.json"),
        dir.path().join("out"),
    );
    let script = fixture("saturated.py");
    let mut args = vec![
        script.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--go-file",
        go.to_str().unwrap(),
        "--blocks",
        BLOCKS,
    ];
    if uvloop {
        args.push("--uvloop");
    }
    let target = start_python(python, &args);
    let mut running = Running::start(record_pid(target.pid(), &out, &[]));
    running.wait_for_stderr("sampling pid", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&go, b"go").unwrap();
    let run = running.finish(Duration::from_secs(90));
    assert_eq!(
        run.code(),
        0,
        "loopspy failed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    drop(target);
    let json = read_json(&out.join("incidents.json"));
    let incidents = json["incidents"].as_array().cloned().unwrap_or_default();
    let truth = read_json(&truth).as_array().cloned().unwrap_or_default();
    (incidents, truth, run.stdout)
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Seconds the incident and the block share.
fn shared_s(incident: &Value, block: &Value) -> f64 {
    let start = num(incident, "start_unix");
    let end = start + num(incident, "duration_ms") / 1000.0;
    (end.min(num(block, "end")) - start.max(num(block, "start"))).max(0.0)
}

/// An incident found a block when it covers most of it, on its loop thread, with its culprit
/// and cause.
fn finds(incident: &Value, block: &Value) -> bool {
    let block_s = num(block, "end") - num(block, "start");
    incident["thread_id"] == block["thread_id"]
        && shared_s(incident, block) > block_s / 2.0
        && incident["culprit"]["function"] == block["function"]
        && incident["cause"]["category"] == block["cause"]
}

fn score(incidents: &[Value], truth: &[Value]) -> Scores {
    let found: Vec<Option<&Value>> = truth
        .iter()
        .map(|b| incidents.iter().find(|i| finds(i, b)))
        .collect();
    let true_incidents = incidents
        .iter()
        .filter(|i| truth.iter().any(|b| finds(i, b)))
        .count();
    // A stall the kernel shows the target waiting for a CPU through (`starved`: this 2-core
    // machine under a test run's load) is real and blamed on the machine, not on the code:
    // the fixture's truth cannot list it, and it is no false claim about the code.
    let claims = incidents
        .iter()
        .filter(|i| i["cause"]["category"] != "starved" || truth.iter().any(|b| finds(i, b)))
        .count();
    let mut errors: Vec<f64> = truth
        .iter()
        .zip(&found)
        .filter_map(|(b, i)| {
            let i = (*i)?;
            let truth_ms = (num(b, "end") - num(b, "start")) * 1000.0;
            Some((num(i, "duration_ms") - truth_ms).abs())
        })
        .collect();
    errors.sort_by(f64::total_cmp);
    Scores {
        precision: true_incidents as f64 / claims.max(1) as f64,
        recall: found.iter().filter(|f| f.is_some()).count() as f64 / truth.len().max(1) as f64,
        median_error_ms: errors
            .get(errors.len() / 2)
            .copied()
            .unwrap_or(f64::INFINITY),
    }
}

/// Precision and recall at least `bar`, and a median duration error of at most 10 ms.
fn assert_scores(incidents: &[Value], truth: &[Value], bar: f64, context: &str) {
    let s = score(incidents, truth);
    assert!(
        s.precision >= bar && s.recall >= bar && s.median_error_ms <= 10.0,
        "precision {:.2}, recall {:.2}, median duration error {:.1} ms\n{context}",
        s.precision,
        s.recall,
        s.median_error_ms
    );
}

fn describe(incidents: &[Value], truth: &[Value]) -> String {
    let mut text = String::from("incidents:\n");
    for i in incidents {
        text += &format!(
            "  {:.3} {:6.1} ms {} {} {}\n",
            num(i, "start_unix"),
            num(i, "duration_ms"),
            i["kind"],
            i["culprit"]["function"],
            i["cause"]["category"]
        );
    }
    text += "truth:\n";
    for b in truth {
        text += &format!(
            "  {:.3} {:6.1} ms {} {}\n",
            num(b, "start"),
            (num(b, "end") - num(b, "start")) * 1000.0,
            b["function"],
            b["cause"]
        );
    }
    text
}

fn saturated(minor: &str, uvloop: bool) {
    let Some(python) = require_python(minor) else {
        return;
    };
    if uvloop && !require_module(&python, "uvloop") {
        return;
    }
    let _serial = timing_lock();
    let (incidents, truth, stdout) = record_saturated(&python, uvloop);
    let context = format!("{}\nloopspy:\n{stdout}", describe(&incidents, &truth));
    assert!(
        truth.len() >= BLOCKS.parse().unwrap(),
        "the fixture logged its blocks\n{context}"
    );
    assert_scores(&incidents, &truth, 0.95, &context);
    for i in &incidents {
        let culprit = i["culprit"]["function"].as_str().unwrap_or_default();
        assert!(
            !MACHINERY.contains(&culprit),
            "loop machinery as culprit: {culprit}\n{context}"
        );
        if uvloop {
            // No iteration boundary is known on uvloop: no saturation is claimed there.
            assert_eq!(i["kind"], "blocking", "{context}");
        }
    }
}

#[test]
fn saturated_uvloop_on_cpython_3_8() {
    saturated("3.8", true);
}

#[test]
fn saturated_uvloop_on_cpython_3_9() {
    saturated("3.9", true);
}

#[test]
fn saturated_uvloop_on_cpython_3_10() {
    saturated("3.10", true);
}

#[test]
fn saturated_uvloop_on_cpython_3_11() {
    saturated("3.11", true);
}

#[test]
fn saturated_uvloop_on_cpython_3_12() {
    saturated("3.12", true);
}

#[test]
fn saturated_uvloop_on_cpython_3_13() {
    saturated("3.13", true);
}

#[test]
fn saturated_uvloop_on_cpython_3_14() {
    saturated("3.14", true);
}

/// One keep-alive HTTP/1.1 request on `stream`: the response's status line, its body read by
/// its Content-Length.
fn keep_alive_get(stream: &mut std::io::BufReader<std::net::TcpStream>, path: &str) -> String {
    use std::io::{BufRead, Read, Write};
    write!(
        stream.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let mut status = String::new();
    stream.read_line(&mut status).unwrap();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).unwrap();
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    status
}

fn connect(port: u16) -> std::io::BufReader<std::net::TcpStream> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    std::io::BufReader::new(stream)
}

/// A real `uvicorn[standard]` service (uvloop + httptools, `tests/fixtures/busy_service.py`)
/// kept saturated by four keep-alive clients requesting a ~100 us endpoint back to back, and
/// blocked 12 times, half a second apart, by a sync lookup (`sleep`) or a CPU-heavy render
/// (`cpu`), 60-120 ms each, which the service logs. Every block found with its culprit, cause
/// and duration; nothing else reported; the loop seen busy most of the time.
#[test]
fn saturated_uvicorn_standard_service_every_block_found_none_false() {
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    let Some(python) = require_python("3.12") else {
        return;
    };
    for module in ["uvicorn", "uvloop", "httptools"] {
        if !require_module(&python, module) {
            return;
        }
    }
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let truth_file = dir.path().join("truth.jsonl");
    let out = dir.path().join("out");
    let port = free_port();
    let server = start_uvicorn(
        &python,
        "busy_service:app",
        port,
        &truth_file,
        &["--loop", "uvloop", "--http", "httptools", "--no-access-log"],
    );
    let mut running = Running::start(record_pid(server.pid(), &out, &[]));
    running.wait_for_stderr("sampling pid", Duration::from_secs(20));

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                let mut stream = connect(port);
                while !stop.load(Ordering::Relaxed) {
                    let status = keep_alive_get(&mut stream, "/");
                    assert!(status.contains("200"), "{status}");
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let load_start = (Instant::now(), served.load(Ordering::Relaxed));
    let mut blocker = connect(port);
    for k in 0..12u32 {
        let ms = 60 + 10 * (k * 3 % 7);
        let path = if k % 2 == 0 {
            format!("/order/slow?ms={ms}")
        } else {
            format!("/report?ms={ms}")
        };
        assert!(keep_alive_get(&mut blocker, &path).contains("200"));
        std::thread::sleep(Duration::from_millis(450));
    }
    let rate = (served.load(Ordering::Relaxed) - load_start.1) as f64
        / load_start.0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    Command::new("kill")
        .args(["-INT", &running.pid().to_string()])
        .status()
        .unwrap();
    let run = running.finish(Duration::from_secs(30));
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    drop(server);

    let json = read_json(&out.join("incidents.json"));
    let incidents = json["incidents"].as_array().cloned().unwrap_or_default();
    let truth: Vec<Value> = std::fs::read_to_string(&truth_file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let context = format!(
        "{}\n{rate:.0} requests/s served\nloopspy:\n{}",
        describe(&incidents, &truth),
        run.stdout
    );
    assert_eq!(truth.len(), 12, "the service logged its blocks\n{context}");
    let loops = json["loops"].as_array().expect("loops");
    assert_eq!(loops.len(), 1, "{context}");
    let busy = loops[0]["utilization"].as_f64().expect("utilization");
    assert!(
        busy >= 0.9,
        "the load did not saturate the loop: busy {busy:.2}\n{context}"
    );
    assert_scores(&incidents, &truth, 1.0, &context);
    for i in &incidents {
        assert_eq!(i["kind"], "blocking", "{context}");
        assert_eq!(i["loop"], "uvloop", "{context}");
    }
}
