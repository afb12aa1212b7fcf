//! The analyzer: consumes samples in order and keeps everything the outputs need, in bounded
//! memory — per loop thread, whether the loop is idle or busy and for how long; the busy runs
//! that became incidents; and time-weighted stack aggregates for the flame graphs.
//!
//! It reads nothing of the target's memory: all it knows arrived in [`Sample`]s. The one thing
//! it reads from the target's side is an incident's culprit source line, through
//! `remote::source` (bounded, inside the target's root), when the incident closes.

pub mod analysis;
pub mod await_graph;
pub mod busy_bins;
pub mod cause;
pub mod culprit;
mod facts;
pub mod incident;
pub mod intern;
pub mod loop_detect;
pub mod loop_thread;
pub mod sites;
pub mod task_leaks;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::remote::source::SourceCache;
use crate::sample::{
    OsState, RunningTask, Sample, SamplerMessage, TaskGeneration, ThreadCounters, ThreadSample,
};
use crate::syscalls;
use analysis::{add_weight, MAX_THREADS_KEPT};
pub use analysis::{
    Analysis, BusySpan, Gaps, Profile, MAX_INCIDENTS, MAX_PROFILE_ENTRIES, MAX_TIMELINE,
};
use facts::StackFacts;
use incident::{BusyObservation, BusyRun, CallbackKey, Incident, StepMark};
use intern::{FrameId, StackId, Symbols};
use loop_detect::{LoopKind, LoopPosition};
pub use loop_thread::{LoopThread, RecentStalls, RECENT_STALLS_WINDOW};

/// What the analyzer needs to know.
#[derive(Debug, Clone)]
pub struct AnalyzerSettings {
    /// A busy run at least this long is an incident.
    pub threshold: Duration,
    /// The sampling interval (to weight samples and bound boundary estimates).
    pub interval: Duration,
    /// Only treat this kernel thread id as a loop thread (`--thread`).
    pub only_thread: Option<u64>,
    /// The target, whose source files are read for culprit lines.
    pub pid: i32,
    /// Incidents kept in full; beyond this the shortest kept one is dropped (still counted).
    pub max_incidents: usize,
    /// Queue every closed incident for [`Analyzer::take_closed`] (streaming sinks).
    pub stream: bool,
    /// Keep every busy span for a timeline output (bounded by [`MAX_TIMELINE`]).
    pub timeline: bool,
}

impl AnalyzerSettings {
    /// Samples further apart than this leave a *gap*: the sampler was starved (or the target
    /// unreadable) and what the loop did meanwhile is unknown. Ten intervals, and at least
    /// 20 ms so that a scheduler hiccup inside a real block does not split it.
    pub fn gap(&self) -> Duration {
        (self.interval * 10).max(Duration::from_millis(20))
    }
}

/// Consumes samples; call [`Analyzer::finish`] at the end.
pub struct Analyzer {
    settings: AnalyzerSettings,
    analysis: Analysis,
    last_seen: HashMap<u64, Instant>,
    /// What the frames alone say, per distinct stack: a recording repeats a few hundred
    /// stacks thousands of times, and these are string searches over every frame.
    stack_facts: HashMap<StackId, StackFacts>,
    sources: SourceCache,
    closed: Vec<Incident>,
    /// The kernel reading that came with the thread sample being added, and whose: a run of
    /// that thread ending at this sample takes it as its closing counts (a long write() adds
    /// its bytes only when it returns, and the sampler reads the counters just then: as the
    /// loop gets back to its selector, or as a long callback's clock moves on).
    closing_counters: Option<(u64, ThreadCounters)>,
}

impl Analyzer {
    /// A fresh analyzer.
    pub fn new(settings: AnalyzerSettings) -> Self {
        Analyzer {
            analysis: Analysis::default(),
            last_seen: HashMap::new(),
            stack_facts: HashMap::new(),
            sources: SourceCache::new(settings.pid),
            closing_counters: None,
            closed: Vec::new(),
            settings,
        }
    }

