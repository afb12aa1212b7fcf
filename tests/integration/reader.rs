//! loopspy's own stack reader against py-spy's, on the same quiescent target: on CPython
//! 3.8–3.13, with asyncio's selector loop and with uvloop, every thread's stack must be the
//! same frames (function, file, line), the same thread names and the same GIL holder.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Per thread id: (name, owns_gil, frames as "function file:line").
type Threads = BTreeMap<u64, (String, bool, Vec<String>)>;

fn threads_of(dump: &Value) -> Threads {
    dump["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| {
            let frames = t["stack"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let text = |key: &str| f[key].as_str().unwrap_or_default().to_string();
                    format!("{} {}:{}", text("function"), text("file"), f["line"])
                })
                .collect();
            (
                t["thread_id"].as_u64().unwrap(),
                (
                    t["name"].as_str().unwrap_or_default().to_string(),
                    t["owns_gil"].as_bool().unwrap(),
                    frames,
                ),
            )
        })
        .collect()
}

fn dump_with(pid: i32, reader: &str) -> Threads {
    let pid = pid.to_string();
    let run = run_loopspy(
        &["dump", "--pid", &pid, "--json", "--reader", reader],
        Duration::from_secs(30),
    );
    assert_eq!(run.code(), 0, "dump --reader {reader}: {}", run.stderr);
    threads_of(&serde_json::from_str(&run.stdout).unwrap())
}

fn same_stacks_as_py_spy(minor: &str, uvloop: bool) {
    let Some(python) = require_python(minor) else {
        return;
    };
    if uvloop && !require_module(&python, "uvloop") {
        return;
    }
    let script = fixture("reader_target.py");
    let mut args = vec![script.to_str().unwrap()];
    if uvloop {
        args.push("--uvloop");
    }
    let target = start_until_ready(&python, &args);
    std::thread::sleep(Duration::from_millis(300));

    let own = dump_with(target.pid(), "own");
    let reference = dump_with(target.pid(), "py-spy");
    assert_eq!(
        own, reference,
        "CPython {minor} (uvloop: {uvloop}): own reader (left) differs from py-spy (right)"
    );

    // The comparison must have covered what the fixture set up, read correctly by both.
    let names: Vec<&str> = own.values().map(|(name, _, _)| name.as_str()).collect();
    for name in [
        "MainThread",
        "worker",
        "ünïcödé-thread",
        "generators",
        "idle-loop",
    ] {
        assert!(
            names.contains(&name),
            "{minor}: no thread {name} in {names:?}"
        );
    }
    let stack = |name: &str| {
        own.values()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, frames)| frames.clone())
            .unwrap()
    };
    let count =
        |frames: &[String], needle: &str| frames.iter().filter(|f| f.contains(needle)).count();
    assert_eq!(
        count(&stack("MainThread"), "blocked_chain"),
        9,
        "{:#?}",
        stack("MainThread")
    );
    assert_eq!(
        count(&stack("worker"), "recurse "),
        13,
        "{:#?}",
        stack("worker")
    );
    let unicode = stack("ünïcödé-thread");
    assert!(
        count(&unicode, "ünïcödé_函数") == 1 && count(&unicode, "<generated>:1") == 1,
        "{unicode:#?}"
    );
    assert!(
        count(&stack("idle-loop"), "select") >= 1,
        "{:#?}",
        stack("idle-loop")
    );
}

#[test]
fn own_reader_equals_py_spy_on_3_8() {
    same_stacks_as_py_spy("3.8", false);
    same_stacks_as_py_spy("3.8", true);
}

#[test]
fn own_reader_equals_py_spy_on_3_9() {
    same_stacks_as_py_spy("3.9", false);
    same_stacks_as_py_spy("3.9", true);
}

#[test]
fn own_reader_equals_py_spy_on_3_10() {
    same_stacks_as_py_spy("3.10", false);
    same_stacks_as_py_spy("3.10", true);
}

#[test]
fn own_reader_equals_py_spy_on_3_11() {
    same_stacks_as_py_spy("3.11", false);
    same_stacks_as_py_spy("3.11", true);
}

