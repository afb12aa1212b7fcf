//! Combined outputs of a fleet (`--subprocesses`, or several `--pid`): every process has its
//! own files in `pid-<pid>/`; the top of the output directory gets `incidents.json` with every
//! incident (each carrying its `pid`) and a `processes` list, `report.md` with the processes
//! and the sites ranked across all of them, and combined flame graphs whose root frames are the
//! processes, and `report.html` with a summary of the fleet and one section per process.
//! `incidents.jsonl` there is streamed during the recording.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::json::{incident_json, stop_reason_str};
use super::{flamegraph, html, ProfileFormat, RecordingInfo, WrittenFiles};
use crate::analyzer::cause::suggestion;
use crate::analyzer::{short_path, Analysis, Profile};
use crate::text;

/// One process of the fleet.
pub struct Member<'a> {
    /// Its recording facts.
    pub info: RecordingInfo,
    /// Its analysis.
    pub analysis: &'a Analysis,
    /// Its own output directory.
    pub dir: PathBuf,
}

fn utilization(a: &Analysis) -> Option<f64> {
    a.loop_utilization().map(|u| super::json::round(u, 4))
}

/// The combined `incidents.json`.
pub fn document(members: &[Member]) -> Value {
    let first = &members[0].info;
    let processes: Vec<Value> = members
        .iter()
        .map(|m| {
            json!({
                "pid": m.info.pid,
                "command": m.info.command,
                "python_version": m.info.python_version,
                "stop_reason": stop_reason_str(m.info.stop_reason),
                "duration_s": (m.info.sampler.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                "samples": m.analysis.samples,
                "sample_errors": m.analysis.sample_errors,
                "loop_utilization": utilization(m.analysis),
                "incidents": m.analysis.incidents_total,
                "dir": m.dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            })
        })
        .collect();
    let mut incidents: Vec<Value> = members
        .iter()
        .flat_map(|m| {
            m.analysis.incidents.iter().map(move |i| {
                let mut v = incident_json(m.analysis, i);
                v["command"] = Value::String(m.info.command.clone());
                v
            })
        })
        .collect();
    incidents.sort_by(|a, b| {
        a["start_unix"]
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&b["start_unix"].as_f64().unwrap_or(0.0))
    });
    let start = members
        .iter()
        .map(|m| m.info.start_unix)
        .fold(f64::INFINITY, f64::min);
    json!({
        "schema": super::json::SCHEMA,
        "target": { "pid": first.pid, "python_version": first.python_version, "command": first.command },
        "recording": {
            "start_unix": start,
            "rate_hz": first.rate_hz,
            "threshold_ms": first.threshold_ms,
            "samples": members.iter().map(|m| m.analysis.samples).sum::<u64>(),
            "sample_errors": members.iter().map(|m| m.analysis.sample_errors).sum::<u64>(),
            "incidents_total": members.iter().map(|m| m.analysis.incidents_total).sum::<u64>(),
            "processes": members.len(),
        },
        "processes": processes,
        "incidents": incidents,
    })
}

fn combined_lines(members: &[Member], pick: fn(&Analysis) -> &Profile) -> Vec<String> {
    let mut lines = Vec::new();
    for m in members {
        let root = format!("pid {} {}", m.info.pid, m.info.command).replace(';', ":");
        for line in flamegraph::collapsed_lines(m.analysis, pick(m.analysis)) {
            lines.push(format!("{root};{line}"));
        }
    }
    lines.sort();
    lines
}

/// One site (culprit function and file, with its lines) merged across processes.
struct MergedSite {
    function: String,
    file: String,
    lines: std::collections::BTreeSet<u32>,
    count: u64,
    total_ms: f64,
    max_ms: f64,
    category: &'static str,
    pids: Vec<i32>,
}

impl MergedSite {
    /// `40,41` (the first eight lines, then `…`).
    fn line_list(&self) -> String {
        let mut lines: Vec<String> = self.lines.iter().take(8).map(u32::to_string).collect();
        if self.lines.len() > 8 {
            lines.push("…".into());
        }
        lines.join(",")
    }
}

fn merged_sites(members: &[Member]) -> Vec<MergedSite> {
    let mut merged: HashMap<(String, String), MergedSite> = HashMap::new();
    for m in members {
        for (key, site) in &m.analysis.sites {
            let entry = merged
                .entry((key.function.to_string(), key.file.to_string()))
                .or_insert_with(|| MergedSite {
                    function: key.function.to_string(),
                    file: key.file.to_string(),
                    lines: Default::default(),
                    count: 0,
                    total_ms: 0.0,
                    max_ms: 0.0,
                    category: site.category(),
                    pids: Vec::new(),
                });
            entry.count += site.count;
            entry.total_ms += site.total_ms;
            entry.max_ms = entry.max_ms.max(site.max_ms);
            entry.lines.extend(site.lines().map(|(line, _)| line));
            entry.pids.push(m.info.pid);
        }
    }
    let mut list: Vec<MergedSite> = merged.into_values().collect();
    list.sort_by(|a, b| {
        b.total_ms
            .total_cmp(&a.total_ms)
            .then((&a.function, &a.file).cmp(&(&b.function, &b.file)))
    });
    list
}

