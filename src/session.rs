//! One wiring for every command: an attached target → its sampler thread → a channel → an
//! analyzer set up for that target; and Ctrl-C. `record` (one or many processes), `top` and
//! `dump` start their sessions here, so a new command (or the coming agent) gets the same
//! pipeline without copying it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;

use crate::analyzer::{Analyzer, AnalyzerSettings};
use crate::remote::AttachedTarget;
use crate::sample::SamplerMessage;
use crate::sampler::{self, SamplerOutcome, SamplerSettings};

/// What the analyzer of every session is asked, besides what the session knows itself (the
/// target's pid and the sampling interval).
#[derive(Debug, Clone)]
pub struct AnalysisSettings {
    /// A busy run at least this long is an incident.
    pub threshold: Duration,
    /// Only this kernel thread id is a loop thread (`--thread`).
    pub only_thread: Option<u64>,
    /// Queue closed incidents for streaming sinks.
    pub stream: bool,
    /// Keep busy spans for a timeline output.
    pub timeline: bool,
}

/// One target being sampled and analyzed.
pub struct Session {
    /// The process.
    pub pid: i32,
    /// Its Python version, e.g. `3.12.1`.
    pub python_version: String,
    /// Its command line.
    pub command: String,
    /// Wall-clock time sampling started.
    pub start_unix: f64,
    /// Set to stop the sampler.
    pub stop: Arc<AtomicBool>,
    /// The sampler thread; its outcome says why it stopped.
    pub sampler: JoinHandle<SamplerOutcome>,
    /// The analyzer to feed this target's messages to.
    pub analyzer: Analyzer,
}

/// Starts sampling `target` into `tx` and sets up its analyzer.
pub fn start(
    target: AttachedTarget,
    sampling: SamplerSettings,
    analysis: &AnalysisSettings,
    tx: Sender<SamplerMessage>,
) -> Session {
    let (pid, python_version, command) = (
        target.pid,
        target.python_version.clone(),
        target.command.clone(),
    );
    let interval = Duration::from_secs_f64(1.0 / sampling.rate_hz.max(1) as f64);
    let analyzer = Analyzer::new(AnalyzerSettings {
        threshold: analysis.threshold,
        interval,
        only_thread: analysis.only_thread,
        pid,
        max_incidents: crate::analyzer::MAX_INCIDENTS,
        stream: analysis.stream,
        timeline: analysis.timeline,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sampler::spawn(target, sampling, stop.clone(), tx);
    Session {
        pid,
        python_version,
        command,
        start_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
        stop,
        sampler,
        analyzer,
    }
}

/// A flag Ctrl-C sets (the handler is installed once per process; a second install, e.g. by
/// tests embedding us, only means no Ctrl-C support).
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    interrupted
}
