//! What the analysis produced, for the outputs and the live view to render: loops, incidents,
//! per-site totals, time-weighted profiles, sampling gaps — every table bounded.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::incident::Incident;
use super::intern::{StackId, Symbols};
use super::loop_thread::LoopThread;
use super::sites;

/// Sampling gaps: stretches with no sample longer than [`AnalyzerSettings::gap`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gaps {
    /// How many.
    pub count: u64,
    /// Their total length, ms.
    pub total_ms: f64,
    /// The longest, ms.
    pub longest_ms: f64,
}

/// Busy spans kept at most for the timeline; later ones are counted, not kept.
pub const MAX_TIMELINE: usize = 1_000_000;

/// One busy span of a loop, for timelines.
#[derive(Debug, Clone, Copy)]
pub struct BusySpan {
    /// Loop thread.
    pub thread_id: u64,
    /// Wall-clock start, seconds.
    pub start_unix: f64,
    /// Length, ms.
    pub duration_ms: f64,
}

/// Threads whose last-read time and name are kept; past it, threads gone for a while (names:
/// those running no loop) are forgotten.
pub(super) const MAX_THREADS_KEPT: usize = 4096;
/// (thread, stack) entries of one profile; past it, new threads' time goes to thread 0 (a
/// target that starts threads forever would otherwise grow every profile forever).
pub const MAX_PROFILE_ENTRIES: usize = 1 << 20;

/// Adds `us` to `profile`'s entry for (`tid`, `stack`), within [`MAX_PROFILE_ENTRIES`].
pub(super) fn add_weight(profile: &mut Profile, tid: u64, stack: StackId, us: u64) {
    let key = if profile.len() >= MAX_PROFILE_ENTRIES && !profile.contains_key(&(tid, stack)) {
        (0, stack)
    } else {
        (tid, stack)
    };
    *profile.entry(key).or_default() += us;
}

/// Default for [`AnalyzerSettings::max_incidents`].
pub const MAX_INCIDENTS: usize = 1000;

/// Per-thread time-weighted stack totals, microseconds.
pub type Profile = HashMap<(u64, StackId), u64>;

/// Everything the analysis produced; outputs render from this.
#[derive(Debug, Default)]
pub struct Analysis {
    /// Interned frames and stacks.
    pub symbols: Symbols,
    /// Loop threads by kernel thread id.
    pub loops: BTreeMap<u64, LoopThread>,
    /// The worst incidents (longest first out), at most `max_incidents`, in the order they
    /// ended; the rest are counted in `incidents_total` and `sites`.
    pub incidents: Vec<Incident>,
    /// Every incident found.
    pub incidents_total: u64,
    /// Per-site totals over every incident.
    pub sites: sites::Sites,
    /// Every busy span, when the timeline was asked for.
    pub timeline: Vec<BusySpan>,
    /// Busy spans not kept because the timeline was full.
    pub timeline_dropped: u64,
    /// Busy samples of loop threads.
    pub busy_profile: Profile,
    /// Samples inside incidents.
    pub blocking_profile: Profile,
    /// Samples of every thread the kernel saw running (used when no loop is found).
    pub active_profile: Profile,
    /// Thread names seen, by kernel thread id.
    pub thread_names: HashMap<u64, String>,
    /// Thread ids inside the target's PID namespace, by our kernel thread id (containers).
    pub ns_thread_ids: HashMap<u64, u64>,
    /// Samples received.
    pub samples: u64,
    /// Failed reads reported by the sampler.
    pub sample_errors: u64,
    /// Time of the first and last sample.
    pub first_at: Option<Instant>,
    /// See `first_at`.
    pub last_at: Option<Instant>,
    /// Wall-clock time of the first sample.
    pub first_unix: f64,
    /// The latest sample's time on both clocks: what [`Self::unix_at`] converts from. The wall
    /// clock is read with every sample, not derived from the monotonic one: a guest whose wall
    /// clock was being slewed ran 0.7 % apart from its monotonic clock for a minute here, and
    /// incidents timed from the first sample drifted 40 ms off the target's `time.time()`.
    pub clock_anchor: Option<(Instant, f64)>,
    /// Stretches without a sample (no busy run is stretched across one).
    pub gaps: Gaps,
    /// Pending tasks by coroutine over the recording, and the leaks among them.
    pub task_leaks: super::task_leaks::LeakWatch,
    /// Who waited for whom at the last task census (an incident's await chain).
    pub await_graph: super::await_graph::AwaitGraph,
}

impl Analysis {
    /// Busy fraction over all loop threads' observed time (None when no loop was seen).
    pub fn loop_utilization(&self) -> Option<f64> {
        let observed: Duration = self.loops.values().map(|l| l.observed).sum();
        let busy: Duration = self.loops.values().map(|l| l.busy).sum();
        (!observed.is_zero()).then(|| busy.as_secs_f64() / observed.as_secs_f64())
    }

    /// Total time the loops were blocked in incidents, ms (all incidents, kept or not).
    pub fn blocked_ms(&self) -> f64 {
        // Every incident, kept or not; adding to +0.0 keeps an empty sum from printing "-0".
        self.sites
            .values()
            .map(|s| s.total_ms)
            .fold(0.0, |a, b| a + b)
    }

    /// Converts a monotonic instant to wall-clock seconds, from the latest sample's reading of
    /// both clocks (an instant is at most a run's length from it).
    pub fn unix_at(&self, at: Instant) -> f64 {
        match self.clock_anchor {
            Some((anchor, unix)) if at >= anchor => unix + at.duration_since(anchor).as_secs_f64(),
            Some((anchor, unix)) => unix - anchor.duration_since(at).as_secs_f64(),
            None => self.first_unix,
        }
    }
}
