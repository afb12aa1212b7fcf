//! The CI gate: `loopspy record --fail-on-block 100ms -- pytest ...` passes a clean suite with
//! pytest's own exit code, passes an ordinary test failure through, and fails a suite whose
//! tests block the loop (pytest-asyncio and plain asyncio.run) with exit code 10 and the
//! culprit printed.

use std::time::Duration;

use crate::common::*;

const BLOCKED: i32 = 10;

fn gate(suite: &str) -> Option<Run> {
    let python = require_python("3.12")?;
    if !require_module(&python, "pytest") || !require_module(&python, "pytest_asyncio") {
        return None;
    }
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = fixture("ci_suite").join(suite);
    Some(run_loopspy(
        &[
            "record",
            "--fail-on-block",
            "100ms",
            "-o",
            out.to_str().unwrap(),
            "--",
            python.to_str().unwrap(),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            file.to_str().unwrap(),
        ],
        Duration::from_secs(90),
    ))
}

#[test]
fn gate_passes_a_clean_suite_with_pytests_exit_code() {
    let Some(run) = gate("test_clean.py") else {
        return;
    };
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("2 passed"), "{}", run.stdout);
    assert!(!run.stdout.contains("the event loop was blocked"));
}

#[test]
fn gate_passes_through_an_ordinary_test_failure() {
    let Some(run) = gate("test_failing.py") else {
        return;
    };
    assert_eq!(
        run.code(),
        1,
        "pytest's own code: {}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.contains("1 failed"), "{}", run.stdout);
}

#[test]
fn gate_fails_a_suite_that_blocks_the_loop_and_names_the_culprit() {
    let Some(run) = gate("test_blocking.py") else {
        return;
    };
    assert_eq!(run.code(), BLOCKED, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(out.contains("the event loop was blocked"), "{out}");
    assert!(out.contains("2 incident(s) >= 100 ms"), "{out}");
    // pytest-asyncio test
    assert!(
        out.contains("in load_fixtures_synchronously (test_blocking.py:9)"),
        "{out}"
    );
    assert!(out.contains("> time.sleep(0.25)"), "{out}");
    assert!(out.contains("test_blocks_the_loop ("), "{out}");
    // plain asyncio.run inside a sync test
    assert!(
        out.contains("test_blocks_under_plain_asyncio_run.<locals>.handler (test_blocking.py:20)"),
        "{out}"
    );
    assert!(out.contains("cause: sleep"), "{out}");
    assert!(out.contains("fix: replace time.sleep"), "{out}");
    assert!(
        out.contains("outer frames"),
        "the test runner's frames are folded: {out}"
    );
    assert!(run.stderr.contains("exiting with 10"), "{}", run.stderr);
}

#[test]
fn gate_follows_python_subprocesses_of_the_command() {
    let Some(run) = gate("test_subprocess.py") else {
        return;
    };
    assert_eq!(run.code(), BLOCKED, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(out.contains("1 passed"), "pytest itself passed: {out}");
    assert!(
        out.contains("in child_blocking (child_worker.py:8)"),
        "the child's culprit: {out}"
    );
    assert!(out.contains("> time.sleep(0.2)"), "{out}");
    assert!(run.stderr.contains("following child pid"), "{}", run.stderr);
}

#[test]
fn gate_needs_a_command() {
    let run = run_loopspy(
        &["record", "--pid", "1", "--fail-on-block", "100ms"],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), 2);
    assert!(
        run.stderr.contains("--fail-on-block gates a command"),
        "{}",
        run.stderr
    );
}
