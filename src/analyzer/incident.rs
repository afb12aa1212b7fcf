//! A busy run: the span during which one loop thread did not return to its selector. The run
//! accumulates bounded evidence (stack counts, culprit counts, cause evidence); when the loop
//! goes idle again, a run that lasted at least the threshold becomes an [`Incident`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cause::{Cause, CauseEvidence};
use super::intern::{FrameId, StackId};
use super::loop_detect::{self, LoopKind};
use crate::remote::source::SourceContext;
use crate::sample::{RunningTask, TaskGeneration};

/// Lines of source kept either side of an incident's culprit line.
pub const CONTEXT_LINES: u32 = 3;

/// What tells one callback (task step) of a loop from the next, as far as the reader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMark {
    /// The process's running-task table (3.8–3.13, py-spy reader): it changes with every
    /// step of any task of any loop, so it speaks of one task's steps only.
    Table(TaskGeneration),
    /// The thread's callback clock (`context_ver`, [`crate::sample::ThreadSample::context_ver`],
    /// own reader): the same value is the same callback, another value a later one. Per
    /// thread, never reused, on every version and on uvloop. For the same known task (and
    /// root), read where the clock proved the task read, a changed value is that task's next
    /// step.
    Context(u64),
}

/// Blocking (one callback held the loop) or saturation (many callbacks in one iteration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentKind {
    /// The same callback (coroutine or plain callback) throughout.
    Blocking,
    /// Several callbacks ran back to back without the loop polling for I/O.
    Saturation,
}

/// An asyncio task, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskInfo {
    /// `task.get_name()`.
    pub name: String,
    /// The coroutine's qualified name.
    pub coroutine: String,
    /// The tasks waiting for it, outward: the one awaiting it, the one awaiting that, ... (as
    /// the last task census found them; empty when none was, or none waits).
    pub awaited_by_chain: Vec<TaskRef>,
}

/// A task named in another's await chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRef {
    /// `task.get_name()`.
    pub name: String,
    /// The coroutine's qualified name.
    pub coroutine: String,
}

/// A stall of an event loop at least as long as the threshold.
#[derive(Debug, Clone)]
pub struct Incident {
    /// Wall-clock start, seconds since the epoch.
    pub start_unix: f64,
    /// Estimated duration in milliseconds (boundaries are midpoints between samples).
    pub duration_ms: f64,
    /// Start, in seconds since the recording's first sample by the monotonic clock: where it
    /// sits on a timeline drawn from monotonic time (busy bins), whatever the wall clock did.
    pub start_offset_s: f64,
    /// Busy samples inside the incident.
    pub samples: u32,
    /// Process of the loop thread.
    pub pid: i32,
    /// Kernel thread id of the loop thread.
    pub thread_id: u64,
    /// Python thread name, when known.
    pub thread_name: Option<String>,
    /// Loop implementation.
    pub loop_kind: LoopKind,
    /// Blocking or saturation.
    pub kind: IncidentKind,
    /// The sample counts `kind` was decided from.
    pub kind_evidence: KindEvidence,
    /// Innermost user-code frame, most frequent over the incident.
    pub culprit: FrameId,
    /// Root of the running callback (the coroutine or callback function), at its most
    /// frequent line.
    pub callback: FrameId,
    /// Most frequent full stack.
    pub stack: StackId,
    /// Its stacks by time, heaviest first (at most [`MAX_INCIDENT_STACKS`]): the per-incident
    /// profile (pprof's incident-labelled samples).
    pub stack_weights_us: Vec<(StackId, u64)>,
    /// The asyncio task that ran, most frequent over the incident.
    pub task: Option<TaskInfo>,
    /// Why.
    pub cause: Cause,
    /// Text of the culprit line, when the source file could be read.
    pub culprit_source: Option<String>,
    /// The culprit line with [`CONTEXT_LINES`] either side, read with it (report.html shows the
    /// block it sits in; an output never reads the target itself).
    pub culprit_context: Option<SourceContext>,
    /// The recording ended (or the thread stopped running its loop) while still busy.
    pub truncated: bool,
    /// Most of its samples had a stack deeper than the reader reads: `stack` holds the
    /// innermost frames only (the culprit is among them; the loop's frames are not).
    pub stack_truncated: bool,
}

/// Stacks an incident keeps with their weights.
pub const MAX_INCIDENT_STACKS: usize = 64;

