//! Bad input and abnormal ends: each gets one readable line, its documented exit code, and
//! whatever was recorded is still written.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

const NO_SUCH_PROCESS: i32 = 3;
const NOT_PYTHON: i32 = 4;
const UNSUPPORTED_PYTHON: i32 = 5;
const PERMISSION_DENIED: i32 = 6;
const OUTPUT_NOT_WRITABLE: i32 = 7;
const NO_EVENT_LOOP: i32 = 8;
const LAUNCH_FAILED: i32 = 9;

fn error_line(run: &Run) -> String {
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("loopspy: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{}", run.stderr);
    errors[0].to_string()
}

#[test]
fn unknown_pid_is_reported_with_its_own_code() {
    // PIDs above pid_max cannot exist.
    let run = run_loopspy(&["record", "--pid", "99999999"], Duration::from_secs(20));
    assert_eq!(run.code(), NO_SUCH_PROCESS, "{}", run.stderr);
    assert!(error_line(&run).contains("no process with PID 99999999"));
}

#[test]
fn non_python_process_is_refused() {
    let sleeper = ChildGuard(Command::new("sleep").arg("30").spawn().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let run = run_loopspy(
        &[
            "record",
            "--pid",
            &sleeper.pid().to_string(),
            "-o",
            dir.path().join("out").to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), NOT_PYTHON, "{}", run.stderr);
    assert!(error_line(&run).contains("is not a Python process"));
}

#[test]
fn unsupported_python_version_is_named() {
    let Some(python) = python("3.7").or_else(|| python("2.7")) else {
        missing("an unsupported CPython (3.7 or 2.7) in pyenv");
        return;
    };
    let target = start_python(&python, &["-c", "import time; time.sleep(30)"]);
    let dir = tempfile::tempdir().unwrap();
    let run = run_loopspy(
        &[
            "record",
            "--pid",
            &target.pid().to_string(),
            "-o",
            dir.path().join("out").to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), UNSUPPORTED_PYTHON, "{}", run.stderr);
    let line = error_line(&run);
    assert!(
        line.contains("does not support") && line.contains("3.8 to 3.15"),
        "{line}"
    );
}

#[test]
fn permission_denied_explains_ptrace() {
    if !nix_is_root() {
        missing("root (to run loopspy as an unprivileged user against a root-owned target)");
        return;
    }
    let Some(python) = require_python("3.11") else {
        return;
    };
    let target = start_python(&python, &["-c", "import time; time.sleep(30)"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    Command::new("chmod")
        .args(["777"])
        .arg(dir.path())
        .status()
        .unwrap();
    Command::new("chmod")
        .args(["777"])
        .arg(&out)
        .status()
        .unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(loopspy_path())
        .args(["record", "--pid", &target.pid().to_string(), "-o"])
        .arg(&out);
    let run = Running::start(cmd).finish(Duration::from_secs(20));
    assert_eq!(run.code(), PERMISSION_DENIED, "{}", run.stderr);
    let line = error_line(&run);
    assert!(
        line.contains("permission denied") && line.contains("CAP_SYS_PTRACE"),
        "{line}"
    );
    assert!(line.contains("ptrace_scope"), "{line}");
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn unwritable_output_fails_before_sampling() {
    let Some(python) = require_python("3.11") else {
        return;
    };
    let target = start_python(&python, &[fixture("short_lived.py").to_str().unwrap()]);
    // A directory cannot be created under a regular file, whoever we are.
    let run = run_loopspy(
        &[
            "record",
            "--pid",
            &target.pid().to_string(),
            "-o",
            "/etc/hostname/out",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), OUTPUT_NOT_WRITABLE, "{}", run.stderr);
    assert!(error_line(&run).contains("cannot write to output directory /etc/hostname/out"));
    assert!(
        !run.stderr.contains("sampling pid"),
        "must fail before sampling"
    );
}

#[test]
fn launch_of_a_missing_command_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_loopspy(
        &[
            "record",
            "-o",
            dir.path().join("out").to_str().unwrap(),
            "--",
            "/nonexistent/python3",
            "app.py",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), LAUNCH_FAILED, "{}", run.stderr);
    assert!(error_line(&run).contains("could not start `/nonexistent/python3 app.py`"));
}

#[test]
fn usage_errors_exit_2() {
    let run = run_loopspy(&["record"], Duration::from_secs(20));
    assert_eq!(run.code(), 2, "{}", run.stderr);
    assert!(error_line(&run).contains("give --pid PID"));
    let run = run_loopspy(
        &["record", "--pid", "1", "--rate", "0"],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), 2);
    let run = run_loopspy(
        &["record", "--pid", "1", "--threshold", "soon"],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), 2);
}

#[test]
fn target_without_event_loop_still_gets_a_flame_graph() {
    let Some(python) = require_python("3.11") else {
        return;
    };
    let _serial = timing_lock();
    let target = start_python(&python, &[fixture("no_loop.py").to_str().unwrap(), "30"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = run_loopspy(
        &[
            "record",
            "--pid",
            &target.pid().to_string(),
            "--duration",
            "1s",
            "-o",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(run.code(), NO_EVENT_LOOP, "{}", run.stderr);
    assert!(
        run.stderr.contains("no asyncio event loop was seen"),
        "{}",
        run.stderr
    );
    let svg = std::fs::read_to_string(out.join("flamegraph.svg")).unwrap();
    assert!(
        svg.contains("churn_without_loop"),
        "flame graph lacks the busy thread"
    );
    let json = read_json(&out.join("incidents.json"));
    assert_eq!(json["incidents"].as_array().unwrap().len(), 0);
    assert_eq!(json["recording"]["stop_reason"], "duration_elapsed");
    assert!(json["loops"].as_array().unwrap().is_empty());
    crate::html::check_no_loop_page(&out, "churn_without_loop");
}

#[test]
fn target_exiting_mid_recording_keeps_everything() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let _serial = timing_lock();
    let target = start_python(
        &python,
        &[
            fixture("short_lived.py").to_str().unwrap(),
            "--lifetime",
            "2",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = run_loopspy(
        &[
            "record",
            "--pid",
            &target.pid().to_string(),
            "--duration",
            "60s",
            "--rate",
            "500",
            "-o",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("exited; recording stopped"),
        "{}",
        run.stderr
    );
    let json = read_json(&out.join("incidents.json"));
    assert_eq!(json["recording"]["stop_reason"], "target_exited");
    let incidents = json["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert!(incidents[0]["culprit"]["function"]
        .as_str()
        .unwrap()
        .ends_with("stall_once"));
    assert!(json["recording"]["duration_s"].as_f64().unwrap() < 10.0);
    assert!(out.join("report.md").exists() && out.join("blocking.svg").exists());
}

#[test]
fn ctrl_c_stops_and_writes_what_was_recorded() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let _serial = timing_lock();
    let target = start_python(&python, &[fixture("short_lived.py").to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut running = Running::start(record_pid(target.pid(), &out, &[]));
    running.wait_for_stderr("sampling pid", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    Command::new("kill")
        .args(["-INT", &running.pid().to_string()])
        .status()
        .unwrap();
    let run = running.finish(Duration::from_secs(20));
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(run
        .stderr
        .contains("interrupted; writing what was recorded"));
    let json = read_json(&out.join("incidents.json"));
    assert_eq!(json["recording"]["stop_reason"], "interrupted");
    assert_eq!(json["incidents"].as_array().unwrap().len(), 1, "{json}");
    // The target itself was never disturbed.
    assert!(std::path::Path::new(&format!("/proc/{}", target.pid())).exists());
}

#[test]
fn argument_errors_read_like_every_other_error() {
    for args in [
        &["record", "--pid", "abc"][..],
        &["record", "--pid", "1", "--threshold", "-5"],
        &["record", "--pid", "1", "--duration", "-3s"],
        &["record", "--no-such-flag"],
    ] {
        let run = run_loopspy(args, Duration::from_secs(10));
        assert_eq!(run.code(), 2, "{args:?}: {}", run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got:\n{}", run.stderr);
        assert!(lines[0].starts_with("loopspy: error: "), "{}", lines[0]);
        assert!(!lines[0].contains("-- -"), "{args:?}: {}", lines[0]);
    }
    let run = run_loopspy(
        &["record", "--pid", "1", "--threshold", "-5"],
        Duration::from_secs(10),
    );
    assert!(run.stderr.contains("negative"), "{}", run.stderr);
    // --help still prints help, exit 0.
    let help = run_loopspy(&["--help"], Duration::from_secs(10));
    assert_eq!(help.code(), 0);
    assert!(help.stdout.contains("attach"), "{}", help.stdout);
}

#[test]
fn attach_is_the_same_command_as_record() {
    let run = run_loopspy(&["attach", "--pid", "999999"], Duration::from_secs(10));
    let record = run_loopspy(&["record", "--pid", "999999"], Duration::from_secs(10));
    assert_eq!(run.code(), record.code());
    assert_eq!(run.stderr, record.stderr);
    assert!(
        run.stderr.contains("no process with PID 999999"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_launched_program_that_ends_before_a_loop_gives_its_own_exit_code() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // `loopspy record -o OUT -- python ARGS...`
    let launch = |args: &[&str]| {
        let mut all = vec!["record", "-o", out.to_str().unwrap(), "--"];
        all.push(python.to_str().unwrap());
        all.extend_from_slice(args);
        run_loopspy(&all, Duration::from_secs(30))
    };
    // A missing script: Python's own exit code 2, said in words, files still written.
    let run = launch(&["/nonexistent/missing.py"]);
    assert_eq!(run.code(), 2, "{}", run.stderr);
    assert!(run.stderr.contains("exited with code 2"), "{}", run.stderr);
    assert!(!run.stderr.contains("--thread"), "{}", run.stderr);
    // A program too short to be read at all: its code (0), and no false reader warning.
    let run = launch(&["-c", "print('hi')"]);
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(
        !run.stderr.contains("does not read this interpreter"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("error"), "{}", run.stderr);
    let run = launch(&["-c", "import sys; sys.exit(5)"]);
    assert_eq!(run.code(), 5, "{}", run.stderr);
}

#[test]
fn an_early_failure_leaves_no_output_directory_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new").join("out");
    let run = run_loopspy(
        &["record", "--pid", "99999999", "-o", out.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), NO_SUCH_PROCESS, "{}", run.stderr);
    assert!(
        !dir.path().join("new").exists(),
        "an empty output directory was left behind"
    );
    // An unwritable place is still refused before anything is attached.
    let run = run_loopspy(
        &["record", "--pid", "99999999", "-o", "/proc/loopspy-out"],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), 7, "{}", run.stderr);
}