    /// Drops the profiles built so far (flame graphs' data), keeping everything else: for a
    /// process watched for days by the agent, which draws no flame graphs.
    pub fn forget_profiles(&mut self) {
        let a = &mut self.analysis;
        a.busy_profile.clear();
        a.blocking_profile.clear();
        a.active_profile.clear();
    }

    /// Incidents closed since the last call (only with `stream` set).
    pub fn take_closed(&mut self) -> Vec<Incident> {
        std::mem::take(&mut self.closed)
    }

    /// The analysis so far.
    pub fn analysis(&self) -> &Analysis {
        &self.analysis
    }

    /// Feeds one message from the sampler.
    pub fn feed(&mut self, message: SamplerMessage) {
        match message {
            SamplerMessage::Sample(sample) => self.add_sample(&sample),
            SamplerMessage::Census(census) => {
                self.analysis.task_leaks.add(&census);
                self.analysis.await_graph.replace(&census.links);
            }
            SamplerMessage::ReadError { .. } => self.analysis.sample_errors += 1,
        }
    }

    /// The time a thread's read stands for: since its previous read, capped at five of its
    /// own intervals (a thread read every `every` ticks has a longer one).
    fn weight(&mut self, thread_id: u64, at: Instant, every: u32) -> Duration {
        let cap = self.settings.interval * 5 * every.max(1);
        if self.last_seen.len() >= MAX_THREADS_KEPT && !self.last_seen.contains_key(&thread_id) {
            // Threads come and go (a target may start hundreds a second): forget the ones
            // not seen for a while.
            self.last_seen
                .retain(|_, seen| at.saturating_duration_since(*seen) < Duration::from_secs(5));
        }
        match self.last_seen.insert(thread_id, at) {
            Some(prev) => at.saturating_duration_since(prev).min(cap),
            None => self.settings.interval,
        }
    }

    fn add_sample(&mut self, sample: &Sample) {
        let a = &mut self.analysis;
        a.samples += 1;
        if a.first_at.is_none() {
            a.first_at = Some(sample.at);
            a.first_unix = sample.unix;
        }
        if let Some(gap) = a
            .last_at
            .map(|last| sample.at.saturating_duration_since(last))
            .filter(|&gap| gap > self.settings.gap())
        {
            let ms = gap.as_secs_f64() * 1000.0;
            a.gaps.count += 1;
            a.gaps.total_ms += ms;
            a.gaps.longest_ms = a.gaps.longest_ms.max(ms);
        }
        a.last_at = Some(sample.at);
        a.clock_anchor = Some((sample.at, sample.unix));
        let gil_holder = sample.threads.iter().find(|t| t.owns_gil);
        for thread in &sample.threads {
            let weight = self.weight(thread.os_tid, sample.at, thread.every);
            self.closing_counters = thread.counters.clone().map(|c| (thread.os_tid, c));
            self.add_thread(sample, thread, gil_holder, weight);
            self.closing_counters = None;
        }
    }

