//! Streaming and the ecosystem's formats: `incidents.jsonl` survives a `kill -9` of loopspy,
//! and every `--format` output parses as what it claims to be.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

#[test]
fn kill_9_of_loopspy_leaves_a_parseable_incidents_jsonl_and_checkpoint() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let _serial = timing_lock();
    let target = start_python(
        &python,
        &[fixture("periodic.py").to_str().unwrap(), "--seconds", "30"],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cmd = loopspy();
    cmd.args(["record", "--pid", &target.pid().to_string(), "-o"])
        .arg(&out);
    let mut running = Running::start(cmd);
    running.wait_for_stderr("sampling pid", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(6500));
    let killed = std::process::Command::new("kill")
        .args(["-9", &running.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = running.finish(Duration::from_secs(10));

    let text = std::fs::read_to_string(out.join("incidents.jsonl")).unwrap();
    let incidents: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    assert!(
        incidents.len() >= 8,
        "about one incident per 0.5 s expected: {}",
        incidents.len()
    );
    for i in &incidents {
        for field in [
            "start_unix",
            "duration_ms",
            "thread_id",
            "kind",
            "culprit",
            "leaf",
            "stack",
            "cause",
        ] {
            assert!(!i[field].is_null(), "{field} missing in {i}");
        }
    }
    assert!(incidents.iter().any(|i| i["culprit"]["function"]
        .as_str()
        .unwrap()
        .ends_with("stall_in_handler")));
    // The profile checkpoint (rewritten every 5 s) is there too, as folded stacks.
    let folded = std::fs::read_to_string(out.join("checkpoint.collapsed")).unwrap();
    check_folded(&folded);
    assert!(folded.contains("stall_in_handler"));
}

fn check_folded(text: &str) {
    assert!(!text.trim().is_empty());
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(count.parse::<u64>().is_ok(), "{line:?}");
        assert!(stack.split(';').all(|f| !f.is_empty()), "{line:?}");
    }
}

#[test]
fn every_format_parses() {
    let Some(python) = require_python("3.11") else {
        return;
    };
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let out = record_sleep_and_cpu(&python, "svg,speedscope,collapsed,perfetto", dir.path());

    // SVG flame graphs.
    for svg in ["flamegraph.svg", "blocking.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(text.starts_with("<?xml") && text.contains("<svg"), "{svg}");
        assert!(text.contains("nap_in_handler"), "{svg}");
    }
    // Folded stacks.
    check_folded(&std::fs::read_to_string(out.join("flamegraph.collapsed")).unwrap());
    let blocking = std::fs::read_to_string(out.join("blocking.collapsed")).unwrap();
    check_folded(&blocking);
    assert!(blocking.contains("crunch"));

    // speedscope: the file-format schema's required fields, and valid frame indices.
    let ss = read_json(&out.join("profile.speedscope.json"));
    assert_eq!(
        ss["$schema"],
        "https://www.speedscope.app/file-format-schema.json"
    );
    let frames = ss["shared"]["frames"].as_array().unwrap();
    assert!(frames.iter().all(|f| f["name"].is_string()));
    let profiles = ss["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 2, "busy and blocking profiles");
    for p in profiles {
        assert_eq!(p["type"], "sampled");
        assert_eq!(p["unit"], "microseconds");
        let samples = p["samples"].as_array().unwrap();
        let weights = p["weights"].as_array().unwrap();
        assert_eq!(samples.len(), weights.len());
        let total: u64 = weights.iter().map(|w| w.as_u64().unwrap()).sum();
        assert_eq!(p["endValue"].as_u64(), Some(total));
        for stack in samples {
            for idx in stack.as_array().unwrap() {
                assert!((idx.as_u64().unwrap() as usize) < frames.len());
            }
        }
    }
    let names: Vec<&str> = frames.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(names.iter().any(|n| n.ends_with("nap_in_handler")));

    // Perfetto / Chrome trace events.
    let trace = read_json(&out.join("trace.json"));
    let events = trace["traceEvents"].as_array().unwrap();
    for e in events {
        assert!(["M", "X"].contains(&e["ph"].as_str().unwrap()), "{e}");
        assert!(e["pid"].is_number());
        if e["ph"] == "X" {
            assert!(e["ts"].as_f64().unwrap() >= 0.0 && e["dur"].as_f64().unwrap() > 0.0);
        }
    }
    let incidents: Vec<&Value> = events.iter().filter(|e| e["cat"] == "incident").collect();
    assert_eq!(incidents.len(), 2, "{incidents:?}");
    assert!(incidents[0]["name"]
        .as_str()
        .unwrap()
        .contains("nap_in_handler (sleep)"));
    assert!((incidents[0]["dur"].as_f64().unwrap() / 1000.0 - 120.0).abs() < 10.0);
    assert!(events.iter().filter(|e| e["cat"] == "loop").count() >= 2);
    assert!(events.iter().any(|e| e["name"] == "thread_name"));
    // incidents.jsonl streams the same incidents as incidents.json.
    let jsonl = std::fs::read_to_string(out.join("incidents.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 2);
    assert!(
        !out.join("checkpoint.collapsed").exists(),
        "removed after a clean end"
    );
}

/// `--format pprof` read by Google's protobuf runtime with the published profile.proto
/// (tests/fixtures/read_pprof.py): the sample types, the busy profile under `wall`, and each
/// incident of incidents.json as `blocked` samples labelled with its id, cause and site.
#[test]
fn pprof_is_read_by_the_protobuf_runtime_with_the_published_schema() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    if !require_module(&python, "grpc_tools") || !require_module(&python, "google.protobuf") {
        return;
    }
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let out = record_sleep_and_cpu(&python, "pprof", dir.path());
    let read = std::process::Command::new(&python)
        .arg(fixture("read_pprof.py"))
        .arg(out.join("profile.pb.gz"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let profile: Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(
        profile["sample_types"],
        serde_json::json!([
            ["samples", "count"],
            ["wall", "microseconds"],
            ["blocked", "microseconds"]
        ])
    );
    assert_eq!(profile["default_sample_type"], "wall");
    assert_eq!(profile["period"], 2000);
    assert!(profile["comments"][0]
        .as_str()
        .unwrap()
        .contains("blocker.py"));
    assert!(profile["duration_nanos"].as_i64().unwrap() > 1_000_000_000);
    let samples = profile["samples"].as_array().unwrap();
    let json = read_json(&out.join("incidents.json"));
    let incidents = json["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 2);
    // Busy samples: every one with a thread, the loop's busy time under `wall`.
    let busy: Vec<&Value> = samples
        .iter()
        .filter(|s| s["values"][1].as_i64() > Some(0))
        .collect();
    assert!(busy
        .iter()
        .all(|s| s["labels"]["thread_id"].is_number() && s["values"][2] == 0));
    let wall_ms: i64 = busy
        .iter()
        .map(|s| s["values"][1].as_i64().unwrap())
        .sum::<i64>()
        / 1000;
    assert!(wall_ms >= 200, "busy wall {wall_ms} ms");
    assert!(busy
        .iter()
        .any(|s| s["stack"][0]["function"] == "nap_in_handler"));
    // Incident samples: one set per incident of incidents.json, its time under `blocked`.
    for incident in incidents {
        let id = incident["id"].as_str().unwrap();
        let own: Vec<&Value> = samples
            .iter()
            .filter(|s| s["labels"]["incident"] == id)
            .collect();
        assert!(!own.is_empty(), "no samples labelled {id}");
        let blocked_ms: f64 = own
            .iter()
            .map(|s| s["values"][2].as_f64().unwrap())
            .sum::<f64>()
            / 1000.0;
        let duration = incident["duration_ms"].as_f64().unwrap();
        assert!(
            (blocked_ms - duration).abs() <= 10.0,
            "{id}: {blocked_ms} vs {duration} ms"
        );
        for s in &own {
            assert_eq!(s["labels"]["cause"], incident["cause"]["category"]);
            assert_eq!(s["values"][0], 0);
            let site = s["labels"]["site"].as_str().unwrap();
            assert!(
                site.starts_with(incident["culprit"]["function"].as_str().unwrap()),
                "{site}"
            );
        }
        // The heaviest stack's leaf is the incident's.
        let top = own
            .iter()
            .max_by_key(|s| s["values"][2].as_i64().unwrap())
            .unwrap();
        assert_eq!(top["stack"][0]["function"], incident["leaf"]["function"]);
    }
}

/// Launches blocker.py's sleep and cpu scenarios under `loopspy record --format formats` into
/// `dir/out`; the output folder.
fn record_sleep_and_cpu(
    python: &std::path::Path,
    formats: &str,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let out = dir.join("out");
    let truth = dir.join("truth.json");
    let run = run_loopspy(
        &[
            "record",
            "--rate",
            "500",
            "--format",
            formats,
            "-o",
            out.to_str().unwrap(),
            "--",
            python.to_str().unwrap(),
            fixture("blocker.py").to_str().unwrap(),
            "--truth",
            truth.to_str().unwrap(),
            "--delay",
            "1",
            "--scenarios",
            "sleep,cpu",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(run.code(), 0, "{}", run.stderr);
    out
}