impl Incident {
    /// A name for the incident, the same in every output: `<pid>.<thread id>.<start, ms since
    /// the epoch>`.
    pub fn id(&self) -> String {
        format!(
            "{}.{}.{}",
            self.pid,
            self.thread_id,
            (self.start_unix * 1000.0).round() as u64
        )
    }
}

/// Busy samples that did not belong to the dominant callback: what tells a saturation (many
/// callbacks in one loop iteration) from one blocking callback. Written to `incidents.json`
/// so a reader can see why an incident got its kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KindEvidence {
    /// Samples in a callback other than the most frequent callback root.
    pub other_callback_samples: u32,
    /// Samples stepping a task other than the most frequent task.
    pub other_task_samples: u32,
    /// Samples of loop bookkeeping between two callback samples.
    pub bookkeeping_samples: u32,
}

/// Which callback a sample was in: its root (function and file, hashed) and, when it could be
/// read, the task being stepped.
#[derive(Debug, Clone, Copy)]
pub struct CallbackKey {
    root: u64,
    task: Option<u64>,
}

/// Identity of a callback root: its function and file, hashed, so a busy sample compares and
/// counts roots without copying strings.
pub fn root_id(function: &str, file: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (function, file).hash(&mut hasher);
    hasher.finish()
}

/// Midway between two sample times: where an unseen change between them is estimated.
pub fn midway(from: Instant, to: Instant) -> Instant {
    from + to.saturating_duration_since(from) / 2
}

impl CallbackKey {
    /// The key of a callback whose root frame is `function` in `file`.
    pub fn new(function: &str, file: &str, task: Option<u64>) -> Self {
        CallbackKey {
            root: root_id(function, file),
            task,
        }
    }

    /// The callback root's identity ([`root_id`]).
    pub fn root_id(&self) -> u64 {
        self.root
    }

    /// Same root, and not two different known tasks (a task that could not be read is no
    /// evidence either way).
    fn same_as(&self, other: &CallbackKey) -> bool {
        self.root == other.root && !matches!((self.task, other.task), (Some(a), Some(b)) if a != b)
    }
}

/// A stretch of consecutive samples in one callback.
#[derive(Debug)]
struct Segment {
    key: CallbackKey,
    /// The callback clock of its samples (own reader): one value, one callback.
    clock: Option<u64>,
    start_at: Instant,
    last_at: Instant,
}

/// One busy span in progress.
#[derive(Debug)]
pub struct BusyRun {
    /// Estimated start (midpoint between the last idle and first busy sample).
    pub start_at: Instant,
    /// Time of the latest busy sample.
    pub last_busy_at: Instant,
    /// Which run of the loop this is ([`super::loop_detect::loop_context`]).
    pub loop_context: Option<u64>,
    /// `_run_once`'s line at the latest sample (selector loops).
    pub last_run_once_line: Option<u32>,
    /// The step mark of the latest sample ([`StepMark`]).
    pub task_generation: Option<StepMark>,
    /// The latest sample whose running task its callback clock confirmed
    /// ([`crate::sample::ThreadSample::clock_after`]): (root, task, clock).
    confirmed_step: Option<(u64, u64, u64)>,
    /// `_run_once`'s handle index and the callback clock of the latest sample inside a
    /// callback that had both (selector loops, own reader).
    last_handle_index: Option<(u64, u64)>,
    /// The last sample under that sample's clock (its callback's last), and the first after.
    index_callback_span: Option<(Instant, Option<Instant>)>,
    /// Busy samples so far.
    pub samples: u32,
    /// Of them, samples whose stack the reader cut (deeper than it reads).
    pub cut_samples: u32,
    stacks: HashMap<StackId, u32>,
    culprits: HashMap<FrameId, u32>,
    callbacks: HashMap<FrameId, u32>,
    /// Samples per callback root ([`root_id`]), to notice when another callback runs.
    roots: HashMap<u64, u32>,
    tasks: HashMap<u64, (u32, TaskInfo)>,
    seen_callback: bool,
    pending_internal: u32,
    interior_internal: u32,
    /// Cause evidence.
    pub evidence: CauseEvidence,
    /// Innermost user frame of the thread holding the GIL while the loop waited for it.
    gil_culprits: HashMap<FrameId, u32>,
    /// Stacks seen, with their sample counts (what `blocking.svg` aggregates).
    pub stack_weights_us: HashMap<StackId, u64>,
    /// The callback running now, since when.
    segment: Option<Segment>,
    /// Another callback seen right after a long one, and the boundary between them; confirmed
    /// (and the run split) when the next callback sample is in it too.
    pending_switch: Option<(CallbackKey, Instant)>,
}

