//! Worker fleets: a real `uvicorn --workers 2` app loaded by a local client, one endpoint
//! blocking, recorded with `--pid MASTER --subprocesses`; incidents must be attributed to the
//! worker that blocked, and a worker killed mid-recording keeps its data.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

fn get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Two concurrent blocking requests (so both workers get one) and a few quick ones.
fn load_round(port: u16) {
    let blockers: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || get(port, "/block")))
        .collect();
    for _ in 0..5 {
        assert!(get(port, "/").contains("pid "));
    }
    for b in blockers {
        assert!(b.join().unwrap().contains("200 OK"));
    }
    std::thread::sleep(Duration::from_millis(150));
}

fn truth(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn uvicorn_workers_are_followed_and_incidents_attributed_to_the_right_pid() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    if !require_module(&python, "uvicorn") {
        return;
    }
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let truth_file = dir.path().join("truth.jsonl");
    let out = dir.path().join("out");
    let port = free_port();
    let master = start_uvicorn(
        &python,
        "asgi_app:app",
        port,
        &truth_file,
        &["--workers", "2", "--loop", "asyncio", "--http", "h11"],
    );
    std::thread::sleep(Duration::from_millis(500));

    let mut running = Running::start(record_pid(master.pid(), &out, &["--subprocesses"]));
    running.wait_for_stderr("multiprocessing-fork", Duration::from_secs(20));
    running.wait_for_stderr("multiprocessing-fork", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..4 {
        load_round(port);
    }

    // Kill a worker that has served blocking requests; its data must survive.
    let before = truth(&truth_file);
    let victim = before[0]["pid"].as_i64().unwrap() as i32;
    let victim_blocks: Vec<Value> = before
        .iter()
        .filter(|t| t["pid"] == victim)
        .cloned()
        .collect();
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    running.wait_for_stderr(
        &format!("pid {victim} exited; its"),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..2 {
        load_round(port);
    }
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill")
        .args(["-INT", &running.pid().to_string()])
        .status()
        .unwrap();
    let run = running.finish(Duration::from_secs(30));
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let master_pid = master.pid();
    drop(master);

    let truth = truth(&truth_file);
    let workers: std::collections::BTreeSet<i64> =
        truth.iter().map(|t| t["pid"].as_i64().unwrap()).collect();
    assert!(
        workers.len() >= 2,
        "both workers served blocking requests: {workers:?}"
    );
    let json = read_json(&out.join("incidents.json"));
    let incidents = json["incidents"].as_array().unwrap();
    let listing = incidents
        .iter()
        .map(|i| {
            format!(
                "  pid {} {:.3} {:.0} ms {}",
                i["pid"], i["start_unix"], i["duration_ms"], i["culprit"]["function"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    for t in &truth {
        let (start, end) = (t["start"].as_f64().unwrap(), t["end"].as_f64().unwrap());
        let found = incidents.iter().find(|i| {
            let s = i["start_unix"].as_f64().unwrap();
            let e = i["end_unix"].as_f64().unwrap();
            s < end && e > start && i["pid"] == t["pid"]
        });
        let inc = found.unwrap_or_else(|| panic!("block {t} not found in its worker:\n{listing}"));
        assert_eq!(inc["culprit"]["function"], "slow_sync_lookup", "{inc}");
        assert_eq!(inc["cause"]["category"], "sleep", "{inc}");
        assert!(
            inc["command"].as_str().unwrap().contains("multiprocessing"),
            "{inc}"
        );
    }
    for i in incidents {
        assert!(
            workers.contains(&i["pid"].as_i64().unwrap()),
            "incident in a non-worker: {i}"
        );
    }
    let processes = json["processes"].as_array().unwrap();
    assert!(
        processes.iter().any(|p| p["pid"] == master_pid),
        "master listed"
    );
    let victim_entry = processes.iter().find(|p| p["pid"] == victim).unwrap();
    assert_eq!(victim_entry["stop_reason"], "target_exited");

    // The killed worker's own files, written when it died.
    // Blocks that ran back to back in one worker (no idle sample between) may share an
    // incident, so every block must be covered rather than counted one to one.
    let own = read_json(&out.join(format!("pid-{victim}")).join("incidents.json"));
    assert_eq!(own["recording"]["stop_reason"], "target_exited");
    let own_incidents = own["incidents"].as_array().unwrap();
    assert!(!own_incidents.is_empty() && own_incidents.len() <= victim_blocks.len());
    for t in &victim_blocks {
        let (start, end) = (t["start"].as_f64().unwrap(), t["end"].as_f64().unwrap());
        assert!(
            own_incidents.iter().any(|i| {
                i["start_unix"].as_f64().unwrap() < end && i["end_unix"].as_f64().unwrap() > start
            }),
            "victim's block {t} missing from its own file:\n{own:#}"
        );
    }
    let svg = std::fs::read_to_string(out.join("blocking.svg")).unwrap();
    assert!(svg.contains("slow_sync_lookup") && svg.contains(&format!("pid {victim}")));
    assert!(
        run.stdout.contains("Top blocking sites across processes"),
        "{}",
        run.stdout
    );
    let jsonl = std::fs::read_to_string(out.join("incidents.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), incidents.len());
}

#[test]
fn several_pids_are_recorded_together() {
    let Some(python) = require_python("3.11") else {
        return;
    };
    let _serial = timing_lock();
    let a = start_python(
        &python,
        &[
            fixture("short_lived.py").to_str().unwrap(),
            "--lifetime",
            "2",
        ],
    );
    let b = start_python(
        &python,
        &[
            fixture("short_lived.py").to_str().unwrap(),
            "--lifetime",
            "2.5",
            "--block-at",
            "1.2",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = run_loopspy(
        &[
            "record",
            "--pid",
            &a.pid().to_string(),
            "--pid",
            &b.pid().to_string(),
            "-o",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("every recorded process exited"),
        "{}",
        run.stderr
    );
    let json = read_json(&out.join("incidents.json"));
    let pids: Vec<i64> = json["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{json:#}");
    assert!(pids.contains(&(a.pid() as i64)) && pids.contains(&(b.pid() as i64)));
    for p in [a.pid(), b.pid()] {
        assert!(out.join(format!("pid-{p}")).join("report.md").exists());
    }
    crate::html::check_fleet_page(&out, &[a.pid(), b.pid()]);
}