    fn add_thread(
        &mut self,
        sample: &Sample,
        thread: &ThreadSample,
        gil_holder: Option<&ThreadSample>,
        weight: Duration,
    ) {
        let (at, running_tasks) = (sample.at, &sample.running_tasks[..]);
        let weight_us = weight.as_micros() as u64;
        let tid = thread.os_tid;
        let a = &mut self.analysis;
        if let Some(name) = &thread.name {
            if a.thread_names.len() >= MAX_THREADS_KEPT && !a.thread_names.contains_key(&tid) {
                // Thread churn: keep the loop threads' names, forget the rest.
                let loops = &a.loops;
                a.thread_names.retain(|tid, _| loops.contains_key(tid));
            }
            a.thread_names
                .entry(tid)
                .or_insert_with(|| name.to_string());
        }
        if let Some(ns_tid) = thread.ns_tid {
            if a.ns_thread_ids.len() < MAX_THREADS_KEPT || a.ns_thread_ids.contains_key(&tid) {
                a.ns_thread_ids.insert(tid, ns_tid);
            }
        }
        let stack = (!thread.frames.is_empty()).then(|| a.symbols.intern_stack(&thread.frames));
        if let (Some(stack), OsState::Running) = (stack, &thread.os_state) {
            add_weight(&mut a.active_profile, tid, stack, weight_us);
        }
        if self.settings.only_thread.is_some_and(|only| only != tid) {
            return;
        }
        let gil_holder = gil_holder.filter(|h| h.os_tid != tid);
        let cut = thread.truncated && !thread.frames.is_empty();
        let facts = match stack {
            // Only a thread already known to run a loop: a cut stack holds no loop frames.
            _ if cut => match a.loops.get(&tid) {
                Some(l) => StackFacts::cut(&thread.frames, l.kind),
                None => return,
            },
            Some(id) => *self
                .stack_facts
                .entry(id)
                .or_insert_with(|| StackFacts::of(&thread.frames)),
            None => StackFacts::of(&thread.frames),
        };
        let (position, gil_stall) = with_kernel_view(facts.position, thread, gil_holder);
        let kind = match position.kind() {
            Some(kind) => kind,
            None => {
                self.no_loop_in_sample(tid, thread, at);
                return;
            }
        };
        let base_frame = a
            .symbols
            .intern_frame(thread.frames.last().expect("a loop has frames"));
        let loop_thread = a.loops.entry(tid).or_insert_with(|| {
            LoopThread::new(
                tid,
                thread.name.as_deref().map(String::from),
                kind,
                base_frame,
            )
        });
        loop_thread.observed += weight;
        loop_thread.saw(kind, thread.name.as_deref());
        let counters_before = match &thread.counters {
            Some(counters) => loop_thread.last_counters.replace(ThreadCounters {
                busiest_file: None,
                ..counters.clone()
            }),
            None => loop_thread.last_counters.clone(),
        };
        let first_sample = loop_thread.last_sample_at.is_none();
        let previous = loop_thread.last_sample_at.replace(at);
        let after_gap =
            previous.is_some_and(|p| at.saturating_duration_since(p) > self.settings.gap());

        if position == LoopPosition::Internal(LoopKind::Uvloop) && !gil_stall {
            if let Some(clock) = thread.context_ver {
                // uvloop's C code runs between callbacks, within an iteration and across
                // iterations alike, and polls with a zero timeout no sample catches: frames
                // cannot tell a saturated loop's iterations apart. The callback clock can:
                // here, outside any callback, the loop is busy but no callback holds it, and a
                // callback run ends — unless the clock is still the run's (a read that caught
                // a callback between its frames).
                loop_thread.busy += weight;
                let same_callback = loop_thread
                    .run
                    .as_ref()
                    .is_some_and(|run| run.task_generation == Some(StepMark::Context(clock)));
                if !same_callback {
                    self.close_run(tid, at, false);
                }
                return;
            }
        }
        if !position.is_busy() {
            if let Some(clock) = thread.context_ver {
                let votes = &mut loop_thread.idle_clock_parity[(clock % 2) as usize];
                *votes = votes.saturating_add(1);
            }
            self.went_idle(tid, at);
            return;
        }

        // A different loop run (a new asyncio.run in the same thread) ends the previous busy
        // run even when no idle sample came between them.
        let context = facts.loop_context;
        if !cut
            && loop_thread
                .run
                .as_ref()
                .is_some_and(|run| run.loop_context != context)
        {
            self.close_run(tid, at, false);
        }
        let (task, key) = match position {
            // Where a cut stack's callback begins is unknown: it continues the run's.
            LoopPosition::Callback { root, .. } if cut => {
                (task_for(&thread.frames[root].function, running_tasks), None)
            }
            LoopPosition::Callback { root, .. } => {
                let root = &thread.frames[root];
                let task = task_for(&root.function, running_tasks);
                let key = CallbackKey::new(&root.function, &root.file, task.map(|t| t.address));
                (task, Some(key))
            }
            _ => (None, None),
        };
        // A sampling gap is no evidence: what the loop did in it is unknown, so a busy run is
        // not stretched across it (it ends at its last busy sample, and a new one starts) —
        // unless the target itself proves no other step ran: the same task is being stepped
        // and asyncio's running-task table did not change (every step start and end changes
        // it), so one task step went on through the gap.
        let generation = self.step_generation(thread, sample.task_generation);
        let confirmed = thread.context_ver.is_some() && thread.clock_after == thread.context_ver;
        let handle_index = thread
            .handle_index
            .filter(|h| self.inside_a_handle(tid, h.clock))
            .map(|h| (h.index, h.clock));
        if after_gap && !self.same_step_across_gap(tid, key, generation, confirmed) {
            self.close_run(tid, at, false);
        }
        let run_once_line = facts.run_once_line;
        let split_at = self.run_boundary(
            tid,
            at,
            position,
            (key, generation, confirmed),
            (run_once_line, handle_index),
        );
        if let Some(boundary) = split_at {
            self.finish_run(tid, boundary, false);
        }
        let a = &mut self.analysis;
        let loop_thread = a.loops.get_mut(&tid).expect("known loop thread");
        loop_thread.busy += weight;
        let stack = stack.expect("a busy loop has frames");
        add_weight(&mut a.busy_profile, tid, stack, weight_us);
        let interval = self.settings.interval;
        let run = loop_thread.run.get_or_insert_with(|| {
            // Start halfway between the last idle sample and this one, unless the gap says we
            // missed reads (then the first busy sample is the best honest bound); after a split,
            // where the previous callback ended.
            let start_at = match loop_thread.last_idle_at {
                _ if split_at.is_some() => split_at.expect("checked"),
                Some(idle) if !first_sample && at.duration_since(idle) <= interval * 5 => {
                    incident::midway(idle, at)
                }
                _ => at,
            };
            let mut run = BusyRun::new(start_at, at);
            run.loop_context = context;
            run.note_step(key.as_ref(), generation, confirmed);
            let clock = thread.context_ver;
            run.iteration_by_index(at, clock, handle_index);
            run.evidence
                .counters_start(thread.counters.as_ref().or(counters_before.as_ref()));
            run
        });
        let callback = match position {
            LoopPosition::Callback { root, .. } if cut => {
                let culprit = a.symbols.intern_frame(&thread.frames[facts.culprit]);
                let (root_frame, root_id) = run.dominant_callback().unwrap_or_else(|| {
                    let root = &thread.frames[root];
                    let id = incident::root_id(&root.function, &root.file);
                    (a.symbols.intern_frame(root), id)
                });
                Some((culprit, root_frame, root_id))
            }
            LoopPosition::Callback { root, .. } => {
                let culprit_idx = facts.culprit;
                let culprit = a.symbols.intern_frame(&thread.frames[culprit_idx]);
                let root_frame = a.symbols.intern_frame(&thread.frames[root]);
                Some((
                    culprit,
                    root_frame,
                    key.expect("a callback has a key").root_id(),
                ))
            }
            _ if gil_stall => gil_holder.and_then(|holder| {
                // Nothing of the loop's runs: the culprit is the holder's own code.
                let culprit = holder_culprit(&mut a.symbols, holder)?;
                let leaf = &thread.frames[0];
                let leaf_id = a.symbols.intern_frame(leaf);
                Some((
                    culprit,
                    leaf_id,
                    incident::root_id(&leaf.function, &leaf.file),
                ))
            }),
            _ => None,
        };
        run.last_run_once_line = run_once_line;
        run.observe(BusyObservation {
            at,
            stack,
            weight_us,
            callback,
            task,
            cut,
        });
        if let Some(holder) = gil_holder.filter(|_| waits_for_gil(thread)) {
            if let Some(culprit) = holder_culprit(&mut a.symbols, holder) {
                run.observe_gil_holder(culprit);
            }
        }
        run.evidence.add(thread, facts.library, gil_holder);
    }

