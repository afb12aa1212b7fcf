//! What one tick reads of one target: which threads (event-loop threads every tick, the
//! GIL holder, the others at `--other-threads-rate`), with which reader (loopspy's own, or
//! py-spy's), and the kernel's view of each thread.

use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;
use std::time::{Duration, Instant};

use py_spy::PythonSpy;

use super::pyspy::{
    forget_recycled_names, own_reader_agrees, py_spy_thread_sample, NameLookup, ThreadNames,
};
use super::self_check::own_reader_checks_out;
use super::{ReaderKind, SamplerSettings};
use crate::remote::memory::ProcessMemory;
use crate::remote::procfs::{self, CounterFiles, KernelView, ThreadFiles};
use crate::remote::resources::ResourceResolver;
use crate::remote::stacks::{Depth, StackError, StackReader, ThreadHead};
use crate::remote::tasks::TaskReader;
use crate::remote::threads::{NamespaceTids, ThreadIdMap};
use crate::remote::AttachedTarget;
use crate::sample::{Frame, OsState, RunningTask, TaskGeneration, ThreadCounters, ThreadSample};
use crate::syscalls;

/// How often a busy loop thread's kernel counters are read (at most): a busy run of 50 ms
/// gets about five readings, an idle loop none.
const COUNTER_INTERVAL: Duration = Duration::from_millis(10);
/// Bytes a loop thread must move between two counter readings for the sampler to look which
/// file moved (about 100 MB/s at [`COUNTER_INTERVAL`]: bulk file I/O, not a log line).
const FILE_LOOK_BYTES: u64 = 1 << 20;
/// Least time between two looks at the process's file offsets (each is a `readlink` and a
/// read per open file, up to `procfs::MAX_FDS_LOOKED_AT`).
const FILE_LOOK_INTERVAL: Duration = Duration::from_millis(20);
/// A look older than this is no baseline for the next: files moved since then by anything.
const FILE_LOOK_STALE: Duration = Duration::from_millis(250);
/// Least an offset must have moved between two looks to name its file.
const FILE_LOOK_MIN_MOVE: u64 = 64 << 10;

/// Thread states remembered with the tick of their last read (their samples' weight); past
/// it the memory starts over (a target that churns threads cannot grow it).
const MAX_READ_TICKS: usize = 8192;

/// Reads of a waiting other thread that may reuse its kernel view while its stack stays put
/// (every 10th read looks again): 200 idle pool threads cost 2 `/proc` reads a tick, not 20.
const VIEW_REUSES: u32 = 9;

/// A thread's last kernel view and the stack it was taken with.
struct ViewMemo {
    frame: u64,
    leaf: Option<(Arc<str>, u32)>,
    view: Option<KernelView>,
    reused: u32,
}

/// One thread as the own reader read it this tick.
pub(super) struct ThreadRead {
    head: ThreadHead,
    owns_gil: bool,
    frames: Vec<Frame>,
    depth: Depth,
    handle_index: Option<crate::sample::HandleIndex>,
    /// Ticks this read stands for: 1 for a loop thread, the ticks since the thread's last
    /// read for the others.
    every: u32,
    /// The thread runs an event loop (its frames show one, or it did until this read).
    is_loop: bool,
}

/// A loop thread's latest kernel counter reading.
struct CounterRead {
    at: Instant,
    /// Taken while the loop was busy: the next tick in the selector reads once more.
    busy: bool,
    counters: ThreadCounters,
}

