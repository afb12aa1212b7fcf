//! report.html rendered from made-up analyses: escaping, the size bounds, the empty recording.

use std::time::{Duration, Instant};

use super::*;
use crate::analyzer::{Analyzer, AnalyzerSettings};
use crate::sample::{Frame, OsState, Sample, SamplerMessage, ThreadSample};
use crate::sampler::{SamplerStats, StopReason};

fn info() -> RecordingInfo {
    RecordingInfo {
        ns_pid: None,
        pid: 4242,
        python_version: "3.12.1".into(),
        command: "python3 app.py <b>bold</b>".into(),
        rate_hz: 1000,
        threshold_ms: 50.0,
        blocking: false,
        stop_reason: StopReason::DurationElapsed,
        sampler: SamplerStats {
            elapsed: Duration::from_secs(2),
            ..SamplerStats::default()
        },
        start_unix: 1_700_000_000.0,
        formats: vec![],
    }
}

fn frame(function: &str, file: &str) -> Frame {
    Frame {
        function: function.into(),
        file: file.into(),
        line: 7,
    }
}

/// One loop-thread sample: idle in the selector, or busy in `busy_in`.
fn sample(at: Instant, busy_in: Option<&str>) -> SamplerMessage {
    let base = "/py/lib/python3.12/asyncio/base_events.py";
    let mut frames = vec![
        frame("BaseEventLoop._run_once", base),
        frame("<module>", "/app/app.py"),
    ];
    match busy_in {
        Some(function) => {
            frames.insert(
                0,
                frame("Handle._run", "/py/lib/python3.12/asyncio/events.py"),
            );
            frames.insert(0, frame(function, "/app/<i>app</i>.py"));
        }
        None => frames.insert(
            0,
            frame("EpollSelector.select", "/py/lib/python3.12/selectors.py"),
        ),
    }
    SamplerMessage::Sample(Sample {
        pid: 4242,
        at,
        unix: 1_700_000_000.0,
        running_tasks: vec![],
        task_generation: None,
        threads: vec![ThreadSample {
            os_tid: 1,
            python_tid: 1,
            name: Some("MainThread".into()),
            frames,
            os_state: OsState::Running,
            owns_gil: true,
            every: 1,
            truncated: false,
            context_ver: None,
            handle_index: None,
            clock_after: None,
            ns_tid: None,
            counters: None,
        }],
    })
}

/// An analysis of `blocks` incidents of 60 ms each in a function named `name`.
fn analysis(blocks: usize, name: &str) -> Analysis {
    let mut analyzer = Analyzer::new(AnalyzerSettings {
        threshold: Duration::from_millis(50),
        interval: Duration::from_millis(1),
        only_thread: None,
        pid: std::process::id() as i32,
        max_incidents: blocks.max(1),
        stream: false,
        timeline: false,
    });
    let mut t = Instant::now();
    let ms = Duration::from_millis(1);
    for _ in 0..blocks {
        for busy in [None; 5].into_iter().chain([Some(name); 60]) {
            analyzer.feed(sample(t, busy));
            t += ms;
        }
    }
    analyzer.feed(sample(t, None));
    analyzer.finish()
}

/// The page's data document, parsed back.
fn data_of(page: &str) -> Value {
    let start = page.find("id=\"loopspy-data\">").expect("data element") + 18;
    let end = start + page[start..].find("</script>").expect("data ends");
    serde_json::from_str(&page[start..end]).expect("data parses")
}

fn page(analysis: &Analysis) -> String {
    let info = info();
    render(
        &[Process {
            analysis,
            info: &info,
            link: None,
        }],
        false,
    )
}

#[test]
fn escape_makes_markup_text() {
    assert_eq!(
        escape("<script>alert('x')</script> & \"q\"", 200),
        "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
    );
    // Control characters are shown, not obeyed; long text is cut.
    assert_eq!(escape("a\nb\x1b", 200), "a\\nb\\x1b");
    assert_eq!(escape(&"x".repeat(500), 10), format!("{}…", "x".repeat(10)));
}

#[test]
fn script_json_cannot_end_its_element_and_means_the_same() {
    let value = json!({ "f": "</script><!-- \u{2028}\u{2029} & <b>" });
    let text = script_json(&value);
    for bad in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
        assert!(!text.contains(bad), "{bad:?} in {text}");
    }
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
}

#[test]
fn target_names_with_markup_stay_data() {
    let evil = "</script><script>alert(1)</script>";
    let a = analysis(2, evil);
    let page = page(&a);
    // Nowhere on the page as markup: only our own two script elements exist.
    assert!(!page.contains(evil));
    assert!(!page.contains("<i>app</i>"));
    assert!(!page.contains("<b>bold</b>"));
    assert_eq!(page.matches("<script").count(), 2);
    assert!(page.contains("python3 app.py &lt;b&gt;bold&lt;/b&gt;"));
    let data = data_of(&page);
    let p = &data["processes"][0];
    let culprit = p["incidents"][0]["culprit"].as_u64().unwrap() as usize;
    assert_eq!(p["frames"][culprit][0], evil);
    assert_eq!(p["frames"][culprit][1], "/app/<i>app</i>.py");
}

#[test]
fn incidents_are_capped_with_a_count() {
    let blocks = MAX_PAGE_INCIDENTS + 300;
    let a = analysis(blocks, "handler");
    assert_eq!(a.incidents.len(), blocks);
    let page = page(&a);
    let data = data_of(&page);
    let p = &data["processes"][0];
    assert_eq!(p["incidents"].as_array().unwrap().len(), MAX_PAGE_INCIDENTS);
    assert_eq!(p["incidents_total"], blocks as u64);
    // The timeline is bins, not spans: bounded whatever the length.
    let bins = p["loops"][0]["bins"].as_array().unwrap().len();
    assert!(bins <= crate::analyzer::busy_bins::MAX_BINS, "{bins}");
    // One frame table: a stack is numbers, so 2000 incidents cost little.
    assert!(p["frames"].as_array().unwrap().len() < 10);
    assert!(page.len() < 2 << 20, "{} bytes", page.len());
}

#[test]
fn an_empty_recording_renders_on_purpose() {
    let a = Analysis::default();
    let page = page(&a);
    let data = data_of(&page);
    let p = &data["processes"][0];
    assert_eq!(p["samples"], 0);
    assert!(p["flame"]["all"].is_null() && p["flame"]["blocking"].is_null());
    assert!(p["incidents"].as_array().unwrap().is_empty());
    assert!(p["loops"].as_array().unwrap().is_empty());
    assert!(page.contains("no loop"));
    assert!(page.contains("No samples were taken"));
}

#[test]
fn flame_graph_boxes_come_parent_first_within_the_budget() {
    let a = analysis(3, "handler");
    let flame = flame_value(&a, &a.busy_profile, 3);
    let nodes = flame["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0][0], -1);
    for (i, n) in nodes.iter().enumerate().skip(1) {
        assert!(n[0].as_i64().unwrap() < i as i64);
    }
    assert!(flame["left_out"].as_u64().unwrap() > 0);
    assert!(flame_value(&a, &Profile::default(), 10).is_null());
}

#[test]
fn fill_is_one_pass() {
    assert_eq!(
        fill(
            "a<!--@X-->b<!--@Y-->c<!--@X-->",
            &[("<!--@X-->", "<!--@Y-->"), ("<!--@Y-->", "2")]
        ),
        "a<!--@Y-->b2c<!--@Y-->"
    );
}