    /// A sample of `tid` whose frames show no loop: if it ran one, either it stopped (its stack
    /// still starts where the loop's did) or the read was torn (non-blocking reads race the
    /// target, and a coroutine switching in or out leaves a stack cut short, e.g. [crunch,
    /// step]).
    fn no_loop_in_sample(&mut self, tid: u64, thread: &ThreadSample, at: Instant) {
        let a = &mut self.analysis;
        let Some(loop_thread) = a.loops.get_mut(&tid) else {
            return;
        };
        if thread.frames.last() == Some(a.symbols.frames.get(loop_thread.base_frame)) {
            self.close_run(tid, at, false);
        } else {
            loop_thread.torn_samples += 1;
            // Torn frames, but the kernel has the thread waiting in epoll: whatever the frames
            // were, the loop is in its selector now.
            if waits_in_epoll(thread) {
                self.went_idle(tid, at);
            }
        }
    }

    /// Whether callback clock `clock` of loop thread `tid` is inside a handle's Context: the
    /// parity its idle samples do not have (most of them, at least 3). Between two handles
    /// `_run_once`'s index may already be the next one's while the clock is still the last
    /// one's: the index rule takes only readings inside a handle.
    fn inside_a_handle(&self, tid: u64, clock: u64) -> bool {
        let Some(l) = self.analysis.loops.get(&tid) else {
            return false;
        };
        let [even, odd] = l.idle_clock_parity;
        let outside = match even.cmp(&odd) {
            std::cmp::Ordering::Greater if even >= 3 => 0,
            std::cmp::Ordering::Less if odd >= 3 => 1,
            _ => return false,
        };
        clock % 2 != outside
    }

