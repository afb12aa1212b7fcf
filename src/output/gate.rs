//! The CI gate (`--fail-on-block LIMIT`): incidents at least LIMIT long, printed the way a test
//! runner prints failures, so a CI log shows what blocked the loop, where and why.

use std::fmt::Write as _;
use std::time::Duration;

use super::incident_text::{self, Style};
use crate::analyzer::incident::Incident;
use crate::analyzer::loop_detect::is_loop_entry;
use crate::analyzer::Analysis;
use crate::text::frame_label;

/// Incidents at least `limit` long, longest first.
pub fn offenders(analysis: &Analysis, limit: Duration) -> Vec<&Incident> {
    let limit_ms = limit.as_secs_f64() * 1000.0;
    let mut found: Vec<&Incident> = analysis
        .incidents
        .iter()
        .filter(|i| i.duration_ms >= limit_ms)
        .collect();
    found.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
    found
}

/// The failure report, for incidents of one or more processes.
pub fn render(offenders: &[(&Analysis, &Incident)], limit: Duration) -> String {
    let mut out = String::new();
    let title = " loopspy: the event loop was blocked ";
    let _ = writeln!(out, "{:=^78}", title);
    let _ = writeln!(
        out,
        "{} incident(s) >= {} ms (--fail-on-block):\n",
        offenders.len(),
        limit.as_millis()
    );
    for (n, (analysis, incident)) in offenders.iter().enumerate() {
        let culprit = analysis.symbols.frames.get(incident.culprit);
        let _ = writeln!(
            out,
            "[{}] {:.1} ms {:?} in {}, pid {} thread {}",
            n + 1,
            incident.duration_ms,
            incident.kind,
            frame_label(culprit, true),
            incident.pid,
            incident.thread_id
        );
        incident_text::write_details(&mut out, Style::Plain, "    ", incident);
        let _ = writeln!(out, "    stack (innermost first, down to the event loop):");
        let frames: Vec<_> = analysis.symbols.stack_frames(incident.stack).collect();
        // The callback's frames and the loop's entry are what matter; the test runner's own
        // frames below them are noise in a CI log (incidents.json has the full stack).
        let shown = frames
            .iter()
            .position(|f| is_loop_entry(f))
            .map(|i| i + 1)
            .unwrap_or(frames.len());
        for frame in &frames[..shown] {
            let _ = writeln!(out, "      {}", frame_label(frame, false));
        }
        if shown < frames.len() {
            let _ = writeln!(out, "      ... {} outer frames", frames.len() - shown);
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "{:=^78}", "");
    out
}
