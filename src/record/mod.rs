//! `loopspy record`: attach (or launch), sample until stopped, analyze as samples arrive, and
//! write every output — also when a target exits or the user presses Ctrl-C.
//!
//! One sampler thread per target process, all sending into one channel; one analyzer per
//! process. With `--subprocesses` (or several `--pid`) this is a fleet: new Python children of
//! the targets are found every half second and attached, a process that exits gets its files
//! written at once (in `pid-<pid>/`), and combined files sit at the top of the output
//! directory. A single target writes its files straight into the output directory.

mod process;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::analyzer::Analysis;
use crate::error::{exit_code, LoopspyError};
use crate::output::stream::Streams;
use crate::output::{self, ProfileFormat};
use crate::remote::{self, procfs, AttachedTarget};
use crate::sample::SamplerMessage;
use crate::sampler::{SamplerSettings, StopReason};
use crate::session::{self, AnalysisSettings};
use process::{info_for, Recorded, Stage};

/// Validated settings for `loopspy record`.
#[derive(Debug, Clone)]
pub struct RecordSettings {
    /// What to record.
    pub target: TargetSpec,
    /// How long (None: until stopped or the target exits).
    pub duration: Option<Duration>,
    /// Incident threshold.
    pub threshold: Duration,
    /// Rates and reader (each sampler's duration comes from `duration`).
    pub sampling: SamplerSettings,
    /// Output directory, if given.
    pub output: Option<PathBuf>,
    /// Pause the target for each read.
    pub blocking: bool,
    /// Loop thread override.
    pub thread: Option<u64>,
    /// Profile formats.
    pub formats: Vec<ProfileFormat>,
    /// CI gate limit.
    pub fail_on_block: Option<Duration>,
    /// Exit with [`exit_code::TASK_LEAK`] when a task leak was found.
    pub fail_on_leak: bool,
    /// Follow child processes.
    pub subprocesses: bool,
}

/// What to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// Attach to running processes.
    Pids(Vec<i32>),
    /// Launch this command and record the interpreter it runs.
    Launch(Vec<String>),
}

/// How often the recording takes what the samplers sent (the channels hold far more).
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// Capacity of the sampler -> analyzer channel: two seconds of samples at 1 kHz, so a
/// momentarily slow analyzer loses nothing, and a stuck one cannot grow memory without bound.
const CHANNEL_CAPACITY: usize = 2048;
/// How often `--subprocesses` looks for new children.
const SCAN_EVERY: Duration = Duration::from_millis(500);
/// How many times a child that looks like Python but cannot be attached yet (still starting)
/// is retried before it is left alone.
const ATTACH_RETRIES: u32 = 20;

/// Everything being recorded.
struct Recording<'a> {
    settings: &'a RecordSettings,
    dir: PathBuf,
    fleet: bool,
    started: Instant,
    tx: Sender<SamplerMessage>,
    processes: BTreeMap<i32, Recorded>,
    /// Combined `incidents.jsonl` of a fleet.
    fleet_stream: Option<Streams>,
    stream_error: Option<std::io::Error>,
    /// Children seen that are not (or not yet) attachable, with attempts so far.
    skipped: BTreeMap<i32, u32>,
}