#[test]
fn own_reader_equals_py_spy_on_3_12() {
    same_stacks_as_py_spy("3.12", false);
    same_stacks_as_py_spy("3.12", true);
}

#[test]
fn own_reader_equals_py_spy_on_3_13() {
    same_stacks_as_py_spy("3.13", false);
    same_stacks_as_py_spy("3.13", true);
}

/// Sum of the collapsed-stack weights (µs) of the stacks that contain `needle`.
fn weight_of(collapsed: &str, needle: &str) -> u64 {
    collapsed
        .lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Threads without an event loop are read at `--other-threads-rate` only, each read weighted by
/// the time it stands for: a thread busy the whole recording still adds up to the recording's
/// length in the flame graph, at 100 Hz as at every tick.
#[test]
fn threads_without_a_loop_are_read_less_often_and_weighted_by_time() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let _serial = timing_lock();
    let target = start_python(&python, &[fixture("no_loop.py").to_str().unwrap(), "30"]);
    for other_rate in ["100", "1000"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let run = run_loopspy(
            &[
                "record",
                "--pid",
                &target.pid().to_string(),
                "--duration",
                "3s",
                "--rate",
                "1000",
                "--other-threads-rate",
                other_rate,
                "--format",
                "collapsed",
                "-o",
                out.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        );
        let collapsed = std::fs::read_to_string(out.join("flamegraph.collapsed"))
            .unwrap_or_else(|e| panic!("{e}: {}", run.stderr));
        let recording = &read_json(&out.join("incidents.json"))["recording"];
        assert_eq!(recording["reader"], "own");
        assert_eq!(
            recording["other_threads_hz"].as_u64(),
            other_rate.parse().ok()
        );
        let busy_ms = weight_of(&collapsed, "churn_without_loop") as f64 / 1000.0;
        assert!(
            (2000.0..=3300.0).contains(&busy_ms),
            "--other-threads-rate {other_rate}: the busy thread weighs {busy_ms:.0} ms of a 3 s recording\n{collapsed}"
        );
    }
}

/// The other threads' reads are spread over ticks and a waiting thread's kernel view is
/// reused while its stack stays put: a thread that goes from waiting to running `spin()` must
/// count as running from its first read in `spin`. Its weight in the running-threads flame
/// graph is held against the time the fixture logged in `spin` during the recording; a view
/// kept stale for even a few reads per switch (twenty switches) would miss by far more than the
/// tolerance.
#[test]
fn a_waiting_thread_that_starts_running_is_seen_running_at_once() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("spins.jsonl");
    let _target = start_python(
        &python,
        &[
            fixture("wake_then_spin.py").to_str().unwrap(),
            log.to_str().unwrap(),
            "12",
        ],
    );
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("ready")) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "fixture did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = _target.pid().to_string();
    let out = dir.path().join("out");
    let run = run_loopspy(
        &[
            "record",
            "--pid",
            &pid,
            "--duration",
            "4s",
            "--rate",
            "1000",
            "--format",
            "collapsed",
            "-o",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    let collapsed = std::fs::read_to_string(out.join("flamegraph.collapsed"))
        .unwrap_or_else(|e| panic!("{e}: {}", run.stderr));
    let recording = &read_json(&out.join("incidents.json"))["recording"];
    assert_eq!(recording["other_threads_hz"].as_u64(), Some(100));
    let from = recording["start_unix"].as_f64().unwrap();
    let to = from + recording["duration_s"].as_f64().unwrap();
    // Wait for the spin that is running at the end to be logged.
    std::thread::sleep(Duration::from_millis(600));
    let spun_ms: f64 = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["start"].as_f64()?, v["end"].as_f64()?)))
        .map(|(start, end)| (end.min(to) - start.max(from)).max(0.0) * 1000.0)
        .sum();
    let seen_ms = weight_of(&collapsed, "spin") as f64 / 1000.0;
    assert!(
        spun_ms > 1500.0,
        "the fixture spun only {spun_ms:.0} ms of the recording"
    );
    assert!(
        (seen_ms - spun_ms).abs() <= 40.0 + 0.03 * spun_ms,
        "spin() ran {spun_ms:.0} ms of the recording, the running-threads flame graph shows {seen_ms:.0} ms\n{collapsed}"
    );
    // Waking from a wait runs a little Python (`Condition.__exit__`): a read or two of 10 ms.
    let waking_ms = weight_of(&collapsed, "Event.wait") as f64 / 1000.0;
    assert!(
        waking_ms <= 60.0,
        "a waiting thread is not running: {waking_ms:.0} ms in Event.wait\n{collapsed}"
    );
}

