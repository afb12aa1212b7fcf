//! A saturated loop with real blocks in between (issue #12): dozens of tasks each stepping
//! every fraction of a millisecond keep the loop busy all the time, and every ~half second one
//! of them blocks it for 60-120 ms (`tests/fixtures/saturated.py`, which logs each block).
//! On uvloop nothing in the frames marks where a callback or an iteration ends; the thread's
//! callback clock does. Every block must be found (recall), nothing else reported (precision),
//! with the right culprit and cause and the duration within a few milliseconds.
//! Not here yet: asyncio's own loop on this fixture. Its ~1 ms iterations are rarely sampled
//! between handle loops; `_run_once`'s handle index read with the callback clock tells them
//! apart (exact in 9 of 9 versions in one pass), but 3 of 14 runs under the suite still had
//! one false incident (a 59 ms `blocking` in `<module>`: issue #12, docs/how-it-works.md).

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
        truth.len() >= 13,
        "the fixture logged its blocks\n{context}"
    );
    let s = score(&incidents, &truth);
    assert!(
        s.precision >= 0.95 && s.recall >= 0.95 && s.median_error_ms <= 10.0,
        "precision {:.2}, recall {:.2}, median duration error {:.1} ms\n{context}",
        s.precision,
        s.recall,
        s.median_error_ms
    );
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
