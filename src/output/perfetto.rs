//! `trace.json`: a timeline in Chrome's trace-event format, which the Perfetto UI (and
//! chrome://tracing) opens. Per loop thread one track of busy spans (every time the loop left
//! its selector) and one track of incidents, each incident a slice named after its culprit with
//! cause, task and source in its arguments. Timestamps are microseconds since the recording
//! started.

use std::path::Path;

use serde_json::{json, Value};

use super::RecordingInfo;
use crate::analyzer::Analysis;

/// Incident tracks get their own thread ids, above any real tid.
const INCIDENT_TRACK: u64 = 1 << 32;

/// The document.
pub fn document(analysis: &Analysis, info: &RecordingInfo) -> Value {
    let pid = info.pid;
    let origin = info.start_unix;
    let ts = |unix: f64| ((unix - origin) * 1e6).max(0.0).round();
    let mut events = vec![json!({
        "ph": "M", "pid": pid, "name": "process_name",
        "args": { "name": format!("{} (pid {pid})", info.command) },
    })];
    for l in analysis.loops.values() {
        let name = l.name.clone().unwrap_or_else(|| "thread".into());
        events.push(json!({
            "ph": "M", "pid": pid, "tid": l.thread_id, "name": "thread_name",
            "args": { "name": format!("{name} ({}) event loop busy", l.thread_id) },
        }));
        events.push(json!({
            "ph": "M", "pid": pid, "tid": INCIDENT_TRACK + l.thread_id, "name": "thread_name",
            "args": { "name": format!("{name} ({}) incidents", l.thread_id) },
        }));
    }
    for span in &analysis.timeline {
        events.push(json!({
            "ph": "X", "pid": pid, "tid": span.thread_id, "cat": "loop", "name": "busy",
            "ts": ts(span.start_unix), "dur": (span.duration_ms * 1000.0).round(),
        }));
    }
    for incident in &analysis.incidents {
        let culprit = analysis.symbols.frames.get(incident.culprit);
        events.push(json!({
            "ph": "X", "pid": pid, "tid": INCIDENT_TRACK + incident.thread_id, "cat": "incident",
            "name": format!("{} ({})", culprit.function, incident.cause.category),
            "ts": ts(incident.start_unix), "dur": (incident.duration_ms * 1000.0).round(),
            "args": {
                "duration_ms": incident.duration_ms,
                "kind": incident.kind,
                "culprit": format!("{}:{}", culprit.file, culprit.line),
                "source": incident.culprit_source,
                "cause": incident.cause.category,
                "detail": incident.cause.detail,
                "task": incident.task.as_ref().map(|t| t.name.clone()),
            },
        }));
    }
    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "exporter": concat!("loopspy ", env!("CARGO_PKG_VERSION")),
            "start_unix": origin,
            "busy_spans_dropped": analysis.timeline_dropped,
        },
    })
}

/// Writes `path`.
pub fn write(path: &Path, analysis: &Analysis, info: &RecordingInfo) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec(&document(analysis, info))?)?;
    Ok(())
}