#[test]
fn own_reader_equals_py_spy_on_3_14() {
    same_stacks_as_py_spy("3.14", false);
}

#[test]
fn own_reader_equals_py_spy_on_3_14_with_uvloop() {
    same_stacks_as_py_spy("3.14", true);
}

#[test]
fn own_reader_equals_py_spy_on_3_15() {
    same_stacks_as_py_spy("3.15", false);
}

/// From 3.13 the own reader takes its offsets from the target's `_Py_DebugOffsets`; on 3.13
/// they must equal the hand-written `python_offsets/3.13.toml` wherever both say something —
/// on pyenv's shared-library build (3.13.0, `_PyRuntime` in libpython) and on Debian's static,
/// non-PIE 3.13.18 in its own root.
#[test]
fn debug_offsets_of_3_13_builds_agree_with_the_3_13_table() {
    let pyenv = require_python("3.13").expect("pyenv 3.13");
    let debian = sid_python("3.13").unwrap_or_else(|| {
        missing("Debian's CPython 3.13 (tests/setup.sh)");
        unreachable!()
    });
    for python in [pyenv, debian] {
        let script = fixture("reader_target.py");
        let target = start_until_ready(&python, &[script.to_str().unwrap()]);
        let pid = target.pid().to_string();
        let run = run_loopspy(
            &["dump", "--pid", &pid, "--json", "--show-offsets"],
            Duration::from_secs(30),
        );
        assert_eq!(run.code(), 0, "{}", run.stderr);
        let dump: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(dump["offsets"], "target", "{}", python.display());
        let from_target = &dump["layout"];
        let table = serde_json::to_value(loopspy::remote::offsets::for_minor(13).unwrap()).unwrap();
        let mut compared = 0;
        for (section, fields) in table.as_object().unwrap() {
            let Some(fields) = fields.as_object() else {
                continue;
            };
            for (key, value) in fields {
                if value.is_null() || key == "max_owner" {
                    continue;
                }
                compared += 1;
                assert_eq!(
                    &from_target[section][key],
                    value,
                    "{}: {section}.{key}: debug offsets (left) vs python_offsets/3.13.toml (right)",
                    python.display()
                );
            }
        }
        assert!(compared >= 30, "compared only {compared} fields");
    }
}

/// The one thread-state field the reader takes from 3.13+ that the target's debug offsets do
/// not carry (`context_ver`, the callback clock) is where loopspy puts it, in each of Debian's
/// 3.13, 3.14 and 3.15: measured inside the interpreter by `python_offsets/derive.py
/// --context-ver` (it finds the entered Context's pointer and checks the word after it counts
/// enters and exits).
#[test]
fn context_ver_offset_of_3_13_to_3_15_is_measured_in_each() {
    for minor in 13..=15u64 {
        let version = format!("3.{minor}");
        let python = sid_python(&version).unwrap_or_else(|| {
            missing(&format!("Debian's CPython {version} (tests/setup.sh)"));
            unreachable!()
        });
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python_offsets/derive.py");
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg("--context-ver")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "derive.py --context-ver on {version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let measured: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(measured["version"].as_str(), Some(version.as_str()));
        assert_eq!(
            measured["thread_context_ver"].as_u64(),
            Some(loopspy::remote::debug_offsets::context_ver_offset(minor) as u64),
            "{version}"
        );
    }
}