/// Runs the command; returns the process exit code on success (0; `NO_EVENT_LOOP` when no
/// target ever ran an event loop; with `--fail-on-block`, `BLOCKED` or the command's own code).
pub fn run(settings: RecordSettings) -> Result<i32, LoopspyError> {
    // An explicit output directory is checked before anything is attached or launched, and
    // created only once there is something to write in it.
    if let Some(dir) = &settings.output {
        output::check_dir_writable(dir)?;
    }
    let interrupted = session::interrupt_flag();

    let mut child = None;
    let (targets, roots): (Vec<AttachedTarget>, Vec<i32>) = match &settings.target {
        TargetSpec::Pids(pids) => {
            let targets = pids
                .iter()
                .map(|pid| remote::attach(*pid, settings.blocking))
                .collect::<Result<Vec<_>, _>>()?;
            (targets, pids.clone())
        }
        TargetSpec::Launch(argv) => {
            let launched = remote::launch(argv, settings.blocking)?;
            let root = launched.child.id() as i32;
            child = Some(launched.child);
            (vec![launched.target], vec![root])
        }
    };
    let fleet = settings.subprocesses || targets.len() > 1;
    let first_pid = targets[0].pid;
    let dir = settings
        .output
        .clone()
        .unwrap_or_else(|| default_output_dir(first_pid));
    let (tx, rx) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
    let started = start_recording(&settings, dir, fleet, tx, targets);
    let mut rec = match started {
        Ok(rec) => rec,
        Err(err) => {
            // A program we launched must not outlive a recording that could not start.
            stop_child(child.as_mut());
            return Err(err);
        }
    };

    let reason = sample_until_stopped(&mut rec, &rx, &interrupted, &roots);

    for p in rec.processes.values() {
        p.stop.store(true, Ordering::SeqCst);
    }
    let pids: Vec<i32> = rec.processes.keys().copied().collect();
    for pid in &pids {
        let p = rec.processes.get_mut(pid).expect("known");
        if !p.join_sampler(Some(reason)) {
            return Err(
                anyhow::anyhow!("a sampler thread panicked; nothing could be saved").into(),
            );
        }
    }
    while let Ok(message) = rx.try_recv() {
        rec.dispatch(message);
    }
    match reason {
        StopReason::TargetExited if rec.fleet => {
            eprintln!("loopspy: every recorded process exited; recording stopped")
        }
        StopReason::TargetExited => eprintln!("loopspy: pid {first_pid} exited; recording stopped"),
        StopReason::Interrupted => eprintln!("loopspy: interrupted; writing what was recorded"),
        StopReason::DurationElapsed => {}
    }
    if reason != StopReason::TargetExited {
        stop_child(child.as_mut());
    }
    let child_status = child.as_mut().and_then(|c| c.wait().ok());

    for pid in &pids {
        rec.end_process(*pid);
        rec.write_process(*pid);
    }
    if let Some(err) = rec.stream_error.take() {
        eprintln!("loopspy: warning: streaming incidents.jsonl failed ({err}); the final files were still written");
    }
    let first_error = rec
        .processes
        .values()
        .find(|p| p.written().is_none())
        .map(|p| p.pid);
    if let Some(pid) = first_error {
        return Err(not_writable(
            &rec.dir,
            std::io::Error::other(format!("the files of pid {pid} could not all be written")),
        ));
    }

    report(&mut rec, &settings, reason, child_status, first_pid)
}

/// Creates the output directory and starts sampling every target.
fn start_recording(
    settings: &RecordSettings,
    dir: PathBuf,
    fleet: bool,
    tx: Sender<SamplerMessage>,
    targets: Vec<AttachedTarget>,
) -> Result<Recording<'_>, LoopspyError> {
    output::prepare_dir(&dir)?;
    let mut rec = Recording {
        settings,
        fleet_stream: if fleet {
            Some(Streams::create(&dir).map_err(|e| not_writable(&dir, e))?)
        } else {
            None
        },
        dir,
        fleet,
        started: Instant::now(),
        tx,
        processes: BTreeMap::new(),
        stream_error: None,
        skipped: BTreeMap::new(),
    };
    for target in targets {
        rec.add(target)?;
    }
    Ok(rec)
}