/// Everything the sampler holds on one target: the stack reader, the kernel's view of the
/// threads, the running-task reader, and which threads run event loops.
pub(super) struct TargetReader {
    pid: i32,
    /// py-spy, while it reads the stacks (`--reader py-spy`, or no offset table).
    spy: Option<PythonSpy>,
    own: Option<StackReader<ProcessMemory>>,
    /// The own reader's offsets are the target's debug offsets.
    offsets_from_target: bool,
    blocking: bool,
    tasks: Option<TaskReader>,
    thread_ids: ThreadIdMap,
    /// The target's thread ids in its own PID namespace -> ours.
    ns_tids: NamespaceTids,
    thread_files: ThreadFiles,
    /// `stat` and `io` of the loop threads, read while their loop is busy.
    counter_files: CounterFiles,
    /// Each loop thread's latest counter reading, and when: the rate limit, and the base that
    /// says whether the thread moved bytes since.
    counter_reads: HashMap<u64, CounterRead>,
    /// Each loop thread's callback clock and when it was first seen at that value.
    loop_clocks: HashMap<u64, (u64, Instant)>,
    /// Other threads' last kernel views (see [`VIEW_REUSES`]).
    views_of_others: HashMap<u64, ViewMemo>,
    /// The process's open regular files at the last look, and when.
    file_look: Option<(Instant, Vec<procfs::OpenFile>)>,
    resources: ResourceResolver,
    /// Python thread id -> (kernel tid, name) from py-spy's thread-name lookup.
    names: ThreadNames,
    /// The lookup, with the own reader (py-spy's reader gets names with every read).
    name_lookup: Option<NameLookup>,
    /// Pauses the target for `--blocking` reads (the own reader's; py-spy's has its own).
    process: Option<remoteprocess::Process>,
    /// Threads whose last read showed an event loop: read every tick.
    loop_threads: Vec<ThreadHead>,
    /// Loop threads whose last read showed no loop frames (kept as loop threads for one read).
    loop_misses: Vec<u64>,
    /// Walk the whole thread list on the next tick (a loop thread went away).
    walk_next: bool,
    /// Every thread as of the last full walk.
    all_threads: Vec<ThreadHead>,
    /// Where the next tick's share of the other threads starts in `all_threads`.
    others_cursor: usize,
    /// Reads of other threads owed, times `stride` (see [`Self::others_due`]).
    others_credit: usize,
    /// Thread state -> the tick it was last read on.
    read_ticks: HashMap<u64, u64>,
    /// Kernel tids of the threads read since the last walk: whose `/proc` files stay open, and
    /// (`--blocking`) whose kernel view is taken before the pause.
    recent_tids: Vec<u64>,
    stride: u32,
    tick: u64,
    /// [`SamplerSettings::runs_loop`].
    runs_loop: fn(&[Frame]) -> bool,
}

