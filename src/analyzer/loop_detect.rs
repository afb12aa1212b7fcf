//! Where is an event loop in a stack, and what is it doing? Decided from the frames alone
//! (the kernel's running/sleeping view is wrong both ways for loops; see
//! `shared/OBSERVED-STACKS.md`).
//!
//! * Selector loops (CPython's own, 3.8–3.13): the anchor is `BaseEventLoop._run_once` in
//!   `asyncio/base_events.py`. Directly above it, `selectors.py`'s `select` means idle;
//!   `Handle._run` with a frame above it means a callback is running, whose root is that frame;
//!   anything else (bare `_run_once`, `_process_events`, ...) is the loop's own bookkeeping
//!   between callbacks.
//! * uvloop: its loop runs in C, so the anchor is the Python runner that called into it
//!   (`asyncio.run`/`Runner.run` in `asyncio/runners.py`, or `uvloop.run`); with nothing above
//!   the runner the loop is idle (or between callbacks — the two look alike from outside), and
//!   a frame above it is a callback's root. uvloop's own `wrapper` coroutine is skipped.

use crate::sample::Frame;

/// Which loop implementation a thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopKind {
    /// asyncio's pure-Python selector loop.
    Selector,
    /// uvloop (or another C loop driven through `asyncio.run`).
    Uvloop,
}

/// The loop's position in one stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopPosition {
    /// No event loop anywhere in the stack.
    NoLoop,
    /// Waiting for I/O or timers in the selector.
    Idle(LoopKind),
    /// In the loop's own code between callbacks (still busy: the loop is not waiting).
    Internal(LoopKind),
    /// Running a callback. `root` indexes (leaf-first) the callback's outermost frame: the
    /// coroutine a task is stepping, or the plain callback function.
    Callback {
        /// Loop implementation.
        kind: LoopKind,
        /// Index of the callback's root frame in the leaf-first frame list.
        root: usize,
    },
}

impl LoopPosition {
    /// The loop kind, if there is a loop.
    pub fn kind(self) -> Option<LoopKind> {
        match self {
            LoopPosition::NoLoop => None,
            LoopPosition::Idle(k) | LoopPosition::Internal(k) => Some(k),
            LoopPosition::Callback { kind, .. } => Some(kind),
        }
    }

    /// Busy means the loop is not waiting in its selector.
    pub fn is_busy(self) -> bool {
        matches!(
            self,
            LoopPosition::Internal(_) | LoopPosition::Callback { .. }
        )
    }
}

/// `Class.method` (3.11+) or `method` (before): the bare method name.
fn bare(function: &str) -> &str {
    function.rsplit('.').next().unwrap_or(function)
}

fn in_file(frame: &Frame, suffix: &str) -> bool {
    frame.file.ends_with(suffix)
}

fn is_selector_anchor(frame: &Frame) -> bool {
    bare(&frame.function) == "_run_once" && in_file(frame, "asyncio/base_events.py")
}

fn is_runner_anchor(frame: &Frame) -> bool {
    let name = bare(&frame.function);
    (name == "run"
        && (in_file(frame, "asyncio/runners.py") || in_file(frame, "uvloop/__init__.py")))
        || (&*frame.function == "Runner.run" && in_file(frame, "asyncio/runners.py"))
}

fn is_asyncio_machinery(frame: &Frame) -> bool {
    frame.file.contains("/asyncio/")
}

fn is_uvloop_wrapper(frame: &Frame) -> bool {
    in_file(frame, "uvloop/__init__.py")
}

/// Whether `frame` is where a loop is entered: a selector loop's `_run_once`, or the runner
/// (`asyncio.run`, `Runner.run`, `uvloop.run`) of a loop running in C.
pub fn is_loop_entry(frame: &Frame) -> bool {
    is_selector_anchor(frame) || is_runner_anchor(frame)
}

/// Whether the stack runs an event loop (what the sampler reads every tick).
pub fn runs_loop(frames: &[Frame]) -> bool {
    anchor_index(frames).is_some()
}

/// Index (leaf-first) of the frame that anchors the running loop, as [`classify`] finds it.
pub fn anchor_index(frames: &[Frame]) -> Option<usize> {
    frames
        .iter()
        .position(is_selector_anchor)
        .or_else(|| frames.iter().position(is_runner_anchor))
}

