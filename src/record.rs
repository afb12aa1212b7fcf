//! `loopspy record`: attach (or launch), sample until stopped, analyze as samples arrive, and
//! write every output — also when the target exits or the user presses Ctrl-C.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::analyzer::{Analyzer, AnalyzerSettings};
use crate::cli::{RecordSettings, TargetSpec};
use crate::error::{exit_code, LoopspyError};
use crate::output::stream::Streams;
use crate::output::{self, ProfileFormat, RecordingInfo};
use crate::sampler::{self, SamplerSettings, StopReason};
use crate::target::{self, AttachedTarget};

/// Capacity of the sampler -> analyzer channel: a few seconds of samples at 1 kHz, so a
/// momentarily slow analyzer loses nothing, and a stuck one cannot grow memory without bound.
const CHANNEL_CAPACITY: usize = 8192;

/// Runs the command; returns the process exit code on success (0, or `NO_EVENT_LOOP` when the
/// target never ran an event loop).
pub fn run(settings: RecordSettings) -> Result<i32, LoopspyError> {
    // An explicit output directory is checked before anything is attached or launched.
    if let Some(dir) = &settings.output {
        output::prepare_dir(dir)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Ignore failure: a second handler (tests embedding us) just means no Ctrl-C support.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }

    let (target, mut child) = match &settings.target {
        TargetSpec::Pid(pid) => (target::attach(*pid, settings.blocking)?, None),
        TargetSpec::Launch(argv) => {
            let launched = target::launch(argv, settings.blocking)?;
            (launched.target, Some(launched.child))
        }
    };
    let AttachedTarget {
        spy,
        pid,
        python_version,
        command,
    } = target;

    let dir = settings
        .output
        .clone()
        .unwrap_or_else(|| default_output_dir(pid));
    if settings.output.is_none() {
        if let Err(err) = output::prepare_dir(&dir) {
            stop_child(child.as_mut());
            return Err(err);
        }
    }

    eprintln!(
        "loopspy: sampling pid {pid} (Python {python_version}) at {} Hz{}, incidents >= {} ms; {}",
        settings.rate_hz,
        if settings.blocking {
            ", pausing the target for each read"
        } else {
            ""
        },
        settings.threshold.as_secs_f64() * 1000.0,
        match settings.duration {
            Some(d) => format!("for {:.1}s (Ctrl-C stops early)", d.as_secs_f64()),
            None => "until Ctrl-C or the target exits".into(),
        }
    );

    let start_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let (tx, rx) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
    let sampler = sampler::spawn(
        spy,
        SamplerSettings {
            rate_hz: settings.rate_hz,
            duration: settings.duration,
        },
        stop.clone(),
        tx,
    );

    let mut analyzer = Analyzer::new(AnalyzerSettings {
        threshold: settings.threshold,
        interval: Duration::from_secs_f64(1.0 / settings.rate_hz as f64),
        only_thread: settings.thread,
        pid,
        max_incidents: crate::analyzer::MAX_INCIDENTS,
        stream: true,
        timeline: settings.formats.contains(&ProfileFormat::Perfetto),
    });
    let mut streams = Streams::create(&dir).map_err(|e| LoopspyError::OutputNotWritable {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let mut stream_error = None;
    for message in rx.iter() {
        analyzer.feed(message);
        let closed = analyzer.take_closed();
        let streamed = streams
            .incidents(analyzer.analysis(), &closed)
            .and_then(|()| streams.maybe_checkpoint(analyzer.analysis()));
        if let Err(err) = streamed {
            // Keep sampling: the final files may still be writable (e.g. space freed).
            stream_error.get_or_insert(err);
        }
    }
    let outcome = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampler thread panicked; nothing could be saved"))?;
    analyzer.close_all();
    let closed = analyzer.take_closed();
    if let Err(err) = streams.incidents(analyzer.analysis(), &closed) {
        stream_error.get_or_insert(err);
    }
    if let Some(err) = stream_error {
        eprintln!("loopspy: warning: writing incidents.jsonl failed ({err}); the final files are still attempted");
    }
    let analysis = analyzer.finish();

    match outcome.reason {
        StopReason::TargetExited => eprintln!("loopspy: pid {pid} exited; recording stopped"),
        StopReason::Interrupted => eprintln!("loopspy: interrupted; writing what was recorded"),
        StopReason::DurationElapsed => {}
    }
    if outcome.reason != StopReason::TargetExited {
        stop_child(child.as_mut());
    }
    let child_status = child.as_mut().and_then(|c| c.wait().ok());

    let info = RecordingInfo {
        pid,
        python_version,
        command,
        rate_hz: settings.rate_hz,
        threshold_ms: settings.threshold.as_secs_f64() * 1000.0,
        blocking: settings.blocking,
        stop_reason: outcome.reason,
        sampler: outcome.stats,
        start_unix,
        formats: settings.formats.clone(),
    };
    let mut written = output::write_all(&dir, &analysis, &info).map_err(|err| {
        LoopspyError::OutputNotWritable {
            path: dir.clone(),
            reason: format!("{err:#}"),
        }
    })?;
    written.files.push(dir.join("incidents.jsonl"));
    if let Err(err) = streams.finish() {
        eprintln!("loopspy: warning: could not remove checkpoint.collapsed: {err}");
    }
    print!(
        "{}",
        output::summary::render(&analysis, &info, Some(&written))
    );

    if let Some(limit) = settings.fail_on_block {
        let offenders = output::gate::offenders(&analysis, limit);
        if !offenders.is_empty() {
            print!("{}", output::gate::render(&analysis, &offenders, limit));
            eprintln!(
                "loopspy: the event loop was blocked >= {} ms {} time(s); exiting with {}",
                limit.as_millis(),
                offenders.len(),
                exit_code::BLOCKED
            );
            return Ok(exit_code::BLOCKED);
        }
        // Nothing blocked: the gated command's own verdict stands.
        return Ok(child_status.map(exit_code_of).unwrap_or(0));
    }
    if analysis.loops.is_empty() {
        eprintln!(
            "loopspy: no asyncio event loop was seen in pid {pid} (is it running one? use --thread TID to name the loop thread); the flame graph of its threads was written"
        );
        return Ok(exit_code::NO_EVENT_LOOP);
    }
    Ok(0)
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