    /// The loop of `tid` was seen idle at `at`: its busy run, if any, ends.
    fn went_idle(&mut self, tid: u64, at: Instant) {
        self.close_run(tid, at, false);
        if let Some(l) = self.analysis.loops.get_mut(&tid) {
            l.last_idle_at = Some(at);
        }
    }

    /// What tells this thread's callbacks apart: its callback clock (`context_ver`, own reader,
    /// every version), else asyncio's running-task table — shared by every loop of the
    /// process, so only when there is one loop.
    fn step_generation(
        &self,
        thread: &ThreadSample,
        table: Option<TaskGeneration>,
    ) -> Option<StepMark> {
        if let Some(clock) = thread.context_ver {
            return Some(StepMark::Context(clock));
        }
        table
            .filter(|_| self.analysis.loops.len() == 1)
            .map(StepMark::Table)
    }

    /// Whether the busy run of `tid` was in the step of the task `key` names, under the same
    /// step `generation` (see [`Self::step_generation`]).
    fn same_step_across_gap(
        &self,
        tid: u64,
        key: Option<CallbackKey>,
        generation: Option<StepMark>,
        confirmed: bool,
    ) -> bool {
        let (Some(key), Some(generation)) = (key, generation) else {
            return false;
        };
        let run = self.analysis.loops.get(&tid).and_then(|l| l.run.as_ref());
        run.is_some_and(|run| run.same_step(&key, generation, confirmed) == Some(true))
    }