/// What one busy sample contributes to a run.
pub struct BusyObservation<'a> {
    /// Sample time.
    pub at: Instant,
    /// Interned full stack.
    pub stack: StackId,
    /// Real time this sample stands for, microseconds.
    pub weight_us: u64,
    /// For a callback sample: culprit frame, root frame, and the root's [`root_id`].
    pub callback: Option<(FrameId, FrameId, u64)>,
    /// The task being stepped, when one is and it could be read.
    pub task: Option<&'a RunningTask>,
    /// The stack was cut by the reader (deeper than it reads).
    pub cut: bool,
}

impl BusyRun {
    /// Starts a run whose estimated start is `start_at`.
    pub fn new(start_at: Instant, first_at: Instant) -> Self {
        BusyRun {
            start_at,
            last_busy_at: first_at,
            loop_context: None,
            last_run_once_line: None,
            task_generation: None,
            confirmed_step: None,
            last_handle_index: None,
            index_callback_span: None,
            samples: 0,
            cut_samples: 0,
            stacks: HashMap::new(),
            culprits: HashMap::new(),
            callbacks: HashMap::new(),
            roots: HashMap::new(),
            tasks: HashMap::new(),
            seen_callback: false,
            pending_internal: 0,
            interior_internal: 0,
            evidence: CauseEvidence::default(),
            gil_culprits: HashMap::new(),
            stack_weights_us: HashMap::new(),
            segment: None,
            pending_switch: None,
        }
    }

    /// Whether the callback `key` names, seen under step mark `generation`, is in the same step
    /// as the run's latest sample: `Some(true)` the same step (an unchanged callback clock, or
    /// the same task under an unchanged task table), `Some(false)` the same task stepped again
    /// (the loop went round), `None` when that cannot be told. `confirmed`: this sample's task
    /// read is proven to be of its callback (see [`Self::note_step`]).
    pub fn same_step(
        &self,
        key: &CallbackKey,
        generation: StepMark,
        confirmed: bool,
    ) -> Option<bool> {
        let known = self.task_generation?;
        match (known, generation) {
            // The same callback clock is the same callback, whatever the task read said.
            (StepMark::Context(a), StepMark::Context(b)) if a == b => Some(true),
            // Another clock is another callback; whether it is the same task's next step only
            // task reads the clock proved tell (the task is read after the stack, and a loop
            // of short callbacks is often in the next one by then: an unproven read once split
            // a 1.4 s saturation of one coroutine's tasks in two).
            (_, StepMark::Context(now)) => {
                let (root, task, clock) = self.confirmed_step?;
                (confirmed && key.root == root && key.task == Some(task)).then_some(clock == now)
            }
            _ => self.same_task(key).then_some(known == generation),
        }
    }

    /// Notes a busy sample at `at` under callback clock `clock`, with `_run_once`'s handle
    /// index when read inside a callback. Returns where the run ends if the two show the loop
    /// went round since the previous index ([`loop_detect::new_iteration_by_index`]): the
    /// earliest the iteration can have ended, after the callback that sample was in.
    pub fn iteration_by_index(
        &mut self,
        at: Instant,
        clock: Option<u64>,
        index: Option<(u64, u64)>,
    ) -> Option<Instant> {
        if let (Some((_, index_clock)), Some(clock), Some((last, next))) = (
            self.last_handle_index,
            clock,
            self.index_callback_span.as_mut(),
        ) {
            if clock == index_clock {
                *last = at;
            } else if next.is_none() {
                *next = Some(at);
            }
        }
        let now = index?;
        let before = self.last_handle_index.replace(now);
        let span = self.index_callback_span.replace((at, None));
        if !before.is_some_and(|before| loop_detect::new_iteration_by_index(before, now)) {
            return None;
        }
        let (last, next) = span?;
        Some(midway(last, next.unwrap_or(at)))
    }

    /// Records the step mark of the run's latest sample, and its task when `confirmed` (the
    /// callback clock read after the task was unchanged: frames and task are of one callback).
    pub fn note_step(
        &mut self,
        key: Option<&CallbackKey>,
        generation: Option<StepMark>,
        confirmed: bool,
    ) {
        if generation.is_some() {
            self.task_generation = generation;
        }
        if let (true, Some(key), Some(StepMark::Context(clock))) = (confirmed, key, generation) {
            if let Some(task) = key.task {
                self.confirmed_step = Some((key.root, task, clock));
            }
        }
    }

