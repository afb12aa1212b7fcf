//! `report.md`: the human report — summary, loop utilization, incidents ranked by site, then
//! each incident with time, duration, culprit, cause, suggestion and stack.

use std::fmt::Write as _;
use std::path::Path;

use super::incident_text::{self, Style};
use super::json::stop_reason_str;
use super::RecordingInfo;
use crate::analyzer::cause::suggestion;
use crate::analyzer::sites;
use crate::analyzer::{frame_label, Analysis};
use crate::sample::Frame;
use crate::text;

/// The code column of a site: its line's text; for a site whose incidents stopped at several
/// lines of its function, each line with its text, count and time (`41: `f.write(...)` — 2×,
/// 200.0 ms`), one per cell line.
fn site_code(site: &sites::SiteStats) -> String {
    let code = |source: Option<&str>| {
        source
            .map(|t| text::md_code(t, text::SOURCE_CHARS))
            .unwrap_or_default()
    };
    if site.lines().count() <= 1 {
        return code(site.source());
    }
    site.lines()
        .map(|(line, stats)| {
            format!(
                "{line}: {} — {}×, {:.1} ms",
                code(stats.source.as_deref()),
                stats.count,
                stats.total_ms
            )
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

/// A frame in Markdown text: its function and file as code spans nothing can break out of.
fn md_frame(frame: &Frame) -> String {
    format!(
        "{} ({}:{})",
        text::md_code(&frame.function, text::NAME_CHARS),
        text::md_code(&frame.file, text::PATH_CHARS),
        frame.line
    )
}

/// Incidents shown in full; the rest are counted in their site's row.
const DETAILED_INCIDENTS: usize = 200;

/// Local wall-clock time with milliseconds.
pub fn format_time(unix: f64) -> String {
    let secs = unix.floor() as i64;
    let nanos = ((unix - unix.floor()) * 1e9) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|utc| {
            utc.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S%.3f")
                .to_string()
        })
        .unwrap_or_else(|| format!("{unix:.3}"))
}

/// Renders the report.
pub fn render(analysis: &Analysis, info: &RecordingInfo) -> String {
    let mut md = String::new();
    let s = &info.sampler;
    let _ = writeln!(md, "# loopspy report: pid {}\n", info.pid);
    let _ = writeln!(md, "- Command: `{}`", info.command);
    let _ = writeln!(md, "- Python: {}", info.python_version);
    let _ = writeln!(
        md,
        "- Recorded: {} for {:.1} s ({}), {} at {} Hz asked, {:.0} Hz achieved",
        format_time(info.start_unix),
        s.elapsed.as_secs_f64(),
        stop_reason_str(info.stop_reason),
        if info.blocking {
            "pausing the target for each read"
        } else {
            "never pausing the target"
        },
        info.rate_hz,
        s.achieved_rate()
    );
    let _ = writeln!(
        md,
        "- Samples: {} ({} skipped (stack changed while read), {} ticks missed (loopspy ran late), {} dropped (analysis lagged)); sample interval p50 {} µs, p99 {} µs, max {} µs",
        analysis.samples,
        analysis.sample_errors,
        s.missed_ticks,
        s.dropped_analyzer_lag,
        s.interval_p50_us,
        s.interval_p99_us,
        s.interval_max_us
    );
    if analysis.gaps.count > 0 {
        let _ = writeln!(
            md,
            "- Sampling gaps: {} (longest {:.0} ms, {:.0} ms in all): no incident spans one; a block inside one may be missed",
            analysis.gaps.count, analysis.gaps.longest_ms, analysis.gaps.total_ms
        );
    }
    let _ = writeln!(md, "- Threshold: {} ms\n", info.threshold_ms);

    let _ = writeln!(md, "## Event loops\n");
    if analysis.loops.is_empty() {
        let _ = writeln!(
            md,
            "No asyncio event loop was seen in this process. `flamegraph.svg` shows what its threads did while running.\n"
        );
    } else {
        let _ = writeln!(
            md,
            "| thread | name | loop | busy (utilization) | stalls | incidents | longest stall |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for l in analysis.loops.values() {
            let util = l.utilization().unwrap_or(0.0);
            let _ = writeln!(
                md,
                "| {} | {} | {:?} | {:.1}% | {} | {} | {:.1} ms |",
                l.thread_id,
                l.name.as_deref().unwrap_or("?"),
                l.kind,
                util * 100.0,
                l.stall_histogram.count,
                l.incidents,
                l.stall_histogram.max
            );
        }
        let _ = writeln!(md);
    }

    let total_ms = analysis.blocked_ms();
    let _ = writeln!(
        md,
        "## Blocking sites\n\n{} incidents, loop blocked {:.1} ms in total.\n",
        analysis.incidents_total, total_ms
    );
    let ranked = sites::ranked(&analysis.sites);
    if !ranked.is_empty() {
        let _ = writeln!(
            md,
            "| # | site | code | count | total ms | max ms | p95 ms | cause | fix |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for (rank, (key, site)) in ranked.iter().enumerate() {
            let code = site_code(site);
            let category = site.category();
            let _ = writeln!(
                md,
                "| {} | {} {}:{} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
                rank + 1,
                text::md_code(&key.function, text::NAME_CHARS),
                text::md_code(&key.file, text::PATH_CHARS),
                site.line_list(),
                code,
                site.count,
                site.total_ms,
                site.max_ms,
                site.percentile(0.95),
                category,
                suggestion(category)
            );
        }
        let _ = writeln!(md);
    }

    if !analysis.incidents.is_empty() {
        let _ = writeln!(md, "## Incidents\n");
        let mut order: Vec<usize> = (0..analysis.incidents.len()).collect();
        order.sort_by(|&a, &b| {
            analysis.incidents[a]
                .start_unix
                .total_cmp(&analysis.incidents[b].start_unix)
        });
        for (n, &i) in order.iter().enumerate().take(DETAILED_INCIDENTS) {
            let inc = &analysis.incidents[i];
            let culprit = analysis.symbols.frames.get(inc.culprit);
            let callback = analysis.symbols.frames.get(inc.callback);
            let _ = writeln!(
                md,
                "### {}. {} — {:.1} ms {:?}{} in {}\n",
                n + 1,
                format_time(inc.start_unix),
                inc.duration_ms,
                inc.kind,
                if inc.truncated {
                    " (still busy at the end)"
                } else {
                    ""
                },
                text::md_code(&culprit.function, text::NAME_CHARS)
            );
            let _ = writeln!(
                md,
                "- Thread: {} ({}), {:?} loop, {} samples",
                inc.thread_id,
                text::name(inc.thread_name.as_deref().unwrap_or("?")),
                inc.loop_kind,
                inc.samples
            );
            let _ = writeln!(md, "- Culprit: {}", md_frame(culprit));
            let _ = writeln!(md, "- Callback: {}", md_frame(callback));
            incident_text::write_details(&mut md, Style::Markdown, "- ", inc);
            if inc.stack_truncated {
                let _ = writeln!(
                    md,
                    "\nStack deeper than {} frames: its innermost frames are shown.",
                    crate::sampler::MAX_FRAMES
                );
            }
            // Indented four spaces, no line of the block can close it, whatever a name holds.
            let _ = writeln!(md, "\n```");
            for frame in analysis.symbols.stack_frames(inc.stack) {
                let _ = writeln!(md, "    {}", frame_label(frame, false));
            }
            let _ = writeln!(md, "```\n");
        }
        if order.len() > DETAILED_INCIDENTS {
            let _ = writeln!(
                md,
                "{} more incidents are in incidents.json.\n",
                order.len() - DETAILED_INCIDENTS
            );
        }
        let dropped = analysis.incidents_total - analysis.incidents.len() as u64;
        if dropped > 0 {
            let _ = writeln!(
                md,
                "{dropped} shorter incidents were counted in the sites above but not kept in full (the {} longest are); every incident is in incidents.jsonl.\n",
                analysis.incidents.len()
            );
        }
    }
    write_task_leaks(&mut md, analysis);
    let _ = writeln!(
        md,
        "## Files\n\n- `report.html`: this report as one interactive page (timeline, incidents, flame graphs)\n- `flamegraph.svg`: every busy sample of the loop thread(s), weighted by time\n- `blocking.svg`: only the samples inside incidents\n- `incidents.json`: the same data for machines (schema {})",
        super::json::SCHEMA
    );
    md
}

/// Writes `report.md`.
/// The task-leak section: every coroutine whose pending tasks kept growing, with the rate and
/// what to look for. Nothing when no task census was taken.
fn write_task_leaks(md: &mut String, analysis: &Analysis) {
    let watch = &analysis.task_leaks;
    if watch.censuses == 0 {
        return;
    }
    let leaks = watch.leaks();
    let _ = writeln!(md, "## Task leaks\n");
    if leaks.is_empty() {
        let _ = writeln!(
            md,
            "None: no coroutine's pending tasks kept growing over {} task counts ({} pending at the last).\n",
            watch.censuses, watch.pending_now
        );
        return;
    }
    let _ = writeln!(
        md,
        "Pending tasks that kept growing: tasks created and never awaited, cancelled or finished pile up until memory runs out. Keep a reference and await or cancel them (a `TaskGroup`, or a set the task removes itself from with `add_done_callback`).\n\n| coroutine | where | pending (first → last count) | growth | example task |\n|---|---|---|---|---|"
    );
    for leak in &leaks {
        let _ = writeln!(
            md,
            "| {} | {} | {} → {} | {:.1}/s | {} |",
            text::md_code(&leak.site.coroutine, text::NAME_CHARS),
            text::md_code(
                &format!("{}:{}", text::short_path(&leak.site.file), leak.line),
                text::NAME_CHARS
            ),
            leak.pending_start,
            leak.pending_end,
            leak.growth_per_s,
            leak.example_task
                .as_deref()
                .map_or_else(|| "?".to_string(), |n| text::md_code(n, text::NAME_CHARS)),
        );
    }
    let _ = writeln!(md);
}

pub fn write(path: &Path, analysis: &Analysis, info: &RecordingInfo) -> anyhow::Result<()> {
    std::fs::write(path, render(analysis, info))?;
    Ok(())
}
