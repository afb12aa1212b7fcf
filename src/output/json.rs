//! `incidents.json`: the machine contract. Field names under `target`, `recording` and
//! `incidents[]` are stable (schema 1); new fields may be added, none renamed or removed.
//! Stacks are innermost frame first.

use std::path::Path;

use serde_json::{json, Value};

use super::RecordingInfo;
use crate::analyzer::cause::suggestion;
use crate::analyzer::incident::Incident;
use crate::analyzer::intern::FrameId;
use crate::analyzer::sites;
use crate::analyzer::Analysis;
use crate::sampler::StopReason;

/// Schema version of `incidents.json`.
pub const SCHEMA: u32 = 1;

/// A frame as JSON, with its source line text when known.
pub fn frame_json(analysis: &Analysis, id: FrameId, source: Option<&str>) -> Value {
    let f = analysis.symbols.frames.get(id);
    let mut value = json!({ "function": f.function, "file": f.file, "line": f.line });
    if let Some(text) = source {
        value["source"] = Value::String(text.to_string());
    }
    value
}

/// One incident as JSON (also the line format of streaming outputs).
pub fn incident_json(analysis: &Analysis, incident: &Incident) -> Value {
    let stack_ids = analysis.symbols.stacks.get(incident.stack);
    let stack: Vec<Value> = stack_ids
        .iter()
        .map(|&id| frame_json(analysis, id, None))
        .collect();
    let leaf = stack.first().cloned().unwrap_or(Value::Null);
    json!({
        "id": incident.id(),
        "start_unix": round(incident.start_unix, 6),
        "end_unix": round(incident.start_unix + incident.duration_ms / 1000.0, 6),
        "duration_ms": round(incident.duration_ms, 2),
        "samples": incident.samples,
        "pid": incident.pid,
        "thread_id": incident.thread_id,
        "ns_thread_id": analysis.ns_thread_ids.get(&incident.thread_id),
        "thread_name": incident.thread_name,
        "loop": incident.loop_kind,
        "kind": incident.kind,
        "kind_evidence": incident.kind_evidence,
        "culprit": frame_json(analysis, incident.culprit, incident.culprit_source.as_deref()),
        "callback": frame_json(analysis, incident.callback, None),
        "task": incident.task,
        "leaf": leaf,
        "stack": stack,
        "cause": incident.cause,
        "suggestion": suggestion(incident.cause.category),
        "truncated": incident.truncated,
        "stack_truncated": incident.stack_truncated,
    })
}

/// Stop reason as written in JSON and reports.
pub fn stop_reason_str(reason: StopReason) -> &'static str {
    match reason {
        StopReason::DurationElapsed => "duration_elapsed",
        StopReason::Interrupted => "interrupted",
        StopReason::TargetExited => "target_exited",
    }
}

