//! Sinks: everything loopspy writes. Each file format is one module that renders from the
//! finished [`Analysis`](crate::analyzer::Analysis) plus the [`RecordingInfo`] describing the
//! run; none of them reads the target.

pub mod flamegraph;
pub mod fleet;
pub mod gate;
pub mod html;
pub mod incident_text;
pub mod json;
pub mod perfetto;
pub mod pprof;
pub mod report;
pub mod rotating;
pub mod speedscope;
pub mod stream;
pub mod summary;

use std::path::{Path, PathBuf};

use crate::analyzer::Analysis;
use crate::sampler::{SamplerStats, StopReason};

/// Facts about the run that are not in the samples.
#[derive(Debug, Clone)]
pub struct RecordingInfo {
    /// Target interpreter pid.
    pub pid: i32,
    /// The same process's pid inside its own PID namespace (a container), when not ours.
    pub ns_pid: Option<u64>,
    /// Its Python version.
    pub python_version: String,
    /// Its command line.
    pub command: String,
    /// Requested rate.
    pub rate_hz: u32,
    /// Incident threshold.
    pub threshold_ms: f64,
    /// Whether the target was paused for each read.
    pub blocking: bool,
    /// Why the recording stopped.
    pub stop_reason: StopReason,
    /// The sampler's own measurements.
    pub sampler: SamplerStats,
    /// Wall-clock start, seconds since the epoch.
    pub start_unix: f64,
    /// Profile formats to write.
    pub formats: Vec<ProfileFormat>,
}

/// Formats the profile can be written in (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileFormat {
    /// Flame graphs: flamegraph.svg and blocking.svg.
    Svg,
    /// speedscope JSON: profile.speedscope.json.
    Speedscope,
    /// Folded stacks: flamegraph.collapsed and blocking.collapsed.
    Collapsed,
    /// Chrome trace events for Perfetto: trace.json (a timeline of busy spans and incidents).
    Perfetto,
    /// pprof: profile.pb.gz (go tool pprof, Pyroscope, Grafana; incident-labelled samples).
    Pprof,
}

/// The files a recording produced.
#[derive(Debug, Clone)]
pub struct WrittenFiles {
    /// Output directory.
    pub dir: PathBuf,
    /// Paths written, in order.
    pub files: Vec<PathBuf>,
}

/// Writes every output of a recording into `dir`. Each file is attempted even if an earlier
/// one failed; the first error is returned after all were tried.
pub fn write_all(
    dir: &Path,
    analysis: &Analysis,
    info: &RecordingInfo,
) -> anyhow::Result<WrittenFiles> {
    let mut files = Vec::new();
    let mut first_error = None;
    let mut attempt = |name: &str, result: anyhow::Result<()>| match result {
        Ok(()) => files.push(dir.join(name)),
        Err(err) => {
            if first_error.is_none() {
                first_error = Some(err.context(format!("writing {}", dir.join(name).display())));
            }
        }
    };
    let flame_source = if analysis.loops.is_empty() {
        &analysis.active_profile
    } else {
        &analysis.busy_profile
    };
    let blocking_title = format!(
        "loopspy: what blocked the event loop (incidents >= {} ms)",
        info.threshold_ms
    );
    for format in &info.formats {
        match format {
            ProfileFormat::Svg => {
                attempt(
                    "flamegraph.svg",
                    flamegraph::write(
                        &dir.join("flamegraph.svg"),
                        analysis,
                        flame_source,
                        &flamegraph_title(analysis, info),
                    ),
                );
                attempt(
                    "blocking.svg",
                    flamegraph::write(
                        &dir.join("blocking.svg"),
                        analysis,
                        &analysis.blocking_profile,
                        &blocking_title,
                    ),
                );
            }
            ProfileFormat::Collapsed => {
                for (name, profile) in [
                    ("flamegraph.collapsed", flame_source),
                    ("blocking.collapsed", &analysis.blocking_profile),
                ] {
                    let lines = flamegraph::collapsed_lines(analysis, profile);
                    let text = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
                    attempt(
                        name,
                        std::fs::write(dir.join(name), text).map_err(anyhow::Error::from),
                    );
                }
            }
            ProfileFormat::Speedscope => attempt(
                "profile.speedscope.json",
                speedscope::write(&dir.join("profile.speedscope.json"), analysis, info),
            ),
            ProfileFormat::Perfetto => attempt(
                "trace.json",
                perfetto::write(&dir.join("trace.json"), analysis, info),
            ),
            ProfileFormat::Pprof => attempt(
                "profile.pb.gz",
                pprof::write(&dir.join("profile.pb.gz"), analysis, info),
            ),
        }
    }
    attempt(
        "incidents.json",
        json::write(&dir.join("incidents.json"), analysis, info),
    );
    attempt(
        "report.md",
        report::write(&dir.join("report.md"), analysis, info),
    );
    attempt(
        "report.html",
        html::write(&dir.join("report.html"), analysis, info),
    );
    match first_error {
        Some(err) => Err(err),
        None => Ok(WrittenFiles {
            dir: dir.to_path_buf(),
            files,
        }),
    }
}

fn flamegraph_title(analysis: &Analysis, info: &RecordingInfo) -> String {
    if analysis.loops.is_empty() {
        format!(
            "loopspy: pid {} — no event loop found; all threads while running",
            info.pid
        )
    } else {
        format!("loopspy: pid {} — event loop busy time", info.pid)
    }
}

/// Makes sure `dir` exists and is writable, before any sampling starts.
/// Checks, leaving nothing behind, that `dir` could be written: a probe file in it when it
/// exists, else a probe directory made and removed in its nearest existing ancestor. An early
/// failure (wrong PID, ...) then leaves no empty directory; [`prepare_dir`] creates it when
/// there is something to write.
pub fn check_dir_writable(dir: &Path) -> Result<(), crate::error::LoopspyError> {
    let fail = |reason: String| crate::error::LoopspyError::OutputNotWritable {
        path: dir.to_path_buf(),
        reason,
    };
    let absolute = std::path::absolute(dir).map_err(|e| fail(e.to_string()))?;
    let mut at = absolute.as_path();
    loop {
        match std::fs::metadata(at) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => return Err(fail(format!("{} is not a directory", at.display()))),
            Err(_) => match at.parent() {
                Some(parent) => at = parent,
                None => return Err(fail("no existing parent directory".into())),
            },
        }
    }
    if at == absolute {
        let probe = at.join(".loopspy-write-test");
        std::fs::write(&probe, b"ok").map_err(|e| fail(e.to_string()))?;
        let _ = std::fs::remove_file(&probe);
    } else {
        let probe = at.join(format!(".loopspy-probe-{}", std::process::id()));
        std::fs::create_dir(&probe).map_err(|e| fail(format!("{}: {e}", at.display())))?;
        let _ = std::fs::remove_dir(&probe);
    }
    Ok(())
}

/// Creates `dir` (and its parents) and checks a file can be written in it.
pub fn prepare_dir(dir: &Path) -> Result<(), crate::error::LoopspyError> {
    let fail = |reason: String| crate::error::LoopspyError::OutputNotWritable {
        path: dir.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    let probe = dir.join(".loopspy-write-test");
    std::fs::write(&probe, b"ok").map_err(|e| fail(e.to_string()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// loopspy's own peak resident memory so far, MiB (what the memory budget in
/// docs/how-it-works.md is checked against): `VmHWM` of `/proc/self/status`. Not getrusage's
/// `ru_maxrss`, which Linux carries over `execve` from the process that forked us (a test
/// harness or shell that was large at the fork would be counted as ours).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
