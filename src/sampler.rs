//! The sampling thread. It owns the interpreter reader, wakes on an absolute schedule
//! (`start + k * interval`, so it never drifts), reads every Python thread's stack plus the
//! kernel's view of each thread (running or the syscall it waits in), and sends one [`Sample`]
//! per tick over a bounded channel. It never waits on the analyzer: when the channel is full
//! the sample is dropped and counted. A read that fails in non-blocking mode (the target changed
//! its frames under us) is counted and dropped, never sent half-read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, TrySendError};
use py_spy::config::LockingStrategy;
use py_spy::PythonSpy;

use crate::remote::memory::ProcessMemory;
use crate::remote::offsets;
use crate::remote::procfs::{self, KernelView, ThreadFiles};
use crate::remote::resources::ResourceResolver;
pub use crate::remote::stacks::MAX_FRAMES;
use crate::remote::stacks::{Depth, StackError, StackReader, ThreadHead};
use crate::remote::tasks::TaskReader;
use crate::remote::threads::ThreadIdMap;
use crate::sample::{Frame, OsState, Sample, SamplerMessage, ThreadSample};

/// Why the sampler stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `--duration` elapsed.
    DurationElapsed,
    /// Ctrl-C or another stop request.
    Interrupted,
    /// The target process exited.
    TargetExited,
}

/// What the sampler measured about itself, reported to the user and in `incidents.json`.
#[derive(Debug, Clone, Default)]
pub struct SamplerStats {
    /// Ticks on which a read was attempted.
    pub ticks: u64,
    /// Samples read successfully and sent.
    pub samples_sent: u64,
    /// Reads that failed (torn state, thread vanished).
    pub read_errors: u64,
    /// Samples dropped because the analyzer lagged behind (channel full).
    pub dropped_analyzer_lag: u64,
    /// Scheduled ticks skipped because the sampler itself ran late.
    pub missed_ticks: u64,
    /// Wall time from the first to the last tick.
    pub elapsed: Duration,
    /// Interval between consecutive reads, microseconds: p50, p99, max.
    pub interval_p50_us: u64,
    /// See `interval_p50_us`.
    pub interval_p99_us: u64,
    /// See `interval_p50_us`.
    pub interval_max_us: u64,
    /// The stack reader used: `own`, or `py-spy` (asked for, or no offset table).
    pub reader: &'static str,
    /// Reads per second of threads without an event loop (own reader; else `rate_hz`).
    pub other_threads_hz: u32,
}

impl SamplerStats {
    /// Reads per second actually achieved.
    pub fn achieved_rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ticks as f64 / secs
        } else {
            0.0
        }
    }
}

/// Which stack reader the sampler uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReaderKind {
    /// loopspy's own reader (`remote::stacks`) where `python_offsets/` has a table for the
    /// version, py-spy's otherwise.
    #[default]
    Own,
    /// py-spy's reader for every thread on every tick (the reference the own reader is tested
    /// against, and a fallback should the own reader misread some build).
    PySpy,
}

/// How the sampler runs.
#[derive(Debug, Clone)]
pub struct SamplerSettings {
    /// Reads per second of event-loop threads.
    pub rate_hz: u32,
    /// Reads per second of threads that run no event loop (at most `rate_hz`); the own reader
    /// only. Their samples are weighted by the ticks they stand for.
    pub other_threads_hz: u32,
    /// Which reader.
    pub reader: ReaderKind,
    /// Stop after this long (None: until stopped or the target exits).
    pub duration: Option<Duration>,
    /// Whether a stack runs an event loop: such threads are read every tick, the others at
    /// `other_threads_hz`. The analyzer's knowledge, handed in by the command that wires the
    /// two (`analyzer::loop_detect::runs_loop`), so the sampler imports nothing above it.
    pub runs_loop: fn(&[Frame]) -> bool,
}

impl SamplerSettings {
    /// Every thread at `rate_hz`, with the default reader.
    pub fn every_thread(
        rate_hz: u32,
        duration: Option<Duration>,
        runs_loop: fn(&[Frame]) -> bool,
    ) -> Self {
        SamplerSettings {
            rate_hz,
            other_threads_hz: rate_hz,
            reader: ReaderKind::Own,
            duration,
            runs_loop,
        }
    }

