//! The short text printed when a recording ends: incidents, total blocked time, the top sites
//! and where the files are.

use std::fmt::Write;

use super::{RecordingInfo, WrittenFiles};
use crate::analyzer::sites;
use crate::analyzer::Analysis;

/// How many sites the summary lists.
const TOP_SITES: usize = 5;

/// Renders the summary.
pub fn render(analysis: &Analysis, info: &RecordingInfo, written: Option<&WrittenFiles>) -> String {
    let mut out = String::new();
    let s = &info.sampler;
    let _ = writeln!(
        out,
        "loopspy: recorded pid {} (Python {}) for {:.1}s: {} samples at {:.0} Hz (asked {}; interval p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms); {} samples skipped (stack changed while read), {} ticks missed (loopspy ran late), {} dropped (analysis lagged)",
        info.pid,
        info.python_version,
        s.elapsed.as_secs_f64(),
        analysis.samples,
        s.achieved_rate(),
        info.rate_hz,
        s.interval_p50_us as f64 / 1000.0,
        s.interval_p99_us as f64 / 1000.0,
        s.interval_max_us as f64 / 1000.0,
        analysis.sample_errors,
        s.missed_ticks,
        s.dropped_analyzer_lag,
    );
    if analysis.gaps.count > 0 {
        let _ = writeln!(
            out,
            "loopspy: {} sampling gaps (longest {:.0} ms, {:.0} ms in all): no incident spans a gap, a block inside one may be missed",
            analysis.gaps.count, analysis.gaps.longest_ms, analysis.gaps.total_ms
        );
    }
    if analysis.loops.is_empty() {
        let _ = writeln!(
            out,
            "No asyncio event loop was seen in pid {}: no incidents can be found; the flame graph shows what its threads did.",
            info.pid
        );
    } else {
        for l in analysis.loops.values() {
            let util = l.utilization().unwrap_or(0.0);
            let _ = writeln!(
                out,
                "Event loop in thread {} ({}, {:?}): busy {:.1}% of the time, {} incidents, longest stall {:.0} ms",
                l.thread_id,
                crate::text::name(l.name.as_deref().unwrap_or("?")),
                l.kind,
                util * 100.0,
                l.incidents,
                l.stall_histogram.max
            );
        }
        let total_ms = analysis.blocked_ms();
        let _ = writeln!(
            out,
            "{} blocking incidents (>= {} ms), loop blocked {:.0} ms in total",
            analysis.incidents_total, info.threshold_ms, total_ms
        );
        let ranked = sites::ranked(&analysis.sites);
        if !ranked.is_empty() {
            let _ = writeln!(
                out,
                "Top blocking sites:\n  {:>9} {:>5} {:>8} {:>8}  {:<10} site",
                "total ms", "count", "max ms", "p95 ms", "cause"
            );
            for (key, site) in ranked.iter().take(TOP_SITES) {
                let _ = writeln!(
                    out,
                    "  {:>9.0} {:>5} {:>8.0} {:>8.0}  {:<10} {}",
                    site.total_ms,
                    site.count,
                    site.max_ms,
                    site.percentile(0.95),
                    site.category(),
                    site.label(key)
                );
            }
        }
    }
    for leak in analysis.task_leaks.leaks().iter().take(TOP_SITES) {
        let _ = writeln!(
            out,
            "Task leak: {} ({}:{}) pending tasks grew {} -> {} ({:+.1}/s): created and never awaited or finished",
            crate::text::name(&leak.site.coroutine),
            crate::text::name(crate::text::short_path(&leak.site.file)),
            leak.line,
            leak.pending_start,
            leak.pending_end,
            leak.growth_per_s
        );
    }
    if let Some(written) = written {
        let _ = writeln!(out, "Wrote {}:", written.dir.display());
        for file in &written.files {
            let _ = writeln!(
                out,
                "  {}",
                file.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
    out
}