impl TargetReader {
    /// The process read.
    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    /// Which reader samples: `own`, or `py-spy`.
    pub(super) fn offsets_source(&self) -> &'static str {
        match (&self.own, self.offsets_from_target) {
            (None, _) => "none",
            (Some(_), true) => "target",
            (Some(_), false) => "table",
        }
    }

    pub(super) fn reader_name(&self) -> &'static str {
        if self.own.is_some() {
            "own"
        } else {
            "py-spy"
        }
    }

    /// Reads a second of threads without an event loop get (every thread at `rate_hz` with
    /// py-spy's reader).
    pub(super) fn other_threads_hz(&self, rate_hz: u32) -> u32 {
        if self.own.is_some() {
            (rate_hz.max(1) as f64 / self.stride as f64).round() as u32
        } else {
            rate_hz
        }
    }

    /// The asyncio tasks being stepped now, and the task table's generation.
    pub(super) fn running_tasks(&mut self) -> (Vec<RunningTask>, Option<TaskGeneration>) {
        let loops: Vec<u64> = self.loop_threads.iter().map(|t| t.tstate).collect();
        self.tasks
            .as_mut()
            .map(|tasks| tasks.running_tasks(&loops))
            .unwrap_or_default()
    }

    /// Reads the callback clock of each loop thread caught out of its selector once more, now
    /// that its frames and the running tasks were read ([`ThreadSample::clock_after`]): one
    /// word per such thread, and none for a loop waiting in its selector or with no task
    /// running (nothing to confirm). A clock that moved on from a long callback's takes the
    /// kernel reading that closes its counts now.
    pub(super) fn confirm_reads(
        &mut self,
        threads: &mut [ThreadSample],
        tasks: &[RunningTask],
        now: Instant,
    ) {
        let Some(reader) = self.own.as_ref() else {
            return;
        };
        for thread in threads.iter_mut() {
            if tasks.is_empty() || thread.context_ver.is_none() || selects_by_frames(&thread.frames)
            {
                continue;
            }
            let head = self
                .loop_threads
                .iter()
                .find(|t| t.python_tid == thread.python_tid);
            thread.clock_after = head.and_then(|head| reader.clock_now(head));
        }
        for thread in threads.iter_mut() {
            let tid = thread.os_tid;
            let moved = match thread.clock_after {
                Some(after) if thread.clock_after != thread.context_ver => after,
                _ => continue,
            };
            // Only a loop thread whose kernel id is known has a clock noted. A reading taken
            // with the frames came before the callback ended: this one replaces it.
            if self.loop_clocks.contains_key(&tid) && self.long_callback_ended(tid, moved, now) {
                if let Some(closing) = self.counters(tid, now, false, true) {
                    thread.counters = Some(closing);
                }
            }
        }
    }

    /// How long the longest callback now running on a loop thread has held it: its callback
    /// clock unchanged since, and the thread neither in its selector (by the frames) nor
    /// waiting in epoll (uvloop's idle wait, by the kernel). None when no loop is in one.
    pub(super) fn callback_running_for(
        &self,
        threads: &[ThreadSample],
        now: Instant,
    ) -> Option<Duration> {
        threads
            .iter()
            .filter(|t| !selects_by_frames(&t.frames))
            .filter(|t| {
                !matches!(&t.os_state, OsState::Waiting { syscall: Some(s), .. } if syscalls::is_epoll_wait(s.nr))
            })
            .filter_map(|t| {
                let (clock, since) = self.loop_clocks.get(&t.os_tid)?;
                (t.context_ver == Some(*clock)).then(|| now.saturating_duration_since(*since))
            })
            .max()
    }

    /// Notes loop thread `tid`'s callback clock at `now`: whether it just moved on from a
    /// value that held the loop for 2 × [`COUNTER_INTERVAL`] (a long callback ended).
    fn long_callback_ended(&mut self, tid: u64, clock: u64, now: Instant) -> bool {
        let (seen, since) = *self.loop_clocks.entry(tid).or_insert((clock, now));
        if seen == clock {
            return false;
        }
        self.loop_clocks.insert(tid, (clock, now));
        now.saturating_duration_since(since) >= 2 * COUNTER_INTERVAL
    }

    pub(super) fn new(target: AttachedTarget, settings: &SamplerSettings) -> Self {
        let mut reader = Self::choose_reader(target, settings);
        if reader.own.is_some() {
            // The own reader needs py-spy only for thread names from now on: the lookup takes
            // it to its own thread (and --blocking pauses through a handle of our own).
            if let Some(spy) = reader.spy.take() {
                reader.name_lookup = Some(NameLookup::spawn(spy));
            }
            if reader.blocking {
                reader.process = remoteprocess::Process::new(reader.pid).ok();
            }
        }
        reader
    }

    /// Picks the stack reader. The own reader is used where it has a layout and is shown to
    /// read this interpreter right: against py-spy's reading when the layout is a table of
    /// ours (a build or patch release that moved a field would otherwise garble every read),
    /// by its own checks when the layout is the target's own debug offsets (which py-spy's
    /// hard-coded structs may read worse than we do).
    fn choose_reader(target: AttachedTarget, settings: &SamplerSettings) -> Self {
        let AttachedTarget {
            mut spy,
            layout,
            pid,
            python_version,
            blocking,
            ..
        } = target;
        let tasks = layout.as_ref().map(|l| {
            TaskReader::new(
                ProcessMemory { pid },
                l.offsets.clone(),
                l.modules_ptr as usize,
            )
            .for_target(pid, l.minor, l.interpreter, l.interpreter_size)
        });
        let wants_own = settings.reader == ReaderKind::Own || spy.is_none();
        let offsets_from_target = layout.as_ref().is_some_and(|l| l.from_target);
        let own = layout.filter(|_| wants_own).and_then(|l| {
            let from_target = l.from_target;
            let mut own = StackReader::new(ProcessMemory { pid }, l.offsets, l.interpreter, l.gil);
            let trusted = match spy.as_mut() {
                Some(spy) if !from_target => own_reader_agrees(&mut own, spy),
                _ => own_reader_checks_out(&mut own, pid),
            };
            // A program that ended during the check disagreed with nothing.
            if trusted || !crate::remote::procfs::is_alive(pid) {
                return Some(own);
            }
            if spy.is_none() {
                eprintln!(
                    "loopspy: warning: pid {pid} (Python {python_version}): loopspy's own stack reader could not check its reading of this interpreter (threads or code objects did not add up); reading it anyway, as py-spy cannot"
                );
                return Some(own);
            }
            eprintln!(
                "loopspy: warning: pid {pid} (Python {python_version}): loopspy's own stack reader does not read this interpreter the way py-spy does; sampling with py-spy's reader instead (about 0.7 of a core at 1 kHz: lower --rate if that is too much)"
            );
            None
        });
        TargetReader {
            pid,
            blocking,
            spy,
            own,
            offsets_from_target,
            tasks,
            thread_ids: ThreadIdMap::default(),
            ns_tids: NamespaceTids::new(pid),
            thread_files: ThreadFiles::new(pid),
            counter_files: CounterFiles::new(pid),
            counter_reads: HashMap::default(),
            loop_clocks: HashMap::default(),
            file_look: None,
            views_of_others: HashMap::default(),
            resources: ResourceResolver::default(),
            names: Default::default(),
            name_lookup: None,
            process: None,
            loop_threads: Vec::new(),
            loop_misses: Vec::new(),
            walk_next: false,
            all_threads: Vec::new(),
            others_cursor: 0,
            others_credit: 0,
            read_ticks: HashMap::default(),
            recent_tids: Vec::new(),
            stride: settings.other_stride(),
            tick: 0,
            runs_loop: settings.runs_loop,
        }
    }

    /// One tick's threads, or None when the read failed (torn, or the target is gone).
    pub(super) fn read_threads(&mut self, now: Instant) -> Option<Vec<ThreadSample>> {
        self.tick += 1;
        if self.own.is_none() {
            return self.read_with_py_spy();
        }
        let walk = self.stride == 1
            || self.tick % self.stride as u64 == 1
            || std::mem::take(&mut self.walk_next);
        // --blocking: the kernel's view of the threads is taken before the target is paused
        // (a stopped thread is not waiting in its syscall, and one just resumed shows running).
        let mut views = HashMap::default();
        if self.blocking {
            for &tid in &self.recent_tids {
                views.insert(tid, self.thread_files.kernel_view(tid));
            }
        }
        let read = {
            // --blocking: pause the target for the read, as py-spy does.
            let _lock = match &self.process {
                Some(process) if self.blocking => Some(process.lock().ok()?),
                _ => None,
            };
            // A torn read is a race with the target that is usually over a few microseconds
            // later (on 3.11-3.12 most are a C-stack `_PyCFrame` popped between reading the
            // thread state and reading it): try once more before dropping the tick.
            let (cursor, credit) = (self.others_cursor, self.others_credit);
            self.read_own(now, walk).or_else(|_| {
                (self.others_cursor, self.others_credit) = (cursor, credit);
                self.read_own(now, walk)
            })
        };
        let reads = read.ok()?;
        self.refresh_names(&reads, now);
        let samples: Vec<ThreadSample> = reads
            .into_iter()
            .map(|read| self.thread_sample(read, now, &mut views))
            .collect();
        if walk {
            // Files of threads not read since the last walk are closed (the thread is gone,
            // or will reopen them on its next read).
            let recent = std::mem::take(&mut self.recent_tids);
            let live = |tid| recent.contains(&tid) || samples.iter().any(|t| t.os_tid == tid);
            self.thread_files.retain(live);
            self.counter_files.retain(live);
            self.counter_reads.retain(|tid, _| live(*tid));
            self.loop_clocks.retain(|tid, _| live(*tid));
            self.views_of_others.retain(|tid, _| live(*tid));
        }
        for sample in &samples {
            if !self.recent_tids.contains(&sample.os_tid) && self.recent_tids.len() < MAX_READ_TICKS
            {
                self.recent_tids.push(sample.os_tid);
            }
        }
        Some(samples)
    }

    /// The other threads (no event loop) due this tick: the next `1/stride` of them, round
    /// robin, so that no tick reads them all (a target with hundreds of idle threads would
    /// make that tick overrun) and each is read about every `stride` ticks.
    fn others_due(&mut self) -> Vec<ThreadHead> {
        let others: Vec<&ThreadHead> = self
            .all_threads
            .iter()
            .filter(|t| !self.loop_threads.iter().any(|l| l.tstate == t.tstate))
            .collect();
        if others.is_empty() {
            return Vec::new();
        }
        // `others.len()` reads are owed every `stride` ticks: a tick takes its whole part
        // and carries the rest (3 threads at stride 10: three ticks of ten read one each).
        let stride = self.stride.max(1) as usize;
        self.others_credit += others.len();
        let share = self.others_credit / stride;
        self.others_credit %= stride;
        let start = self.others_cursor % others.len();
        self.others_cursor = start + share;
        (0..share.min(others.len()))
            .map(|i| *others[(start + i) % others.len()])
            .collect()
    }

    /// The threads due this tick and their frames: the event-loop threads first (read the
    /// same way every tick, never delayed by the others), the GIL holder, and this tick's
    /// share of the other threads. On a walk tick the interpreter's thread list is walked
    /// too (after the loop threads), which finds new threads and lost ones.
    fn read_own(&mut self, now: Instant, walk: bool) -> Result<Vec<ThreadRead>, StackError> {
        let due_others = self.others_due();
        let reader = self.own.as_mut().expect("own reader");
        reader.begin_tick(now);
        let known = self
            .loop_threads
            .iter()
            .chain(&due_others)
            .map(|t| t.tstate);
        let walked = if walk { &self.all_threads[..] } else { &[] };
        reader.prefetch(known, walked);
        let holder = reader.gil_holder();
        let mut heads = Vec::with_capacity(self.loop_threads.len() + due_others.len() + 1);
        for known in &self.loop_threads {
            refresh_into(reader, known, &mut heads, &mut self.walk_next)?;
        }
        let walked = if walk || std::mem::take(&mut self.walk_next) {
            let all = reader.threads()?;
            self.all_threads.clone_from(&all);
            Some(all)
        } else {
            None
        };
        let others: Vec<ThreadHead> = match &walked {
            Some(all) => {
                // This tick's share, as the walk just read them; and any thread new since the
                // last walk, so a loop starting in a new thread is seen at once.
                let is_new = |t: &ThreadHead| !self.read_ticks.contains_key(&t.tstate);
                all.iter()
                    .filter(|t| due_others.iter().any(|d| d.tstate == t.tstate) || is_new(t))
                    .filter(|t| !heads.iter().any(|h| h.tstate == t.tstate))
                    .copied()
                    .collect()
            }
            None => {
                let mut fresh = Vec::with_capacity(due_others.len());
                for known in &due_others {
                    refresh_into(reader, known, &mut fresh, &mut self.walk_next)?;
                }
                fresh
            }
        };
        heads.extend(others);
        // The GIL holder, whatever its turn: a loop that cannot take the GIL is stalled by
        // that thread, whose stack names the culprit.
        if let Some(h) = holder.filter(|h| !heads.iter().any(|t| t.tstate == *h)) {
            if let Some(known) = self.all_threads.iter().find(|t| t.tstate == h) {
                refresh_into(reader, known, &mut heads, &mut self.walk_next)?;
            }
        }
        let mut reads = Vec::with_capacity(heads.len());
        let mut loops = Vec::new();
        for head in heads {
            let mut frames = Vec::new();
            let depth = reader.stack(&head, &mut frames)?;
            // Whether a thread runs a loop is decided anew on each of its reads, and a loop
            // thread whose loop has ended drops back to the lower rate at once. A loop thread
            // deep in a recursion (its loop frames cut off) still runs its loop.
            let was_loop = self.loop_threads.iter().any(|t| t.tstate == head.tstate);
            let shows_loop = (self.runs_loop)(&frames) || (depth == Depth::Truncated && was_loop);
            // One read without loop frames does not end a loop: a read racing a coroutine
            // switch is torn (frames cut short), often just as a long callback returns — the
            // tick whose kernel reading closes its counts. A second one in a row does.
            let torn_once = !shows_loop && was_loop && !self.loop_misses.contains(&head.tstate);
            self.loop_misses.retain(|t| *t != head.tstate);
            if torn_once {
                self.loop_misses.push(head.tstate);
            }
            let is_loop = shows_loop || torn_once;
            if is_loop {
                loops.push(head);
            }
            let every = match self.read_ticks.get(&head.tstate) {
                _ if is_loop => 1,
                Some(&last) => (self.tick.saturating_sub(last)).clamp(1, u32::MAX as u64) as u32,
                None => self.stride,
            };
            reads.push(ThreadRead {
                owns_gil: holder == Some(head.tstate),
                head,
                frames,
                depth,
                handle_index: reader.handle_index(),
                every,
                is_loop,
            });
        }
        // Loop threads not read this tick (none: they are read first) keep their place; the
        // others read this tick leave it or join it by what their stacks showed.
        let read_now = |t: &ThreadHead| reads.iter().any(|r| r.head.tstate == t.tstate);
        self.loop_threads.retain(|t| !read_now(t));
        for head in loops {
            self.loop_threads.push(head);
        }
        let loop_threads = &self.loop_threads;
        self.loop_misses
            .retain(|m| loop_threads.iter().any(|t| t.tstate == *m));
        if self.read_ticks.len() >= MAX_READ_TICKS {
            self.read_ticks.clear();
        }
        for read in &reads {
            self.read_ticks.insert(read.head.tstate, self.tick);
        }
        Ok(reads)
    }

    fn thread_sample(
        &mut self,
        read: ThreadRead,
        now: Instant,
        views: &mut HashMap<u64, Option<KernelView>>,
    ) -> ThreadSample {
        let ThreadRead {
            head,
            owns_gil,
            frames,
            depth,
            handle_index,
            every,
            is_loop,
        } = read;
        let pid = self.pid;
        // The thread's id as the target knows it (its own PID namespace's), then ours.
        let target_tid = head
            .native_tid
            .or_else(|| self.thread_ids.resolve(head.python_tid, &mut self.ns_tids));
        let os_tid = target_tid.and_then(|tid| self.ns_tids.host_tid(tid));
        let view = os_tid.map(|tid| match views.remove(&tid) {
            Some(view) => view,
            None if is_loop || owns_gil => self.thread_files.kernel_view(tid),
            None => self.other_thread_view(tid, &head, &frames),
        });
        // No kernel thread, or its syscall file unreadable: say so, never "off CPU".
        let os_state = match view.flatten() {
            None => OsState::Unknown,
            Some(KernelView::Running) if !waits_by_frames(&frames) => OsState::Running,
            Some(view) => {
                let syscall = view.syscall();
                let resource = syscall.and_then(|s| self.resources.resolve(pid, &s));
                OsState::Waiting { syscall, resource }
            }
        };
        // A loop waiting in its selector does nothing worth counting. Its frames say so before
        // the kernel does (the first tick back may find it on CPU, on its way into epoll), and
        // that first tick is the one whose reading closes the busy run's counts.
        let in_selector = selects_by_frames(&frames)
            || matches!(&os_state, OsState::Waiting { syscall: Some(s), .. } if syscalls::is_epoll_wait(s.nr));
        // A callback that held the loop a while just ended (its clock moved on): the reading
        // that closes its counts is due now — a long write() adds its bytes only when it
        // returns, and the analyzer may end the run right here, without an idle sample.
        let long_callback_ended = match (os_tid, head.context_ver) {
            (Some(tid), Some(clock)) if is_loop => self.long_callback_ended(tid, clock, now),
            _ => false,
        };
        let counters = match os_tid {
            Some(tid) if is_loop => self.counters(tid, now, in_selector, long_callback_ended),
            _ => None,
        };
        ThreadSample {
            os_tid: os_tid.unwrap_or(head.python_tid),
            python_tid: head.python_tid,
            name: self
                .names
                .get(&head.python_tid)
                .and_then(|(_, name)| name.clone()),
            frames,
            os_state,
            owns_gil,
            every,
            truncated: depth == Depth::Truncated,
            context_ver: head.context_ver,
            handle_index,
            clock_after: None,
            ns_tid: target_tid.filter(|_| self.ns_tids.foreign()),
            counters,
        }
    }

    /// The kernel view of `tid`, a thread that runs no loop and holds no GIL: its last one
    /// while it was waiting and its stack has not moved (the same innermost frame, function and
    /// line), up to [`VIEW_REUSES`] times in a row; else read anew. A thread that woke and
    /// went back to the same wait in between reads the same either way.
    fn other_thread_view(
        &mut self,
        tid: u64,
        head: &ThreadHead,
        frames: &[Frame],
    ) -> Option<KernelView> {
        let leaf = frames.first().map(|f| (f.function.clone(), f.line));
        let frame = head.innermost_frame();
        if let Some(memo) = self.views_of_others.get_mut(&tid) {
            let waiting = matches!(memo.view, Some(KernelView::Waiting(_)));
            if waiting && memo.frame == frame && memo.leaf == leaf && memo.reused < VIEW_REUSES {
                memo.reused += 1;
                return memo.view;
            }
        }
        let view = self.thread_files.kernel_view(tid);
        if self.views_of_others.len() >= MAX_READ_TICKS {
            self.views_of_others.clear();
        }
        self.views_of_others.insert(
            tid,
            ViewMemo {
                frame,
                leaf,
                view,
                reused: 0,
            },
        );
        view
    }

    /// The kernel counters of loop thread `tid`: while its loop is busy (out of its selector)
    /// when [`COUNTER_INTERVAL`] has passed since its last reading, and once more on its first
    /// tick back in the selector (`in_selector`): a write() of 64 MB counts its bytes only when
    /// it returns; and whenever `force`d (a long callback just ended). With the file that
    /// moved most when the thread was in the kernel or moved bulk bytes.
    fn counters(
        &mut self,
        tid: u64,
        now: Instant,
        in_selector: bool,
        force: bool,
    ) -> Option<ThreadCounters> {
        let last = self.counter_reads.get(&tid);
        let due = match last {
            _ if force => true,
            None => !in_selector,
            Some(last) if in_selector => last.busy,
            Some(last) => now.saturating_duration_since(last.at) >= COUNTER_INTERVAL,
        };
        if !due {
            return None;
        }
        let mut counters = self.counter_files.read(tid)?;
        let moved = |c: &ThreadCounters| c.read_chars.wrapping_add(c.written_chars);
        let busy_io = last.is_some_and(|last| {
            let before = &last.counters;
            counters.system_ticks > before.system_ticks
                || moved(&counters).saturating_sub(moved(before)) >= FILE_LOOK_BYTES
        });
        self.counter_reads.insert(
            tid,
            CounterRead {
                at: now,
                busy: !in_selector,
                counters: counters.clone(),
            },
        );
        if busy_io {
            counters.busiest_file = self.busiest_file(now);
        }
        Some(counters)
    }

    /// The regular file that moved most since the previous look at the process's open files:
    /// its offset, or for a file open for writing its size (one long write() grows the file
    /// long before it moves the offset). A file opened since counts from 0. At most every
    /// [`FILE_LOOK_INTERVAL`]; the first look, or one after a stale one, is only a baseline.
    /// Process-wide: another thread moving a file at the same time could be named instead
    /// (documented).
    fn busiest_file(&mut self, now: Instant) -> Option<String> {
        if let Some((at, _)) = &self.file_look {
            if now.saturating_duration_since(*at) < FILE_LOOK_INTERVAL {
                return None;
            }
        }
        let look = procfs::open_files(self.pid);
        let (at, previous) = self.file_look.replace((now, look))?;
        if now.saturating_duration_since(at) >= FILE_LOOK_STALE {
            return None;
        }
        let (_, look) = self.file_look.as_ref()?;
        look.iter()
            .map(|file| {
                let before = previous
                    .iter()
                    .find(|b| b.fd == file.fd && b.path == file.path);
                let offset = file.offset.saturating_sub(before.map_or(0, |b| b.offset));
                let size = file
                    .size
                    .unwrap_or(0)
                    .saturating_sub(before.and_then(|b| b.size).unwrap_or(0));
                (offset.max(size), &file.path)
            })
            .filter(|(moved, _)| *moved >= FILE_LOOK_MIN_MOVE)
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
            .map(|(_, path)| path.clone())
    }

    /// Thread names come from py-spy's lookup in `threading._active`, done on the lookup's own
    /// thread, asked for at most once a second while a thread that matters has no name: any
    /// thread until an event loop is known, then only the loop threads. A `pthread_t` reused by a new thread (its kernel tid changed) is
    /// looked up again; until then the new thread goes unnamed rather than misnamed.
    fn refresh_names(&mut self, reads: &[ThreadRead], now: Instant) {
        let Some(lookup) = self.name_lookup.as_mut() else {
            return;
        };
        if let Some(names) = lookup.answer() {
            self.names = names;
        }
        // Once loops are known, only their threads' names are worth a lookup (a full py-spy
        // read; under thread churn some new thread is always unnamed, and py-spy's reads of
        // dying threads are where its allocations follow garbage).
        let loops_known = !self.loop_threads.is_empty();
        let mut stale = false;
        for ThreadRead { head, .. } in reads {
            let matters = !loops_known || self.loop_threads.iter().any(|t| t.tstate == head.tstate);
            let os_tid = head.native_tid.unwrap_or(0);
            let (named, recycled) = match self.names.get(&head.python_tid) {
                Some((tid, name)) => (name.is_some(), os_tid != 0 && *tid != 0 && *tid != os_tid),
                None => (false, false),
            };
            if recycled {
                self.names.remove(&head.python_tid);
            }
            stale |= matters && !named;
        }
        if stale {
            lookup.ask(now);
        }
    }

    /// py-spy's reader: every thread, every tick.
    fn read_with_py_spy(&mut self) -> Option<Vec<ThreadSample>> {
        let spy = self.spy.as_mut()?;
        let traces = spy.get_stack_traces().ok()?;
        let threads: Vec<ThreadSample> = traces
            .into_iter()
            .map(|trace| {
                py_spy_thread_sample(
                    self.pid,
                    trace,
                    &mut self.thread_ids,
                    &mut self.ns_tids,
                    &mut self.thread_files,
                    &mut self.resources,
                )
            })
            .collect();
        forget_recycled_names(spy, &mut self.names, &threads);
        Some(threads)
    }
}

