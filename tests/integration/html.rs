//! report.html in a real browser: a real recording opened from a file URL in headless
//! Chromium must load with no console error and no network, show every incident of
//! incidents.json (culprit and duration), answer hover and click on a timeline mark with its
//! culprit, and draw a screenshot that is not blank. A target whose names hold HTML must show
//! them as text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::browser::{decode_png, Browser};
use crate::common::*;

/// `target/test-artifacts/`: where the screenshots are kept after the test's temp dir goes.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn file_url(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap();
    // The percent-encoding a file URL needs for the paths tests use (temp dirs).
    let mut url = String::from("file://");
    for b in path.to_str().unwrap().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                url.push(b as char)
            }
            _ => url.push_str(&format!("%{b:02X}")),
        }
    }
    url
}

/// Opens `dir/report.html` from its file URL and checks what every page must: it became ready,
/// nothing went wrong, nothing was fetched, and its incidents are incidents.json's, in time
/// order, with the same culprit and duration. Returns the browser and incidents.json.
fn open_report(dir: &Path) -> (Browser, Value) {
    let json = read_json(&dir.join("incidents.json"));
    let mut browser = Browser::start(1400, 1000);
    browser.open(
        &file_url(&dir.join("report.html")),
        "document.body && document.body.dataset.ready === '1'",
    );
    // Layout and the timeline's first draw happen on the next frames.
    std::thread::sleep(Duration::from_millis(300));
    let _ = browser.eval("1");
    assert_eq!(
        browser.errors(),
        Vec::<String>::new(),
        "the page reported errors"
    );
    assert_eq!(
        browser.eval("performance.getEntriesByType('resource').length"),
        Value::from(0),
        "the page fetched something: it must be self-contained"
    );
    let shown = browser.eval(
        "[...document.querySelectorAll('tbody.incident')]
           .sort((a, b) => a.dataset.n - b.dataset.n)
           .map(b => ({ n: Number(b.dataset.n), ms: Number(b.dataset.ms),
                        duration: b.querySelector('td.duration').textContent,
                        culprit: b.querySelector('td.culprit code').textContent,
                        file: b.querySelector('td.culprit .file').title }))",
    );
    let shown = shown.as_array().expect("incident rows").clone();
    let mut expected = json["incidents"].as_array().unwrap().clone();
    expected.sort_by(|a, b| {
        a["start_unix"]
            .as_f64()
            .unwrap()
            .total_cmp(&b["start_unix"].as_f64().unwrap())
    });
    assert_eq!(
        shown.len(),
        expected.len(),
        "report.html shows {} incidents, incidents.json has {}",
        shown.len(),
        expected.len()
    );
    for (row, incident) in shown.iter().zip(&expected) {
        let ms = incident["duration_ms"].as_f64().unwrap();
        assert_eq!(row["ms"].as_f64().unwrap(), ms, "incident {}", row["n"]);
        let text = row["duration"].as_str().unwrap();
        let read = match text.strip_suffix(" ms") {
            Some(v) => v.parse::<f64>().unwrap(),
            None => text.strip_suffix(" s").unwrap().parse::<f64>().unwrap() * 1000.0,
        };
        assert!((read - ms).abs() <= 10.0, "{text} shown for {ms} ms");
        let function = incident["culprit"]["function"].as_str().unwrap();
        assert_eq!(
            row["culprit"],
            shown_text(function, NAME_CHARS),
            "incident {}",
            row["n"]
        );
        let file = incident["culprit"]["file"].as_str().unwrap();
        assert_eq!(
            row["file"],
            shown_text(file, PATH_CHARS),
            "incident {}",
            row["n"]
        );
    }
    assert_eq!(
        browser.eval("document.querySelectorAll('.mark').length"),
        Value::from(expected.len()),
        "one timeline mark per incident"
    );
    (browser, json)
}

/// Characters of a function name and of a path the page shows (loopspy's `text` bounds).
const NAME_CHARS: usize = 120;
const PATH_CHARS: usize = 160;

