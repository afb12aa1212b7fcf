//! Telling CPython's cached small ints from any other object, by address.
//!
//! A loop index read from a frame is a pointer to an int object. Up to 256 it is one of the
//! interpreter's cached small ints, allocated once and never freed, so what the pointer is
//! read to say holds. Past that, the int is a fresh heap object freed as soon as the loop
//! moves on, and its memory is soon another object: read a moment late, it can say anything
//! — a reused block once read as a small index split a real saturation in five. So a value
//! is believed only from an address where a cached small int lives.
//!
//! Those addresses are learned, not looked up: the cache is an array of equal-sized objects
//! (`small_ints`, one block on 3.8 and 3.10–3.15, a few on 3.9, whose objects come from the
//! allocator's pools), so each true small int `v` at address `a` has `a - 32 * v` equal to
//! its block's base. A base is learned once reads of two different values agree on it;
//! a misread, at a random address, practically never meets another on one.

/// Bytes between consecutive cached small ints: `sizeof(PyLongObject)` of a one-digit int
/// (header, size or tag, one 30-bit digit, padded), 3.8 to 3.15 on 64-bit.
const STRIDE: u64 = 32;
/// The largest cached small int.
pub const MAX_SMALL_INT: u64 = 256;
/// Candidate bases kept (a misread adds one; the true ones are a handful).
const MAX_CANDIDATES: usize = 32;

#[derive(Debug, Clone, Copy)]
struct Candidate {
    base: u64,
    first_value: u64,
    /// Seen with a second, different value: a learned base.
    learned: bool,
    seen: u32,
}

/// The learned bases of the small-int cache of one interpreter.
#[derive(Debug, Default)]
pub struct SmallInts {
    candidates: Vec<Candidate>,
}

impl SmallInts {
    /// The value of the cached small int at `address`, if it lies in a learned block (no
    /// need to read it: the address says it).
    pub fn value_at(&self, address: u64) -> Option<u64> {
        self.candidates.iter().filter(|c| c.learned).find_map(|c| {
            let offset = address.checked_sub(c.base)?;
            let value = offset / STRIDE;
            (offset % STRIDE == 0 && value <= MAX_SMALL_INT).then_some(value)
        })
    }

    /// `value` read from the int object at `address`: `Some(value)` if the address is where
    /// the cached small int `value` lives, as far as reads so far have shown; `None` (not
    /// believed) until its block's base is learned, and for any other address.
    pub fn check(&mut self, address: u64, value: u64) -> Option<u64> {
        if value > MAX_SMALL_INT || !address.is_multiple_of(8) {
            return None;
        }
        let base = address.wrapping_sub(STRIDE * value);
        if let Some(c) = self.candidates.iter_mut().find(|c| c.base == base) {
            c.seen = c.seen.saturating_add(1);
            c.learned |= c.first_value != value;
            return c.learned.then_some(value);
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            // Forget the least seen unlearned candidate (a misread's, most likely).
            let weakest = self
                .candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.learned)
                .min_by_key(|(_, c)| c.seen)
                .map(|(k, _)| k)?;
            self.candidates.swap_remove(weakest);
        }
        self.candidates.push(Candidate {
            base,
            first_value: value,
            learned: false,
            seen: 1,
        });
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_believed_once_its_block_is_learned() {
        let mut ints = SmallInts::default();
        let base = 0x7f00_0000_1000;
        assert_eq!(
            ints.check(base + 32 * 7, 7),
            None,
            "one value proves nothing"
        );
        assert_eq!(ints.check(base + 32 * 7, 7), None, "nor the same again");
        assert_eq!(ints.check(base + 32 * 9, 9), Some(9));
        assert_eq!(ints.check(base + 32 * 7, 7), Some(7));
        assert_eq!(ints.check(base, 0), Some(0));
        assert_eq!(ints.value_at(base + 32 * 200), Some(200));
        assert_eq!(ints.value_at(base + 32 * 200 + 8), None);
        assert_eq!(ints.value_at(base + 32 * 257), None);
        assert_eq!(ints.value_at(base - 32), None);
    }

    #[test]
    fn a_reused_block_is_never_believed() {
        let mut ints = SmallInts::default();
        let base = 0x7f00_0000_1000;
        ints.check(base + 32 * 3, 3);
        ints.check(base + 32 * 4, 4);
        // A freed heap int's memory, reused: an address off the array, whatever it says.
        assert_eq!(ints.check(0x5600_0000_2468, 3), None);
        assert_eq!(ints.check(0x5600_0000_2468, 200), None);
        // A value past the cache, or an address the array's stride does not fit.
        assert_eq!(ints.check(base + 32 * 300, 300), None);
        assert_eq!(ints.check(base + 32 * 5 + 4, 5), None);
    }

    #[test]
    fn several_blocks_are_learned_and_misreads_are_bounded() {
        let mut ints = SmallInts::default();
        // 3.9: the cache in three blocks.
        let blocks = [
            (0x1000u64, 0..54u64),
            (0x9_0000, 54..180),
            (0x20_0000, 180..257),
        ];
        for (base, values) in &blocks {
            for v in values.clone() {
                ints.check(base + 32 * v, v);
            }
        }
        // Thousands of misreads at random addresses do not evict what was learned.
        for k in 0..5_000u64 {
            ints.check(0x5500_0000_0000 + 8 * k * 7919, k % 250);
        }
        for (base, values) in &blocks {
            for v in values.clone().step_by(17) {
                assert_eq!(ints.check(base + 32 * v, v), Some(v));
            }
        }
        assert!(ints.candidates.len() <= MAX_CANDIDATES);
    }
}
