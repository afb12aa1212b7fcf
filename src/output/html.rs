//! `report.html`: the recording on one page a person can open from a file URL — a header, a
//! timeline of each loop thread (busy/idle, incidents as marks), the blocking sites, every
//! incident expandable (stack, source around the culprit, cause, task, fix) and both flame
//! graphs, interactive. One self-contained file: the page's style and script are in
//! `html_page.html` (inlined at build time), the data is one JSON document inside it, so it
//! needs no network and no other file.
//!
//! Everything that came from the target (names, paths, source lines, cause details) reaches
//! the page only as JSON data that the script puts into the DOM as text, or through
//! [`escape`]: a function named `<script>` shows as those characters. The JSON itself is made
//! safe for a `<script>` element by [`script_json`]. The page stays bounded whatever the
//! recording: at most [`MAX_PAGE_INCIDENTS`] incidents in full (the longest; the rest counted),
//! [`MAX_SITES`] sites, [`MAX_FLAME_NODES`] flame-graph boxes, and the timeline's bins.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use super::json::{round, stop_reason_str};
use super::RecordingInfo;
use crate::analyzer::cause::suggestion;
use crate::analyzer::incident::Incident;
use crate::analyzer::intern::FrameId;
use crate::analyzer::{frame_label, sites, Analysis, Profile};
use crate::text;

/// The page's markup, style and script; the data goes where its markers are.
const PAGE: &str = include_str!("html_page.html");

/// Incidents shown in full on one page (all processes of a fleet together); the longest are
/// kept, the others counted. A day of 10 000 incidents stays a page a browser opens at once.
pub const MAX_PAGE_INCIDENTS: usize = 2000;
/// Blocking sites listed per process; the rest are counted.
pub const MAX_SITES: usize = 500;
/// Boxes of one page's flame graphs (shared by its graphs); the smallest go first.
pub const MAX_FLAME_NODES: usize = 40_000;
/// A flame-graph box narrower than this share of its graph is left out (sub-pixel anyway).
const MIN_FLAME_SHARE: f64 = 1.0 / 20_000.0;
/// Frames of one flame-graph path drawn at most; deeper ones are summed into one box.
const MAX_FLAME_DEPTH: usize = 256;
/// Frames of an incident's stack listed at most (innermost first).
const MAX_STACK_FRAMES: usize = 200;

/// One recorded process, as the page shows it.
pub struct Process<'a> {
    /// Its analysis.
    pub analysis: &'a Analysis,
    /// Its recording facts.
    pub info: &'a RecordingInfo,
    /// Its own page, relative to this one (fleets link each process's `pid-<pid>/report.html`).
    pub link: Option<String>,
}

