//! CPython's cached small ints, known by address.
//!
//! `_run_once`'s handle index `i` is read on every busy sample of a selector loop: a pointer to
//! an int object, then that int's value — a second system call. Up to 256 the int is one of
//! the interpreter's cached small ints, allocated once and never freed, so its address alone
//! says its value: once the cache's layout is known, most index reads cost no extra call.
//!
//! The layout is learned, not looked up: the cache is an array of equal-sized objects
//! (`small_ints`, one block on 3.8 and 3.10–3.15, three on 3.9, whose objects come from the
//! allocator's pools), so each small int `v` at address `a` has `a - 32 * v` equal to its
//! block's base. A base is learned once reads of two different values agree on it; an int
//! that is not a cached one (a fresh object past 256) practically never meets another on one.

/// Bytes between consecutive cached small ints: `sizeof(PyLongObject)` of a one-digit int
/// (header, size or tag, one 30-bit digit, padded), 3.8 to 3.15 on 64-bit.
const STRIDE: u64 = 32;
/// The largest cached small int.
const MAX_SMALL_INT: u64 = 256;
/// Candidate bases kept (the true ones are a handful; other ints add one each).
const MAX_CANDIDATES: usize = 32;

#[derive(Debug, Clone, Copy)]
struct Candidate {
    base: u64,
    /// The least and greatest values read at addresses that fit this base: the block's
    /// extent as far as known. Past its ends the allocator may have put any other object —
    /// fresh ints past 256 among them, which the address would misname.
    lowest: u64,
    highest: u64,
    /// Seen with a second, different value: a learned base.
    learned: bool,
    seen: u32,
}

/// The learned blocks of one interpreter's small-int cache.
#[derive(Debug, Default)]
pub struct SmallInts {
    candidates: Vec<Candidate>,
}

impl SmallInts {
    /// The value of the cached small int at `address`, if it lies within the known extent of
    /// a learned block (no need to read it: the address says it). Only an address that fits
    /// exactly one block is answered (on 3.9 the block of 181–256 starts 64 bytes past where
    /// the one of 55–180 would have put it).
    pub fn value_at(&self, address: u64) -> Option<u64> {
        let mut fits = self
            .candidates
            .iter()
            .filter(|c| c.learned)
            .filter_map(|c| {
                let offset = address.checked_sub(c.base)?;
                let value = offset / STRIDE;
                let known = (c.lowest..=c.highest).contains(&value);
                (offset % STRIDE == 0 && known).then_some(value)
            });
        let value = fits.next()?;
        fits.next().is_none().then_some(value)
    }

    /// Learns from `value`, read from the int object at `address`.
    pub fn learn(&mut self, address: u64, value: u64) {
        if value > MAX_SMALL_INT || !address.is_multiple_of(8) {
            return;
        }
        let base = address.wrapping_sub(STRIDE * value);
        if let Some(c) = self.candidates.iter_mut().find(|c| c.base == base) {
            c.seen = c.seen.saturating_add(1);
            c.learned |= c.lowest != value || c.highest != value;
            c.lowest = c.lowest.min(value);
            c.highest = c.highest.max(value);
            return;
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            // Forget the least seen unlearned candidate.
            let Some(weakest) = self
                .candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.learned)
                .min_by_key(|(_, c)| c.seen)
                .map(|(k, _)| k)
            else {
                return;
            };
            self.candidates.swap_remove(weakest);
        }
        self.candidates.push(Candidate {
            base,
            lowest: value,
            highest: value,
            learned: false,
            seen: 1,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_says_its_value_once_its_block_is_learned() {
        let mut ints = SmallInts::default();
        let base = 0x7f00_0000_1000;
        ints.learn(base + 32 * 7, 7);
        ints.learn(base + 32 * 7, 7);
        assert_eq!(
            ints.value_at(base + 32 * 9),
            None,
            "one value proves nothing"
        );
        ints.learn(base + 32 * 9, 9);
        assert_eq!(ints.value_at(base + 32 * 9), Some(9));
        assert_eq!(ints.value_at(base + 32 * 8), Some(8));
        // Past the values seen, the block may have ended: read, not named.
        assert_eq!(ints.value_at(base + 32 * 10), None);
        assert_eq!(ints.value_at(base + 32 * 6), None);
        ints.learn(base, 0);
        ints.learn(base + 32 * 200, 200);
        assert_eq!(ints.value_at(base + 32 * 100), Some(100));
        assert_eq!(ints.value_at(base + 32 * 100 + 8), None);
        assert_eq!(ints.value_at(base + 32 * 201), None);
        assert_eq!(ints.value_at(base - 32), None);
        // Other ints (fresh objects past 256) teach nothing.
        ints.learn(0x5600_0000_2468, 300);
        assert_eq!(ints.value_at(0x5600_0000_2468), None);
    }

    #[test]
    fn several_blocks_are_learned_and_other_ints_are_bounded() {
        let mut ints = SmallInts::default();
        // 3.9: the cache in three blocks, the third 64 bytes past where the second would
        // have put it (so its addresses fit the second's base too, as other values).
        let blocks = [
            (0x1000u64, 0..55u64),
            (0x9_0000, 55..181),
            (0x9_0000 + 64, 181..257),
        ];
        for (base, values) in &blocks {
            for v in values.clone() {
                ints.learn(base + 32 * v, v);
            }
        }
        // Thousands of other ints at scattered addresses do not evict what was learned.
        for k in 0..5_000u64 {
            ints.learn(0x5500_0000_0000 + 8 * k * 7919, k % 250);
        }
        assert_eq!(ints.value_at(0x1000 + 32 * 20), Some(20));
        assert_eq!(ints.value_at(0x9_0000 + 32 * 100), Some(100));
        assert_eq!(ints.value_at(0x9_0000 + 64 + 32 * 200), Some(200));
        // A fresh int the allocator put just past the first block is read, not named.
        assert_eq!(ints.value_at(0x1000 + 32 * 55), None);
        assert!(ints.candidates.len() <= MAX_CANDIDATES);
    }
}