    /// Whether `key` is the same known task (and root) as the callback of the latest sample.
    pub fn same_task(&self, key: &CallbackKey) -> bool {
        self.segment.as_ref().is_some_and(|s| {
            s.key.task.is_some() && s.key.task == key.task && s.key.root == key.root
        })
    }

    /// Where to end this run because the loop went straight from one long callback to another
    /// without going idle (two slow requests queued on one worker, polled with a zero timeout
    /// between them): each is its own incident, not one "saturation" twice as long. `long` is
    /// the incident threshold: only a callback that alone held the loop that long splits the
    /// run, so a true saturation of many short callbacks stays one incident. A single sample
    /// in another callback (a torn read) does not split; the second one in a row confirms.
    /// Returns the boundary (midway between the two callbacks' samples) when splitting.
    ///
    /// With the callback clock (`clock`, own reader) a segment is one value of it: one
    /// callback for sure, whatever its frames and task read say, and a new value ends it at
    /// once. By root and task alone, a sampler in step with a saturation's steps (2 ms ticks,
    /// 1/3 ms steps of three coroutines in turn) sees one root for 50 ms, its task read late
    /// and not matching: one "long callback" that split a real saturation in three.
    pub fn split_point(
        &mut self,
        key: CallbackKey,
        clock: Option<u64>,
        at: Instant,
        long: Duration,
    ) -> Option<Instant> {
        let Some(segment) = &mut self.segment else {
            self.segment = Some(Segment {
                key,
                clock,
                start_at: self.start_at,
                last_at: at,
            });
            return None;
        };
        if let (Some(was), Some(now)) = (segment.clock, clock) {
            let boundary = midway(segment.last_at, at);
            if was == now {
                segment.last_at = at;
                segment.key.task = segment.key.task.or(key.task);
                return None;
            }
            if segment.last_at.saturating_duration_since(segment.start_at) >= long {
                return Some(boundary);
            }
            *segment = Segment {
                key,
                clock,
                start_at: boundary,
                last_at: at,
            };
            return None;
        }
        if segment.key.same_as(&key) {
            segment.last_at = at;
            // A task read can fail on one sample; keep the task once one is known.
            segment.key.task = segment.key.task.or(key.task);
            self.pending_switch = None;
            return None;
        }
        if let Some((pending, boundary)) = self.pending_switch.take() {
            if pending.same_as(&key) {
                return Some(boundary);
            }
        }
        let boundary = midway(segment.last_at, at);
        if segment.last_at.saturating_duration_since(segment.start_at) >= long {
            self.pending_switch = Some((key, boundary));
        } else {
            *segment = Segment {
                key,
                clock,
                start_at: boundary,
                last_at: at,
            };
        }
        None
    }

    /// Adds a busy sample.
    pub fn observe(&mut self, obs: BusyObservation<'_>) {
        self.samples += 1;
        self.cut_samples += u32::from(obs.cut);
        self.last_busy_at = obs.at;
        *self.stacks.entry(obs.stack).or_default() += 1;
        *self.stack_weights_us.entry(obs.stack).or_default() += obs.weight_us;
        if let Some(task) = obs.task {
            self.tasks
                .entry(task.address)
                .or_insert_with(|| {
                    (
                        0,
                        TaskInfo {
                            name: task.name.clone(),
                            coroutine: task.coroutine.clone(),
                            awaited_by_chain: Vec::new(),
                        },
                    )
                })
                .0 += 1;
        }
        match obs.callback {
            Some((culprit, root, root_id)) => {
                *self.culprits.entry(culprit).or_default() += 1;
                *self.callbacks.entry(root).or_default() += 1;
                *self.roots.entry(root_id).or_default() += 1;
                if self.seen_callback {
                    self.interior_internal += self.pending_internal;
                }
                self.pending_internal = 0;
                self.seen_callback = true;
            }
            None => self.pending_internal += 1,
        }
    }

