//! `loopspy dump` on CPython 3.8–3.13 and uvloop: every thread's stack, which threads run
//! event loops, idle or inside a callback, for how long, and in which task.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

fn start_dump_target(python: &std::path::Path, uvloop: bool) -> ChildGuard {
    let script = fixture("dump_target.py");
    let mut args = vec![script.to_str().unwrap()];
    if uvloop {
        args.push("--uvloop");
    }
    let target = start_until_ready(python, &args);
    // Let the main loop enter its blocking handler and stay there a while.
    std::thread::sleep(Duration::from_millis(600));
    target
}

fn dump(minor: &str, uvloop: bool) {
    let Some(python) = require_python(minor) else {
        return;
    };
    if uvloop && !require_module(&python, "uvloop") {
        return;
    }
    let target = start_dump_target(&python, uvloop);
    let pid = target.pid().to_string();

    let run = run_loopspy(&["dump", "--pid", &pid, "--json"], Duration::from_secs(30));
    assert_eq!(run.code(), 0, "{}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(json["python_version"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{minor}.")));
    let threads = json["threads"].as_array().unwrap();
    let by_name = |name: &str| {
        threads
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no thread {name}: {json:#}"))
    };
    let main = by_name("MainThread");
    assert_eq!(main["thread_id"].as_u64(), Some(target.pid() as u64));
    let main_loop = &main["event_loop"];
    assert_eq!(
        main_loop["loop"],
        if uvloop { "uvloop" } else { "selector" }
    );
    assert_eq!(main_loop["state"], "callback", "{main:#}");
    assert!(
        main_loop["busy_for_ms"].as_f64().unwrap() >= 250.0,
        "{main:#}"
    );
    assert_eq!(main_loop["task"]["name"], "stuck-task");
    assert!(main["stack"][0]["function"]
        .as_str()
        .unwrap()
        .ends_with("stuck_in_handler"));
    let side = by_name("side-loop");
    assert_eq!(side["event_loop"]["loop"], "selector");
    assert_eq!(side["event_loop"]["state"], "idle");
    assert!(by_name("plain-worker")["event_loop"].is_null());

    let text = run_loopspy(&["dump", "--pid", &pid], Duration::from_secs(30));
    assert_eq!(text.code(), 0, "{}", text.stderr);
    assert!(
        text.stdout.contains(&format!("Process {pid}:")),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("event loop (") && text.stdout.contains("inside a callback for"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("task stuck-task"), "{}", text.stdout);
    assert!(
        text.stdout.contains("idle, waiting in its selector"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("stuck_in_handler (dump_target.py:"),
        "{}",
        text.stdout
    );
}

#[test]
fn dump_on_cpython_3_8() {
    dump("3.8", false);
}

#[test]
fn dump_on_cpython_3_9() {
    dump("3.9", false);
}

#[test]
fn dump_on_cpython_3_10() {
    dump("3.10", false);
}

#[test]
fn dump_on_cpython_3_11() {
    dump("3.11", false);
}

#[test]
fn dump_on_cpython_3_12() {
    dump("3.12", false);
}

#[test]
fn dump_on_cpython_3_13() {
    dump("3.13", false);
}

#[test]
fn dump_under_uvloop() {
    dump("3.12", true);
}

#[test]
fn dump_of_a_missing_pid_fails_clearly() {
    let run = run_loopspy(&["dump", "--pid", "99999999"], Duration::from_secs(20));
    assert_eq!(run.code(), 3, "{}", run.stderr);
    assert!(run.stderr.contains("no process with PID 99999999"));
}