/// Writes the combined files of a fleet, prints the summary and the gate's verdict; the exit
/// code.
fn report(
    rec: &mut Recording<'_>,
    settings: &RecordSettings,
    reason: StopReason,
    child_status: Option<std::process::ExitStatus>,
    first_pid: i32,
) -> Result<i32, LoopspyError> {
    let analyses: Vec<(&Recorded, &Analysis)> = rec
        .processes
        .values()
        .filter_map(|p| p.analysis().map(|a| (p, a)))
        .collect();
    if rec.fleet {
        let members: Vec<output::fleet::Member> = analyses
            .iter()
            .map(|(p, a)| output::fleet::Member {
                info: info_for(p, settings, reason),
                analysis: a,
                dir: p.dir.clone(),
            })
            .collect();
        let written = output::fleet::write_all(&rec.dir, &members, &settings.formats)
            .map_err(|e| not_writable(&rec.dir, std::io::Error::other(format!("{e:#}"))))?;
        if let Some(stream) = rec.fleet_stream.take() {
            let _ = stream.finish();
        }
        print!("{}", output::fleet::summary(&members, &written));
    } else {
        let (p, analysis) = analyses[0];
        print!(
            "{}",
            output::summary::render(analysis, &info_for(p, settings, reason), p.written())
        );
    }

    if let Some(limit) = settings.fail_on_block {
        let mut offenders = Vec::new();
        for (_, analysis) in &analyses {
            for incident in output::gate::offenders(analysis, limit) {
                offenders.push((*analysis, incident));
            }
        }
        if !offenders.is_empty() {
            print!("{}", output::gate::render(&offenders, limit));
            eprintln!(
                "loopspy: the event loop was blocked >= {} ms {} time(s); exiting with {}",
                limit.as_millis(),
                offenders.len(),
                exit_code::BLOCKED
            );
            return Ok(exit_code::BLOCKED);
        }
    }
    if settings.fail_on_leak {
        let leaks: Vec<String> = analyses
            .iter()
            .flat_map(|(p, a)| {
                a.task_leaks.leaks().into_iter().map(move |leak| {
                    format!(
                        "{} in pid {} ({:+.1}/s)",
                        crate::text::name(&leak.site.coroutine),
                        p.pid,
                        leak.growth_per_s
                    )
                })
            })
            .collect();
        if !leaks.is_empty() {
            eprintln!(
                "loopspy: pending tasks kept growing (task leak): {}; exiting with {}",
                leaks.join(", "),
                exit_code::TASK_LEAK
            );
            return Ok(exit_code::TASK_LEAK);
        }
    }
    if settings.fail_on_block.is_some() {
        // Nothing blocked: the gated command's own verdict stands.
        return Ok(child_status.map(exit_code_of).unwrap_or(0));
    }
    if analyses.iter().all(|(_, a)| a.loops.is_empty()) {
        // A launched program that ended before running a loop (a typo in its path, a script
        // that failed at import): its own exit code says more than ours.
        if let (Some(status), StopReason::TargetExited) = (child_status, reason) {
            let code = exit_code_of(status);
            eprintln!(
                "loopspy: the launched program exited with code {code} before any asyncio event loop was seen; exiting with its code"
            );
            return Ok(code);
        }
        eprintln!(
            "loopspy: no asyncio event loop was seen in pid {first_pid} (is it running one? use --thread TID to name the loop thread); the flame graph of its threads was written"
        );
        return Ok(exit_code::NO_EVENT_LOOP);
    }
    Ok(0)
}

/// Takes what the samplers send until the recording stops (Ctrl-C, `--duration`, every target
/// gone); a process that exits on the way gets its files written at once (fleets).
fn sample_until_stopped(
    rec: &mut Recording<'_>,
    rx: &Receiver<SamplerMessage>,
    interrupted: &AtomicBool,
    roots: &[i32],
) -> StopReason {
    let settings = rec.settings;
    let mut next_scan = Instant::now();
    loop {
        // Take samples in batches: waking on every sample (futex wake-ups and spinning in the
        // channel) cost more CPU at 1 kHz than the sampling itself.
        std::thread::sleep(DRAIN_EVERY);
        while let Ok(message) = rx.try_recv() {
            rec.dispatch(message);
        }
        if interrupted.load(Ordering::SeqCst) {
            return StopReason::Interrupted;
        }
        if let Some(limit) = settings.duration {
            if rec.started.elapsed() >= limit {
                return StopReason::DurationElapsed;
            }
        }
        // A process whose sampler ended (it exited): drain what it sent, write its files now.
        let ended: Vec<i32> = rec
            .processes
            .values()
            .filter(|p| p.sampler_finished())
            .map(|p| p.pid)
            .collect();
        if !ended.is_empty() {
            while let Ok(message) = rx.try_recv() {
                rec.dispatch(message);
            }
            for pid in ended {
                rec.end_process(pid);
                if rec.fleet {
                    rec.write_process(pid);
                }
            }
        }
        if settings.subprocesses && Instant::now() >= next_scan {
            next_scan = Instant::now() + SCAN_EVERY;
            rec.scan_children(roots);
        }
        let all_ended = rec.processes.values().all(|p| !p.sampling());
        let roots_alive = settings.subprocesses && roots.iter().any(|r| procfs::is_alive(*r));
        if all_ended && !roots_alive {
            return StopReason::TargetExited;
        }
    }
}