/// The whole document.
pub fn document(analysis: &Analysis, info: &RecordingInfo) -> Value {
    let s = &info.sampler;
    let loops: Vec<Value> = analysis
        .loops
        .values()
        .map(|l| {
            json!({
                "thread_id": l.thread_id,
                "ns_thread_id": analysis.ns_thread_ids.get(&l.thread_id),
                "thread_name": l.name,
                "loop": l.kind,
                "utilization": round(l.utilization().unwrap_or(0.0), 4),
                "observed_s": round(l.observed.as_secs_f64(), 3),
                "incidents": l.incidents,
                "stalls": l.stall_histogram.count,
                "max_stall_ms": round(l.stall_histogram.max, 2),
                "torn_samples": l.torn_samples,
            })
        })
        .collect();
    let incidents: Vec<Value> = analysis
        .incidents
        .iter()
        .map(|i| incident_json(analysis, i))
        .collect();
    let sites: Vec<Value> = sites::ranked(&analysis.sites)
        .into_iter()
        .map(|(key, site)| {
            let lines: Vec<Value> = site
                .lines()
                .map(|(line, stats)| {
                    json!({
                        "line": line,
                        "count": stats.count,
                        "total_ms": round(stats.total_ms, 2),
                        "source": stats.source,
                    })
                })
                .collect();
            json!({
                "function": key.function,
                "file": key.file,
                "lines": lines,
                "count": site.count,
                "total_ms": round(site.total_ms, 2),
                "max_ms": round(site.max_ms, 2),
                "p95_ms": site.percentile(0.95),
                "cause": site.category(),
            })
        })
        .collect();
    json!({
        "schema": SCHEMA,
        "target": {
            "pid": info.pid,
            "ns_pid": info.ns_pid,
            "python_version": info.python_version,
            "command": info.command,
        },
        "recording": {
            "start_unix": round(info.start_unix, 6),
            "duration_s": round(s.elapsed.as_secs_f64(), 3),
            "rate_hz": info.rate_hz,
            "achieved_rate_hz": round(s.achieved_rate(), 1),
            "reader": s.reader,
            "offsets": s.offsets,
            "other_threads_hz": s.other_threads_hz,
            "syscalls_per_tick": {
                "process_vm_readv": round(s.cost.memory_reads as f64 / s.ticks.max(1) as f64, 2),
                "proc_reads": round(s.cost.proc_reads as f64 / s.ticks.max(1) as f64, 2),
            },
            "interval_us": { "p50": s.interval_p50_us, "p99": s.interval_p99_us, "max": s.interval_max_us },
            "missed_ticks": s.missed_ticks,
            "dropped_samples": s.dropped_analyzer_lag,
            "threshold_ms": info.threshold_ms,
            "blocking_reads": info.blocking,
            "samples": analysis.samples,
            "incidents_total": analysis.incidents_total,
            "incidents_kept": analysis.incidents.len(),
            "sample_errors": analysis.sample_errors,
            "sampling_gaps": {
                "count": analysis.gaps.count,
                "total_ms": round(analysis.gaps.total_ms, 1),
                "longest_ms": round(analysis.gaps.longest_ms, 1),
            },
            "loopspy_peak_rss_mib": super::peak_rss_mib().map(|m| round(m, 1)),
            "loop_utilization": analysis.loop_utilization().map(|u| round(u, 4)),
            "stop_reason": stop_reason_str(info.stop_reason),
        },
        "loops": loops,
        "sites": sites,
        "incidents": incidents,
        "tasks": tasks_json(analysis),
        "task_leaks": task_leaks_json(analysis),
    })
}

/// The task census over the recording: how many were taken, the pending tasks at the last
/// one, by coroutine (the largest 20).
fn tasks_json(analysis: &Analysis) -> Value {
    let watch = &analysis.task_leaks;
    let by_coroutine: Vec<Value> = watch
        .pending_by_coroutine(20)
        .into_iter()
        .map(|(site, line, pending)| {
            json!({ "coroutine": site.coroutine, "file": site.file, "line": line, "pending": pending })
        })
        .collect();
    json!({
        "censuses": watch.censuses,
        "partial_censuses": watch.partial_censuses,
        "pending": watch.pending_now,
        "pending_by_coroutine": by_coroutine,
    })
}

/// Coroutines whose pending tasks kept growing (see `analyzer::task_leaks`).
pub fn task_leaks_json(analysis: &Analysis) -> Value {
    analysis
        .task_leaks
        .leaks()
        .into_iter()
        .map(|leak| {
            json!({
                "coroutine": leak.site.coroutine,
                "file": leak.site.file,
                "line": leak.line,
                "pending_start": leak.pending_start,
                "pending_end": leak.pending_end,
                "growth_per_s": round(leak.growth_per_s, 2),
                "example_task": leak.example_task,
                "censuses": leak.censuses,
            })
        })
        .collect()
}

/// Writes `incidents.json`.
pub fn write(path: &Path, analysis: &Analysis, info: &RecordingInfo) -> anyhow::Result<()> {
    let doc = document(analysis, info);
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    std::fs::write(path, text)?;
    Ok(())
}

/// `x` rounded to `digits` decimals (JSON figures stay readable).
pub fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}
