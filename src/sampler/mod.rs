//! The sampling thread. It owns the interpreter reader, wakes on an absolute schedule
//! (`start + k * interval`, so it never drifts), reads every Python thread's stack plus the
//! kernel's view of each thread (running or the syscall it waits in), and sends one [`Sample`]
//! per tick over a bounded channel. It never waits on the analyzer: when the channel is full
//! the sample is dropped and counted. A read that fails in non-blocking mode (the target changed
//! its frames under us) is counted and dropped, never sent half-read.

pub mod census;
mod pyspy;
mod reader;
mod self_check;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, TrySendError};

use crate::histogram::Histogram;
use crate::remote::cost::{self, ReadCost};
pub use crate::remote::stacks::MAX_FRAMES;
use crate::remote::{procfs, AttachedTarget};
use crate::sample::{Frame, Sample, SamplerMessage};
use reader::TargetReader;

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
    /// Where the own reader's struct offsets came from: `target` (the interpreter's own
    /// `_Py_DebugOffsets`, 3.13+), `table` (`python_offsets/`), or `none` (py-spy's reader).
    pub offsets: &'static str,
    /// Reads per second of threads without an event loop (own reader; else `rate_hz`).
    pub other_threads_hz: u32,
    /// System calls the sampler made to read the target (py-spy's reader's not counted).
    pub cost: ReadCost,
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
    /// Count the target's pending tasks by coroutine about once a second, on a thread of its
    /// own ([`census`]), for task-leak detection.
    pub task_census: bool,
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
            task_census: false,
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

/// Starts the sampler thread. It stops when `stop` is set, the duration elapses, or the target
/// exits; the channel is closed when it returns.
pub fn spawn(
    target: AttachedTarget,
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
            // The census reads beside the sampler and stops with it.
            let census_stop = Arc::new(AtomicBool::new(false));
            let (census_wanted, wanted) = crossbeam_channel::bounded(1);
            let census = match &target.layout {
                Some(layout) if settings.task_census => census::spawn(
                    target.pid,
                    layout.clone(),
                    census::Signals {
                        stop: census_stop.clone(),
                        wanted,
                    },
                    tx.clone(),
                ),
                _ => None,
            };
            let census_wanted = census.as_ref().map(|_| census_wanted);
            let mut reader = TargetReader::new(target, &settings);
            let outcome = run(&mut reader, &settings, &stop, &tx, census_wanted.as_ref());
            drop(census_wanted);
            census_stop.store(true, Ordering::SeqCst);
            if let Some(census) = census {
                let _ = census.join();
            }
            outcome
        })
        .expect("spawning the sampler thread")
}

/// A callback holding its loop this long asks for a task census at once: its task may be
/// newer than the last census, and its await chain is read while the loop cannot change it.
const CENSUS_CALLBACK: Duration = Duration::from_millis(30);

fn run(
    reader: &mut TargetReader,
    settings: &SamplerSettings,
    stop: &AtomicBool,
    tx: &Sender<SamplerMessage>,
    census_wanted: Option<&Sender<()>>,
) -> SamplerOutcome {
    let pid = reader.pid();
    let interval = Duration::from_secs_f64(1.0 / settings.rate_hz.max(1) as f64);
    let start = Instant::now();
    let mut stats = SamplerStats::default();
    // 1 µs buckets up to 100 ms: hours of sampling cost constant memory.
    let mut intervals = Histogram::new(100_000);
    let mut next_tick = start;
    let mut last_read: Option<Instant> = None;
    let mut consecutive_errors = 0u32;
    let cost_before = cost::so_far();

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
            intervals.record(read_at.duration_since(prev).as_micros() as f64);
        }
        last_read = Some(read_at);
        stats.ticks += 1;

        match reader.read_threads(read_at) {
            Some(threads) => {
                consecutive_errors = 0;
                // The wall clock of this read, read now (see `Analysis::clock_anchor`).
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                let mut threads = threads;
                let (running_tasks, task_generation) = reader.running_tasks();
                reader.confirm_reads(&mut threads, &running_tasks, read_at);
                if let Some(wanted) = census_wanted {
                    if reader
                        .callback_running_for(&threads, read_at)
                        .is_some_and(|d| d >= CENSUS_CALLBACK)
                    {
                        let _ = wanted.try_send(());
                    }
                }
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
    let cost_after = cost::so_far();
    stats.cost = ReadCost {
        memory_reads: cost_after.memory_reads - cost_before.memory_reads,
        proc_reads: cost_after.proc_reads - cost_before.proc_reads,
    };
    stats.reader = reader.reader_name();
    stats.offsets = reader.offsets_source();
    stats.other_threads_hz = reader.other_threads_hz(settings.rate_hz);
    stats.interval_p50_us = intervals.quantile(0.50);
    stats.interval_p99_us = intervals.quantile(0.99);
    stats.interval_max_us = intervals.max as u64;
    SamplerOutcome { reason, stats }
}

/// A process whose reads have failed for seconds and which has no threads left that could run
/// Python is as good as exited for our purposes.
fn interpreter_gone(pid: i32) -> bool {
    !procfs::is_alive(pid)
        || std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
}