    /// Where the busy run of `tid` must end before this busy sample because the loop went
    /// round without being seen idle (docs/how-it-works.md, "Incidents"):
    /// - a selector loop's `_run_once` went back from its handle loop to the part before it (a
    ///   new iteration, its selector polled too briefly to sample);
    /// - uvloop: a new callback clock value (a uvloop run is one callback);
    /// - `_run_once`'s handle index and the callback clock disagree: the clock moved further
    ///   than two per handle the index moved on (`BusyRun::iteration_by_index`);
    /// - the same task stepped again: under a new callback clock, both task reads proven
    ///   (`confirmed`); without the clock, asyncio's running-task table changed in between
    ///   (only with one loop in the process, as all loops share the table);
    /// - one callback that alone held the loop for the threshold was followed by another.
    ///
    /// Also keeps the per-run state these rules need up to date.
    fn run_boundary(
        &mut self,
        tid: u64,
        at: Instant,
        position: LoopPosition,
        (key, generation, confirmed): (Option<CallbackKey>, Option<StepMark>, bool),
        (run_once_line, handle_index): (Option<u32>, Option<(u64, u64)>),
    ) -> Option<Instant> {
        let threshold = self.settings.threshold;
        let loop_thread = self.analysis.loops.get_mut(&tid)?;
        if let (
            LoopPosition::Callback {
                kind: LoopKind::Selector,
                ..
            },
            Some(line),
        ) = (position, run_once_line)
        {
            loop_thread.handle_run_lines.add(line);
        }
        let handle_run = loop_thread.handle_run_lines.most_frequent();
        let kind = loop_thread.kind;
        let run = loop_thread.run.as_mut()?;
        let midway = incident::midway(run.last_busy_at, at);
        // uvloop: no iteration boundary is ever seen (see `add_thread`), so a run is one
        // callback, and a new callback clock — whatever the task — is the next callback.
        if let (LoopKind::Uvloop, Some(StepMark::Context(now))) = (kind, generation) {
            let before = run.task_generation.replace(StepMark::Context(now));
            if before.is_some_and(|b| b != StepMark::Context(now)) {
                return Some(midway);
            }
        }
        if let (Some(line), Some(handle_run)) = (run_once_line, handle_run) {
            if loop_detect::new_iteration(run.last_run_once_line, line, handle_run) {
                return Some(midway);
            }
        }
        let clock = match generation {
            Some(StepMark::Context(clock)) => Some(clock),
            _ => None,
        };
        if let Some(boundary) = run.iteration_by_index(at, clock, handle_index) {
            return Some(boundary);
        }
        let key = key?;
        if let Some(generation) = generation {
            let stepped_again = run.same_step(&key, generation, confirmed) == Some(false);
            run.note_step(Some(&key), Some(generation), confirmed);
            if stepped_again {
                return Some(midway);
            }
        }
        run.split_point(key, clock, at, threshold)
    }

    /// Ends the busy run of `tid`, if any, at `idle_at` (the first non-busy sample). A run
    /// reaching the threshold becomes an incident.
    fn close_run(&mut self, tid: u64, idle_at: Instant, truncated: bool) {
        let a = &mut self.analysis;
        let Some(loop_thread) = a.loops.get_mut(&tid) else {
            return;
        };
        let Some(run) = &loop_thread.run else {
            return;
        };
        let end_at = if truncated {
            run.last_busy_at
        } else if idle_at.duration_since(run.last_busy_at) <= self.settings.interval * 5 {
            incident::midway(run.last_busy_at, idle_at)
        } else {
            run.last_busy_at
        };
        self.finish_run(tid, end_at, truncated);
    }

    /// Ends the busy run of `tid`, if any, at `end_at`; one reaching the threshold becomes an
    /// incident.
    fn finish_run(&mut self, tid: u64, end_at: Instant, truncated: bool) {
        let a = &mut self.analysis;
        let Some(loop_thread) = a.loops.get_mut(&tid) else {
            return;
        };
        let Some(mut run) = loop_thread.run.take() else {
            return;
        };
        if let Some((_, counters)) = self.closing_counters.as_ref().filter(|(t, _)| *t == tid) {
            run.evidence.add_counters(counters);
        }
        let duration = end_at.saturating_duration_since(run.start_at);
        let duration_ms = duration.as_secs_f64() * 1000.0;
        if self.settings.timeline {
            if a.timeline.len() < MAX_TIMELINE {
                let start_unix = a.unix_at(run.start_at);
                a.timeline.push(BusySpan {
                    thread_id: tid,
                    start_unix,
                    duration_ms,
                });
            } else {
                a.timeline_dropped += 1;
            }
        }
        let Some(loop_thread) = a.loops.get_mut(&tid) else {
            return;
        };
        if let Some(first) = a.first_at {
            loop_thread.busy_bins.add(
                run.start_at.saturating_duration_since(first).as_secs_f64(),
                end_at.saturating_duration_since(first).as_secs_f64(),
            );
        }
        loop_thread.record_stall(end_at, duration_ms);
        if duration < self.settings.threshold || run.samples == 0 {
            return;
        }
        self.emit(tid, &run, duration_ms, truncated);
    }

