//! One recorded process and its life: sampling, draining what its sampler sent last, its
//! analysis closed, its files written. One `Stage` at a time, so what exists at each step is
//! what the type says.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::RecordSettings;
use crate::analyzer::{Analysis, Analyzer};
use crate::output::stream::Streams;
use crate::output::{RecordingInfo, WrittenFiles};
use crate::sampler::{SamplerOutcome, StopReason};

/// One recorded process.
pub(super) struct Recorded {
    pub(super) pid: i32,
    /// Its pid inside its own PID namespace, read at attach (a container's `1`).
    pub(super) ns_pid: Option<u64>,
    pub(super) python_version: String,
    pub(super) command: String,
    pub(super) start_unix: f64,
    pub(super) dir: PathBuf,
    pub(super) stop: Arc<AtomicBool>,
    /// Its `incidents.jsonl` (and checkpoint), until its files are written.
    pub(super) streams: Option<Streams>,
    pub(super) stage: Stage,
}

/// Where a recorded process is in its life.
pub(super) enum Stage {
    /// Being sampled: its messages go to the analyzer.
    Sampling {
        sampler: JoinHandle<SamplerOutcome>,
        analyzer: Analyzer,
    },
    /// Its sampler has stopped (`outcome`, None if it panicked); what it sent last still goes
    /// to the analyzer.
    Draining {
        outcome: Option<SamplerOutcome>,
        analyzer: Analyzer,
    },
    /// Analysis closed; files not written yet.
    Ended {
        outcome: Option<SamplerOutcome>,
        analysis: Analysis,
    },
    /// Files written.
    Written {
        outcome: Option<SamplerOutcome>,
        analysis: Analysis,
        written: WrittenFiles,
    },
    /// Only while moving from one stage to the next.
    Moving,
}

impl Recorded {
    /// True while its sampler runs.
    pub(super) fn sampling(&self) -> bool {
        matches!(self.stage, Stage::Sampling { .. })
    }

    /// Its sampler has finished (the process exited, or its duration ran out).
    pub(super) fn sampler_finished(&self) -> bool {
        matches!(&self.stage, Stage::Sampling { sampler, .. } if sampler.is_finished())
    }

    pub(super) fn outcome(&self) -> Option<&SamplerOutcome> {
        match &self.stage {
            Stage::Draining { outcome, .. }
            | Stage::Ended { outcome, .. }
            | Stage::Written { outcome, .. } => outcome.as_ref(),
            _ => None,
        }
    }

    pub(super) fn analysis(&self) -> Option<&Analysis> {
        match &self.stage {
            Stage::Ended { analysis, .. } | Stage::Written { analysis, .. } => Some(analysis),
            _ => None,
        }
    }

    pub(super) fn written(&self) -> Option<&WrittenFiles> {
        match &self.stage {
            Stage::Written { written, .. } => Some(written),
            _ => None,
        }
    }

    /// Joins the sampler (Sampling -> Draining); false when it had panicked (no outcome). A
    /// sampler we stopped says `Interrupted`; its reason is then `recording_reason`, why the
    /// recording stopped (its own clock started a little later, after attaching, so the
    /// recording's duration usually runs out first).
    pub(super) fn join_sampler(&mut self, recording_reason: Option<StopReason>) -> bool {
        if !self.sampling() {
            return true;
        }
        let Stage::Sampling { sampler, analyzer } =
            std::mem::replace(&mut self.stage, Stage::Moving)
        else {
            unreachable!("checked: sampling");
        };
        let outcome = sampler.join().ok().map(|mut outcome| {
            if let (StopReason::Interrupted, Some(reason)) = (outcome.reason, recording_reason) {
                outcome.reason = reason;
            }
            outcome
        });
        let joined = outcome.is_some();
        self.stage = Stage::Draining { outcome, analyzer };
        joined
    }
}

/// What the outputs say of the recording of `p`.
pub(super) fn info_for(
    p: &Recorded,
    settings: &RecordSettings,
    reason: StopReason,
) -> RecordingInfo {
    RecordingInfo {
        pid: p.pid,
        ns_pid: p.ns_pid,
        python_version: p.python_version.clone(),
        command: p.command.clone(),
        rate_hz: settings.sampling.rate_hz,
        threshold_ms: settings.threshold.as_secs_f64() * 1000.0,
        blocking: settings.blocking,
        stop_reason: p.outcome().map(|o| o.reason).unwrap_or(reason),
        sampler: p.outcome().map(|o| o.stats.clone()).unwrap_or_default(),
        start_unix: p.start_unix,
        formats: settings.formats.clone(),
    }
}
