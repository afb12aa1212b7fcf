//! Task leaks during `record` (issue #13): `tests/fixtures/task_leak.py` leaks a coroutine's
//! tasks at a known rate beside a fixed worker pool, a burst of 5 000 tasks that drains and a
//! long-lived server task. Only the leak may be named — with its file, a growth rate near the
//! one the target created it at, in incidents.json, report.md and the summary — and
//! `--fail-on-leak` turns it into exit code 11. Its task chain (`server` awaits `batch` awaits
//! `order-7`, which every second starts and awaits a new task that blocks the loop at once)
//! must be every such incident's await chain: the new task is younger than the periodic task
//! census, so only the census a long callback asks for can know it.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Tasks the fixture leaks a second.
const LEAK_RATE: f64 = 20.0;

fn record_leaks(minor: &str, uvloop: bool) {
    let Some(python) = require_python(minor) else {
        return;
    };
    if uvloop && !require_module(&python, "uvloop") {
        return;
    }
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let (truth, out) = (dir.path().join("truth.json"), dir.path().join("out"));
    let script = fixture("task_leak.py");
    let rate = LEAK_RATE.to_string();
    let mut args = vec![
        script.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--rate",
        &rate,
        "--seconds",
        "30",
    ];
    if uvloop {
        args.push("--uvloop");
    }
    let target = start_until_ready(&python, &args);
    let mut cmd = loopspy();
    cmd.args(["record", "--pid", &target.pid().to_string()])
        .args(["--duration", "9s", "--fail-on-leak", "-o"])
        .arg(&out);
    let run = Running::start(cmd).finish(Duration::from_secs(60));
    drop(target);
    let context = format!("{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.code(), 11, "--fail-on-leak exits with 11\n{context}");
    let truth = read_json(&truth);
    let json = read_json(&out.join("incidents.json"));
    let leaks = json["task_leaks"].as_array().expect("task_leaks");
    assert_eq!(
        leaks.len(),
        1,
        "only the leak: {leaks:#?}\n{}\n{context}",
        json["tasks"]
    );
    let leak = &leaks[0];
    assert_eq!(leak["coroutine"], truth["leak"]["coroutine"], "{leak}");
    assert_eq!(leak["file"], truth["leak"]["file"], "{leak}");
    let growth = leak["growth_per_s"].as_f64().unwrap();
    assert!(
        (growth - LEAK_RATE).abs() <= LEAK_RATE * 0.3,
        "growth {growth}/s, created at {LEAK_RATE}/s: {leak}"
    );
    assert!(
        leak["pending_end"].as_u64().unwrap() >= leak["pending_start"].as_u64().unwrap() + 100,
        "{leak}"
    );
    assert!(leak["example_task"].as_str().is_some(), "{leak}");
    // The census saw the pool and the server as they are.
    let by: Vec<&Value> = json["tasks"]["pending_by_coroutine"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    let pending = |name: &str| {
        by.iter()
            .find(|c| c["coroutine"] == name)
            .and_then(|c| c["pending"].as_u64())
    };
    assert_eq!(pending("worker"), Some(16), "{}", json["tasks"]);
    assert_eq!(pending("serve_forever"), Some(1), "{}", json["tasks"]);
    assert!(json["tasks"]["censuses"].as_u64().unwrap() >= 6);
    assert!(
        run.stdout
            .contains("Task leak: notify_subscribers (task_leak.py:"),
        "{context}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Task leaks"), "{report}");
    assert!(report.contains("`notify_subscribers`"), "{report}");

    // The blocked task's await chain, outward, on every incident in load_customer.
    let chain = &truth["chain"];
    let blocks: Vec<&Value> = json["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["culprit"]["function"] == chain["culprit"])
        .collect();
    assert!(blocks.len() >= 6, "{:#?}", json["incidents"]);
    // Each block's task is new; the census a long callback asks for reads it while the loop
    // is stuck — unless the last census was too recent (the cost bound): then the chain is
    // unknown (empty), never a wrong one.
    let mut chained = 0;
    for incident in &blocks {
        let task = &incident["task"];
        let prefix = chain["task_prefix"].as_str().unwrap();
        assert!(
            task["name"].as_str().is_some_and(|n| n.starts_with(prefix)),
            "{incident}"
        );
        let awaited_by: Vec<&Value> = task["awaited_by_chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| &t["name"])
            .collect();
        let expected: Vec<&Value> = chain["awaited_by"].as_array().unwrap().iter().collect();
        if !awaited_by.is_empty() {
            assert_eq!(awaited_by, expected, "{incident}");
            chained += 1;
        }
    }
    assert!(
        chained * 4 >= blocks.len() * 3,
        "{chained} of {} incidents with their await chain\n{:#?}",
        blocks.len(),
        blocks
    );
    assert!(
        report
            .contains("(coroutine `fetch_customer`), awaited by `order-7` <- `batch` <- `server`"),
        "{report}"
    );
}

#[test]
fn task_leaks_and_await_chains_on_cpython_3_8() {
    record_leaks("3.8", false);
}

#[test]
fn task_leaks_and_await_chains_on_cpython_3_11() {
    record_leaks("3.11", false);
}

#[test]
fn task_leaks_and_await_chains_on_cpython_3_13() {
    record_leaks("3.13", false);
}

#[test]
fn task_leaks_and_await_chains_under_uvloop() {
    record_leaks("3.12", true);
}

/// `top`'s tasks line: pending tasks, the most numerous coroutines with their recent growth,
/// the leak marked; and the feed's incidents with their await chain.
#[test]
fn top_shows_pending_tasks_the_leak_and_await_chains() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth.json");
    let script = fixture("task_leak.py");
    let target = start_until_ready(
        &python,
        &[
            script.to_str().unwrap(),
            "--truth",
            truth.to_str().unwrap(),
            "--seconds",
            "30",
        ],
    );
    let mut cmd = loopspy();
    cmd.args([
        "top",
        "--pid",
        &target.pid().to_string(),
        "--once-after",
        "7s",
    ]);
    let run = Running::start(cmd).finish(Duration::from_secs(60));
    drop(target);
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let tasks = run
        .stdout
        .lines()
        .find(|l| l.starts_with("Tasks: "))
        .unwrap_or_else(|| panic!("no tasks line:\n{}", run.stdout));
    assert!(tasks.contains(" pending — notify_subscribers "), "{tasks}");
    assert!(tasks.contains("/s LEAK)"), "{tasks}");
    assert!(tasks.contains("worker 16"), "{tasks}");
    let chained = run
        .stdout
        .lines()
        .filter(|l| {
            l.contains("load_customer (task_leak.py:")
                && l.contains(" <- order-7 <- batch <- server]")
        })
        .count();
    assert!(chained >= 3, "{}", run.stdout);
}
