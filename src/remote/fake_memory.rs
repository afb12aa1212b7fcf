//! A made-up address space for the remote readers' tests (the stack reader's and the task
//! reader's): [`FakeMemory`], a sparse map of mapped regions where a read succeeds only when it
//! falls wholly inside one region, as `process_vm_readv` does, and which counts its reads so
//! that a reader that never stops reading fails its test instead of hanging it;
//! [`ShiftingMemory`], memory that changes between two reads, as the target runs on while it is
//! read; [`Rng`], a seeded generator, so that any fuzz failure replays from the seed it
//! prints; and the bits of a compact string's `state`, which both readers decode.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use super::RemoteMemory;

/// The stack reader's page (`stacks::PAGE`): what [`FakeMemory::no_pages`] refuses.
pub(crate) const PAGE_BYTES: usize = 4096;

/// Reads one fake memory serves before the reader is taken to be looping forever: far more
/// than a few `stacks::MAX_DEPTH`-long walks or a dict of `tasks::MAX_ENTRIES` entries need, far
/// less than a hang.
const READ_BUDGET: u64 = 2_000_000;

/// `PyUnicode_1BYTE_KIND` and friends, and the other bits of a compact string's `state`.
pub(crate) const STATE_INTERNED: u32 = 1;
pub(crate) const STATE_COMPACT: u32 = 1 << 5;
pub(crate) const STATE_ASCII: u32 = 1 << 6;
/// `ready` (3.8–3.11) or `statically_allocated` (3.12+): set, to show it is ignored.
pub(crate) const STATE_BIT7: u32 = 1 << 7;

// ------------------------------------------------------------------------------------------
// The fake address space.

/// A sparse address space: mapped regions by start address. A read succeeds only when it lies
/// wholly inside one region (regions never touch, so nothing is readable across a gap).
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeMemory {
    pub(crate) regions: BTreeMap<u64, Vec<u8>>,
    /// Reads served so far; past [`READ_BUDGET`] the reader is taken to loop forever.
    pub(crate) reads: Cell<u64>,
    /// Refuse reads of a whole page: the reader's page cache stays empty and every frame and
    /// thread state is read on its own (so that a walk that does not end keeps reading and
    /// runs into the budget, rather than spinning on cached pages until memory runs out).
    pub(crate) no_pages: bool,
}

impl FakeMemory {
    /// The mapped regions: (start, length).
    pub(crate) fn spans(&self) -> Vec<(u64, usize)> {
        self.regions
            .iter()
            .map(|(&start, data)| (start, data.len()))
            .collect()
    }

    pub(crate) fn map(&mut self, start: u64, data: Vec<u8>) {
        let end = start + data.len() as u64;
        let clear_below = self
            .regions
            .range(..start)
            .next_back()
            .is_none_or(|(&at, data)| at + (data.len() as u64) < start);
        let clear_above = self.regions.range(start..=end).next().is_none();
        assert!(
            clear_below && clear_above,
            "regions at {start:#x} overlap or touch"
        );
        self.regions.insert(start, data);
    }

    /// The region holding `len` bytes at `addr`, and the offset of `addr` in it.
    pub(crate) fn locate(&self, addr: u64, len: usize) -> Option<(u64, usize)> {
        let (&start, data) = self.regions.range(..=addr).next_back()?;
        let at = usize::try_from(addr - start).ok()?;
        (at.checked_add(len)? <= data.len()).then_some((start, at))
    }

    pub(crate) fn write(&mut self, addr: u64, bytes: &[u8]) {
        let (start, at) = self
            .locate(addr, bytes.len())
            .unwrap_or_else(|| panic!("test writes to unmapped {addr:#x}"));
        let region = self.regions.get_mut(&start).expect("located");
        region[at..at + bytes.len()].copy_from_slice(bytes);
    }

    pub(crate) fn put_u64(&mut self, addr: u64, value: u64) {
        self.write(addr, &value.to_ne_bytes());
    }

    pub(crate) fn put_i32(&mut self, addr: u64, value: i32) {
        self.write(addr, &value.to_ne_bytes());
    }

    /// A write that is dropped where nothing is mapped (a tear may have unmapped it).
    pub(crate) fn poke(&mut self, addr: u64, bytes: &[u8]) {
        if self.locate(addr, bytes.len()).is_some() {
            self.write(addr, bytes);
        }
    }

    pub(crate) fn poke_u64(&mut self, addr: u64, value: u64) {
        self.poke(addr, &value.to_ne_bytes());
    }

