//! Code objects' line tables, decoded once per code object into a sorted list of bytecode
//! ranges, so that each sample's line lookup is a binary search rather than a table walk.
//!
//! Three formats exist across CPython 3.8–3.13:
//! - 3.8–3.9 `co_lnotab`: (bytecode delta, signed line delta) byte pairs
//!   (`Objects/lnotab_notes.txt`); a line delta applies from the address it is paired with.
//! - 3.10 `co_linetable` (PEP 626): (range length, signed line delta) pairs, each describing the
//!   range that follows; `-128` means "no line" for that range.
//! - 3.11+ location table (`Objects/locations.md`): entries of 1–8 code units, each with a
//!   4-bit code saying how the line changes and how many varint/column bytes follow.
//!
//! A range without a line (3.10's `-128`, 3.11's "no location") keeps the line before it, which
//! is what a profiler wants: the statement the interpreter is still in.

use super::offsets::LineTableFormat;

/// Upper bound on ranges kept per code object: a garbage table cannot cost unbounded memory.
const MAX_RANGES: usize = 1 << 16;

/// A decoded line table: `(end, line)` ranges in bytecode-byte order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineTable {
    /// Line before any range (`co_firstlineno`), used for offsets before the first range.
    first_line: u32,
    /// Ranges sorted by `end` (exclusive, in bytes): the line of `offset` is the line of the
    /// first range whose end is past it.
    ranges: Vec<(i32, u32)>,
}

impl LineTable {
    /// Decodes `table` of the given format for a code object starting at `first_line`.
    pub fn decode(format: LineTableFormat, table: &[u8], first_line: u32) -> LineTable {
        let ranges = match format {
            LineTableFormat::Lnotab => lnotab(table, first_line),
            LineTableFormat::Linetable310 => linetable_310(table, first_line),
            LineTableFormat::Locations311 => locations_311(table, first_line),
        };
        LineTable { first_line, ranges }
    }

    /// The line executing at bytecode byte `offset` (negative: not started yet).
    pub fn line_at(&self, offset: i32) -> u32 {
        let i = self.ranges.partition_point(|&(end, _)| end <= offset);
        match self.ranges.get(i) {
            Some(&(_, line)) => line,
            // Past the last range: the last line (an offset into the final instruction).
            None => self
                .ranges
                .last()
                .map_or(self.first_line, |&(_, line)| line),
        }
    }

    /// Heap bytes held, for the cache's memory bound.
    pub fn heap_bytes(&self) -> usize {
        self.ranges.capacity() * std::mem::size_of::<(i32, u32)>()
    }
}

fn add_line(line: u32, delta: i64) -> u32 {
    (line as i64 + delta).clamp(0, u32::MAX as i64) as u32
}

/// 3.8–3.9: `addr += a; if addr > offset: stop; line += l`. As ranges: the line holds from
/// the address where its delta was applied up to the next address increment.
fn lnotab(table: &[u8], first_line: u32) -> Vec<(i32, u32)> {
    // Before the first instruction (`f_lasti == -1`) no delta applies yet.
    let mut ranges = vec![(0, first_line)];
    let (mut addr, mut line) = (0i32, first_line);
    for pair in table.chunks_exact(2).take(MAX_RANGES) {
        let next = addr.saturating_add(pair[0] as i32);
        if next > addr {
            ranges.push((next, line));
            addr = next;
        }
        line = add_line(line, pair[1] as i8 as i64);
    }
    ranges.push((i32::MAX, line));
    ranges
}

/// 3.10: each pair is a range of `length` bytes and the line delta that applies to it.
fn linetable_310(table: &[u8], first_line: u32) -> Vec<(i32, u32)> {
    let mut ranges = Vec::new();
    let (mut end, mut line) = (0i32, first_line);
    for pair in table.chunks_exact(2).take(MAX_RANGES) {
        let delta = pair[1] as i8;
        if delta != -128 {
            line = add_line(line, delta as i64);
        }
        end = end.saturating_add(pair[0] as i32);
        ranges.push((end, line));
    }
    ranges
}

