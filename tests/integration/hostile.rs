//! Targets built to be awkward (`tests/fixtures/hostile.py`): code objects that name
//! `/dev/zero`, a FIFO or a 10 GiB file; a block at the bottom of a 20 000-frame recursion;
//! hundreds of threads started a second; a 1 MB function name and one full of newlines, HTML
//! and terminal escapes. Each run must end on time, stay small, write every output, find the
//! blocks with the right culprit and invent none.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// How long each recording runs.
const DURATION_S: f64 = 6.0;
/// loopspy's peak resident memory must stay under this on every hostile target.
const RSS_LIMIT_MIB: f64 = 128.0;

/// A finished recording of a hostile target (also what the report.html tests load).
pub(crate) struct Hostile {
    _dir: tempfile::TempDir,
    /// loopspy's output directory.
    pub(crate) out: std::path::PathBuf,
    /// Its incidents.json.
    pub(crate) json: Value,
    truth: Vec<Value>,
    run: Run,
}

/// loopspy's peak RSS (VmHWM) as the kernel reports it, KiB.
fn vm_hwm_kib(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Records `hostile.py --mode MODE` on CPython `minor`, checks the run ended on time, stayed
/// small and wrote every output.
pub(crate) fn record_hostile(minor: &str, mode: &str) -> Option<Hostile> {
    let python = require_python(minor)?;
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let (go, truth, out) = (
        dir.path().join("go"),
        dir.path().join("truth.json"),
        dir.path().join("out"),
    );
    let fixture = fixture("hostile.py");
    let target = start_until_ready(
        &python,
        &[
            fixture.to_str().unwrap(),
            "--truth",
            truth.to_str().unwrap(),
            "--mode",
            mode,
            "--go-file",
            go.to_str().unwrap(),
            "--dir",
            dir.path().to_str().unwrap(),
        ],
    );
    let started = Instant::now();
    let mut cmd = loopspy();
    cmd.args(["record", "--pid", &target.pid().to_string()])
        .args(["--duration", &format!("{DURATION_S}s"), "--rate", "1000"])
        .arg("-o")
        .arg(&out);
    let mut running = Running::start(cmd);
    let loopspy_pid = running.pid();
    running.wait_for_stderr("sampling pid", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&go, b"go").unwrap();
    // Watch loopspy's memory from outside while it runs.
    let mut hwm_kib = 0.0f64;
    while Instant::now().duration_since(started) < Duration::from_secs_f64(DURATION_S + 30.0) {
        match vm_hwm_kib(loopspy_pid) {
            Some(kib) => hwm_kib = hwm_kib.max(kib),
            None => break,
        }
        let zombie = std::fs::read_to_string(format!("/proc/{loopspy_pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        if zombie {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = running.finish(Duration::from_secs(30));
    let took = started.elapsed().as_secs_f64();
    assert_eq!(run.code(), 0, "{mode}: {}\n{}", run.stdout, run.stderr);
    assert!(
        !run.stderr.contains("recording stopped"),
        "{mode}: the target exited before the recording's duration ran out\n{}",
        run.stderr
    );
    assert!(
        took <= DURATION_S + 2.0 + 1.0,
        "{mode}: loopspy took {took:.1}s for a {DURATION_S}s recording (attach included)\n{}",
        run.stderr
    );
    // Past its duration, the target finishes its blocks and writes the truth.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !truth.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(target);
    let json = read_json(&out.join("incidents.json"));
    let reported = json["recording"]["loopspy_peak_rss_mib"]
        .as_f64()
        .expect("loopspy_peak_rss_mib");
    let watched = hwm_kib / 1024.0;
    assert!(
        reported < RSS_LIMIT_MIB && watched < RSS_LIMIT_MIB,
        "{mode}: loopspy peaked at {reported:.1} MiB (own count) / {watched:.1} MiB (VmHWM seen)"
    );
    for file in [
        "flamegraph.svg",
        "blocking.svg",
        "incidents.json",
        "report.md",
        "report.html",
        "incidents.jsonl",
    ] {
        let len = std::fs::metadata(out.join(file))
            .unwrap_or_else(|e| panic!("{mode}: {file} not written: {e}"))
            .len();
        assert!(len > 0, "{mode}: {file} is empty");
    }
    let truth = read_json(&truth).as_array().cloned().unwrap_or_default();
    assert!(
        truth.len() >= 10,
        "{mode}: the target ran {} blocks",
        truth.len()
    );
    Some(Hostile {
        _dir: dir,
        out,
        json,
        truth,
        run,
    })
}

fn f64_of(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn span(incident: &Value) -> (f64, f64) {
    let start = f64_of(incident, "start_unix");
    (start, start + f64_of(incident, "duration_ms") / 1000.0)
}

/// Whether `reported` names the function the truth says (qualified names end with it; a name
/// cut by the reader is its start).
fn same_function(reported: &str, truth: &str) -> bool {
    let cut = reported.strip_suffix('…');
    reported == truth
        || reported.ends_with(&format!(".{truth}"))
        || cut.is_some_and(|start| truth.starts_with(start) && start.len() >= 1024)
}

/// Whether an incident of `reported` ms measures a block the target timed at `truth` ms. The
/// target's own clock sees only part of the block (from the first line it timed to the last),
/// so the truth is a lower bound: the incident may not fall short of it by more than 15 ms (two
/// samples and a boundary estimate), and may run past it by the moments the target cannot time
/// — entering the step, returning to the loop, being descheduled under load (seen up to 18 ms
/// with a 20 000-frame recursion in CI) — but not by 50 ms: a gap stretched into the incident
/// (the 300 ms of the issue) still fails.
fn covers(reported: f64, truth: f64) -> bool {
    reported >= truth - 15.0 && reported <= truth + 50.0
}

/// At least 90% of the blocks found right (9 of the fixture's 10: at 8 blocks "90%" meant
/// all): by an incident overlapping it with the right culprit function, file and thread and a
/// duration that [`covers`] it; and no incident that overlaps no block.
fn check_blocks(h: &Hostile, mode: &str) {
    let incidents = h.json["incidents"].as_array().expect("incidents");
    let listing: Vec<String> = incidents
        .iter()
        .map(|i| {
            let f: String = i["culprit"]["function"]
                .as_str()
                .unwrap_or("?")
                .chars()
                .take(60)
                .collect();
            format!(
                "{:.3} {:.1}ms {f:?}",
                f64_of(i, "start_unix"),
                f64_of(i, "duration_ms")
            )
        })
        .collect();
    // The recording's own counts (reads skipped, ticks missed, sampling gaps) tell a miss
    // from the sampler's side apart from one of the analyzer's.
    let context = format!(
        "{mode}: incidents\n{}\nrecording {}\nstdout\n{}\nstderr\n{}",
        listing.join("\n"),
        h.json["recording"],
        h.run.stdout,
        h.run.stderr
    );
    let (mut found, mut misses) = (0, Vec::new());
    for block in &h.truth {
        let (start, end) = (f64_of(block, "start"), f64_of(block, "end"));
        let function = block["function"].as_str().unwrap();
        let file = block["file"].as_str().unwrap();
        let hit = incidents.iter().find(|i| {
            let (s, e) = span(i);
            s < end && e > start
        });
        let Some(hit) = hit else {
            misses.push(format!("{function:.40?} at {start:.3}: no incident"));
            continue;
        };
        let culprit = &hit["culprit"];
        let right = same_function(culprit["function"].as_str().unwrap_or(""), function)
            && culprit["file"].as_str() == Some(file)
            && covers(f64_of(hit, "duration_ms"), (end - start) * 1000.0)
            && hit["thread_id"] == block["thread_id"];
        if right {
            found += 1;
        } else {
            misses.push(format!(
                "{function:.40?} at {start:.3} ({:.0} ms) matched {hit}",
                (end - start) * 1000.0
            ));
        }
    }
    assert!(
        found * 10 >= h.truth.len() * 9,
        "{mode}: {found} of {} blocks found right; missed:\n{}\n{context}",
        h.truth.len(),
        misses.join("\n")
    );
    for incident in incidents {
        let (s, e) = span(incident);
        let real = h
            .truth
            .iter()
            .any(|b| s < f64_of(b, "end") && e > f64_of(b, "start"));
        assert!(
            real,
            "{mode}: an incident overlaps no block: {incident}\n{context}"
        );
    }
}

fn read(out: &Path, file: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(out.join(file)).unwrap()).into_owned()
}

#[test]
fn hostile_file_names_dev_zero_fifo_and_huge_files_cost_nothing() {
    let Some(h) = record_hostile("3.12", "files") else {
        return;
    };
    check_blocks(&h, "files");
    // Lines of files that are no regular files, or past what is read, are unknown.
    for incident in h.json["incidents"].as_array().unwrap() {
        assert!(incident["culprit"]["source"].is_null(), "{incident}");
    }
}

#[test]
fn hostile_deep_recursion_keeps_the_innermost_frames() {
    let Some(h) = record_hostile("3.12", "deep") else {
        return;
    };
    check_blocks(&h, "deep");
    let incidents = h.json["incidents"].as_array().unwrap();
    assert!(incidents
        .iter()
        .all(|i| i["stack_truncated"] == true && i["stack"].as_array().unwrap().len() <= 1024));
    assert!(read(&h.out, "report.md").contains("Stack deeper than 1024 frames"));
}

#[test]
fn hostile_thread_churn_neither_slows_sampling_nor_invents_incidents() {
    let Some(h) = record_hostile("3.12", "churn") else {
        return;
    };
    check_blocks(&h, "churn");
    let rec = &h.json["recording"];
    let achieved = f64_of(rec, "achieved_rate_hz");
    assert!(achieved >= 900.0, "{achieved} Hz of 1000\n{rec}");
    assert!(
        f64_of(&rec["sampling_gaps"], "longest_ms") < 100.0,
        "a gap of 100 ms or more while threads churn\n{rec}"
    );
    let incidents = h.json["incidents"].as_array().unwrap();
    assert!(
        incidents.iter().all(|i| i["cause"]["category"] == "sleep"),
        "{incidents:?}"
    );
}

fn hostile_names(minor: &str) {
    let Some(h) = record_hostile(minor, "names") else {
        return;
    };
    check_blocks(&h, "names");
    // JSON keeps names exact but bounded: the 1 MB name is cut to its first 4096 characters.
    let incidents = h.json["incidents"].as_array().unwrap();
    let long = incidents
        .iter()
        .map(|i| i["culprit"]["function"].as_str().unwrap())
        .find(|f| f.starts_with("xxxx"))
        .expect("the long-named block");
    assert_eq!(long.chars().count(), 4097);
    assert!(incidents.iter().any(|i| i["culprit"]["function"]
        .as_str()
        .unwrap()
        .starts_with("evil\n<script>")));
    // Human outputs show them escaped and short: no raw newline inside a name, no terminal
    // escape, no live HTML, no megabyte lines.
    let report = read(&h.out, "report.md");
    let summary = &h.run.stdout;
    for (what, text) in [("report.md", &report), ("summary", summary)] {
        assert!(!text.contains('\x1b'), "{what} holds a raw escape");
        assert!(
            !text.contains("evil\n"),
            "{what} holds a raw newline in a name"
        );
        assert!(
            text.contains("evil\\n"),
            "{what} does not show the name escaped"
        );
        assert!(
            text.lines().all(|l| l.len() < 2000),
            "{what} holds a huge line"
        );
    }
    // Markdown renders HTML outside code: `<script>` may appear only inside a code span (an
    // odd number of backticks before it on its line) or a fenced block.
    let mut fenced = false;
    for line in report.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("<script>") {
            let before = line[..line.len() - rest.len() + at].matches('`').count();
            assert!(
                fenced || before % 2 == 1,
                "report.md shows <script> as live HTML: {line}"
            );
            rest = &rest[at + 1..];
        }
    }
    for svg in ["flamegraph.svg", "blocking.svg"] {
        let text = read(&h.out, svg);
        assert!(!text.contains("<script>alert"), "{svg} holds live HTML");
        assert!(!text.contains('\x1b'), "{svg} holds a raw escape");
    }
}

#[test]
fn hostile_names_are_shown_safely_on_cpython_3_12() {
    hostile_names("3.12");
}

#[test]
fn hostile_names_are_shown_safely_on_cpython_3_9() {
    hostile_names("3.9");
}