fn pid_list(pids: &[i32]) -> String {
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The combined `report.md`.
pub fn report(members: &[Member]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# loopspy report: {} processes\n", members.len());
    let _ = writeln!(
        md,
        "| pid | command | Python | stopped | loop busy | incidents | files |\n|---|---|---|---|---|---|---|"
    );
    for m in members {
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} | {} | {} | [{}/report.md]({}/report.md) |",
            m.info.pid,
            m.info.command.replace('|', "\\|"),
            m.info.python_version,
            stop_reason_str(m.info.stop_reason),
            utilization(m.analysis)
                .map(|u| format!("{:.1}%", u * 100.0))
                .unwrap_or_else(|| "no loop".into()),
            m.analysis.incidents_total,
            dir_name(&m.dir),
            dir_name(&m.dir),
        );
    }
    let _ = writeln!(md, "\n## Blocking sites across all processes\n");
    let _ = writeln!(
        md,
        "| # | site | count | total ms | max ms | cause | pids | fix |\n|---|---|---|---|---|---|---|---|"
    );
    for (rank, site) in merged_sites(members).iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} {}:{} | {} | {:.1} | {:.1} | {} | {} | {} |",
            rank + 1,
            text::md_code(&site.function, text::NAME_CHARS),
            text::md_code(&site.file, text::PATH_CHARS),
            site.line_list(),
            site.count,
            site.total_ms,
            site.max_ms,
            site.category,
            pid_list(&site.pids),
            suggestion(site.category)
        );
    }
    let _ = writeln!(
        md,
        "\nEvery incident, with its pid, is in `incidents.json` and `incidents.jsonl`; each process's own report, flame graphs and incidents are in its `pid-<pid>/` folder."
    );
    md
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes the combined files into `dir`.
pub fn write_all(
    dir: &Path,
    members: &[Member],
    formats: &[ProfileFormat],
) -> anyhow::Result<WrittenFiles> {
    let mut files = Vec::new();
    let mut doc = serde_json::to_string_pretty(&document(members))?;
    doc.push('\n');
    std::fs::write(dir.join("incidents.json"), doc)?;
    files.push(dir.join("incidents.json"));
    std::fs::write(dir.join("report.md"), report(members))?;
    files.push(dir.join("report.md"));
    let pages: Vec<html::Process> = members
        .iter()
        .map(|m| html::Process {
            analysis: m.analysis,
            info: &m.info,
            link: Some(format!("{}/report.html", dir_name(&m.dir))),
        })
        .collect();
    std::fs::write(dir.join("report.html"), html::render(&pages, true))?;
    files.push(dir.join("report.html"));
    let busy = combined_lines(members, |a| &a.busy_profile);
    let blocking = combined_lines(members, |a| &a.blocking_profile);
    if formats.contains(&ProfileFormat::Svg) {
        flamegraph::write_lines(
            &dir.join("flamegraph.svg"),
            &busy,
            "loopspy: event loop busy time, all processes",
        )?;
        flamegraph::write_lines(
            &dir.join("blocking.svg"),
            &blocking,
            "loopspy: what blocked the event loops, all processes",
        )?;
        files.push(dir.join("flamegraph.svg"));
        files.push(dir.join("blocking.svg"));
    }
    if formats.contains(&ProfileFormat::Collapsed) {
        for (name, lines) in [
            ("flamegraph.collapsed", &busy),
            ("blocking.collapsed", &blocking),
        ] {
            std::fs::write(
                dir.join(name),
                lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
            )?;
            files.push(dir.join(name));
        }
    }
    files.push(dir.join("incidents.jsonl"));
    for m in members {
        files.push(m.dir.clone());
    }
    Ok(WrittenFiles {
        dir: dir.to_path_buf(),
        files,
    })
}

/// The terminal summary of a fleet.
pub fn summary(members: &[Member], written: &WrittenFiles) -> String {
    let mut out = String::new();
    let total: u64 = members.iter().map(|m| m.analysis.incidents_total).sum();
    let _ = writeln!(
        out,
        "loopspy: recorded {} processes: {total} blocking incidents in all",
        members.len()
    );
    for m in members {
        let _ = writeln!(
            out,
            "  pid {:<7} {:>4} incidents  {:<17} {} ({})",
            m.info.pid,
            m.analysis.incidents_total,
            utilization(m.analysis)
                .map(|u| format!("loop busy {:.1}%", u * 100.0))
                .unwrap_or_else(|| "no event loop".into()),
            m.info.command,
            stop_reason_str(m.info.stop_reason)
        );
    }
    let sites = merged_sites(members);
    if !sites.is_empty() {
        let _ = writeln!(out, "Top blocking sites across processes:");
        for site in sites.iter().take(5) {
            let _ = writeln!(
                out,
                "  {:>8.0} ms {:>5}x max {:>6.0} ms  {:<10} {} ({}:{}) pids {}",
                site.total_ms,
                site.count,
                site.max_ms,
                site.category,
                text::name(&site.function),
                text::human(short_path(&site.file), text::PATH_CHARS),
                site.line_list(),
                pid_list(&site.pids)
            );
        }
    }
    let _ = writeln!(out, "Wrote {}:", written.dir.display());
    for file in &written.files {
        let _ = writeln!(out, "  {}", dir_name(file));
    }
    out
}