    /// Turns a closed busy run of `tid` into an incident.
    fn emit(&mut self, tid: u64, run: &BusyRun, duration_ms: f64, truncated: bool) {
        let a = &mut self.analysis;
        let Some(stack) = run.top_stack() else { return };
        let (culprit, callback) = match (run.top_culprit(), run.top_callback()) {
            (Some(culprit), Some(callback)) => (culprit, callback),
            // Only loop bookkeeping, no callback seen: attribute to the top stack's leaf.
            _ => {
                let leaf = a.symbols.stacks.get(stack)[0];
                (leaf, leaf)
            }
        };
        let start_unix = a.unix_at(run.start_at);
        let source_of = |sources: &mut SourceCache, id: FrameId| {
            let frame = a.symbols.frames.get(id);
            sources.line(&frame.file, frame.line)
        };
        let mut culprit = culprit;
        let mut culprit_source = source_of(&mut self.sources, culprit);
        let cause = run.evidence.decide(culprit_source.as_deref());
        // A loop starved of the GIL is fixed in the code of the thread that held it.
        if cause.category == "gil" {
            if let Some(holder) = run.top_gil_culprit() {
                culprit = holder;
                culprit_source = source_of(&mut self.sources, culprit);
            }
        }
        let culprit_context = {
            let frame = a.symbols.frames.get(culprit);
            self.sources
                .context(&frame.file, frame.line, incident::CONTEXT_LINES)
        };
        let loop_thread = a.loops.get_mut(&tid).expect("closing a known loop");
        loop_thread.incidents += 1;
        let incident = Incident {
            start_unix,
            start_offset_s: a.first_at.map_or(0.0, |first| {
                run.start_at.saturating_duration_since(first).as_secs_f64()
            }),
            duration_ms,
            samples: run.samples,
            pid: self.settings.pid,
            thread_id: tid,
            thread_name: loop_thread.name.clone(),
            loop_kind: loop_thread.kind,
            kind: run.kind(),
            kind_evidence: run.kind_evidence(),
            culprit,
            callback,
            stack,
            task: run.top_task_at().map(|(address, mut task)| {
                task.awaited_by_chain = a.await_graph.chain(address, &task.name);
                task
            }),
            cause,
            culprit_source,
            culprit_context,
            truncated,
            stack_truncated: 2 * run.cut_samples >= run.samples,
            stack_weights_us: {
                let mut stacks: Vec<(StackId, u64)> = run
                    .stack_weights_us
                    .iter()
                    .map(|(s, us)| (*s, *us))
                    .collect();
                stacks.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                stacks.truncate(incident::MAX_INCIDENT_STACKS);
                stacks
            },
        };
        for (&stack, &us) in &run.stack_weights_us {
            add_weight(&mut a.blocking_profile, tid, stack, us);
        }
        a.incidents_total += 1;
        let culprit_frame = a.symbols.frames.get(incident.culprit);
        a.sites
            .entry(sites::SiteKey::of(culprit_frame))
            .or_default()
            .add(&incident, culprit_frame.line);
        if self.settings.stream {
            self.closed.push(incident.clone());
        }
        a.incidents.push(incident);
        if a.incidents.len() > self.settings.max_incidents.max(1) {
            let shortest = a
                .incidents
                .iter()
                .enumerate()
                .min_by(|x, y| x.1.duration_ms.total_cmp(&y.1.duration_ms))
                .map(|(i, _)| i)
                .unwrap_or(0);
            a.incidents.remove(shortest);
        }
    }