    /// Every how many ticks a thread without an event loop is read.
    fn other_stride(&self) -> u32 {
        let other = self.other_threads_hz.clamp(1, self.rate_hz.max(1));
        (self.rate_hz.max(1) as f64 / other as f64).round().max(1.0) as u32
    }
}

/// The sampler's result, once it has stopped.
#[derive(Debug, Clone)]
pub struct SamplerOutcome {
    /// Why it stopped.
    pub reason: StopReason,
    /// Its own measurements.
    pub stats: SamplerStats,
}

/// Intervals are kept in a fixed histogram (1 µs buckets up to 100 ms, then one overflow
/// bucket), so hours of sampling cost constant memory.
struct IntervalHistogram {
    buckets: Vec<u32>,
    max_us: u64,
}

impl IntervalHistogram {
    const LIMIT_US: usize = 100_000;

    fn new() -> Self {
        IntervalHistogram {
            buckets: vec![0; Self::LIMIT_US + 1],
            max_us: 0,
        }
    }

    fn record(&mut self, us: u64) {
        self.max_us = self.max_us.max(us);
        let idx = (us as usize).min(Self::LIMIT_US);
        self.buckets[idx] = self.buckets[idx].saturating_add(1);
    }

    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().map(|&c| c as u64).sum();
        if total == 0 {
            return 0;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (us, &count) in self.buckets.iter().enumerate() {
            seen += count as u64;
            if seen >= want {
                return us as u64;
            }
        }
        self.max_us
    }
}

/// Starts the sampler thread. It stops when `stop` is set, the duration elapses, or the target
/// exits; the channel is closed when it returns.
pub fn spawn(
    spy: PythonSpy,
    settings: SamplerSettings,
    stop: Arc<AtomicBool>,
    tx: Sender<SamplerMessage>,
) -> JoinHandle<SamplerOutcome> {
    std::thread::Builder::new()
        .name("loopspy-sampler".into())
        .spawn(move || {
            // Linux lets a sleeping thread's wake-up slip by up to 50 µs by default (timer
            // slack); at 10 kHz that is half an interval. Ask for 1 µs.
            // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64, 0u64, 0u64, 0u64);
            }
            let mut reader = TargetReader::new(spy, &settings);
            run(&mut reader, &settings, &stop, &tx)
        })
        .expect("spawning the sampler thread")
}

fn run(
    reader: &mut TargetReader,
    settings: &SamplerSettings,
    stop: &AtomicBool,
    tx: &Sender<SamplerMessage>,
) -> SamplerOutcome {
    let pid = reader.pid;
    let interval = Duration::from_secs_f64(1.0 / settings.rate_hz.max(1) as f64);
    let start = Instant::now();
    let unix_start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let mut stats = SamplerStats::default();
    let mut intervals = IntervalHistogram::new();
    let mut next_tick = start;
    let mut last_read: Option<Instant> = None;
    let mut consecutive_errors = 0u32;

    let reason = loop {
        if stop.load(Ordering::Relaxed) {
            break StopReason::Interrupted;
        }
        let now = Instant::now();
        if let Some(limit) = settings.duration {
            if now.duration_since(start) >= limit {
                break StopReason::DurationElapsed;
            }
        }
        if now < next_tick {
            std::thread::sleep(next_tick - now);
        } else {
            // Behind schedule by more than a tick: skip the missed ticks rather than bursting.
            let behind = now.duration_since(next_tick);
            if behind >= interval {
                let missed = (behind.as_nanos() / interval.as_nanos()) as u32;
                stats.missed_ticks += missed as u64;
                next_tick += interval * missed;
            }
        }
        next_tick += interval;

        let read_at = Instant::now();
        if let Some(prev) = last_read {
            intervals.record(read_at.duration_since(prev).as_micros() as u64);
        }
        last_read = Some(read_at);
        stats.ticks += 1;

        match reader.read_threads(read_at) {
            Some(threads) => {
                consecutive_errors = 0;
                let unix = unix_start + read_at.duration_since(start).as_secs_f64();
                let (running_tasks, task_generation) = reader
                    .tasks
                    .as_mut()
                    .map(TaskReader::running_tasks)
                    .unwrap_or_default();
                let sample = Sample {
                    pid,
                    at: read_at,
                    unix,
                    threads,
                    running_tasks,
                    task_generation,
                };
                match tx.try_send(SamplerMessage::Sample(sample)) {
                    Ok(()) => stats.samples_sent += 1,
                    Err(TrySendError::Full(_)) => stats.dropped_analyzer_lag += 1,
                    Err(TrySendError::Disconnected(_)) => break StopReason::Interrupted,
                }
            }
            None => {
                if !procfs::is_alive(pid) {
                    stats.ticks -= 1;
                    break StopReason::TargetExited;
                }
                consecutive_errors += 1;
                stats.read_errors += 1;
                let _ = tx.try_send(SamplerMessage::ReadError { pid });
                // An interpreter that has finalized (but whose process lingers) fails every read.
                if consecutive_errors > settings.rate_hz.max(50) * 2 && interpreter_gone(pid) {
                    break StopReason::TargetExited;
                }
            }
        }
    };
    stats.elapsed = last_read
        .map(|t| t.duration_since(start))
        .unwrap_or_default();
    stats.reader = if reader.own.is_some() {
        "own"
    } else {
        "py-spy"
    };
    stats.other_threads_hz = if reader.own.is_some() {
        (settings.rate_hz.max(1) as f64 / reader.stride as f64).round() as u32
    } else {
        settings.rate_hz
    };
    stats.interval_p50_us = intervals.quantile(0.50);
    stats.interval_p99_us = intervals.quantile(0.99);
    stats.interval_max_us = intervals.max_us;
    SamplerOutcome { reason, stats }
}

