//! `loopspy dump`: one look at a running process, like `py-spy dump`, plus what py-spy cannot
//! say — which threads run event loops, whether each loop is idle or inside a callback, for how
//! long, and in which task. It samples for a short window (so it can tell how long a loop has
//! been busy) and prints the last sample.

use std::time::Duration;

use serde_json::{json, Value};

use crate::analyzer::loop_detect::{self, LoopPosition};
use crate::analyzer::task_for;
use crate::error::LoopspyError;
use crate::remote;
use crate::sample::{OsState, RunningTask, Sample, SamplerMessage, ThreadSample};
use crate::sampler::SamplerSettings;
use crate::session;

/// How long `dump` samples before reporting.
pub const WINDOW: Duration = Duration::from_millis(300);
const RATE_HZ: u32 = 200;

/// Settings for `loopspy dump`.
#[derive(Debug, Clone)]
pub struct DumpSettings {
    /// Target pid.
    pub pid: i32,
    /// Print JSON instead of text.
    pub json: bool,
    /// Pause the target while reading.
    pub blocking: bool,
    /// Stack reader.
    pub reader: crate::sampler::ReaderKind,
    /// Print the reader's struct offsets too (`--show-offsets`).
    pub show_offsets: bool,
}

/// What one thread was doing.
struct ThreadView {
    sample: ThreadSample,
    position: LoopPosition,
    busy_for: Option<Duration>,
    task: Option<RunningTask>,
}

/// Runs the command, printing to stdout.
pub fn run(settings: DumpSettings) -> Result<i32, LoopspyError> {
    let target = remote::attach(settings.pid, settings.blocking)?;
    let layout = target.layout.as_ref().map(|l| l.offsets.clone());
    let (tx, rx) = crossbeam_channel::bounded(1024);
    let session::Session {
        pid,
        python_version,
        command,
        mut analyzer,
        sampler,
        ..
    } = session::start(
        target,
        SamplerSettings {
            reader: settings.reader,
            ..SamplerSettings::every_thread(
                RATE_HZ,
                Some(WINDOW),
                crate::analyzer::loop_detect::runs_loop,
            )
        },
        // No incidents: a dump says what each loop is doing now.
        &session::AnalysisSettings {
            threshold: Duration::from_secs(3600),
            only_thread: None,
            stream: false,
            timeline: false,
        },
        tx,
    );
    let mut last: Option<Sample> = None;
    for message in rx.iter() {
        if let SamplerMessage::Sample(sample) = &message {
            last = Some(sample.clone());
        }
        analyzer.feed(message);
    }
    let stats = sampler.join().map(|o| o.stats).unwrap_or_default();
    let Some(sample) = last else {
        return Err(anyhow::anyhow!(
            "could not read a consistent snapshot of pid {pid} (it may have exited, or changed too fast); try again or use --blocking"
        )
        .into());
    };
    let analysis = analyzer.analysis();
    let now = sample.at;
    let views: Vec<ThreadView> = sample
        .threads
        .iter()
        .map(|thread| {
            let position = loop_detect::classify(&thread.frames);
            let busy_for = analysis
                .loops
                .get(&thread.os_tid)
                .and_then(|l| l.current_stall(now))
                .filter(|_| position.is_busy());
            let task = match position {
                LoopPosition::Callback { root, .. } => {
                    task_for(&thread.frames[root].function, &sample.running_tasks).cloned()
                }
                _ => None,
            };
            ThreadView {
                sample: thread.clone(),
                position,
                busy_for,
                task,
            }
        })
        .collect();
    if settings.json {
        let mut doc = json!({
            "pid": pid,
            "ns_pid": crate::remote::threads::ns_pid(pid),
            "python_version": python_version,
            "command": command,
            "sampled_ms": WINDOW.as_millis() as u64,
            "reader": stats.reader,
            "offsets": stats.offsets,
            "threads": views.iter().map(thread_json).collect::<Vec<_>>(),
        });
        if settings.show_offsets {
            doc["layout"] = serde_json::to_value(&layout).unwrap_or_default();
        }
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", render_text(pid, &python_version, &command, &views));
    }
    Ok(0)
}

fn loop_state(view: &ThreadView) -> Option<(&'static str, &'static str)> {
    let kind = match view.position.kind()? {
        loop_detect::LoopKind::Selector => "selector",
        loop_detect::LoopKind::Uvloop => "uvloop",
    };
    let state = match view.position {
        LoopPosition::Idle(_) => "idle",
        LoopPosition::Internal(_) => "busy",
        LoopPosition::Callback { .. } => "callback",
        LoopPosition::NoLoop => return None,
    };
    Some((kind, state))
}

fn thread_json(view: &ThreadView) -> Value {
    let t = &view.sample;
    let event_loop = loop_state(view).map(|(kind, state)| {
        json!({
            "loop": kind,
            "state": state,
            "busy_for_ms": view.busy_for.map(|d| (d.as_secs_f64() * 1000.0).round()),
            "task": view.task.as_ref().map(|task| json!({"name": task.name, "coroutine": task.coroutine})),
        })
    });
    json!({
        "thread_id": t.os_tid,
        "name": t.name,
        // null: the kernel's view of the thread could not be read.
        "running": match t.os_state {
            OsState::Running => Some(true),
            OsState::Waiting { .. } => Some(false),
            OsState::Unknown => None,
        },
        "owns_gil": t.owns_gil,
        "event_loop": event_loop,
        "stack": t.frames.iter().map(|f| json!({"function": f.function, "file": f.file, "line": f.line})).collect::<Vec<_>>(),
    })
}

fn render_text(pid: i32, version: &str, command: &str, views: &[ThreadView]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "Process {pid}: {command}\nPython v{version}\n");
    for view in views {
        let t = &view.sample;
        let mut flags = Vec::new();
        flags.push(match t.os_state {
            OsState::Running => "running",
            OsState::Waiting { .. } => "waiting",
            OsState::Unknown => "kernel view unreadable",
        });
        if t.owns_gil {
            flags.push("holds the GIL");
        }
        let _ = writeln!(
            out,
            "Thread {} ({}) [{}]",
            t.os_tid,
            crate::text::name(t.name.as_deref().unwrap_or("?")),
            flags.join(", ")
        );
        if let Some((kind, state)) = loop_state(view) {
            let what = match state {
                "idle" => "idle, waiting in its selector".to_string(),
                _ => {
                    let mut text = if state == "callback" {
                        "inside a callback".to_string()
                    } else {
                        "busy in loop internals".to_string()
                    };
                    if let Some(busy) = view.busy_for {
                        let _ = write!(
                            text,
                            " for {}{:.0} ms",
                            if busy >= WINDOW { ">= " } else { "" },
                            busy.as_secs_f64() * 1000.0
                        );
                    }
                    if let Some(task) = &view.task {
                        let _ = write!(
                            text,
                            " (task {}, coroutine {})",
                            crate::text::name(&task.name),
                            crate::text::name(&task.coroutine)
                        );
                    }
                    text
                }
            };
            let _ = writeln!(out, "  event loop ({kind}): {what}");
        }
        for frame in &t.frames {
            let _ = writeln!(out, "    {}", crate::text::frame_label(frame, true));
        }
        let _ = writeln!(out);
    }
    out
}
