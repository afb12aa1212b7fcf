//! Cause attribution on real processes: each category produced for real (`time.sleep`, a CPU
//! loop, urllib against a slow local server, a slow sqlite3 query, `subprocess.run`, a large
//! write + fsync, a 64 MB write into the page cache without fsync (on CPU in the kernel), a
//! `threading.Lock` held elsewhere, a GIL-holding thread, a logging handler that blocks), on
//! CPython 3.8–3.13 and uvloop.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Records the causes fixture: incidents.json, the fixture's truth, report.md and the summary.
fn record_causes(python: &Path, fixture_args: &[&str]) -> (Value, Vec<Value>, String, String) {
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
    (json, truth, report, run.stdout)
}

pub fn check_causes(json: &Value, truth: &[Value], report: &str) {
    let incidents = json["incidents"].as_array().unwrap();
    let listing = incidents
        .iter()
        .map(|i| format!("  {} {}", i["culprit"], i["cause"]))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(truth.len(), 10, "the fixture ran every scenario");
    for t in truth {
        let name = t["name"].as_str().unwrap();
        let (start, end) = (t["start"].as_f64().unwrap(), t["end"].as_f64().unwrap());
        let found: Vec<&Value> = incidents
            .iter()
            .filter(|i| {
                let s = i["start_unix"].as_f64().unwrap();
                let e = i["end_unix"].as_f64().unwrap();
                // In a container the target knows its threads by its own namespace's ids.
                let tid = if i["ns_thread_id"].is_null() {
                    &i["thread_id"]
                } else {
                    &i["ns_thread_id"]
                };
                s < end + 0.005 && e > start - 0.005 && *tid == t["thread_id"]
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
        if t["cause"] == "file" {
            // Both writes (fsync'd, and into the page cache) are told by the kernel's counts
            // over the incident: the bytes written (the fixture writes 48 and 256 MB).
            let written = inc["cause"]["kernel"]["written_bytes"]
                .as_u64()
                .unwrap_or(0);
            assert!(written >= 40_000_000, "kernel counts\n{context}");
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
    let (json, truth, report, _) = record_causes(&python, args);
    check_causes(&json, &truth, &report);
}

/// A function that blocked at two of its lines is one site, with both lines inside — in the
/// summary, report.md and incidents.json's `sites` (a `with open` and the `f.write` of one
/// handler were two sites once).
#[test]
fn one_site_per_function_with_its_lines() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let _serial = timing_lock();
    let (json, truth, report, summary) = record_causes(&python, &["--scenarios", "checkpoint"]);
    assert_eq!(truth.len(), 2, "the fixture blocked twice");
    let fixture_text = std::fs::read_to_string(fixture("causes.py")).unwrap();
    let line_of = |needle: &str| {
        1 + fixture_text
            .lines()
            .position(|l| l.contains(needle))
            .unwrap() as u64
    };
    let lines = [
        line_of("time.sleep(0.12)  #"),
        line_of("time.sleep(0.16)  #"),
    ];
    let incidents = json["incidents"].as_array().unwrap();
    let culprit_lines: Vec<u64> = incidents
        .iter()
        .filter(|i| i["culprit"]["function"] == "checkpoint")
        .map(|i| i["culprit"]["line"].as_u64().unwrap())
        .collect();
    assert_eq!(
        culprit_lines, lines,
        "two incidents, one per line\n{json:#}"
    );
    let sites: Vec<&Value> = json["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["function"] == "checkpoint")
        .collect();
    assert_eq!(sites.len(), 1, "one site for the function\n{json:#}");
    let site = sites[0];
    assert_eq!(site["count"], 2);
    let site_lines: Vec<(u64, u64)> = site["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["line"].as_u64().unwrap(), l["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(site_lines, vec![(lines[0], 1), (lines[1], 1)], "{site:#}");
    let label = format!("checkpoint (causes.py:{},{})", lines[0], lines[1]);
    assert!(summary.contains(&label), "summary lacks {label}\n{summary}");
    let row = report
        .lines()
        .find(|l| l.starts_with("| 1 |"))
        .expect("a site row");
    assert!(
        row.contains("`checkpoint`") && row.contains(&format!(":{},{} |", lines[0], lines[1])),
        "{row}"
    );
    assert!(
        row.contains("time.sleep(0.12)") && row.contains("time.sleep(0.16)"),
        "{row}"
    );
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
fn names_every_cause_on_cpython_3_14() {
    causes("3.14", false);
}

#[test]
fn names_every_cause_on_cpython_3_15() {
    causes("3.15", false);
}

#[test]
fn names_every_cause_under_uvloop() {
    causes("3.12", true);
}

/// The offset tables in python_offsets/ agree with what each interpreter really lays out
/// (python_offsets/derive.py measures them inside the interpreter with ctypes; null where a
/// version has no such field).
#[test]
fn offset_tables_match_every_interpreter() {
    use loopspy::remote::offsets::{FrameLayout, GilLayout, LineTableFormat};
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
        assert_eq!(measured["version"].as_str(), Some(version.as_str()));
        let table = loopspy::remote::offsets::for_minor(minor).unwrap();
        let (thread, frame, code, gil) = (&table.thread, &table.frame, &table.code, &table.gil);
        let expect: Vec<(&str, Option<usize>)> = vec![
            ("task_coro", Some(table.task.task_coro)),
            ("task_name", Some(table.task.task_name)),
            ("coro_qualname", Some(table.coro.qualname)),
            ("module_dict", Some(table.module.md_dict)),
            ("ascii_data", Some(table.unicode.ascii_data)),
            ("str_length", Some(table.unicode.length)),
            ("str_state", Some(table.unicode.state)),
            ("type_name", Some(table.r#type.tp_name)),
            ("interp_threads_head", Some(table.interpreter.threads_head)),
            ("thread_next", Some(thread.next)),
            ("thread_frame", thread.frame),
            ("thread_cframe", thread.cframe),
            ("cframe_current_frame", thread.cframe_current_frame),
            ("thread_thread_id", Some(thread.thread_id)),
            ("thread_native_thread_id", thread.native_thread_id),
            ("thread_context_ver", thread.context_ver),
            ("frame_back", Some(frame.back)),
            ("frame_code", Some(frame.code)),
            ("frame_globals", frame.globals),
            ("frame_lasti", frame.lasti),
            ("frame_instr", frame.instr),
            ("frame_owner", frame.owner),
            ("frame_cstack_owner", frame.cstack_owner.map(usize::from)),
            // Bytes per unit of the C f_lasti: the reader doubles it for 3.10 only.
            (
                "frame_lasti_unit",
                frame.lasti.map(|_| match code.line_table {
                    LineTableFormat::Linetable310 => 2,
                    _ => 1,
                }),
            ),
            ("code_filename", Some(code.filename)),
            ("code_name", Some(code.name)),
            ("code_qualname", code.qualname),
            ("code_firstlineno", Some(code.firstlineno)),
            ("code_linetable", Some(code.linetable)),
            ("code_code", code.code),
            ("code_code_adaptive", code.code_adaptive),
            ("bytes_ob_size", Some(table.bytes.ob_size)),
            ("bytes_ob_sval", Some(table.bytes.ob_sval)),
            ("gil_last_holder", gil.last_holder),
            ("gil_locked", gil.locked),
        ];
        for (key, value) in expect {
            assert!(
                measured.get(key).is_some(),
                "{version}: derive.py does not report {key}"
            );
            assert_eq!(
                measured[key].as_u64(),
                value.map(|v| v as u64),
                "{version} {key}"
            );
        }
        let layout = match frame.layout {
            FrameLayout::Object => "object",
            FrameLayout::Interpreter => "interpreter",
        };
        assert_eq!(
            measured["frame_layout"].as_str(),
            Some(layout),
            "{version} frame layout"
        );
        // instr_is_previous only means something where frames carry an instruction pointer.
        assert_eq!(
            measured["frame_instr_is_previous"].as_bool(),
            frame.instr.map(|_| frame.instr_is_previous),
            "{version} frame instr_is_previous"
        );
        let gil_layout = match gil.layout {
            GilLayout::TstateCurrent => "tstate_current",
            GilLayout::RuntimeState => "runtime_state",
        };
        assert_eq!(
            measured["gil_layout"].as_str(),
            Some(gil_layout),
            "{version} gil layout"
        );
        let linetable = match code.line_table {
            LineTableFormat::Lnotab => "co_lnotab",
            LineTableFormat::Linetable310 | LineTableFormat::Locations311 => "co_linetable",
        };
        assert_eq!(
            measured["code_linetable_attr"].as_str(),
            Some(linetable),
            "{version} line table attribute"
        );
    }
}