    /// Closes what is still open (a loop busy when the recording stopped) and returns the
    /// analysis.
    pub fn finish(mut self) -> Analysis {
        self.close_all();
        self.analysis
    }

    /// Closes every busy run still open, as the recording stops (its incidents are
    /// `truncated`).
    pub fn close_all(&mut self) {
        let open: Vec<(u64, Instant)> = self
            .analysis
            .loops
            .values()
            .filter_map(|l| l.run.as_ref().map(|r| (l.thread_id, r.last_busy_at)))
            .collect();
        for (tid, at) in open {
            self.close_run(tid, at, true);
        }
    }
}

/// The running task whose coroutine is the callback's root (`root` is the root frame's
/// function name: qualified on 3.11+, bare before). With a single running task and no name
/// match (uvloop wraps `main()` in its own coroutine), that task.
pub fn task_for<'t>(root: &str, running: &'t [RunningTask]) -> Option<&'t RunningTask> {
    let matches = |task: &&RunningTask| {
        task.coroutine == root
            || task.coroutine.ends_with(&format!(".{root}"))
            || root.ends_with(&format!(".{}", task.coroutine))
    };
    let mut found = running.iter().filter(matches);
    match (found.next(), found.next()) {
        (Some(task), None) => Some(task),
        (None, _) if running.len() == 1 => running.first(),
        _ => None,
    }
}

/// The GIL holder's innermost user frame, interned.
fn holder_culprit(symbols: &mut Symbols, holder: &ThreadSample) -> Option<FrameId> {
    let last = holder.frames.len().checked_sub(1)?;
    let idx = culprit::culprit_index(&holder.frames, last);
    Some(symbols.intern_frame(&holder.frames[idx]))
}

/// Off CPU in `epoll_wait`/`epoll_pwait`/`epoll_pwait2`: how a selector (or uvloop) waits for
/// I/O. Sync libraries called from callbacks wait with `poll`/`select`, not epoll.
fn waits_in_epoll(thread: &ThreadSample) -> bool {
    matches!(&thread.os_state, OsState::Waiting { syscall: Some(s), .. } if syscalls::is_epoll_wait(s.nr))
}

/// Where the loop is, by its frames corrected by what the kernel says; and whether it is
/// stalled taking the GIL from `gil_holder`.
fn with_kernel_view(
    by_frames: LoopPosition,
    thread: &ThreadSample,
    gil_holder: Option<&ThreadSample>,
) -> (LoopPosition, bool) {
    match by_frames {
        // uvloop's idle wait and its C code between callbacks look alike in the frames; the
        // kernel tells them apart: a thread waiting in epoll is not running.
        LoopPosition::Idle(LoopKind::Uvloop) if thread.os_state == OsState::Running => {
            (LoopPosition::Internal(LoopKind::Uvloop), false)
        }
        // Back from its selector but stuck taking the GIL another thread holds: the loop
        // cannot run, whatever its frames say.
        LoopPosition::Idle(kind) if gil_holder.is_some() && waits_for_gil(thread) => {
            (LoopPosition::Internal(kind), true)
        }
        // Loop bookkeeping by the frames while the kernel has the thread waiting in epoll: the
        // frames were read a moment before the loop entered its selector.
        LoopPosition::Internal(LoopKind::Selector) if waits_in_epoll(thread) => {
            (LoopPosition::Idle(LoopKind::Selector), false)
        }
        position => (position, false),
    }
}

/// Off CPU in `futex` without the GIL: how a thread waiting to take the GIL looks.
fn waits_for_gil(thread: &ThreadSample) -> bool {
    !thread.owns_gil
        && matches!(&thread.os_state, OsState::Waiting { syscall: Some(s), .. } if s.nr == syscalls::FUTEX)
}

pub use crate::text::{frame_label, short_path};

#[cfg(test)]
mod tests;