impl Recording<'_> {
    /// Starts sampling one more process.
    fn add(&mut self, target: AttachedTarget) -> Result<(), LoopspyError> {
        let pid = target.pid;
        let dir = if self.fleet {
            self.dir.join(format!("pid-{pid}"))
        } else {
            self.dir.clone()
        };
        output::prepare_dir(&dir)?;
        let streams = Streams::create(&dir).map_err(|e| not_writable(&dir, e))?;
        let s = self.settings;
        let duration = s.duration.map(|d| {
            d.saturating_sub(self.started.elapsed())
                .max(Duration::from_millis(1))
        });
        eprintln!(
            "loopspy: sampling pid {pid} (Python {}) at {} Hz{}, incidents >= {} ms; {}",
            target.python_version,
            s.sampling.rate_hz,
            if s.blocking {
                ", pausing the target for each read"
            } else {
                ""
            },
            s.threshold.as_secs_f64() * 1000.0,
            match duration {
                Some(d) => format!("for {:.1}s (Ctrl-C stops early)", d.as_secs_f64()),
                None => "until Ctrl-C or the target exits".into(),
            }
        );
        let session = session::start(
            target,
            SamplerSettings {
                duration,
                // Pending tasks counted about once a second: task leaks (`analyzer::task_leaks`).
                task_census: true,
                ..s.sampling.clone()
            },
            &AnalysisSettings {
                threshold: s.threshold,
                only_thread: s.thread,
                stream: true,
                timeline: s.formats.contains(&ProfileFormat::Perfetto),
            },
            self.tx.clone(),
        );
        self.processes.insert(
            pid,
            Recorded {
                pid,
                ns_pid: crate::remote::threads::ns_pid(pid),
                python_version: session.python_version,
                command: session.command,
                start_unix: session.start_unix,
                dir,
                stop: session.stop,
                streams: Some(streams),
                stage: Stage::Sampling {
                    sampler: session.sampler,
                    analyzer: session.analyzer,
                },
            },
        );
        Ok(())
    }

    /// Feeds a message to its process's analyzer and streams what closed.
    fn dispatch(&mut self, message: SamplerMessage) {
        let Some(p) = self.processes.get_mut(&message.pid()) else {
            return;
        };
        let (Stage::Sampling { analyzer, .. } | Stage::Draining { analyzer, .. }) = &mut p.stage
        else {
            return;
        };
        analyzer.feed(message);
        let closed = analyzer.take_closed();
        let analysis = analyzer.analysis();
        let mut result = Ok(());
        if let Some(streams) = p.streams.as_mut() {
            result = streams
                .incidents(analysis, &closed)
                .and_then(|()| streams.maybe_checkpoint(analysis));
        }
        if let (Some(fleet), Ok(())) = (self.fleet_stream.as_mut(), &result) {
            result = fleet.incidents(analysis, &closed);
        }
        if let Err(err) = result {
            // Keep sampling: the final files may still be writable (e.g. space freed).
            self.stream_error.get_or_insert(err);
        }
    }

    /// The process's sampler ended: collect its outcome and close its analysis.
    fn end_process(&mut self, pid: i32) {
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        // A sampler that panicked leaves no outcome; what it sent is still analyzed.
        p.join_sampler(None);
        if !matches!(p.stage, Stage::Draining { .. }) {
            return;
        }
        let Stage::Draining {
            outcome,
            mut analyzer,
        } = std::mem::replace(&mut p.stage, Stage::Moving)
        else {
            unreachable!("checked: draining");
        };
        analyzer.close_all();
        let closed = analyzer.take_closed();
        let analysis = analyzer.finish();
        let mut result = Ok(());
        if let Some(streams) = p.streams.as_mut() {
            result = streams.incidents(&analysis, &closed);
        }
        if let (Some(fleet), Ok(())) = (self.fleet_stream.as_mut(), &result) {
            result = fleet.incidents(&analysis, &closed);
        }
        if let Err(err) = result {
            self.stream_error.get_or_insert(err);
        }
        if self.fleet
            && outcome
                .as_ref()
                .is_some_and(|o| o.reason == StopReason::TargetExited)
        {
            eprintln!(
                "loopspy: pid {pid} exited; its {} incidents are kept",
                analysis.incidents_total
            );
        }
        p.stage = Stage::Ended { outcome, analysis };
    }

    /// Writes a finished process's files (once).
    fn write_process(&mut self, pid: i32) {
        let settings = self.settings;
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        let Stage::Ended { analysis, .. } = &p.stage else {
            return;
        };
        let reason = p
            .outcome()
            .map(|o| o.reason)
            .unwrap_or(StopReason::Interrupted);
        let info = info_for(p, settings, reason);
        match output::write_all(&p.dir, analysis, &info) {
            Ok(mut written) => {
                written.files.push(p.dir.join("incidents.jsonl"));
                if let Some(streams) = p.streams.take() {
                    if let Err(err) = streams.finish() {
                        eprintln!("loopspy: warning: could not remove checkpoint.collapsed: {err}");
                    }
                }
                if let Stage::Ended { outcome, analysis } =
                    std::mem::replace(&mut p.stage, Stage::Moving)
                {
                    p.stage = Stage::Written {
                        outcome,
                        analysis,
                        written,
                    };
                }
            }
            Err(err) => eprintln!("loopspy: error: writing the files of pid {pid}: {err:#}"),
        }
    }

    /// Attaches Python children of the roots (and of every recorded process) not seen yet.
    fn scan_children(&mut self, roots: &[i32]) {
        let mut tree: Vec<i32> = Vec::new();
        let mut seen = HashSet::new();
        for root in roots.iter().chain(self.processes.keys()) {
            for pid in procfs::process_tree(*root) {
                if seen.insert(pid) {
                    tree.push(pid);
                }
            }
        }
        for pid in tree {
            if self.processes.contains_key(&pid) {
                continue;
            }
            let attempts = self.skipped.entry(pid).or_default();
            if *attempts >= ATTACH_RETRIES {
                continue;
            }
            *attempts += 1;
            match remote::attach::attach_found(pid, self.settings.blocking) {
                Ok(mut target) => {
                    // A just-started interpreter may not have its thread state yet.
                    if !target.has_threads() {
                        continue;
                    }
                    self.skipped.remove(&pid);
                    eprintln!("loopspy: following child pid {pid} ({})", target.command);
                    if let Err(err) = self.add(target) {
                        eprintln!("loopspy: error: cannot record child pid {pid}: {err}");
                    }
                }
                // Not Python (a shell, a compiler, `sleep`): never ask again.
                Err(LoopspyError::NotPython { .. })
                | Err(LoopspyError::UnsupportedPython { .. })
                | Err(LoopspyError::FreeThreaded { .. }) => {
                    *self.skipped.entry(pid).or_default() = ATTACH_RETRIES
                }
                Err(_) => {}
            }
        }
    }
}

fn not_writable(dir: &Path, err: std::io::Error) -> LoopspyError {
    LoopspyError::OutputNotWritable {
        path: dir.to_path_buf(),
        reason: err.to_string(),
    }
}

/// A child's exit status as a shell would report it.
fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn default_output_dir(pid: i32) -> PathBuf {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    PathBuf::from(format!("loopspy-{pid}-{stamp}"))
}

/// Stops a process we launched: SIGINT (lets Python run `finally:` blocks), then SIGKILL.
fn stop_child(child: Option<&mut std::process::Child>) {
    let Some(child) = child else { return };
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
}