/// Identifies one run of a loop (one `run_forever`/`asyncio.run` call) by the frames below its
/// anchor, which stay the same for as long as the loop runs. Two loops run one after another in
/// the same thread (one per test under pytest-asyncio) differ here even when no idle sample
/// was caught between them.
pub fn loop_context(frames: &[Frame]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let anchor = anchor_index(frames)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    frames[anchor + 1..].hash(&mut hasher);
    Some(hasher.finish())
}

/// In `BaseEventLoop._run_once` of CPython 3.8–3.13, the handle loop (`for i in
/// range(ntodo):`) starts this many lines above its `handle._run()` call; everything before it
/// (cancelled-timer cleanup, the selector, ready timers) comes once per iteration.
const HANDLE_LOOP_LINES: u32 = 16;

/// The line `_run_once` is at, for a selector loop.
pub fn run_once_line(frames: &[Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| is_selector_anchor(f))
        .map(|f| f.line)
}

/// Whether a selector loop went round an iteration between two busy samples: the earlier one
/// was in the handle loop and this one is before it. `handle_run` is the line of
/// `handle._run()`, learned from callback samples.
pub fn new_iteration(previous: Option<u32>, current: u32, handle_run: u32) -> bool {
    let handle_loop = handle_run.saturating_sub(HANDLE_LOOP_LINES);
    previous.is_some_and(|p| p >= handle_loop && p <= handle_run + 2) && current < handle_loop
}

/// Whether a selector loop went round an iteration between two samples inside callbacks,
/// each with `_run_once`'s handle index and the thread's callback clock, read together:
/// `(index, clock)` then `now`. Every handle runs its callback inside its `Context`, entered
/// and left (+2 on the clock), so within one iteration the clock moved exactly twice as far
/// as the index (less only if handles in between were cancelled, which do not run). Further
/// than that, handles ran that this iteration's index does not count: another iteration's.
pub fn new_iteration_by_index((index, clock): (u64, u64), now: (u64, u64)) -> bool {
    let (now_index, now_clock) = now;
    let Some(clock_moved) = now_clock.checked_sub(clock) else {
        return false;
    };
    let handles_on = now_index as i64 - index as i64;
    clock_moved as i64 > 2 * handles_on
}

/// Classifies a leaf-first stack.
pub fn classify(frames: &[Frame]) -> LoopPosition {
    // The innermost selector anchor wins: a loop nested in a callback (nest_asyncio) is the one
    // actually running.
    if let Some(anchor) = frames.iter().position(is_selector_anchor) {
        return classify_selector(frames, anchor);
    }
    // uvloop: the innermost runner frame whose next frame up is not asyncio's own Python loop
    // machinery (which would mean a selector loop starting up or shutting down).
    for (idx, frame) in frames.iter().enumerate() {
        if !is_runner_anchor(frame) {
            continue;
        }
        let above = &frames[..idx];
        // Skip uvloop's `wrapper` coroutine around main().
        let first_user = above.iter().rposition(|f| !is_uvloop_wrapper(f));
        return match first_user {
            None if above.is_empty() => LoopPosition::Idle(LoopKind::Uvloop),
            None => LoopPosition::Internal(LoopKind::Uvloop),
            Some(root) if is_asyncio_machinery(&above[root]) => LoopPosition::NoLoop,
            Some(root) => LoopPosition::Callback {
                kind: LoopKind::Uvloop,
                root,
            },
        };
    }
    LoopPosition::NoLoop
}