/// Reads `known`'s thread state again into `heads`; a thread that exited (its state gone or
/// someone else's) asks for a walk of the thread list (now, or on the next tick).
fn refresh_into(
    reader: &mut StackReader<ProcessMemory>,
    known: &ThreadHead,
    heads: &mut Vec<ThreadHead>,
    walk_next: &mut bool,
) -> Result<(), StackError> {
    match reader.refresh(known) {
        Ok(Some(head)) => heads.push(head),
        Ok(None) | Err(StackError::Memory(_)) => *walk_next = true,
        Err(err) => return Err(err),
    }
    Ok(())
}

/// py-spy's idle rule for a thread the kernel shows running: a leaf in `threading`'s `wait` or
/// `selectors`' `select` is about to block (the kernel lags the frames by a moment).
fn waits_by_frames(frames: &[Frame]) -> bool {
    selects_by_frames(frames)
        || frames.first().is_some_and(|leaf| {
            let name = leaf.function.rsplit('.').next().unwrap_or(&leaf.function);
            name == "wait" && leaf.file.ends_with("threading.py")
        })
}

/// A selector loop's leaf frame is its selector's `select`: idle, or about to be.
fn selects_by_frames(frames: &[Frame]) -> bool {
    frames.first().is_some_and(|leaf| {
        let name = leaf.function.rsplit('.').next().unwrap_or(&leaf.function);
        name == "select" && leaf.file.ends_with("selectors.py")
    })
}