    pub(crate) fn poke_i32(&mut self, addr: u64, value: i32) {
        self.poke(addr, &value.to_ne_bytes());
    }

    pub(crate) fn get_u64(&self, addr: u64) -> u64 {
        let mut buf = [0u8; 8];
        assert!(self.peek(addr, &mut buf), "test reads unmapped {addr:#x}");
        u64::from_ne_bytes(buf)
    }

    /// A read that does not count against the budget (for the tests' own looks).
    pub(crate) fn peek(&self, addr: u64, buf: &mut [u8]) -> bool {
        match self.locate(addr, buf.len()) {
            Some((start, at)) => {
                buf.copy_from_slice(&self.regions[&start][at..at + buf.len()]);
                true
            }
            None => false,
        }
    }

    /// Unmaps the region holding `addr`.
    pub(crate) fn unmap(&mut self, addr: u64) {
        if let Some((start, _)) = self.locate(addr, 1) {
            self.regions.remove(&start);
        }
    }

    /// The writes that turn `self` into `other` (whole regions for mapped ones, byte runs for
    /// changed ones), for replaying a change while the reader is at work.
    pub(crate) fn diff(&self, other: &FakeMemory) -> Vec<Change> {
        let mut changes = Vec::new();
        for (&start, data) in &self.regions {
            let Some(new) = other.regions.get(&start) else {
                changes.push(Change::Unmap(start));
                continue;
            };
            assert_eq!(data.len(), new.len(), "test changes never resize a region");
            let mut at = 0;
            while at < data.len() {
                if data[at] == new[at] {
                    at += 1;
                    continue;
                }
                let run = at;
                while at < data.len() && data[at] != new[at] {
                    at += 1;
                }
                changes.push(Change::Write(start + run as u64, new[run..at].to_vec()));
            }
        }
        changes
    }
}

impl RemoteMemory for FakeMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let reads = self.reads.get() + 1;
        self.reads.set(reads);
        assert!(
            reads <= READ_BUDGET,
            "the reader does not stop reading ({reads} reads)"
        );
        !(self.no_pages && buf.len() == PAGE_BYTES) && self.peek(addr, buf)
    }

    /// One read however many ranges, as one `process_vm_readv` is one system call.
    fn read_many(&self, ranges: &mut [(u64, &mut [u8])], filled: &mut Vec<bool>) {
        let reads = self.reads.get() + 1;
        self.reads.set(reads);
        assert!(
            reads <= READ_BUDGET,
            "the reader does not stop reading ({reads} reads)"
        );
        filled.clear();
        filled.extend(ranges.iter_mut().map(|(addr, buf)| {
            !(self.no_pages && buf.len() == PAGE_BYTES) && self.peek(*addr, buf)
        }));
    }
}

/// One step of memory changing under the reader.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Write(u64, Vec<u8>),
    Unmap(u64),
}

/// Memory that changes while it is read: after the `n`th read the changes scheduled for it are
/// applied, as the target runs on between two `process_vm_readv` calls.
pub(crate) struct ShiftingMemory {
    pub(crate) mem: RefCell<FakeMemory>,
    pub(crate) reads: Cell<u64>,
    /// (read count, change), in order.
    pub(crate) schedule: RefCell<Vec<(u64, Change)>>,
}

impl RemoteMemory for ShiftingMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let reads = self.reads.get() + 1;
        self.reads.set(reads);
        let mut schedule = self.schedule.borrow_mut();
        let due = schedule.iter().take_while(|(at, _)| *at <= reads).count();
        let mut mem = self.mem.borrow_mut();
        for (_, change) in schedule.drain(..due) {
            match change {
                Change::Write(at, bytes) => mem.poke(at, &bytes),
                Change::Unmap(at) => mem.unmap(at),
            }
        }
        mem.read(addr, buf)
    }
}

// ------------------------------------------------------------------------------------------
// A deterministic random generator.

/// xorshift64: the fuzz tests replay exactly from the seed they print.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Runs `case(seed)` for `count` seeds of version `minor`, naming the seed of any failure or
/// panic so that it can be replayed.
pub(crate) fn fuzz(minor: u64, count: u64, mut case: impl FnMut(u64) -> Result<(), String>) {
    for i in 0..count {
        let seed = minor << 32 | i;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(seed))) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => panic!("3.{minor}, seed {seed:#x}: {why}"),
            Err(_) => panic!("3.{minor}, seed {seed:#x}: panicked (message above)"),
        }
    }
}