/// 3.11+: entries start with a byte `1 cccc lll`: `lll + 1` code units, code `cccc`.
fn locations_311(table: &[u8], first_line: u32) -> Vec<(i32, u32)> {
    let mut ranges = Vec::new();
    let (mut end, mut line) = (0i32, first_line);
    let mut at = 0usize;
    while at < table.len() && ranges.len() < MAX_RANGES {
        let byte = table[at];
        at += 1;
        end = end.saturating_add(((byte & 7) as i32 + 1) * 2);
        let delta = match (byte >> 3) & 15 {
            15 => 0,
            14 => {
                let delta = signed_varint(table, &mut at);
                for _ in 0..3 {
                    varint(table, &mut at);
                }
                delta
            }
            13 => signed_varint(table, &mut at),
            code @ 10..=12 => {
                at += 2;
                (code - 10) as i64
            }
            _ => {
                at += 1;
                0
            }
        };
        line = add_line(line, delta);
        ranges.push((end, line));
    }
    ranges
}

fn varint(table: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    let mut shift = 0;
    while let Some(&byte) = table.get(*at) {
        *at += 1;
        value |= ((byte & 63) as u64) << shift.min(63);
        shift += 6;
        if byte & 64 == 0 {
            break;
        }
    }
    value
}

fn signed_varint(table: &[u8], at: &mut usize) -> i64 {
    let value = varint(table, at);
    if value & 1 == 1 {
        -((value >> 1) as i64)
    } else {
        (value >> 1) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab_ranges() {
        // def f():        line 10
        //     a = 1       bytes 0..4 line 11
        //     b = 2       bytes 4..8 line 12
        //     return a    bytes 8.. line 14 (a jump of 2)
        let table = LineTable::decode(LineTableFormat::Lnotab, &[0, 1, 4, 1, 4, 2], 10);
        assert_eq!(table.line_at(-1), 10);
        assert_eq!(table.line_at(0), 11);
        assert_eq!(table.line_at(3), 11);
        assert_eq!(table.line_at(4), 12);
        assert_eq!(table.line_at(8), 14);
        assert_eq!(table.line_at(400), 14);
        // A negative delta (0xff = -1) and a long jump split across two pairs (255 + 45).
        let table = LineTable::decode(LineTableFormat::Lnotab, &[0, 3, 6, 0xff, 255, 0, 45, 2], 1);
        assert_eq!(table.line_at(2), 4);
        assert_eq!(table.line_at(6), 3);
        assert_eq!(table.line_at(305), 3);
        assert_eq!(table.line_at(306), 5);
    }

    #[test]
    fn linetable_310_ranges_and_no_line() {
        // 2 bytes at line 5 (+0 from first 5), 6 bytes with no line, 4 bytes at line 7.
        let table = LineTable::decode(LineTableFormat::Linetable310, &[2, 0, 6, 0x80, 4, 2], 5);
        assert_eq!(table.line_at(0), 5);
        assert_eq!(
            table.line_at(2),
            5,
            "a range without a line keeps the line before"
        );
        assert_eq!(table.line_at(7), 5);
        assert_eq!(table.line_at(8), 7);
        assert_eq!(table.line_at(11), 7);
    }

    #[test]
    fn locations_311_codes() {
        let table = LineTable::decode(
            LineTableFormat::Locations311,
            &[
                // code 13 (no columns), 1 unit, line +1 (varint 2)
                0x80 | (13 << 3),
                2,
                // code 10..12 (one-line form): 2 units, line +1, two column bytes
                0x80 | (11 << 3) | 1,
                4,
                9,
                // code 15 (no location): 1 unit, line unchanged
                0x80 | (15 << 3),
                // code 14 (long form): 3 units, line -1 (varint 3), end line, 2 columns
                0x80 | (14 << 3) | 2,
                3,
                0,
                1,
                2,
                // short form code 0..9: 1 unit, same line, one column byte
                0x80 | (3 << 3),
                7,
            ],
            20,
        );
        assert_eq!(table.line_at(-2), 21);
        assert_eq!(table.line_at(0), 21);
        assert_eq!(table.line_at(2), 22);
        assert_eq!(table.line_at(4), 22);
        assert_eq!(table.line_at(6), 22);
        assert_eq!(table.line_at(8), 21);
        assert_eq!(table.line_at(12), 21);
        assert_eq!(table.line_at(14), 21);
    }

    #[test]
    fn garbage_tables_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            for format in [
                LineTableFormat::Lnotab,
                LineTableFormat::Linetable310,
                LineTableFormat::Locations311,
            ] {
                let table = LineTable::decode(format, &bytes, 1);
                for offset in [-2, 0, 1, 17, 1000, i32::MAX] {
                    table.line_at(offset);
                }
            }
        }
    }
}
