//! What the frames alone say about a stack, memoized per interned stack by the analyzer (a
//! recording repeats a few hundred stacks thousands of times, and these are string searches
//! over every frame).

use super::loop_detect::{self, LoopKind, LoopPosition};
use super::{cause, culprit};
use crate::sample::Frame;

/// The frame-only facts about one stack (see `loop_detect`).
#[derive(Debug, Clone, Copy)]
pub(super) struct StackFacts {
    pub(super) position: LoopPosition,
    pub(super) loop_context: Option<u64>,
    pub(super) run_once_line: Option<u32>,
    /// For a callback (None/0 otherwise, and the analyzer never turns another position into a
    /// callback): the culprit frame's index and the library the callback called into.
    pub(super) culprit: usize,
    pub(super) library: Option<&'static str>,
}

impl StackFacts {
    /// A loop thread's stack cut short by the reader ([`ThreadSample::truncated`]): its
    /// innermost frames are a callback's (an idle loop is a few frames deep), whose root and
    /// loop frames were not read.
    pub(super) fn cut(frames: &[Frame], kind: LoopKind) -> Self {
        let root = frames.len() - 1;
        StackFacts {
            position: LoopPosition::Callback { kind, root },
            loop_context: None,
            run_once_line: None,
            culprit: culprit::culprit_index(frames, root),
            library: cause::library_on_stack(frames),
        }
    }

    pub(super) fn of(frames: &[Frame]) -> Self {
        let position = loop_detect::classify(frames);
        let (culprit, library) = match position {
            LoopPosition::Callback { root, .. } => (
                culprit::culprit_index(frames, root),
                cause::library_on_stack(&frames[..=root]),
            ),
            _ => (0, None),
        };
        StackFacts {
            position,
            loop_context: loop_detect::loop_context(frames),
            run_once_line: loop_detect::run_once_line(frames),
            culprit,
            library,
        }
    }
}
