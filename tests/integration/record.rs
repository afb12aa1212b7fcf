//! `loopspy record` against real interpreters that block their loops in known ways: every
//! incident is compared with the ground truth the target logged itself.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Threshold the tests record with; blocks of >= threshold + 10 ms must be found.
const THRESHOLD_MS: f64 = 50.0;
/// Duration error allowed.
const TOLERANCE_MS: f64 = 10.0;
const ALL_SCENARIOS: &str =
    "sleep,cpu,back_to_back,short,callback,healthy,cooperative,saturation,saturation_same";

/// What a recording of the blocker fixture produced.
pub struct Recorded {
    pub _dir: tempfile::TempDir,
    pub out: std::path::PathBuf,
    pub json: Value,
    pub truth: Vec<Value>,
    pub run: Run,
}

/// Starts `blocker.py` with `python`, attaches `loopspy record --pid` (plus `extra` flags), lets
/// the scenarios run once loopspy samples, and collects everything.
pub fn record_blocker(python: &Path, fixture_args: &[&str], extra: &[&str]) -> Recorded {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let truth = dir.path().join("truth.json");
    let out = dir.path().join("out");
    let mut args = vec![
        fixture("blocker.py").to_string_lossy().into_owned(),
        "--truth".into(),
        truth.to_string_lossy().into_owned(),
        "--go-file".into(),
        go.to_string_lossy().into_owned(),
    ];
    args.extend(fixture_args.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let target = start_python(python, &args);

    let mut running = Running::start(record_pid(target.pid(), &out, extra));
    running.wait_for_stderr("sampling pid", Duration::from_secs(20));
    // Let the sampler see the idle loop first, then start the scenarios.
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
    let truth_json = read_json(&truth);
    Recorded {
        json: read_json(&out.join("incidents.json")),
        truth: truth_json.as_array().cloned().unwrap_or_default(),
        out,
        _dir: dir,
        run,
    }
}

fn f64_of(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn overlaps(incident: &Value, start: f64, end: f64) -> bool {
    let s = f64_of(incident, "start_unix");
    let e = s + f64_of(incident, "duration_ms") / 1000.0;
    s < end && e > start
}

/// Seconds of `[start, end]` the incident covers.
fn overlap_s(incident: &Value, start: f64, end: f64) -> f64 {
    let s = f64_of(incident, "start_unix");
    let e = s + f64_of(incident, "duration_ms") / 1000.0;
    (e.min(end) - s.max(start)).max(0.0)
}

fn describe(incidents: &[Value]) -> String {
    incidents
        .iter()
        .map(|i| {
            format!(
                "  {:.3} {:.1}ms {} {} tid={} cause={} evidence={}",
                f64_of(i, "start_unix"),
                f64_of(i, "duration_ms"),
                i["kind"],
                i["culprit"]["function"],
                i["thread_id"],
                i["cause"]["category"],
                i["kind_evidence"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compares incidents with the fixture's ground truth, scenario by scenario.
pub fn check_against_truth(rec: &Recorded, check_saturation: bool) {
    let incidents = rec.json["incidents"].as_array().expect("incidents array");
    let context = format!(
        "incidents:\n{}\ntruth:\n{}\nloopspy stdout:\n{}",
        describe(incidents),
        serde_json::to_string_pretty(&rec.truth).unwrap(),
        rec.run.stdout
    );
    assert!(!rec.truth.is_empty(), "the fixture logged no truth");
    let mut explained = vec![false; incidents.len()];
    for t in &rec.truth {
        let (start, end) = (f64_of(t, "start"), f64_of(t, "end"));
        let truth_ms = (end - start) * 1000.0;
        let tid = t["thread_id"].as_u64().unwrap();
        let name = t["name"].as_str().unwrap();
        let function = t["function"].as_str().unwrap();
        let matching: Vec<usize> = incidents
            .iter()
            .enumerate()
            .filter(|(_, i)| i["thread_id"].as_u64() == Some(tid))
            .filter(|(_, i)| overlaps(i, start - 0.005, end + 0.005))
            .map(|(n, _)| n)
            .collect();
        match t["kind"].as_str().unwrap() {
            "blocking" => {
                // Blocks that follow each other directly (back_to_back) touch their
                // neighbour's incident at the edge: the match is the one covering most of it.
                let matching: Vec<usize> = matching
                    .into_iter()
                    .filter(|&n| overlap_s(&incidents[n], start, end) > (end - start) / 2.0)
                    .collect();
                assert!(truth_ms >= THRESHOLD_MS + 10.0, "fixture block too short");
                assert_eq!(
                    matching.len(),
                    1,
                    "{name}: expected one incident\n{context}"
                );
                let inc = &incidents[matching[0]];
                explained[matching[0]] = true;
                let got = f64_of(inc, "duration_ms");
                assert!(
                    (got - truth_ms).abs() <= TOLERANCE_MS,
                    "{name}: duration {got:.1} ms, truth {truth_ms:.1} ms\n{context}"
                );
                assert_eq!(inc["kind"], "blocking", "{name}\n{context}");
                let culprit = inc["culprit"]["function"].as_str().unwrap();
                assert!(
                    culprit == function || culprit.ends_with(&format!(".{function}")),
                    "{name}: culprit {culprit}, expected {function}\n{context}"
                );
                assert_eq!(
                    inc["cause"]["category"], t["cause"],
                    "{name}: wrong cause\n{context}"
                );
                assert!(
                    inc["culprit"]["source"]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{name}: culprit source line missing\n{context}"
                );
                assert_eq!(inc["stack"][0], inc["leaf"], "{name}: leaf is stack[0]");
                if check_saturation {
                    // The task the fixture saw itself in (`asyncio.current_task()`); none
                    // for a plain call_soon callback.
                    assert_eq!(inc["task"]["name"], t["task"], "{name}: task\n{context}");
                }
            }
            "short" | "healthy" => {
                assert!(
                    matching.is_empty(),
                    "{name}: no incident expected during it\n{context}"
                );
            }
            "saturation" if check_saturation => {
                let sat: Vec<usize> = matching
                    .iter()
                    .copied()
                    .filter(|&n| incidents[n]["kind"] == "saturation")
                    .collect();
                assert_eq!(sat.len(), 1, "{name}: one saturation incident\n{context}");
                let inc = &incidents[sat[0]];
                let got = f64_of(inc, "duration_ms");
                // The iteration, or the iteration plus its neighbours a zero-timeout poll apart,
                // which sampling may miss: the step that created its tasks just before, and
                // the gather's done-callbacks (one per task) just after.
                let with_neighbours_ms = (f64_of(t, "resumed") - f64_of(t, "created")) * 1000.0;
                assert!(
                    got >= truth_ms - TOLERANCE_MS && got <= with_neighbours_ms + TOLERANCE_MS,
                    "{name}: duration {got:.1} ms vs iteration {truth_ms:.1} ms ({with_neighbours_ms:.1} ms with the setup step and the gather's callbacks)\n{context}"
                );
                assert!(
                    inc["callback"]["function"]
                        .as_str()
                        .is_some_and(|f| f.starts_with("tiny_")),
                    "{name}: callback\n{context}"
                );
                for n in matching {
                    explained[n] = true;
                }
            }
            _ => {
                for n in matching {
                    explained[n] = true;
                }
            }
        }
    }
    for (n, ok) in explained.iter().enumerate() {
        assert!(
            ok,
            "incident {n} matches no block the target made\n{context}"
        );
    }
}

fn check_files(rec: &Recorded) {
    // The own reader, checked against py-spy when it attached, read this interpreter.
    assert_eq!(
        rec.json["recording"]["reader"], "own",
        "fell back to py-spy's reader"
    );
    for name in [
        "flamegraph.svg",
        "blocking.svg",
        "report.md",
        "report.html",
        "incidents.json",
    ] {
        assert!(rec.out.join(name).exists(), "{name} missing");
    }
    let blocking = std::fs::read_to_string(rec.out.join("blocking.svg")).unwrap();
    assert!(
        blocking.contains("nap_in_handler"),
        "blocking.svg lacks the culprit"
    );
    let report = std::fs::read_to_string(rec.out.join("report.md")).unwrap();
    assert!(report.contains("nap_in_handler") && report.contains("time.sleep(seconds)"));
    let r = &rec.json["recording"];
    assert_eq!(rec.json["schema"], 1);
    assert!(r["samples"].as_u64().unwrap() > 500);
    assert!(r["loop_utilization"].as_f64().unwrap() > 0.0);
    assert_eq!(r["threshold_ms"].as_f64(), Some(THRESHOLD_MS));
    assert_eq!(r["stop_reason"], "target_exited");
    assert!(
        rec.run.stdout.contains("Top blocking sites"),
        "{}",
        rec.run.stdout
    );
}

fn selector_loop(minor: &str) {
    let Some(python) = require_python(minor) else {
        return;
    };
    let _serial = timing_lock();
    let rec = record_blocker(&python, &["--scenarios", ALL_SCENARIOS], &[]);
    let version = rec.json["target"]["python_version"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(version.starts_with(&format!("{minor}.")), "{version}");
    // asyncio.run's start and close show only the runner, as uvloop does: still a selector.
    assert_eq!(
        rec.json["loops"][0]["loop"], "selector",
        "{:#}",
        rec.json["loops"]
    );
    check_against_truth(&rec, true);
    check_files(&rec);
}

#[test]
fn finds_blocks_on_cpython_3_8() {
    selector_loop("3.8");
}

#[test]
fn finds_blocks_on_cpython_3_9() {
    selector_loop("3.9");
}

#[test]
fn finds_blocks_on_cpython_3_10() {
    selector_loop("3.10");
}

#[test]
fn finds_blocks_on_cpython_3_11() {
    selector_loop("3.11");
}

#[test]
fn finds_blocks_on_cpython_3_12() {
    selector_loop("3.12");
}

#[test]
fn finds_blocks_on_cpython_3_13() {
    selector_loop("3.13");
}

fn uvloop(minor: &str) {
    let Some(python) = require_python(minor) else {
        return;
    };
    if !require_module(&python, "uvloop") {
        return;
    }
    let _serial = timing_lock();
    // The cooperative scenario (a task yielding every millisecond) is told apart from one
    // long callback by the thread's callback clock, which uvloop's handles move as asyncio's
    // do; on 3.14+ it is the only mark there is (no running-task dict, handles run in C).
    let scenarios = "sleep,cpu,back_to_back,short,callback,healthy,cooperative";
    let rec = record_blocker(&python, &["--uvloop", "--scenarios", scenarios], &[]);
    check_against_truth(&rec, false);
    let loops = rec.json["loops"].as_array().unwrap();
    assert_eq!(loops.len(), 1);
    assert_eq!(loops[0]["loop"], "uvloop");
}

#[test]
fn finds_blocks_in_uvloop_on_cpython_3_12() {
    uvloop("3.12");
}

#[test]
fn finds_blocks_in_uvloop_on_cpython_3_8() {
    uvloop("3.8");
}

#[test]
fn finds_blocks_with_uvloop_install_and_asyncio_run_on_cpython_3_10() {
    let Some(python) = require_python("3.10") else {
        return;
    };
    if !require_module(&python, "uvloop") {
        return;
    }
    let _serial = timing_lock();
    let rec = record_blocker(
        &python,
        &[
            "--uvloop-install",
            "--scenarios",
            "sleep,cpu,short,callback",
        ],
        &[],
    );
    check_against_truth(&rec, false);
    assert_eq!(rec.json["loops"][0]["loop"], "uvloop");
}

#[test]
fn blocking_mode_pauses_the_target_and_still_finds_blocks() {
    let Some(python) = require_python("3.11") else {
        return;
    };
    let _serial = timing_lock();
    let rec = record_blocker(
        &python,
        &["--scenarios", "sleep,short,cpu"],
        &["--blocking"],
    );
    check_against_truth(&rec, false);
    assert_eq!(rec.json["recording"]["blocking_reads"], true);
    assert!(rec.run.stderr.contains("pausing the target for each read"));
}

#[test]
fn attributes_incidents_to_each_of_two_loop_threads() {
    let Some(python) = require_python("3.11") else {
        return;
    };
    let _serial = timing_lock();
    let rec = record_blocker(&python, &["--threads", "--scenarios", "sleep,short"], &[]);
    check_against_truth(&rec, false);
    let loops = rec.json["loops"].as_array().unwrap();
    assert_eq!(loops.len(), 2, "two loop threads expected: {loops:?}");
    let side = rec.truth.iter().find(|t| t["name"] == "side").unwrap();
    let main = rec.truth.iter().find(|t| t["name"] == "sleep").unwrap();
    assert_ne!(side["thread_id"], main["thread_id"]);
}

#[test]
fn thread_flag_limits_analysis_to_that_thread() {
    let Some(python) = require_python("3.11") else {
        return;
    };
    let _serial = timing_lock();
    // Only the main thread's loop: the side loop's block must not be reported.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let truth = dir.path().join("truth.json");
    let out = dir.path().join("out");
    let target = start_python(
        &python,
        &[
            fixture("blocker.py").to_str().unwrap(),
            "--truth",
            truth.to_str().unwrap(),
            "--go-file",
            go.to_str().unwrap(),
            "--threads",
            "--scenarios",
            "sleep",
        ],
    );
    let pid = target.pid().to_string();
    let mut running = Running::start(record_pid(target.pid(), &out, &["--thread", &pid]));
    running.wait_for_stderr("sampling pid", Duration::from_secs(20));
    std::fs::write(&go, b"go").unwrap();
    let run = running.finish(Duration::from_secs(60));
    assert_eq!(run.code(), 0, "{}", run.stderr);
    let json = read_json(&out.join("incidents.json"));
    let incidents = json["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(
        incidents[0]["thread_id"].as_u64(),
        Some(target.pid() as u64)
    );
    assert!(incidents[0]["culprit"]["function"]
        .as_str()
        .unwrap()
        .ends_with("nap_in_handler"));
}

fn launch(python_cmd: &[&str]) {
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth.json");
    let out = dir.path().join("out");
    let mut args = vec!["record", "--rate", "500", "-o", out.to_str().unwrap(), "--"];
    args.extend_from_slice(python_cmd);
    let blocker = fixture("blocker.py");
    args.extend_from_slice(&[
        blocker.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--delay",
        "1.5",
        "--scenarios",
        "sleep,short,cpu",
    ]);
    let run = run_loopspy(&args, Duration::from_secs(60));
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let json = read_json(&out.join("incidents.json"));
    let incidents = json["incidents"].as_array().unwrap();
    let functions: Vec<&str> = incidents
        .iter()
        .map(|i| i["culprit"]["function"].as_str().unwrap())
        .collect();
    assert_eq!(incidents.len(), 2, "{functions:?}\n{}", run.stderr);
    assert!(functions[0].ends_with("nap_in_handler"), "{functions:?}");
    assert!(functions[1].ends_with("crunch"), "{functions:?}");
    assert!(json["target"]["command"]
        .as_str()
        .unwrap()
        .contains("blocker.py"));
}

#[test]
fn launch_mode_records_the_started_interpreter() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    launch(&[python.to_str().unwrap()]);
}

#[test]
fn launch_mode_finds_the_interpreter_behind_the_pyenv_shim() {
    let home = std::env::var("HOME").unwrap_or_default();
    let shim = std::env::var("PYENV_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(&home).join(".pyenv"))
        .join("shims/python3");
    if !shim.exists() {
        missing("the pyenv python3 shim");
        return;
    }
    launch(&[shim.to_str().unwrap()]);
}

#[test]
fn finds_blocks_on_cpython_3_14() {
    selector_loop("3.14");
}

#[test]
fn finds_blocks_on_cpython_3_15() {
    selector_loop("3.15");
}

#[test]
fn finds_blocks_in_uvloop_on_cpython_3_14() {
    uvloop("3.14");
}

/// Regression: in launch mode the stack reader meets the interpreter while it imports, when
/// code objects are freed and their addresses reused; once in five demo runs the first second's
/// stacks began `TransportSocket (asyncio/trsock.py:70)` instead of `run (asyncio/runners.py)`
/// (a stale code-cache entry), splitting the flame graph's root. Every busy sample of every
/// launch must start at the program's own outermost frames.
fn launched_stacks_start_at_the_program(minor: &str, launches: usize) {
    let Some(python) = require_python(minor) else {
        return;
    };
    let _serial = timing_lock();
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo_app.py");
    for launch in 0..launches {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let args = [
            "record",
            "--rate",
            "1000",
            "-f",
            "collapsed",
            "-o",
            out.to_str().unwrap(),
            "--",
            python.to_str().unwrap(),
            demo.to_str().unwrap(),
            "--seconds",
            "1.5",
        ];
        let run = run_loopspy(&args, Duration::from_secs(60));
        assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
        let mut stacks = 0;
        for file in ["flamegraph.collapsed", "blocking.collapsed"] {
            let text = std::fs::read_to_string(out.join(file)).unwrap();
            for line in text.lines() {
                let frames: Vec<&str> = line.rsplit_once(' ').unwrap().0.split(';').collect();
                let outermost = (frames[0], frames.get(1).copied().unwrap_or(""));
                assert!(
                    outermost.0.starts_with("<module> (demo_app.py:")
                        && outermost.1.starts_with("run (asyncio/runners.py:"),
                    "3.{minor}, launch {launch}, {file}: a stack starts {outermost:?}\n{line}"
                );
                stacks += 1;
            }
        }
        assert!(stacks > 10, "3.{minor}: {stacks} distinct stacks");
    }
}

#[test]
fn launched_stacks_start_at_the_program_on_cpython_3_11() {
    launched_stacks_start_at_the_program("3.11", 5);
}

#[test]
fn launched_stacks_start_at_the_program_on_cpython_3_12() {
    launched_stacks_start_at_the_program("3.12", 5);
}