/// One thread as the own reader read it this tick.
struct ThreadRead {
    head: ThreadHead,
    owns_gil: bool,
    frames: Vec<Frame>,
    depth: Depth,
}

/// Python thread id -> (kernel tid, name), as py-spy's lookup in `threading` found them.
type ThreadNames = HashMap<u64, (u64, Option<Arc<str>>)>;

/// Thread names, looked up by py-spy (a full read of every thread and of `threading`'s
/// tables: milliseconds, far longer on a target that starts hundreds of threads a second) on a
/// thread of its own, so a thread appearing never delays a tick. The sampler asks; the answer
/// arrives some ticks later and is taken when it has.
struct NameLookup {
    ask: Sender<()>,
    answers: crossbeam_channel::Receiver<ThreadNames>,
    in_flight: bool,
    asked_at: Option<Instant>,
}

impl NameLookup {
    fn spawn(mut spy: PythonSpy) -> Self {
        let (ask, asks) = crossbeam_channel::bounded::<()>(1);
        let (answer, answers) = crossbeam_channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("loopspy-names".into())
            .spawn(move || {
                // Ends when the sampler drops its end of the channel.
                for () in asks {
                    spy.python_thread_names.clear();
                    let names: ThreadNames = spy
                        .get_stack_traces()
                        .map(|traces| {
                            traces
                                .into_iter()
                                .map(|t| {
                                    let tid = t.os_thread_id.unwrap_or(0);
                                    (t.thread_id, (tid, t.thread_name.map(Arc::from)))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    if answer.send(names).is_err() {
                        return;
                    }
                }
            });
        if spawned.is_err() {
            eprintln!("loopspy: warning: cannot start the thread-name lookup; threads go unnamed");
        }
        NameLookup {
            ask,
            answers,
            in_flight: false,
            asked_at: None,
        }
    }

    /// Asks for a lookup unless one is running or the last was asked less than
    /// [`NAME_LOOKUP_EVERY`] ago.
    fn ask(&mut self, now: Instant) {
        let due = self
            .asked_at
            .is_none_or(|at| now.duration_since(at) >= NAME_LOOKUP_EVERY);
        if !self.in_flight && due && self.ask.try_send(()).is_ok() {
            self.in_flight = true;
            self.asked_at = Some(now);
        }
    }

    /// The names of a lookup that has finished since the last call.
    fn answer(&mut self) -> Option<ThreadNames> {
        let names = self.answers.try_recv().ok()?;
        self.in_flight = false;
        Some(names)
    }
}

/// Everything the sampler holds on one target: the stack reader, the kernel's view of the
/// threads, the running-task reader, and which threads run event loops.
struct TargetReader {
    pid: i32,
    /// py-spy, while it reads the stacks (`--reader py-spy`, or no offset table).
    spy: Option<PythonSpy>,
    own: Option<StackReader<ProcessMemory>>,
    blocking: bool,
    tasks: Option<TaskReader>,
    thread_ids: ThreadIdMap,
    thread_files: ThreadFiles,
    resources: ResourceResolver,
    /// Python thread id -> (kernel tid, name) from py-spy's thread-name lookup.
    names: ThreadNames,
    /// The lookup, with the own reader (py-spy's reader gets names with every read).
    name_lookup: Option<NameLookup>,
    /// Pauses the target for `--blocking` reads (the own reader's; py-spy's has its own).
    process: Option<remoteprocess::Process>,
    /// Threads whose last read showed an event loop: read every tick.
    loop_threads: Vec<ThreadHead>,
    /// Walk the whole thread list on the next tick (a loop thread went away).
    walk_next: bool,
    /// Every thread as of the last full walk.
    all_threads: Vec<ThreadHead>,
    /// Kernel tids of the threads read last tick.
    last_tids: Vec<u64>,
    stride: u32,
    tick: u64,
    /// [`SamplerSettings::runs_loop`].
    runs_loop: fn(&[Frame]) -> bool,
}

/// How often thread names are looked up again while some thread has none (or a new one came).
const NAME_LOOKUP_EVERY: Duration = Duration::from_secs(1);

impl TargetReader {
    fn new(spy: PythonSpy, settings: &SamplerSettings) -> Self {
        let pid = spy.pid;
        let blocking = spy.config.blocking == LockingStrategy::Lock;
        let mut reader = Self::with_spy(spy, settings);
        if reader.own.is_some() {
            // The own reader needs py-spy only for thread names from now on: the lookup takes
            // it to its own thread (and --blocking pauses through a handle of our own).
            if let Some(spy) = reader.spy.take() {
                reader.name_lookup = Some(NameLookup::spawn(spy));
            }
            if blocking {
                reader.process = remoteprocess::Process::new(pid).ok();
            }
        }
        reader
    }

    fn with_spy(mut spy: PythonSpy, settings: &SamplerSettings) -> Self {
        let pid = spy.pid;
        let table = offsets::for_minor(spy.version.minor).filter(|_| spy.version.major == 3);
        let tasks = table.clone().map(|table| {
            TaskReader::new(
                ProcessMemory { pid },
                table,
                spy.addresses.imports_modules_address,
            )
        });
        let own = table
            .filter(|_| settings.reader == ReaderKind::Own)
            .map(|table| {
                StackReader::new(
                    ProcessMemory { pid },
                    table,
                    spy.addresses.interpreter_address as u64,
                    spy.addresses.threadstate_address as u64,
                )
            })
            .and_then(|mut own| {
                if own_reader_agrees(&mut own, &mut spy) {
                    return Some(own);
                }
                eprintln!(
                    "loopspy: warning: pid {pid} (Python {}): loopspy's own stack reader does not read this interpreter the way py-spy does; sampling with py-spy's reader instead (about 0.7 of a core at 1 kHz: lower --rate if that is too much)",
                    spy.version
                );
                None
            });
        TargetReader {
            pid,
            blocking: spy.config.blocking == LockingStrategy::Lock,
            spy: Some(spy),
            own,
            tasks,
            thread_ids: ThreadIdMap::default(),
            thread_files: ThreadFiles::new(pid),
            resources: ResourceResolver::default(),
            names: HashMap::new(),
            name_lookup: None,
            process: None,
            loop_threads: Vec::new(),
            walk_next: false,
            all_threads: Vec::new(),
            last_tids: Vec::new(),
            stride: settings.other_stride(),
            tick: 0,
            runs_loop: settings.runs_loop,
        }
    }

    /// One tick's threads, or None when the read failed (torn, or the target is gone).
    fn read_threads(&mut self, now: Instant) -> Option<Vec<ThreadSample>> {
        self.tick += 1;
        if self.own.is_none() {
            return self.read_with_py_spy();
        }
        let full = self.stride == 1
            || self.tick % self.stride as u64 == 1
            || std::mem::take(&mut self.walk_next);
        // --blocking: the kernel's view of the threads is taken before the target is paused
        // (a stopped thread is not waiting in its syscall, and one just resumed shows running).
        let mut views = HashMap::new();
        if self.blocking {
            for &tid in &self.last_tids {
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
            self.read_own(now, full)
                .or_else(|_| self.read_own(now, full))
        };
        let reads = read.ok()?;
        self.refresh_names(&reads, now);
        let samples: Vec<ThreadSample> = reads
            .into_iter()
            .map(|read| self.thread_sample(read, full, &mut views))
            .collect();
        if full {
            self.thread_files
                .retain(|tid| samples.iter().any(|t| t.os_tid == tid));
        }
        self.last_tids.clear();
        self.last_tids.extend(samples.iter().map(|t| t.os_tid));
        Some(samples)
    }

    /// The threads due this tick and their frames: on a full tick every thread on the list;
    /// in between, only the event-loop threads, whose thread states are read again directly.
    fn read_own(&mut self, now: Instant, full: bool) -> Result<Vec<ThreadRead>, StackError> {
        let reader = self.own.as_mut().expect("own reader");
        reader.begin_tick(now);
        let holder = reader.gil_holder();
        let heads = if full {
            let heads = reader.threads()?;
            self.all_threads.clone_from(&heads);
            heads
        } else {
            // The loop threads, and whichever thread holds the GIL: a loop that cannot take
            // the GIL is stalled by that thread, whose stack names the culprit.
            let holder = holder.and_then(|h| self.all_threads.iter().find(|t| t.tstate == h));
            let wanted = self
                .loop_threads
                .iter()
                .chain(holder.filter(|h| !self.loop_threads.iter().any(|t| t.tstate == h.tstate)));
            let mut heads = Vec::with_capacity(self.loop_threads.len() + 1);
            for known in wanted {
                match reader.refresh(known) {
                    Ok(Some(head)) => heads.push(head),
                    // The thread exited: the next tick walks the list again.
                    Ok(None) | Err(StackError::Memory(_)) => self.walk_next = true,
                    Err(err) => return Err(err),
                }
            }
            heads
        };
        let mut reads = Vec::with_capacity(heads.len());
        let mut loops = Vec::new();
        for head in heads {
            let mut frames = Vec::new();
            let depth = reader.stack(&head, &mut frames)?;
            // Which threads run a loop is decided anew on every full read, and a loop thread
            // whose loop has ended drops back to the lower rate at once. A loop thread deep in
            // a recursion (its loop frames cut off) still runs its loop.
            let was_loop = || self.loop_threads.iter().any(|t| t.tstate == head.tstate);
            if (self.runs_loop)(&frames) || (depth == Depth::Truncated && was_loop()) {
                loops.push(head);
            }
            reads.push(ThreadRead {
                owns_gil: holder == Some(head.tstate),
                head,
                frames,
                depth,
            });
        }
        self.loop_threads = loops;
        Ok(reads)
    }

    fn thread_sample(
        &mut self,
        read: ThreadRead,
        full: bool,
        views: &mut HashMap<u64, Option<KernelView>>,
    ) -> ThreadSample {
        let ThreadRead {
            head,
            owns_gil,
            frames,
            depth,
        } = read;
        let pid = self.pid;
        let os_tid = head
            .native_tid
            .or_else(|| self.thread_ids.resolve(pid, head.python_tid));
        let view = os_tid.map(|tid| {
            views
                .remove(&tid)
                .unwrap_or_else(|| self.thread_files.kernel_view(tid))
        });
        let os_state = match view {
            None => OsState::Running,
            Some(Some(KernelView::Running)) if !waits_by_frames(&frames) => OsState::Running,
            Some(view) => {
                let syscall = view.and_then(KernelView::syscall);
                let resource = syscall.and_then(|s| self.resources.resolve(pid, &s));
                OsState::Waiting { syscall, resource }
            }
        };
        let is_loop = self
            .loop_threads
            .iter()
            .any(|t| t.python_tid == head.python_tid);
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
            every: if full || is_loop { 1 } else { self.stride },
            truncated: depth == Depth::Truncated,
        }
    }

    /// Thread names come from py-spy's lookup in `threading._active`, asked for when a thread
    /// appears and then at most once a second while some thread has no name, and done on the
    /// lookup's own thread. A `pthread_t` reused by a new thread (its kernel tid changed) is
    /// looked up again; until then the new thread goes unnamed rather than misnamed.
    fn refresh_names(&mut self, reads: &[ThreadRead], now: Instant) {
        let Some(lookup) = self.name_lookup.as_mut() else {
            return;
        };
        if let Some(names) = lookup.answer() {
            self.names = names;
        }
        let mut stale = false;
        for ThreadRead { head, .. } in reads {
            let os_tid = head.native_tid.unwrap_or(0);
            let (named, recycled) = match self.names.get(&head.python_tid) {
                Some((tid, name)) => (name.is_some(), os_tid != 0 && *tid != 0 && *tid != os_tid),
                None => (false, false),
            };
            if recycled {
                self.names.remove(&head.python_tid);
            }
            stale |= !named;
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
                    &mut self.thread_files,
                    &mut self.resources,
                )
            })
            .collect();
        forget_recycled_names(spy, &mut self.names, &threads);
        Some(threads)
    }
}

/// Attempts at showing the own reader agrees with py-spy before it is trusted.
const AGREEMENT_ATTEMPTS: usize = 20;
/// Outermost frames compared per thread (they change far less often than the innermost).
const ROOT_FRAMES: usize = 3;

/// Checks, before trusting it, that the own reader reads this interpreter as py-spy does. The
/// offset tables are per minor version; a build or patch release that moved a field would
/// otherwise fail (or garble) every read. The target runs on between the two reads, so an
/// attempt compares what changes rarely: the same threads, and each one's outermost frames.
fn own_reader_agrees(own: &mut StackReader<ProcessMemory>, spy: &mut PythonSpy) -> bool {
    for attempt in 0..AGREEMENT_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let Ok(traces) = spy.get_stack_traces() else {
            continue;
        };
        let theirs: Vec<(u64, Vec<(String, String)>)> = traces
            .into_iter()
            .map(|t| {
                let frames = t.frames.into_iter().map(|f| (f.name, f.filename)).collect();
                (t.thread_id, frames)
            })
            .collect();
        own.begin_tick(Instant::now());
        let Ok(heads) = own.threads() else {
            continue;
        };
        let mut ours = Vec::with_capacity(heads.len());
        for head in &heads {
            let mut frames = Vec::new();
            if own.stack(head, &mut frames).is_err() {
                break;
            }
            ours.push((head.python_tid, frames));
        }
        if ours.len() == heads.len() && stacks_agree(&ours, &theirs) {
            return true;
        }
    }
    false
}

/// The same thread ids, each thread's outermost [`ROOT_FRAMES`] frames alike (function and
/// file), and at least one frame compared.
fn stacks_agree(ours: &[(u64, Vec<Frame>)], theirs: &[(u64, Vec<(String, String)>)]) -> bool {
    let mut compared = 0;
    let same = ours.len() == theirs.len()
        && ours.iter().all(|(tid, frames)| {
            let Some((_, other)) = theirs.iter().find(|(id, _)| id == tid) else {
                return false;
            };
            let n = frames.len().min(other.len()).min(ROOT_FRAMES);
            compared += n;
            frames
                .iter()
                .rev()
                .zip(other.iter().rev())
                .take(n)
                .all(|(a, (function, file))| &*a.function == function && &*a.file == file)
        });
    same && compared > 0
}

/// py-spy's idle rule for a thread the kernel shows running: a leaf in `threading`'s `wait` or
/// `selectors`' `select` is about to block (the kernel lags the frames by a moment).
fn waits_by_frames(frames: &[Frame]) -> bool {
    frames.first().is_some_and(|leaf| {
        let name = leaf.function.rsplit('.').next().unwrap_or(&leaf.function);
        (name == "wait" && leaf.file.ends_with("threading.py"))
            || (name == "select" && leaf.file.ends_with("selectors.py"))
    })
}

/// py-spy caches thread names by Python thread id (the `pthread_t`), which a new thread reuses
/// as soon as an old one exits; when the kernel tid behind an id changes, drop the cached name
/// so the next read looks it up again.
fn forget_recycled_names(
    spy: &mut PythonSpy,
    names: &mut HashMap<u64, (u64, Option<Arc<str>>)>,
    threads: &[ThreadSample],
) {
    for thread in threads {
        let named = (thread.os_tid, thread.name.clone());
        if let Some((old, _)) = names.insert(thread.python_tid, named) {
            if old != thread.os_tid {
                spy.python_thread_names.remove(&thread.python_tid);
            }
        }
    }
    if names.len() > threads.len() * 4 + 64 {
        names.retain(|id, _| threads.iter().any(|t| t.python_tid == *id));
    }
}

/// A process whose reads have failed for seconds and which has no threads left that could run
/// Python is as good as exited for our purposes.
fn interpreter_gone(pid: i32) -> bool {
    !procfs::is_alive(pid)
        || std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
}

fn py_spy_thread_sample(
    pid: i32,
    trace: py_spy::StackTrace,
    thread_ids: &mut ThreadIdMap,
    thread_files: &mut ThreadFiles,
    resources: &mut ResourceResolver,
) -> ThreadSample {
    // CPython 3.11+ records the kernel tid (py-spy reads it, with the running state); before
    // that we map the pthread_t ourselves and ask the kernel whether the thread runs.
    let (os_tid, view) = match trace.os_thread_id {
        Some(tid) => (tid, None),
        None => match thread_ids.resolve(pid, trace.thread_id) {
            Some(tid) => (tid, Some(thread_files.kernel_view(tid))),
            None => (trace.thread_id, None),
        },
    };
    let running = match view {
        Some(view) => view == Some(KernelView::Running),
        None => trace.active,
    };
    let os_state = if running {
        OsState::Running
    } else {
        let view = view.unwrap_or_else(|| thread_files.kernel_view(os_tid));
        let syscall = view.and_then(KernelView::syscall);
        let resource = syscall.and_then(|s| resources.resolve(pid, &s));
        OsState::Waiting { syscall, resource }
    };
    let frames = trace
        .frames
        .into_iter()
        .map(|f| Frame {
            function: f.name.into(),
            file: f.filename.into(),
            line: f.line.max(0) as u32,
        })
        .collect();
    ThreadSample {
        os_tid,
        python_tid: trace.thread_id,
        name: trace.thread_name.map(Arc::from),
        frames,
        os_state,
        owns_gil: trace.owns_gil,
        every: 1,
        // py-spy reads every frame (up to its own limit) and says nothing of a cut.
        truncated: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(names: &[(&str, &str)]) -> Vec<Frame> {
        names
            .iter()
            .map(|(function, file)| Frame {
                function: (*function).into(),
                file: (*file).into(),
                line: 1,
            })
            .collect()
    }

    fn owned(names: &[(&str, &str)]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|(f, file)| (f.to_string(), file.to_string()))
            .collect()
    }

    #[test]
    fn readers_agree_on_threads_and_outermost_frames() {
        let main = [
            ("leaf", "a.py"),
            ("handler", "a.py"),
            ("run", "runners.py"),
            ("<module>", "app.py"),
        ];
        let moved = [
            ("other_leaf", "b.py"),
            ("handler", "a.py"),
            ("run", "runners.py"),
            ("<module>", "app.py"),
        ];
        let ours = vec![(1, frames(&main)), (2, frames(&[]))];
        // The innermost frame moved on between the two reads: still the same reader.
        assert!(stacks_agree(&ours, &[(1, owned(&moved)), (2, vec![])]));
        // A garbled root, a missing thread, or nothing to compare at all: not.
        let garbled = [
            ("leaf", "a.py"),
            ("handler", "a.py"),
            ("run", "runners.py"),
            ("<mod\u{0}", "app.py"),
        ];
        assert!(!stacks_agree(&ours, &[(1, owned(&garbled)), (2, vec![])]));
        assert!(!stacks_agree(&ours, &[(1, owned(&main))]));
        assert!(!stacks_agree(&[(2, frames(&[]))], &[(2, vec![])]));
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = IntervalHistogram::new();
        for us in 1..=100 {
            h.record(us);
        }
        h.record(500_000);
        assert_eq!(h.quantile(0.5), 51);
        assert_eq!(h.max_us, 500_000);
        assert_eq!(h.quantile(1.0), 100_000);
    }
}
