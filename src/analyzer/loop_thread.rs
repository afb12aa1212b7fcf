//! One event-loop thread as the analyzer follows it: what kind of loop, how busy, the busy run
//! in progress, the stalls of the last minute, and the per-loop facts the run boundaries need.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::busy_bins::BusyBins;
use super::incident::{self, BusyRun};
use super::intern::FrameId;
use super::loop_detect::LoopKind;
use crate::histogram::{quantile_of_sorted, Histogram};
use crate::sample::ThreadCounters;

/// Sample counts per source line, for the few lines a frame is seen at.
#[derive(Debug, Default)]
pub(super) struct LineVotes(HashMap<u32, u32>);

impl LineVotes {
    pub(super) fn add(&mut self, line: u32) {
        // A handful of lines in practice; the bound keeps garbage reads from growing it.
        if self.0.len() < 64 || self.0.contains_key(&line) {
            *self.0.entry(line).or_default() += 1;
        }
    }

    pub(super) fn most_frequent(&self) -> Option<u32> {
        incident::most_frequent(&self.0)
    }
}

/// One event-loop thread's state and totals.
#[derive(Debug)]
pub struct LoopThread {
    /// Kernel thread id.
    pub thread_id: u64,
    /// Python thread name.
    pub name: Option<String>,
    /// Loop implementation: the one most of its samples show.
    pub kind: LoopKind,
    /// Samples showing a selector loop and uvloop. While `asyncio.run` starts or closes a
    /// selector loop, its stack holds only the runner, which is how uvloop looks: a majority
    /// keeps those few samples from renaming the loop.
    pub(super) kind_samples: [u64; 2],
    /// Time covered by this thread's loop samples.
    pub observed: Duration,
    /// Part of `observed` in which the loop was busy.
    pub busy: Duration,
    /// Incidents found on this thread.
    pub incidents: u32,
    /// Busy-run durations (ms) of every stall, incident or not, for percentiles (bounded: a
    /// log-scale histogram).
    pub stall_histogram: Histogram,
    pub(super) last_sample_at: Option<Instant>,
    /// Loop-thread samples dropped as torn: the stack neither held the loop nor started at
    /// the thread's usual outermost frame.
    pub torn_samples: u64,
    pub(super) last_idle_at: Option<Instant>,
    /// Outermost frame of this thread when it was first seen running its loop.
    pub(super) base_frame: FrameId,
    /// Line of `handle._run()` in this loop's `_run_once` (selector loops): the line
    /// `_run_once` is at in most callback samples. Not the latest one: a read that spans an
    /// iteration boundary shows a callback's frames with `_run_once` already further on.
    pub(super) handle_run_lines: LineVotes,
    /// Idle samples seen with an even and with an odd callback clock: in its selector the
    /// loop is inside no handle's Context, and the clock's parity there is the "outside" one
    /// (inside a handle it is the other: one Context entered, +1).
    pub(super) idle_clock_parity: [u32; 2],
    pub(super) run: Option<BusyRun>,
    /// The latest kernel counter reading of this thread (its numbers only): where a busy run
    /// whose first sample came without one starts counting.
    pub(super) last_counters: Option<ThreadCounters>,
    /// End time and duration (ms) of every stall of the last minute, for live views.
    pub(super) recent_stalls: VecDeque<(Instant, f64)>,
    /// Busy time over the whole recording, binned (timelines).
    pub busy_bins: BusyBins,
}

/// The last minute of a loop's stalls, summarised ([`LoopThread::recent_health`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RecentStalls {
    /// Stalls at least the asked length.
    pub count: usize,
    /// Their median, ms.
    pub p50_ms: f64,
    /// Their 99th percentile, ms.
    pub p99_ms: f64,
    /// The longest, ms.
    pub max_ms: f64,
    /// The longest stall (any length) ending in each of the last 60 seconds, oldest first, ms.
    pub longest_per_second: [u64; 60],
}