/// `text` as HTML text or attribute value: `&`, `<`, `>`, `"` and `'` as entities, control
/// characters made visible ([`text::human`]), cut to `max` characters.
pub fn escape(text: &str, max: usize) -> String {
    let shown = text::human(text, max);
    let mut out = String::with_capacity(shown.len());
    for c in shown.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `value` as JSON that can sit inside `<script type="application/json">`: `<`, `>` and `&`
/// written as `\u` escapes (no `</script>` or `<!--` can end or change the element), and so
/// are U+2028/U+2029 (line breaks to a JavaScript parser). JSON has these characters only in
/// strings, where the escapes mean the same characters.
pub fn script_json(value: &Value) -> String {
    let raw = value.to_string();
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// A frame table: the frames a page names, each once, so a stack is a list of numbers.
#[derive(Default)]
struct Frames {
    index: HashMap<FrameId, usize>,
    rows: Vec<Value>,
}

impl Frames {
    fn id(&mut self, analysis: &Analysis, frame: FrameId) -> usize {
        *self.index.entry(frame).or_insert_with(|| {
            let f = analysis.symbols.frames.get(frame);
            self.rows.push(json!([
                text::human(&f.function, text::NAME_CHARS),
                text::human(&f.file, text::PATH_CHARS),
                f.line
            ]));
            self.rows.len() - 1
        })
    }
}

fn human(value: &str, max: usize) -> Value {
    Value::String(text::human(value, max).into_owned())
}

fn incident_value(
    analysis: &Analysis,
    frames: &mut Frames,
    n: usize,
    incident: &Incident,
) -> Value {
    let stack_ids = analysis.symbols.stacks.get(incident.stack);
    let stack: Vec<usize> = stack_ids
        .iter()
        .take(MAX_STACK_FRAMES)
        .map(|&id| frames.id(analysis, id))
        .collect();
    let cause = &incident.cause;
    let optional = |v: Option<&str>| v.map(|s| human(s, text::DETAIL_CHARS));
    let context = incident.culprit_context.as_ref().map(|c| {
        json!({
            "first": c.first_line,
            "lines": c.lines.iter().map(|l| human(l, text::SOURCE_CHARS)).collect::<Vec<_>>(),
        })
    });
    json!({
        "n": n,
        "t": round(incident.start_offset_s, 6),
        "start_unix": round(incident.start_unix, 6),
        "ms": round(incident.duration_ms, 2),
        "samples": incident.samples,
        "thread_id": incident.thread_id,
        "ns_thread_id": analysis.ns_thread_ids.get(&incident.thread_id),
        "thread": incident.thread_name.as_deref().map(|s| human(s, text::NAME_CHARS)),
        "loop": incident.loop_kind,
        "kind": incident.kind,
        "culprit": frames.id(analysis, incident.culprit),
        "callback": frames.id(analysis, incident.callback),
        "stack": stack,
        "stack_more": stack_ids.len().saturating_sub(MAX_STACK_FRAMES),
        "stack_truncated": incident.stack_truncated,
        "truncated": incident.truncated,
        "source": incident.culprit_source.as_deref().map(|s| human(s, text::SOURCE_CHARS)),
        "context": context,
        "task": incident.task.as_ref().map(|t| json!({
            "name": human(&t.name, text::NAME_CHARS),
            "coroutine": human(&t.coroutine, text::NAME_CHARS),
            "awaited_by": t.awaited_by_chain.iter().map(|a| human(&a.name, text::NAME_CHARS)).collect::<Vec<Value>>(),
        })),
        "cause": {
            "category": cause.category,
            "detail": human(&cause.detail, text::DETAIL_CHARS),
            "syscall": cause.syscall.as_deref(),
            "resource": optional(cause.resource.as_deref()),
            "peer": optional(cause.peer.as_deref()),
            "path": optional(cause.path.as_deref()),
            "library": cause.library,
            "gil_holder": optional(cause.gil_holder.as_deref()),
        },
        "fix": suggestion(cause.category),
    })
}

/// A flame graph as a flat list of boxes in depth-first order, `[parent, name, µs]` (the
/// root's parent is -1), names in their own table: small to embed, no recursion to read.
fn flame_value(analysis: &Analysis, profile: &Profile, budget: usize) -> Value {
    let mut names: Vec<String> = Vec::new();
    let mut name_ids: HashMap<String, usize> = HashMap::new();
    let mut name_id = |label: String| {
        let next = name_ids.len();
        *name_ids.entry(label.clone()).or_insert_with(|| {
            names.push(label);
            next
        })
    };
    // The tree: (name, µs, children by name).
    struct Node {
        name: usize,
        us: u64,
        children: HashMap<usize, usize>,
    }
    let all = name_id("all".into());
    let mut nodes = vec![Node {
        name: all,
        us: 0,
        children: HashMap::new(),
    }];
    let several_threads = {
        let mut tids = profile.keys().map(|(tid, _)| *tid);
        let first = tids.next();
        tids.any(|t| Some(t) != first)
    };
    for (&(tid, stack), &us) in profile {
        if us == 0 {
            continue;
        }
        let mut path: Vec<String> = Vec::new();
        if several_threads {
            let name = analysis
                .thread_names
                .get(&tid)
                .map_or("thread", String::as_str);
            path.push(format!("{} ({tid})", text::name(name)));
        }
        let frames: Vec<_> = analysis.symbols.stack_frames(stack).collect();
        let mut outer_first = frames.iter().rev();
        for frame in outer_first.by_ref().take(MAX_FLAME_DEPTH) {
            path.push(text::human(&frame_label(frame, true), text::NAME_CHARS * 2).into_owned());
        }
        let deeper = outer_first.count();
        if deeper > 0 {
            path.push(format!("[{deeper} deeper frames]"));
        }
        nodes[0].us += us;
        let mut at = 0;
        for label in path {
            let name = name_id(label);
            at = match nodes[at].children.get(&name) {
                Some(&child) => child,
                None => {
                    nodes.push(Node {
                        name,
                        us: 0,
                        children: HashMap::new(),
                    });
                    let child = nodes.len() - 1;
                    nodes[at].children.insert(name, child);
                    child
                }
            };
            nodes[at].us += us;
        }
    }
    if nodes[0].us == 0 {
        return Value::Null;
    }
    // The widest boxes first, until the budget is spent; a box too narrow to see is left out.
    let min_us = (nodes[0].us as f64 * MIN_FLAME_SHARE) as u64;
    let mut keep: Vec<bool> = vec![false; nodes.len()];
    let mut heap = std::collections::BinaryHeap::new();
    heap.push((nodes[0].us, 0usize));
    let mut kept = 0;
    while let Some((_, i)) = heap.pop() {
        if kept >= budget.max(1) {
            break;
        }
        keep[i] = true;
        kept += 1;
        for &child in nodes[i].children.values() {
            if nodes[child].us >= min_us.max(1) {
                heap.push((nodes[child].us, child));
            }
        }
    }
    // Depth first, heaviest child first, so the page lays boxes out in one pass.
    let mut out: Vec<Value> = Vec::with_capacity(kept);
    let mut used_names: HashMap<usize, usize> = HashMap::new();
    let mut out_names: Vec<Value> = Vec::new();
    let mut stack: Vec<(usize, i64)> = vec![(0, -1)];
    while let Some((i, parent)) = stack.pop() {
        let next = used_names.len();
        let name = *used_names.entry(nodes[i].name).or_insert_with(|| {
            out_names.push(Value::String(names[nodes[i].name].clone()));
            next
        });
        out.push(json!([parent, name, nodes[i].us]));
        let me = (out.len() - 1) as i64;
        let mut children: Vec<usize> = nodes[i]
            .children
            .values()
            .copied()
            .filter(|&c| keep[c])
            .collect();
        children.sort_by(|&a, &b| nodes[a].us.cmp(&nodes[b].us).then(a.cmp(&b)));
        stack.extend(children.into_iter().map(|c| (c, me)));
    }
    json!({ "names": out_names, "nodes": out, "total_us": nodes[0].us, "left_out": nodes.len() - kept })
}

fn process_value(p: &Process, incident_budget: usize, flame_budget: usize) -> Value {
    let (analysis, info) = (p.analysis, p.info);
    let s = &info.sampler;
    let mut frames = Frames::default();
    // The longest incidents when they do not all fit, shown in time order.
    let mut shown: Vec<&Incident> = analysis.incidents.iter().collect();
    shown.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
    shown.truncate(incident_budget);
    shown.sort_by(|a, b| a.start_unix.total_cmp(&b.start_unix));
    let incidents: Vec<Value> = shown
        .iter()
        .enumerate()
        .map(|(n, i)| incident_value(analysis, &mut frames, n, i))
        .collect();
    let ranked = sites::ranked(&analysis.sites);
    let sites: Vec<Value> = ranked
        .iter()
        .take(MAX_SITES)
        .map(|(key, site)| {
            let category = site.category();
            // A site is a culprit function in its file (its lines inside): shown by the frame
            // of one of its incidents, at the site's main line.
            let frame = analysis
                .incidents
                .iter()
                .map(|i| i.culprit)
                .find(|&id| {
                    let f = analysis.symbols.frames.get(id);
                    f.function == key.function && f.file == key.file
                })
                .map(|id| frames.id(analysis, id));
            json!({
                "frame": frame,
                "lines": site.line_list(),
                "count": site.count,
                "total_ms": round(site.total_ms, 1),
                "max_ms": round(site.max_ms, 1),
                "p95_ms": round(site.percentile(0.95), 1),
                "category": category,
                "fix": suggestion(category),
                "source": site.source().map(|t| human(t, text::SOURCE_CHARS)),
            })
        })
        .collect();
    let loops: Vec<Value> = analysis
        .loops
        .values()
        .map(|l| {
            let bins = &l.busy_bins;
            json!({
                "thread_id": l.thread_id,
                "ns_thread_id": analysis.ns_thread_ids.get(&l.thread_id),
                "name": l.name.as_deref().map(|n| human(n, text::NAME_CHARS)),
                "kind": l.kind,
                "busy_pct": round(l.utilization().unwrap_or(0.0) * 100.0, 1),
                "incidents": l.incidents,
                "stalls": l.stall_histogram.count,
                "max_stall_ms": round(l.stall_histogram.max, 1),
                "bin_s": bins.bin_s,
                // Busy share of each bin, per mille: small to embed, finer than a pixel.
                "bins": bins.busy_s.iter().map(|b| (b / bins.bin_s * 1000.0).round() as u32).collect::<Vec<_>>(),
            })
        })
        .collect();
    let flame_source = if analysis.loops.is_empty() {
        &analysis.active_profile
    } else {
        &analysis.busy_profile
    };
    json!({
        "pid": info.pid,
        "command": human(&info.command, 400),
        "python": human(&info.python_version, 40),
        "link": p.link,
        "start_unix": round(analysis.first_unix, 6),
        "duration_s": round(s.elapsed.as_secs_f64(), 3),
        "rate_hz": info.rate_hz,
        "achieved_hz": round(s.achieved_rate(), 1),
        "threshold_ms": info.threshold_ms,
        "blocking_reads": info.blocking,
        "stop_reason": stop_reason_str(info.stop_reason),
        "samples": analysis.samples,
        "sample_errors": analysis.sample_errors,
        "gaps": { "count": analysis.gaps.count, "total_ms": round(analysis.gaps.total_ms, 1), "longest_ms": round(analysis.gaps.longest_ms, 1) },
        "busy_pct": analysis.loop_utilization().map(|u| round(u * 100.0, 1)),
        "blocked_ms": round(analysis.blocked_ms(), 1),
        "incidents_total": analysis.incidents_total,
        "incidents_kept": analysis.incidents.len(),
        "loops": loops,
        "sites": sites,
        "sites_more": ranked.len().saturating_sub(MAX_SITES),
        "incidents": incidents,
        "frames": frames.rows,
        "flame": {
            "all": flame_value(analysis, flame_source, flame_budget),
            "blocking": flame_value(analysis, &analysis.blocking_profile, flame_budget),
            "all_is_active": analysis.loops.is_empty(),
        },
        // Coroutines whose pending tasks kept growing; the page shows a card when there are.
        "task_leaks": analysis.task_leaks.leaks().iter().map(|leak| json!({
            "coroutine": human(&leak.site.coroutine, text::NAME_CHARS),
            "where": human(&format!("{}:{}", text::short_path(&leak.site.file), leak.line), text::NAME_CHARS),
            "pending_start": leak.pending_start,
            "pending_end": leak.pending_end,
            "growth_per_s": super::json::round(leak.growth_per_s, 1),
            "example_task": leak.example_task.as_deref().map(|n| human(n, text::NAME_CHARS)),
        })).collect::<Vec<Value>>(),
    })
}

/// The page's header for one process: server-rendered (escaped) so it reads even before the
/// script has run.
fn header(p: &Process) -> String {
    let (a, info) = (p.analysis, p.info);
    let busy = a
        .loop_utilization()
        .map_or_else(|| "no loop".to_string(), |u| format!("{:.1}%", u * 100.0));
    let kinds: Vec<String> = a.loops.values().map(|l| format!("{:?}", l.kind)).collect();
    let facts = [
        ("pid", info.pid.to_string()),
        ("Python", info.python_version.clone()),
        (
            "loop",
            if kinds.is_empty() {
                "none seen".into()
            } else {
                kinds.join(", ")
            },
        ),
        (
            "duration",
            format!("{:.1} s", info.sampler.elapsed.as_secs_f64()),
        ),
        (
            "rate",
            format!(
                "{:.0} Hz ({} asked)",
                info.sampler.achieved_rate(),
                info.rate_hz
            ),
        ),
        ("loop busy", busy),
        (
            "incidents",
            format!("{} (≥ {} ms)", a.incidents_total, info.threshold_ms),
        ),
        ("blocked", format!("{:.0} ms", a.blocked_ms())),
    ];
    let mut out = format!(
        "<p class=\"command\" title=\"command\"><code>{}</code></p><dl class=\"facts\">",
        escape(&info.command, 400)
    );
    for (label, value) in facts {
        out.push_str(&format!(
            "<div><dt>{}</dt><dd>{}</dd></div>",
            label,
            escape(&value, 200)
        ));
    }
    out.push_str("</dl>");
    out
}

/// Renders the page for one process, or for a fleet (`processes.len() > 1` or `fleet`): a
/// summary of every process, then one section each.
pub fn render(processes: &[Process], fleet: bool) -> String {
    let n = processes.len().max(1);
    let incident_budget = (MAX_PAGE_INCIDENTS / n).max(1);
    let flame_budget = (MAX_FLAME_NODES / (2 * n)).max(100);
    let data = json!({
        "fleet": fleet,
        "generated_by": concat!("loopspy ", env!("CARGO_PKG_VERSION")),
        "processes": processes
            .iter()
            .map(|p| process_value(p, incident_budget, flame_budget))
            .collect::<Vec<_>>(),
    });
    let title = match processes {
        [one] if !fleet => format!("loopspy: pid {}", one.info.pid),
        _ => format!("loopspy: {} processes", processes.len()),
    };
    let headers: String = processes
        .iter()
        .map(|p| {
            format!(
                "<div class=\"proc-header\" data-pid=\"{}\">{}</div>",
                p.info.pid,
                header(p)
            )
        })
        .collect();
    fill(
        PAGE,
        &[
            ("<!--@TITLE-->", &escape(&title, 200)),
            ("<!--@HEADERS-->", &headers),
            ("<!--@DATA-->", &script_json(&data)),
        ],
    )
}

/// `template` with each marker replaced, in one pass (a value holding a marker's text is
/// never itself filled in).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some((at, marker, value)) = values
        .iter()
        .filter_map(|(m, v)| rest.find(m).map(|at| (at, *m, *v)))
        .min_by_key(|(at, _, _)| *at)
    {
        out.push_str(&rest[..at]);
        out.push_str(value);
        rest = &rest[at + marker.len()..];
    }
    out.push_str(rest);
    out
}

/// Writes `report.html` of one process.
pub fn write(path: &Path, analysis: &Analysis, info: &RecordingInfo) -> anyhow::Result<()> {
    let page = render(
        &[Process {
            analysis,
            info,
            link: None,
        }],
        false,
    );
    std::fs::write(path, page)?;
    Ok(())
}

#[cfg(test)]
mod tests;
