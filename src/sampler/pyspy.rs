//! Everything that goes through py-spy: the check that loopspy's own reader reads the target
//! as py-spy does, thread names (looked up on a thread of their own), and py-spy's reader
//! itself (`--reader py-spy`, or a target the own reader cannot read).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use py_spy::PythonSpy;

use crate::remote::memory::ProcessMemory;
use crate::remote::procfs::{KernelView, ThreadFiles};
use crate::remote::resources::ResourceResolver;
use crate::remote::stacks::StackReader;
use crate::remote::threads::{NamespaceTids, ThreadIdMap};
use crate::sample::{Frame, OsState, ThreadSample};

/// How often thread names are looked up again while a thread that matters has none.
const NAME_LOOKUP_EVERY: Duration = Duration::from_secs(1);

/// Python thread id -> (kernel tid, name), as py-spy's lookup in `threading` found them.
pub(super) type ThreadNames = HashMap<u64, (u64, Option<Arc<str>>)>;

/// Thread names, looked up by py-spy (a full read of every thread and of `threading`'s
/// tables: milliseconds, far longer on a target that starts hundreds of threads a second) on a
/// thread of its own, so a thread appearing never delays a tick. The sampler asks; the answer
/// arrives some ticks later and is taken when it has.
pub(super) struct NameLookup {
    ask: Sender<()>,
    answers: crossbeam_channel::Receiver<ThreadNames>,
    in_flight: bool,
    asked_at: Option<Instant>,
}

impl NameLookup {
    pub(super) fn spawn(mut spy: PythonSpy) -> Self {
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
    pub(super) fn ask(&mut self, now: Instant) {
        let due = self
            .asked_at
            .is_none_or(|at| now.duration_since(at) >= NAME_LOOKUP_EVERY);
        if !self.in_flight && due && self.ask.try_send(()).is_ok() {
            self.in_flight = true;
            self.asked_at = Some(now);
        }
    }

    /// The names of a lookup that has finished since the last call.
    pub(super) fn answer(&mut self) -> Option<ThreadNames> {
        let names = self.answers.try_recv().ok()?;
        self.in_flight = false;
        Some(names)
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
pub(super) fn own_reader_agrees(own: &mut StackReader<ProcessMemory>, spy: &mut PythonSpy) -> bool {
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

/// py-spy caches thread names by Python thread id (the `pthread_t`), which a new thread reuses
/// as soon as an old one exits; when the kernel tid behind an id changes, drop the cached name
/// so the next read looks it up again.
pub(super) fn forget_recycled_names(
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

pub(super) fn py_spy_thread_sample(
    pid: i32,
    trace: py_spy::StackTrace,
    thread_ids: &mut ThreadIdMap,
    ns: &mut NamespaceTids,
    thread_files: &mut ThreadFiles,
    resources: &mut ResourceResolver,
) -> ThreadSample {
    // CPython 3.11+ records the kernel tid (py-spy reads it, with the running state); before
    // that we map the pthread_t ourselves and ask the kernel whether the thread runs. Either
    // id is the target's: in a PID namespace of its own it is mapped to ours, and py-spy's
    // running state (read by the target's id from our /proc) is not used.
    let target_tid = trace
        .os_thread_id
        .or_else(|| thread_ids.resolve(trace.thread_id, ns));
    let host_tid = target_tid.and_then(|tid| ns.host_tid(tid));
    let trust_spy = trace.os_thread_id.is_some() && !ns.foreign();
    let view = match host_tid {
        Some(tid) if !trust_spy => Some(thread_files.kernel_view(tid)),
        _ => None,
    };
    let os_state = match (trust_spy, host_tid, view) {
        (true, _, _) if trace.active => OsState::Running,
        (false, Some(_), Some(Some(KernelView::Running))) => OsState::Running,
        (true, Some(tid), _) => waiting(thread_files.kernel_view(tid), pid, resources),
        (false, Some(_), Some(view)) => waiting(view, pid, resources),
        _ => OsState::Unknown,
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
        os_tid: host_tid.unwrap_or(trace.thread_id),
        python_tid: trace.thread_id,
        name: trace.thread_name.map(Arc::from),
        frames,
        os_state,
        owns_gil: trace.owns_gil,
        every: 1,
        // py-spy reads every frame (up to its own limit) and says nothing of a cut.
        truncated: false,
        context_ver: None,
        handle_index: None,
        clock_after: None,
        ns_tid: target_tid.filter(|_| ns.foreign()),
        // py-spy's reader reads no kernel counters.
        counters: None,
    }
}

/// Off CPU as the kernel's view `view` has it, or unreadable.
fn waiting(view: Option<KernelView>, pid: i32, resources: &mut ResourceResolver) -> OsState {
    match view {
        Some(view) => {
            let syscall = view.syscall();
            let resource = syscall.and_then(|s| resources.resolve(pid, &s));
            OsState::Waiting { syscall, resource }
        }
        None => OsState::Unknown,
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
}