    /// Blocking when one callback ran throughout: the same root and task, and no loop
    /// bookkeeping between two of its samples. Non-blocking reads are occasionally torn (a
    /// stack cut short reads as another root, or as bookkeeping), and the edges of a run can
    /// catch the callback before or after, so each signal is measured against the dominant
    /// callback (never the first one seen, which may be such a stray sample), must be seen more
    /// than once and in a real share of the samples: in a true saturation many samples differ
    /// from the dominant callback, and bookkeeping shows in several percent of them.
    pub fn kind(&self) -> IncidentKind {
        let e = self.kind_evidence();
        let share = |n: u32| n as f64 / self.samples.max(1) as f64;
        let other_root = e.other_callback_samples >= 2 && share(e.other_callback_samples) >= 0.1;
        let other_task = e.other_task_samples >= 2 && share(e.other_task_samples) >= 0.1;
        let bookkeeping = e.bookkeeping_samples >= 2 && share(e.bookkeeping_samples) >= 0.03;
        if other_root || other_task || bookkeeping {
            IncidentKind::Saturation
        } else {
            IncidentKind::Blocking
        }
    }

    /// The counts [`BusyRun::kind`] decides from.
    pub fn kind_evidence(&self) -> KindEvidence {
        let roots = || self.roots.values().copied();
        let tasks = || self.tasks.values().map(|(n, _)| *n);
        KindEvidence {
            other_callback_samples: roots().sum::<u32>() - roots().max().unwrap_or(0),
            other_task_samples: tasks().sum::<u32>() - tasks().max().unwrap_or(0),
            bookkeeping_samples: self.interior_internal,
        }
    }

    /// Notes the code of the thread holding the GIL while the loop thread waited for it.
    pub fn observe_gil_holder(&mut self, culprit: FrameId) {
        *self.gil_culprits.entry(culprit).or_default() += 1;
    }

    /// Most frequent GIL-holder frame.
    pub fn top_gil_culprit(&self) -> Option<FrameId> {
        most_frequent(&self.gil_culprits)
    }

    /// Most frequent task, when it ran in at least half the callback samples: a plain callback
    /// (no task) caught together with a sample of the task step before it is not that task's.
    pub fn top_task(&self) -> Option<TaskInfo> {
        self.top_task_at().map(|(_, info)| info)
    }

    /// [`Self::top_task`] and the task object's address.
    pub fn top_task_at(&self) -> Option<(u64, TaskInfo)> {
        let callback_samples: u32 = self.roots.values().sum();
        self.tasks
            .iter()
            .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.0.cmp(a.0)))
            .filter(|(_, (n, _))| 2 * n >= callback_samples)
            .map(|(address, (_, info))| (*address, info.clone()))
    }

    /// Most frequent stack.
    pub fn top_stack(&self) -> Option<StackId> {
        most_frequent(&self.stacks)
    }

    /// Most frequent culprit frame.
    pub fn top_culprit(&self) -> Option<FrameId> {
        most_frequent(&self.culprits)
    }

    /// The dominant callback: its root frame and [`root_id`] (what a sample whose stack was
    /// cut above the callback's root is taken to continue).
    pub fn dominant_callback(&self) -> Option<(FrameId, u64)> {
        Some((self.top_callback()?, most_frequent(&self.roots)?))
    }

    /// Most frequent callback root frame.
    pub fn top_callback(&self) -> Option<FrameId> {
        most_frequent(&self.callbacks)
    }
}