/// How the page shows a name: control characters made visible and cut to `max` characters
/// with `…`, as every human output does.
fn shown_text(name: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in name.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[test]
fn report_html_opens_from_a_file_url_and_shows_every_incident() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo_app.py");
    let run = run_loopspy(
        &[
            "record",
            "-o",
            out.to_str().unwrap(),
            "--",
            python.to_str().unwrap(),
            demo.to_str().unwrap(),
            "--seconds",
            "4",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.lines().any(|l| l.trim() == "report.html"),
        "report.html missing from the Wrote list:\n{}",
        run.stdout
    );
    let (mut browser, json) = open_report(&out);
    let incidents = json["incidents"].as_array().unwrap();
    assert!(
        incidents.len() >= 6,
        "the demo blocks its loop every ~0.4 s: {}",
        incidents.len()
    );

    // Hover a mark: the tooltip names its culprit.
    let mark = browser.eval(
        "(() => { const m = document.querySelectorAll('.mark')[2]; const r = m.getBoundingClientRect();
                  return [r.x + r.width / 2, r.y + r.height / 2, Number(m.dataset.n)]; })()",
    );
    let (x, y, n) = (
        mark[0].as_f64().unwrap(),
        mark[1].as_f64().unwrap(),
        mark[2].as_u64().unwrap(),
    );
    let culprit = browser.eval(&format!(
        "document.querySelector('tbody.incident[data-n=\"{n}\"] td.culprit code').textContent"
    ));
    let culprit = culprit.as_str().unwrap().to_string();
    browser.mouse("mouseMoved", x, y);
    let tip = browser.eval(
        "document.getElementById('tip').hidden ? null : document.getElementById('tip').textContent",
    );
    assert!(
        tip.as_str()
            .is_some_and(|t| t.contains(&culprit) && t.contains("duration")),
        "hovering mark {n} showed {tip}, not its culprit {culprit}"
    );
    // Click it: its incident opens, in view, with the culprit, its source and the fix.
    browser.mouse("mousePressed", x, y);
    browser.mouse("mouseReleased", x, y);
    std::thread::sleep(Duration::from_millis(200));
    let opened = browser.eval(
        "(() => { const b = document.querySelector('tbody.incident.open'); if (!b) return null;
                  const r = b.getBoundingClientRect();
                  return { n: Number(b.dataset.n), text: b.querySelector('tr.detail').textContent,
                           visible: r.top < innerHeight && r.bottom > 0,
                           source: !!b.querySelector('pre.src div.at') }; })()",
    );
    assert_eq!(
        opened["n"],
        Value::from(n),
        "clicking mark {n} opened {opened}"
    );
    assert_eq!(opened["visible"], Value::Bool(true), "{opened}");
    assert_eq!(
        opened["source"],
        Value::Bool(true),
        "no culprit source: {opened}"
    );
    let text = opened["text"].as_str().unwrap();
    assert!(text.contains(&culprit) && text.contains("Fix"), "{text}");

    // The wheel zooms the timeline in around the pointer: the mark grows; "all" zooms out.
    let width = |b: &mut Browser| {
        b.eval(&format!(
            "Number(document.querySelector('.mark[data-n=\"{n}\"]').getAttribute('width'))"
        ))
        .as_f64()
        .unwrap()
    };
    let before = width(&mut browser);
    browser.eval("window.scrollTo(0, 0)");
    let (x, y) = {
        let m = browser.eval(&format!(
            "(() => {{ const r = document.querySelector('.mark[data-n=\"{n}\"]').getBoundingClientRect();
                       return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        (m[0].as_f64().unwrap(), m[1].as_f64().unwrap())
    };
    browser.call(
        "Input.dispatchMouseEvent",
        serde_json::json!({ "type": "mouseWheel", "x": x, "y": y, "deltaX": 0, "deltaY": -400 }),
    );
    std::thread::sleep(Duration::from_millis(200));
    let zoomed = width(&mut browser);
    assert!(
        zoomed > before * 1.1,
        "the wheel did not zoom in: mark {before} -> {zoomed} px"
    );
    browser.eval("[...document.querySelectorAll('.timeline button')].find(b => b.textContent === 'all').click()");
    assert_eq!(
        width(&mut browser),
        before,
        "'all' shows the whole recording again"
    );

    // The tables sort, the flame graph searches.
    browser.eval("[...document.querySelectorAll('.incidents th')].find(t => t.textContent === 'duration').click()");
    let first = browser.eval("Number(document.querySelector('tbody.incident').dataset.ms)");
    let longest = incidents
        .iter()
        .map(|i| i["duration_ms"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(
        first.as_f64().unwrap(),
        longest,
        "sorted by duration, longest first"
    );
    browser.eval("[...document.querySelectorAll('.incidents th')].find(t => t.textContent === 'time').click()");
    let boxes = browser
        .eval("document.querySelectorAll('.fbox').length")
        .as_u64()
        .unwrap();
    assert!(boxes >= 5, "the flame graph drew {boxes} boxes");
    browser.eval("(() => { const s = document.querySelector('.flames input'); s.value = 'handle_report'; s.dispatchEvent(new Event('input')); })()");
    let matched = browser
        .eval("document.querySelectorAll('.fbox.match').length")
        .as_u64()
        .unwrap();
    assert!(matched >= 1, "searching the flame graph matched nothing");
    browser.eval("(() => { const s = document.querySelector('.flames input'); s.value = ''; s.dispatchEvent(new Event('input')); window.scrollTo(0, 0); })()");
    assert_eq!(browser.errors(), Vec::<String>::new(), "errors while used");

    // A screenshot with the opened incident: kept, and not blank.
    let png = browser.screenshot(1400);
    let path = out.join("report-html.png");
    std::fs::write(&path, &png).unwrap();
    std::fs::copy(&path, artifacts().join("report-html.png")).unwrap();
    let image = decode_png(&png);
    assert!(
        image.width == 1400 && image.height >= 1000,
        "{}x{}",
        image.width,
        image.height
    );
    let mut counts = std::collections::HashMap::new();
    for p in &image.rgb {
        *counts
            .entry([p[0] >> 4, p[1] >> 4, p[2] >> 4])
            .or_insert(0usize) += 1;
    }
    let background = counts.values().max().copied().unwrap_or(0);
    let drawn = 1.0 - background as f64 / image.rgb.len() as f64;
    assert!(
        counts.len() >= 40 && drawn >= 0.15,
        "the screenshot looks blank: {} colours, {:.0}% off the background",
        counts.len(),
        drawn * 100.0
    );
}

#[test]
fn report_html_shows_html_in_target_names_as_text() {
    let Some(h) = crate::hostile::record_hostile("3.12", "names") else {
        return;
    };
    let (mut browser, json) = open_report(&h.out);
    assert!(
        !browser
            .events
            .iter()
            .any(|e| e["method"] == "Page.javascriptDialogOpening"),
        "a name's <script> ran"
    );
    assert_eq!(
        browser.eval("document.scripts.length"),
        Value::from(2),
        "only the page's own two scripts"
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#app script, #app iframe, #app img').length"),
        Value::from(0)
    );
    let evil = json["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["culprit"]["function"].as_str())
        .find(|f| f.starts_with("evil\n<script>"))
        .expect("the HTML-named block")
        .to_string();
    let cells =
        browser.eval("[...document.querySelectorAll('td.culprit code')].map(c => c.textContent)");
    assert!(
        cells
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str() == Some(shown_text(&evil, NAME_CHARS).as_str())),
        "the name is not shown as text: {cells}"
    );
    // Its file, with a space, non-ASCII letters and a newline, too; and the open incident.
    browser.eval("document.querySelectorAll('tbody.incident tr.row').forEach(r => r.click())");
    let detail = browser.eval("document.querySelector('#app').textContent");
    assert!(detail
        .as_str()
        .unwrap()
        .contains("<script>alert(1)</script>"));
    assert!(detail
        .as_str()
        .unwrap()
        .contains("dir with space/üñí\\n.py"));
    assert_eq!(browser.eval("document.scripts.length"), Value::from(2));
    assert_eq!(browser.errors(), Vec::<String>::new());
    let png = browser.screenshot(1400);
    std::fs::write(artifacts().join("report-html-hostile.png"), png).unwrap();
}

/// The combined report.html of a fleet, in Chromium: no error, a summary row and a section per
/// process, every incident of the combined incidents.json, each process's own page linked.
pub(crate) fn check_fleet_page(out: &Path, pids: &[i32]) {
    let json = read_json(&out.join("incidents.json"));
    let mut browser = Browser::start(1400, 1000);
    browser.open(
        &file_url(&out.join("report.html")),
        "document.body && document.body.dataset.ready === '1'",
    );
    assert_eq!(
        browser.errors(),
        Vec::<String>::new(),
        "the fleet page reported errors"
    );
    let page = browser.eval(
        "({ rows: document.querySelectorAll('.fleet-summary tbody').length,
            sections: [...document.querySelectorAll('.process')].map(s => s.id),
            incidents: [...document.querySelectorAll('tbody.incident')].map(b => b.id),
            links: [...document.querySelectorAll('.fleet-summary a')].map(a => a.getAttribute('href')) })",
    );
    assert_eq!(page["rows"], Value::from(pids.len()), "{page}");
    for pid in pids {
        let section = format!("p-{pid}");
        assert!(
            page["sections"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == &section),
            "no section for pid {pid}: {page}"
        );
        let own = format!("pid-{pid}/report.html");
        assert!(
            page["links"].as_array().unwrap().iter().any(|l| l == &own),
            "pid {pid}'s own page not linked: {page}"
        );
        assert!(out.join(&own).exists(), "{own} missing");
    }
    let incidents = json["incidents"].as_array().unwrap();
    let shown = page["incidents"].as_array().unwrap();
    assert_eq!(shown.len(), incidents.len(), "{page}");
    for incident in incidents {
        let prefix = format!("inc-{}-", incident["pid"]);
        assert!(
            shown
                .iter()
                .any(|id| id.as_str().unwrap().starts_with(&prefix)),
            "incident of pid {} not in its section: {page}",
            incident["pid"]
        );
    }
}

/// The report.html of a process with no event loop, in Chromium: no error, the timeline says
/// there is no loop, and the flame graph shows what the threads ran (`function` among them).
pub(crate) fn check_no_loop_page(out: &Path, function: &str) {
    let (mut browser, _) = open_report(out);
    let page = browser.eval(
        "({ timeline: document.querySelector('.timeline').textContent,
            boxes: [...document.querySelectorAll('.fbox')].map(b => b.textContent) })",
    );
    assert!(
        page["timeline"]
            .as_str()
            .unwrap()
            .contains("No asyncio event loop was seen"),
        "{page}"
    );
    assert!(
        page["boxes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b.as_str().unwrap().contains(function)),
        "the flame graph lacks {function}: {page}"
    );
}