/// How far back [`LoopThread::recent_stalls`] reaches.
pub const RECENT_STALLS_WINDOW: Duration = Duration::from_secs(60);

impl LoopThread {
    /// How long the loop has been busy without returning to its selector, if it is busy now.
    pub fn current_stall(&self, now: Instant) -> Option<Duration> {
        self.run
            .as_ref()
            .map(|run| now.saturating_duration_since(run.start_at))
    }

    /// A loop thread first seen running a `kind` loop whose outermost frame is `base_frame`.
    pub(super) fn new(
        thread_id: u64,
        name: Option<String>,
        kind: LoopKind,
        base_frame: FrameId,
    ) -> Self {
        LoopThread {
            thread_id,
            name,
            kind,
            kind_samples: [0; 2],
            observed: Duration::ZERO,
            busy: Duration::ZERO,
            incidents: 0,
            stall_histogram: Histogram::new(10_000),
            last_sample_at: None,
            last_idle_at: None,
            torn_samples: 0,
            base_frame,
            handle_run_lines: LineVotes::default(),
            idle_clock_parity: [0; 2],
            run: None,
            last_counters: None,
            recent_stalls: VecDeque::new(),
            busy_bins: BusyBins::default(),
        }
    }

    /// A sample showed a `kind` loop: the loop's kind is what most samples show (while
    /// `asyncio.run` starts or closes a selector loop its stack looks like uvloop's); and the
    /// thread's name, once known (py-spy learns names lazily).
    pub(super) fn saw(&mut self, kind: LoopKind, name: Option<&str>) {
        let slot = usize::from(kind == LoopKind::Uvloop);
        self.kind_samples[slot] += 1;
        if self.kind_samples[slot] >= self.kind_samples[1 - slot] {
            self.kind = kind;
        }
        if self.name.is_none() {
            self.name = name.map(String::from);
        }
    }

    /// Share of the observed time the loop was busy (None before any loop sample).
    pub fn utilization(&self) -> Option<f64> {
        (!self.observed.is_zero()).then(|| self.busy.as_secs_f64() / self.observed.as_secs_f64())
    }

    /// The stalls of the last minute at least `min_ms` long, for live views: how many, their
    /// p50/p99/max, and the longest ending in each of the last 60 seconds (oldest first).
    pub fn recent_health(&self, now: Instant, min_ms: f64) -> RecentStalls {
        let mut stalls: Vec<f64> = Vec::new();
        let mut per_second = [0u64; 60];
        for &(at, ms) in self.recent_stalls() {
            let age = now.saturating_duration_since(at).as_secs() as usize;
            if age < 60 {
                let bucket = &mut per_second[59 - age];
                *bucket = (*bucket).max(ms as u64);
                if ms >= min_ms {
                    stalls.push(ms);
                }
            }
        }
        stalls.sort_by(f64::total_cmp);
        RecentStalls {
            count: stalls.len(),
            p50_ms: quantile_of_sorted(&stalls, 0.5).unwrap_or(0.0),
            p99_ms: quantile_of_sorted(&stalls, 0.99).unwrap_or(0.0),
            max_ms: stalls.last().copied().unwrap_or(0.0),
            longest_per_second: per_second,
        }
    }

    /// Records a stall (a busy run) of `ms` that ended at `end_at`.
    pub(super) fn record_stall(&mut self, end_at: Instant, ms: f64) {
        self.stall_histogram.record(ms);
        self.recent_stalls.push_back((end_at, ms));
        while self
            .recent_stalls
            .front()
            .is_some_and(|(at, _)| end_at.saturating_duration_since(*at) > RECENT_STALLS_WINDOW)
        {
            self.recent_stalls.pop_front();
        }
    }

    /// Stalls (any length) that ended within the last minute: (end, duration in ms).
    pub fn recent_stalls(&self) -> impl Iterator<Item = &(Instant, f64)> {
        self.recent_stalls.iter()
    }
}