fn classify_selector(frames: &[Frame], anchor: usize) -> LoopPosition {
    let kind = LoopKind::Selector;
    if anchor == 0 {
        return LoopPosition::Internal(kind);
    }
    let above = &frames[anchor - 1];
    if in_file(above, "selectors.py") {
        return LoopPosition::Idle(kind);
    }
    if bare(&above.function) == "_run" && in_file(above, "asyncio/events.py") {
        if anchor >= 2 {
            return LoopPosition::Callback {
                kind,
                root: anchor - 2,
            };
        }
        return LoopPosition::Internal(kind);
    }
    LoopPosition::Internal(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(function: &str, file: &str) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line: 1,
        }
    }

    const BASE: &str = "/py/lib/python3.11/asyncio/base_events.py";

    fn selector_base() -> Vec<Frame> {
        vec![
            f("BaseEventLoop._run_once", BASE),
            f("BaseEventLoop.run_forever", BASE),
            f("BaseEventLoop.run_until_complete", BASE),
            f("Runner.run", "/py/lib/python3.11/asyncio/runners.py"),
            f("run", "/py/lib/python3.11/asyncio/runners.py"),
            f("<module>", "/app/app.py"),
        ]
    }

    #[test]
    fn selector_idle_in_select() {
        let mut s = selector_base();
        s.insert(
            0,
            f("EpollSelector.select", "/py/lib/python3.11/selectors.py"),
        );
        assert_eq!(classify(&s), LoopPosition::Idle(LoopKind::Selector));
    }

    #[test]
    fn selector_callback_root_is_the_coroutine() {
        let mut s = selector_base();
        s.insert(0, f("Handle._run", "/py/lib/python3.11/asyncio/events.py"));
        s.insert(0, f("handler", "/app/app.py"));
        s.insert(0, f("helper", "/app/app.py"));
        assert_eq!(
            classify(&s),
            LoopPosition::Callback {
                kind: LoopKind::Selector,
                root: 1
            }
        );
    }

    #[test]
    fn selector_bookkeeping_is_internal_busy() {
        let s = selector_base();
        assert_eq!(classify(&s), LoopPosition::Internal(LoopKind::Selector));
        assert!(classify(&s).is_busy());
    }

    #[test]
    fn python38_unqualified_names() {
        let base = "/py/lib/python3.8/asyncio/base_events.py";
        let s = vec![
            f("select", "/py/lib/python3.8/selectors.py"),
            f("_run_once", base),
            f("run_forever", base),
            f("run", "/py/lib/python3.8/asyncio/runners.py"),
        ];
        assert_eq!(classify(&s), LoopPosition::Idle(LoopKind::Selector));
    }

    #[test]
    fn uvloop_idle_and_busy() {
        let runner = f("Runner.run", "/py/lib/python3.12/asyncio/runners.py");
        let uv = f("run", "/site-packages/uvloop/__init__.py");
        let idle = vec![runner.clone(), uv.clone(), f("<module>", "/app/app.py")];
        assert_eq!(classify(&idle), LoopPosition::Idle(LoopKind::Uvloop));
        let busy = vec![
            f("busy", "/app/app.py"),
            f("cruncher", "/app/app.py"),
            runner,
            uv,
        ];
        assert_eq!(
            classify(&busy),
            LoopPosition::Callback {
                kind: LoopKind::Uvloop,
                root: 1
            }
        );
    }

    #[test]
    fn uvloop_wrapper_is_skipped_on_old_pythons() {
        let uv = "/site-packages/uvloop/__init__.py";
        let s = vec![
            f("main", "/app/app.py"),
            f("wrapper", uv),
            f("run", uv),
            f("<module>", "/app/app.py"),
        ];
        assert_eq!(
            classify(&s),
            LoopPosition::Callback {
                kind: LoopKind::Uvloop,
                root: 0
            }
        );
    }

    #[test]
    fn plain_thread_has_no_loop() {
        let s = vec![
            f("wait", "/py/lib/python3.11/threading.py"),
            f("<module>", "/app/x.py"),
        ];
        assert_eq!(classify(&s), LoopPosition::NoLoop);
    }

    #[test]
    fn leaving_the_handle_loop_backwards_is_a_new_iteration() {
        // CPython 3.12.1: select at 1933, heappop at 1944, `for i in range(ntodo)` at 1955,
        // `handle._run()` at 1971.
        let run = 1971;
        assert!(new_iteration(Some(1971), 1944, run), "handles, then timers");
        assert!(
            new_iteration(Some(1955), 1933, run),
            "handles, then the select call"
        );
        assert!(
            !new_iteration(Some(1971), 1971, run),
            "the same handle loop"
        );
        assert!(!new_iteration(Some(1971), 1960, run), "the next handle");
        assert!(
            !new_iteration(Some(1944), 1971, run),
            "timers, then handles"
        );
        assert!(!new_iteration(None, 1944, run), "nothing before");
    }

    #[test]
    fn index_and_clock_mark_a_new_iteration_only_when_handles_ran_uncounted() {
        // Same iteration: the clock moved twice as far as the index.
        assert!(!new_iteration_by_index((3, 107), (10, 121)));
        // Cancelled handles in between (skipped, not run): the clock moved less.
        assert!(!new_iteration_by_index((3, 107), (10, 115)));
        // The index went back: a new iteration, whatever the clock.
        assert!(new_iteration_by_index((10, 121), (2, 131)));
        // The index went on, but the clock further: a new iteration of more handles.
        assert!(new_iteration_by_index((3, 107), (5, 151)));
        // A clock that went back is no evidence (another thread state, a misread).
        assert!(!new_iteration_by_index((3, 107), (1, 90)));
    }
}
