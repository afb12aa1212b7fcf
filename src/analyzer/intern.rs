//! Frames and stacks are interned to small integer ids: a long recording repeats the same few
//! hundred stacks millions of times, so aggregates and incidents hold ids, not strings.

use std::collections::HashMap;
use std::hash::Hash;

use crate::sampler::Frame;

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

/// Frames and stacks of one recording.
#[derive(Debug, Default)]
pub struct Symbols {
    /// Distinct frames.
    pub frames: Interner<Frame>,
    /// Distinct stacks, leaf first.
    pub stacks: Interner<Vec<FrameId>>,
}

impl Symbols {
    /// Interns a leaf-first stack.
    pub fn intern_stack(&mut self, frames: &[Frame]) -> StackId {
        let ids: Vec<FrameId> = frames.iter().map(|f| self.frames.intern(f)).collect();
        self.stacks.intern(&ids)
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
}
