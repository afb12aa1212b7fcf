//! Frames and stacks are interned to small integer ids: a long recording repeats the same few
//! hundred stacks millions of times, so aggregates and incidents hold ids, not strings.

use std::collections::HashMap;
use std::hash::Hash;

use crate::sample::Frame;

/// Id of an interned [`Frame`].
pub type FrameId = u32;
/// Id of an interned stack (a leaf-first list of frame ids).
pub type StackId = u32;

/// A set of values, each stored once and named by its insertion index.
#[derive(Debug)]
pub struct Interner<T> {
    ids: HashMap<T, u32>,
    values: Vec<T>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            ids: HashMap::new(),
            values: Vec::new(),
        }
    }
}

impl<T: Hash + Eq + Clone> Interner<T> {
    /// The id of `value`, inserting it on first sight.
    pub fn intern(&mut self, value: &T) -> u32 {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(value.clone());
        self.ids.insert(value.clone(), id);
        id
    }

    /// The value behind `id`.
    pub fn get(&self, id: u32) -> &T {
        &self.values[id as usize]
    }

    /// How many distinct values are held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when nothing was interned yet.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Distinct frames kept; past it a new frame is recorded as [`OVERFLOW_FUNCTION`].
pub const MAX_DISTINCT_FRAMES: usize = 200_000;
/// Bytes of names and paths of distinct frames kept (counted as if none were shared).
pub const MAX_FRAME_TEXT_BYTES: usize = 48 << 20;
/// Frame ids held by all distinct stacks together. Past it a new stack keeps only its
/// innermost [`SHORT_STACK`] frames; past twice that, every new stack is the overflow stack.
pub const MAX_STACK_FRAME_IDS: usize = 4 << 20;
/// Frames a new stack keeps once the stack table is full.
const SHORT_STACK: usize = 8;
/// The function name standing for what the tables had no room for.
pub const OVERFLOW_FUNCTION: &str = "[more distinct stacks than loopspy keeps]";

/// Frames and stacks of one recording. A recording repeats a few hundred stacks, but a target
/// can make every sample new (a recursion of varying depth, code generated on the fly): the
/// tables are bounded ([`MAX_DISTINCT_FRAMES`], [`MAX_FRAME_TEXT_BYTES`],
/// [`MAX_STACK_FRAME_IDS`]), about 100 MiB at worst, and what does not fit is recorded as
/// [`OVERFLOW_FUNCTION`] rather than growing without end.
#[derive(Debug, Default)]
pub struct Symbols {
    /// Distinct frames.
    pub frames: Interner<Frame>,
    /// Distinct stacks, leaf first.
    pub stacks: Interner<Vec<FrameId>>,
    frame_text_bytes: usize,
    stack_frame_ids: usize,
    /// Samples whose frames or stack were recorded shortened for want of room.
    pub overflowed: u64,
}

impl Symbols {
    /// Interns a leaf-first stack.
    pub fn intern_stack(&mut self, frames: &[Frame]) -> StackId {
        let mut ids: Vec<FrameId> = frames.iter().map(|f| self.intern_frame(f)).collect();
        if let Some(&id) = self.stacks.ids.get(&ids) {
            return id;
        }
        if self.stack_frame_ids >= MAX_STACK_FRAME_IDS {
            self.overflowed += 1;
            let keep = if self.stack_frame_ids >= 2 * MAX_STACK_FRAME_IDS {
                0
            } else {
                SHORT_STACK
            };
            ids.truncate(keep);
            ids.push(self.overflow_frame());
            if let Some(&id) = self.stacks.ids.get(&ids) {
                return id;
            }
        }
        self.stack_frame_ids += ids.len();
        self.stacks.intern(&ids)
    }

    /// Interns one frame (or the overflow frame, when the frame table is full).
    pub fn intern_frame(&mut self, frame: &Frame) -> FrameId {
        if let Some(&id) = self.frames.ids.get(frame) {
            return id;
        }
        if self.frames.len() >= MAX_DISTINCT_FRAMES || self.frame_text_bytes >= MAX_FRAME_TEXT_BYTES
        {
            self.overflowed += 1;
            return self.overflow_frame();
        }
        self.frame_text_bytes += frame.function.len() + frame.file.len();
        self.frames.intern(frame)
    }

    fn overflow_frame(&mut self) -> FrameId {
        self.frames.intern(&Frame {
            function: OVERFLOW_FUNCTION.into(),
            file: "".into(),
            line: 0,
        })
    }

    /// The frames of a stack, leaf first.
    pub fn stack_frames(&self, id: StackId) -> impl Iterator<Item = &Frame> {
        self.stacks.get(id).iter().map(|&f| self.frames.get(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_stack_same_id() {
        let mut s = Symbols::default();
        let f = |n: &str| Frame {
            function: n.into(),
            file: "a.py".into(),
            line: 1,
        };
        let a = s.intern_stack(&[f("x"), f("y")]);
        let b = s.intern_stack(&[f("x"), f("y")]);
        let c = s.intern_stack(&[f("y"), f("x")]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(s.frames.len(), 2);
        assert_eq!(s.stack_frames(c).next().unwrap().function.as_ref(), "y");
    }

    #[test]
    fn tables_stay_bounded_whatever_the_stacks() {
        let mut s = Symbols::default();
        let f = |n: usize| Frame {
            function: format!("f{n}").into(),
            file: "gen.py".into(),
            line: 1,
        };
        // Ever-new frames: the frame table stops at its bound.
        for n in 0..MAX_DISTINCT_FRAMES + 1000 {
            s.intern_frame(&f(n));
        }
        assert_eq!(s.frames.len(), MAX_DISTINCT_FRAMES + 1);
        let overflow = s.intern_frame(&f(usize::MAX));
        assert_eq!(s.frames.get(overflow).function.as_ref(), OVERFLOW_FUNCTION);
        // Ever-new deep stacks of known frames: the stack table stops growing too.
        let mut s = Symbols::default();
        let frames: Vec<Frame> = (0..1024).map(f).collect();
        for n in 0..30_000usize {
            let (start, depth) = (n % 300, 200 + n / 300);
            s.intern_stack(&frames[start..(start + depth).min(1024)]);
        }
        assert!(s.stack_frame_ids <= 2 * MAX_STACK_FRAME_IDS + 1024 * 2);
        let held: usize = (0..s.stacks.len() as u32)
            .map(|i| s.stacks.get(i).len())
            .sum();
        assert_eq!(held, s.stack_frame_ids);
        assert!(s.overflowed > 0);
    }
}