/// Highest count wins; ties go to the lowest id (first interned), so results are stable.
pub fn most_frequent<K: Copy + Ord>(counts: &HashMap<K, u32>) -> Option<K> {
    counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn obs(at: Instant, root: Option<&'static str>) -> BusyObservation<'static> {
        BusyObservation {
            at,
            stack: 0,
            weight_us: 1000,
            callback: root.map(|r| (1, 2, root_id(r, "app.py"))),
            task: None,
            cut: false,
        }
    }

    #[test]
    fn one_root_is_blocking_even_with_bookkeeping_at_the_edges() {
        let t = Instant::now();
        let mut run = BusyRun::new(t, t);
        run.observe(obs(t, None));
        for i in 1..10 {
            run.observe(obs(t + Duration::from_millis(i), Some("handler")));
        }
        run.observe(obs(t + Duration::from_millis(11), None));
        assert_eq!(run.kind(), IncidentKind::Blocking);
    }

    #[test]
    fn bookkeeping_between_callbacks_is_saturation() {
        let t = Instant::now();
        let mut run = BusyRun::new(t, t);
        for i in 0..20 {
            run.observe(obs(t, Some("tiny")));
            if i % 5 == 0 {
                run.observe(obs(t, None));
            }
        }
        assert_eq!(run.kind(), IncidentKind::Saturation);
    }

    #[test]
    fn one_torn_bookkeeping_sample_is_noise() {
        let t = Instant::now();
        let mut run = BusyRun::new(t, t);
        for i in 0..60 {
            run.observe(obs(t, Some("handler")));
            if i == 30 {
                run.observe(obs(t, None));
            }
        }
        assert_eq!(run.kind(), IncidentKind::Blocking);
    }

    #[test]
    fn different_roots_is_saturation() {
        let t = Instant::now();
        let mut run = BusyRun::new(t, t);
        run.observe(obs(t, Some("a")));
        run.observe(obs(t, Some("b")));
        assert_eq!(
            run.kind(),
            IncidentKind::Blocking,
            "one odd sample is noise"
        );
        run.observe(obs(t, Some("c")));
        assert_eq!(run.kind(), IncidentKind::Saturation);
    }

    #[test]
    fn same_coroutine_in_different_tasks_is_saturation() {
        let t = Instant::now();
        let mut run = BusyRun::new(t, t);
        let task = |address| RunningTask {
            address,
            name: format!("Task-{address}"),
            coroutine: "tiny".into(),
        };
        let tasks = [task(1), task(1), task(2), task(3)];
        for (i, task) in tasks.iter().enumerate() {
            let mut o = obs(t + Duration::from_millis(i as u64), Some("tiny"));
            o.task = Some(task);
            run.observe(o);
            if i == 2 {
                assert_eq!(
                    run.kind(),
                    IncidentKind::Blocking,
                    "one odd sample is noise"
                );
            }
        }
        assert_eq!(run.kind(), IncidentKind::Saturation);
        assert_eq!(run.top_task().unwrap().name, "Task-1");
    }

    fn key(root: &str) -> CallbackKey {
        CallbackKey::new(root, "app.py", None)
    }

    #[test]
    fn a_long_callback_followed_by_another_splits_the_run() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let long = ms(50);
        let mut run = BusyRun::new(t, t);
        for i in 0..=60 {
            assert_eq!(run.split_point(key("first"), None, t + ms(i), long), None);
        }
        assert_eq!(
            run.split_point(key("second"), None, t + ms(62), long),
            None,
            "one sample in another callback may be a torn read"
        );
        assert_eq!(
            run.split_point(key("second"), None, t + ms(64), long),
            Some(t + ms(61)),
            "confirmed: the boundary is midway between the two callbacks"
        );
    }

    #[test]
    fn short_callbacks_and_torn_samples_do_not_split() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let long = ms(50);
        let mut run = BusyRun::new(t, t);
        // A saturation: many short callbacks.
        for i in 0..100 {
            let root = ["a", "b", "c"][i as usize % 3];
            assert_eq!(run.split_point(key(root), None, t + ms(i * 2), long), None);
        }
        // One long callback with a single odd sample inside.
        let mut run = BusyRun::new(t, t);
        for i in 0..100 {
            let root = if i == 70 { "torn" } else { "long" };
            assert_eq!(run.split_point(key(root), None, t + ms(i), long), None);
        }
        // The same coroutine in another task is another callback.
        let mut run = BusyRun::new(t, t);
        let task = |n| CallbackKey::new("handler", "app.py", Some(n));
        for i in 0..60 {
            assert_eq!(run.split_point(task(1), None, t + ms(i), long), None);
        }
        assert_eq!(run.split_point(task(2), None, t + ms(61), long), None);
        assert!(run.split_point(task(2), None, t + ms(62), long).is_some());
    }

    #[test]
    fn with_the_callback_clock_a_segment_is_one_callback() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let long = ms(50);
        // In step with a saturation's steps: one root for 100 ms, task unread, under a clock
        // that moves every sample — many callbacks, no long one.
        let mut run = BusyRun::new(t, t);
        for i in 0..50 {
            let at = t + ms(i * 2);
            assert_eq!(run.split_point(key("tiny"), Some(6 * i), at, long), None);
        }
        // One callback held the loop 60 ms (one clock, even through a torn sample's root):
        // the first sample under a new clock ends it, midway.
        let mut run = BusyRun::new(t, t);
        for i in 0..=60 {
            let root = if i == 30 { "torn" } else { "long" };
            assert_eq!(run.split_point(key(root), Some(8), t + ms(i), long), None);
        }
        assert_eq!(
            run.split_point(key("long"), Some(10), t + ms(62), long),
            Some(t + ms(61))
        );
    }
}
