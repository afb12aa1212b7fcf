//! Cause attribution on real processes: each category produced for real (`time.sleep`, a CPU
//! loop, urllib against a slow local server, a slow sqlite3 query, `subprocess.run`, a large
//! write + fsync, a `threading.Lock` held elsewhere, a GIL-holding thread, a logging handler
//! that blocks), on CPython 3.8–3.13 and uvloop.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

fn record_causes(python: &Path, fixture_args: &[&str]) -> (Value, Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let truth = dir.path().join("truth.json");
    let out = dir.path().join("out");
    let mut args: Vec<String> = vec![
        fixture("causes.py").to_string_lossy().into_owned(),
        "--truth".into(),
        truth.to_string_lossy().into_owned(),
        "--go-file".into(),
        go.to_string_lossy().into_owned(),
        "--workdir".into(),
        dir.path().to_string_lossy().into_owned(),
    ];
    args.extend(fixture_args.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let target = start_python(python, &args);
    let mut running = Running::start(record_pid(target.pid(), &out, &[]));
    running.wait_for_stderr("sampling pid", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&go, b"go").unwrap();
    let run = running.finish(Duration::from_secs(90));
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    drop(target);
    let json = read_json(&out.join("incidents.json"));
    let truth = read_json(&truth).as_array().cloned().unwrap_or_default();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    (json, truth, report)
}

fn check_causes(json: &Value, truth: &[Value], report: &str) {
    let incidents = json["incidents"].as_array().unwrap();
    let listing = incidents
        .iter()
        .map(|i| format!("  {} {}", i["culprit"], i["cause"]))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(truth.len(), 9, "the fixture ran every scenario");
    for t in truth {
        let name = t["name"].as_str().unwrap();
        let (start, end) = (t["start"].as_f64().unwrap(), t["end"].as_f64().unwrap());
        let found: Vec<&Value> = incidents
            .iter()
            .filter(|i| {
                let s = i["start_unix"].as_f64().unwrap();
                let e = i["end_unix"].as_f64().unwrap();
                s < end + 0.005 && e > start - 0.005 && i["thread_id"] == t["thread_id"]
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}: one incident expected\n{listing}");
        let inc = found[0];
        let context = format!("{name}: {inc:#}");
        assert_eq!(inc["cause"]["category"], t["cause"], "{context}");
        let culprit = inc["culprit"]["function"].as_str().unwrap();
        let function = t["function"].as_str().unwrap();
        assert!(
            culprit == function || culprit.ends_with(&format!(".{function}")),
            "culprit {culprit}, expected {function}\n{context}"
        );
        let source = inc["culprit"]["source"].as_str().unwrap_or("");
        assert!(
            source.contains(t["source"].as_str().unwrap()),
            "culprit source {source:?}\n{context}"
        );
        if let Some(peer) = t.get("peer") {
            assert_eq!(&inc["cause"]["peer"], peer, "{context}");
        }
        if let Some(path) = t.get("path") {
            assert_eq!(&inc["cause"]["path"], path, "{context}");
        }
        assert!(inc["suggestion"].as_str().is_some_and(|s| !s.is_empty()));
        if name != "gil" {
            // Every scenario runs in a task named after it (create_task(name=...)).
            assert_eq!(inc["task"]["name"], t["task"], "task name\n{context}");
            assert_eq!(inc["task"]["coroutine"], "run_scenario", "{context}");
        }
        assert!(
            report.contains(&format!("**{}**", t["cause"].as_str().unwrap())),
            "report lacks the cause of {name}"
        );
    }
}

fn causes(minor: &str, uvloop: bool) {
    let Some(python) = require_python(minor) else {
        return;
    };
    if uvloop && !require_module(&python, "uvloop") {
        return;
    }
    let _serial = timing_lock();
    let args: &[&str] = if uvloop { &["--uvloop"] } else { &[] };
    let (json, truth, report) = record_causes(&python, args);
    check_causes(&json, &truth, &report);
}

#[test]
fn names_every_cause_on_cpython_3_8() {
    causes("3.8", false);
}

#[test]
fn names_every_cause_on_cpython_3_9() {
    causes("3.9", false);
}

#[test]
fn names_every_cause_on_cpython_3_10() {
    causes("3.10", false);
}

#[test]
fn names_every_cause_on_cpython_3_11() {
    causes("3.11", false);
}

#[test]
fn names_every_cause_on_cpython_3_12() {
    causes("3.12", false);
}

#[test]
fn names_every_cause_on_cpython_3_13() {
    causes("3.13", false);
}

#[test]
fn names_every_cause_under_uvloop() {
    causes("3.12", true);
}

/// The offset tables in python_offsets/ agree with what each interpreter really lays out
/// (python_offsets/derive.py measures them inside the interpreter with ctypes).
#[test]
fn offset_tables_match_every_interpreter() {
    for minor in 8..=13u64 {
        let version = format!("3.{minor}");
        let Some(python) = require_python(&version) else {
            continue;
        };
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python_offsets/derive.py");
        let out = std::process::Command::new(&python)
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "derive.py on {version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let measured: Value = serde_json::from_slice(&out.stdout).unwrap();
        let table = loopspy::target::offsets::for_minor(minor).unwrap();
        let expect = [
            ("task_coro", table.task.task_coro),
            ("task_name", table.task.task_name),
            ("coro_qualname", table.coro.qualname),
            ("module_dict", table.module.md_dict),
            ("ascii_data", table.unicode.ascii_data),
            ("str_length", table.unicode.length),
            ("str_state", table.unicode.state),
            ("type_name", table.r#type.tp_name),
        ];
        for (key, value) in expect {
            assert_eq!(
                measured[key].as_u64(),
                Some(value as u64),
                "{version} {key}"
            );
        }
    }
}
