//! Reading the target's memory: `process_vm_readv`, read-only, never pausing the target.

use std::io::{self, IoSliceMut};

use rustc_hash::FxHashMap;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};

/// Reads `buf.len()` bytes at `addr`; the OS error on failure (EPERM tells of ptrace rules).
pub fn read_exact(pid: i32, addr: usize, buf: &mut [u8]) -> io::Result<()> {
    let len = buf.len();
    let mut local = [IoSliceMut::new(buf)];
    let remote = [RemoteIoVec { base: addr, len }];
    super::cost::memory_read();
    match process_vm_readv(nix::unistd::Pid::from_raw(pid), &mut local, &remote) {
        Ok(n) if n == len => Ok(()),
        Ok(_) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        Err(errno) => Err(io::Error::from_raw_os_error(errno as i32)),
    }
}

/// The pointer-sized word at `offset` of a buffer read earlier.
pub fn word_at(buf: &[u8], offset: usize) -> u64 {
    buf.get(offset..offset + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0)
}

/// Ranges one `process_vm_readv` call takes at most (the kernel's `UIO_MAXIOV`).
pub const MAX_IOVECS: usize = 1024;

/// Where the stack and task readers get the target's bytes from: the live process, or, in the
/// readers' property tests, a made-up memory image full of garbage.
pub trait RemoteMemory {
    /// Fills `buf` from `addr`; false when any byte of the range cannot be read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// Fills every `(addr, buf)` of `ranges`, as one system call where the memory is a live
    /// process; says which ranges were filled (`filled[i]`). A range that cannot be read
    /// leaves its buffer unspecified and the others unaffected.
    fn read_many(&self, ranges: &mut [(u64, &mut [u8])], filled: &mut Vec<bool>) {
        filled.clear();
        filled.extend(ranges.iter_mut().map(|(addr, buf)| self.read(*addr, buf)));
    }
}

/// A borrowed memory reads as the memory itself: several readers of one one-shot look (the
/// task lister's task and stack readers) share one.
impl<M: RemoteMemory + ?Sized> RemoteMemory for &M {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        (**self).read(addr, buf)
    }

    fn read_many(&self, ranges: &mut [(u64, &mut [u8])], filled: &mut Vec<bool>) {
        (**self).read_many(ranges, filled)
    }
}

/// The target process's memory, read with `process_vm_readv` (never written, never paused).
#[derive(Debug, Clone, Copy)]
pub struct ProcessMemory {
    /// The process.
    pub pid: i32,
}

impl RemoteMemory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        addr != 0 && read_exact(self.pid, addr as usize, buf).is_ok()
    }

    /// One `process_vm_readv` per [`MAX_IOVECS`] ranges. The kernel stops at the first range
    /// it cannot read and reports the bytes done so far, whole ranges only: the ranges before
    /// it are filled, that one is not, and the call goes on after it.
    fn read_many(&self, ranges: &mut [(u64, &mut [u8])], filled: &mut Vec<bool>) {
        filled.clear();
        filled.resize(ranges.len(), false);
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let mut start = 0;
        while start < ranges.len() {
            let end = (start + MAX_IOVECS).min(ranges.len());
            let batch = &mut ranges[start..end];
            let remote: Vec<RemoteIoVec> = batch
                .iter()
                .map(|(addr, buf)| RemoteIoVec {
                    base: *addr as usize,
                    len: buf.len(),
                })
                .collect();
            let mut local: Vec<IoSliceMut> = batch
                .iter_mut()
                .map(|(_, buf)| IoSliceMut::new(buf))
                .collect();
            super::cost::memory_read();
            let mut done = process_vm_readv(pid, &mut local, &remote).unwrap_or_default();
            let mut next = end;
            for (i, range) in remote.iter().enumerate() {
                if done >= range.len && range.base != 0 {
                    done -= range.len;
                    filled[start + i] = true;
                } else {
                    // This range failed (or was cut short): go on after it.
                    next = start + i + 1;
                    break;
                }
            }
            start = next;
        }
    }
}

/// A page of the target: what a cache miss reads.
pub const PAGE: u64 = 4096;
/// What the tick caches keep and read ahead: a thread state, a frame header or a dict entry
/// table is one or two blocks, so reading ahead the blocks a tick used copies a fraction of
/// their pages.
pub const BLOCK: u64 = 512;

/// The target's blocks read during one tick. A miss reads the block's whole page (objects
/// read together tend to sit together) in one call; [`TickBlocks::read_ahead`] reads a list
/// of blocks in one call. Buffers are reused from tick to tick; at most `max_blocks` a tick.
pub struct TickBlocks {
    data: Vec<u8>,
    /// Slots in use this tick (some may be holes: a block that could not be read ahead).
    used: usize,
    index: FxHashMap<u64, usize>,
    /// Per slot: a read this tick used it (so it is noted in `touched` once).
    used_by_read: Vec<bool>,
    max_blocks: usize,
    filled: Vec<bool>,
    /// Blocks read by misses this tick, and by read-aheads.
    pub stats: BlockStats,
}

/// What a [`TickBlocks`] read, for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Pages read by cache misses (one system call each).
    pub page_reads: u64,
    /// Read-ahead calls (one system call each).
    pub read_aheads: u64,
    /// Blocks brought in by read-aheads.
    pub blocks_ahead: u64,
    /// Reads served from blocks already read that tick.
    pub hits: u64,
}

impl TickBlocks {
    /// A cache of at most `max_blocks` blocks a tick.
    pub fn new(max_blocks: usize) -> Self {
        TickBlocks {
            data: Vec::new(),
            used: 0,
            index: FxHashMap::default(),
            used_by_read: Vec::new(),
            max_blocks,
            filled: Vec::new(),
            stats: BlockStats::default(),
        }
    }

    /// Forgets this tick's blocks (the target has moved on).
    pub fn clear(&mut self) {
        self.used = 0;
        self.index.clear();
        self.used_by_read.fill(false);
    }

    /// Block buffers allocated (kept from tick to tick; at most `max_blocks`).
    pub fn slots(&self) -> usize {
        self.data.len() / BLOCK as usize
    }

    /// Whether `block` was read this tick.
    pub fn holds(&self, block: u64) -> bool {
        self.index.contains_key(&block)
    }

    /// Slot buffers for `n` more blocks, or None past `max_blocks`.
    fn reserve(&mut self, n: usize) -> Option<usize> {
        if self.used + n > self.max_blocks {
            return None;
        }
        let need = (self.used + n) * BLOCK as usize;
        if self.data.len() < need {
            self.data.resize(need, 0);
            self.used_by_read.resize(self.used + n, false);
        }
        Some(self.used)
    }

    /// Reads `blocks` (block addresses in ascending order, not yet held) in one call, a range
    /// per run of adjacent blocks: the kernel's cost is per range and page (it looks up and
    /// pins each), not per byte. A run that cannot be read is left to the misses. Past
    /// `max_blocks` the rest are dropped.
    pub fn read_ahead(&mut self, mem: &impl RemoteMemory, blocks: &[u64]) {
        let n = blocks.len().min(self.max_blocks.saturating_sub(self.used));
        let Some(start) = self.reserve(n).filter(|_| n > 0) else {
            return;
        };
        let blocks = &blocks[..n];
        // Runs of adjacent blocks: (first block's index in `blocks`, length).
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, &block) in blocks.iter().enumerate() {
            match runs.last_mut() {
                Some((first, len)) if blocks[*first] + (*len as u64) * BLOCK == block => *len += 1,
                _ => runs.push((i, 1)),
            }
        }
        let mut area = &mut self.data[start * BLOCK as usize..(start + n) * BLOCK as usize];
        let mut ranges: Vec<(u64, &mut [u8])> = Vec::with_capacity(runs.len());
        for &(first, len) in &runs {
            let (run, rest) = std::mem::take(&mut area).split_at_mut(len * BLOCK as usize);
            ranges.push((blocks[first], run));
            area = rest;
        }
        mem.read_many(&mut ranges, &mut self.filled);
        drop(ranges);
        self.stats.read_aheads += 1;
        for (r, &(first, len)) in runs.iter().enumerate() {
            if self.filled[r] {
                for (i, &block) in blocks.iter().enumerate().skip(first).take(len) {
                    self.index.insert(block, start + i);
                }
                self.stats.blocks_ahead += len as u64;
            }
        }
        self.used += n;
    }

    /// The slot holding `block`, reading its page (or, failing that, the block alone) on a miss.
    fn slot(&mut self, mem: &impl RemoteMemory, block: u64) -> Option<usize> {
        if let Some(&slot) = self.index.get(&block) {
            self.stats.hits += 1;
            return Some(slot);
        }
        if block == 0 {
            return None;
        }
        let page = block & !(PAGE - 1);
        let per_page = (PAGE / BLOCK) as usize;
        let fresh = |at: u64, index: &FxHashMap<u64, usize>| !index.contains_key(&at);
        let whole_page = (0..per_page as u64).all(|i| fresh(page + i * BLOCK, &self.index));
        if whole_page {
            if let Some(start) = self.reserve(per_page) {
                let at = start * BLOCK as usize;
                if mem.read(page, &mut self.data[at..at + PAGE as usize]) {
                    self.stats.page_reads += 1;
                    for i in 0..per_page {
                        self.index.insert(page + (i as u64) * BLOCK, start + i);
                    }
                    self.used += per_page;
                    return self.index.get(&block).copied();
                }
            }
        }
        let start = self.reserve(1)?;
        let at = start * BLOCK as usize;
        if !mem.read(block, &mut self.data[at..at + BLOCK as usize]) {
            return None;
        }
        self.stats.page_reads += 1;
        self.index.insert(block, start);
        self.used += 1;
        Some(start)
    }

    /// Fills `buf` from `addr` through the cache, noting every block it used in `touched`
    /// (each once a tick, at most `max_touched`); false when a block cannot be had (the
    /// caller reads the range itself).
    pub fn read(
        &mut self,
        mem: &impl RemoteMemory,
        addr: u64,
        buf: &mut [u8],
        touched: &mut Vec<u64>,
        max_touched: usize,
    ) -> bool {
        let mut done = 0;
        while done < buf.len() {
            let at = addr.wrapping_add(done as u64);
            let block = at & !(BLOCK - 1);
            let in_block = (at - block) as usize;
            let take = (BLOCK as usize - in_block).min(buf.len() - done);
            let Some(slot) = self.slot(mem, block) else {
                return false;
            };
            if !self.used_by_read[slot] {
                self.used_by_read[slot] = true;
                if touched.len() < max_touched {
                    touched.push(block);
                }
            }
            let from = slot * BLOCK as usize + in_block;
            buf[done..done + take].copy_from_slice(&self.data[from..from + take]);
            done += take;
        }
        true
    }
}

/// The blocks a range covers.
pub fn blocks_of(addr: u64, len: usize) -> impl Iterator<Item = u64> {
    let first = addr & !(BLOCK - 1);
    let last = addr.wrapping_add(len.max(1) as u64 - 1) & !(BLOCK - 1);
    let count = if last >= first {
        (last - first) / BLOCK + 1
    } else {
        1
    };
    (0..count.min(64)).map(move |i| first + i * BLOCK)
}

/// A read-through [`TickBlocks`] cache over `M` for a reader that reads many small objects (a
/// dict, its keys, a task, its name): they come from the few pages they sit on, and the blocks
/// a tick used are read ahead, in one system call, on the first read of the next tick
/// ([`PageCache::begin_tick`]): a steady state costs one `process_vm_readv` a tick, a tick
/// that reads nothing costs nothing. Reads longer than two pages, and reads of blocks that
/// cannot be had, go to `M` directly.
pub struct PageCache<M> {
    inner: M,
    state: std::cell::RefCell<CacheState>,
    max_blocks: usize,
}

struct CacheState {
    blocks: TickBlocks,
    /// Blocks looked at this tick.
    touched: Vec<u64>,
    /// The blocks to read ahead on this tick's first read: those the last two reading ticks
    /// touched (a reader that reads some objects only every other tick, as the task reader
    /// does a task when its step changed, finds them too).
    ahead: Vec<u64>,
    /// The last reading tick's `touched`.
    before: Vec<u64>,
    /// `ahead` is still to be read this tick.
    ahead_due: bool,
}

impl<M: RemoteMemory> PageCache<M> {
    /// A cache of at most `max_blocks` blocks a tick over `inner`.
    pub fn new(inner: M, max_blocks: usize) -> Self {
        PageCache {
            inner,
            state: std::cell::RefCell::new(CacheState {
                blocks: TickBlocks::new(max_blocks),
                touched: Vec::new(),
                ahead: Vec::new(),
                before: Vec::new(),
                ahead_due: false,
            }),
            max_blocks,
        }
    }

    /// Starts a tick: forgets the blocks read; the first read of the tick reads ahead the
    /// blocks the last tick that read anything used.
    pub fn begin_tick(&self) {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        state.blocks.clear();
        if !state.touched.is_empty() {
            // This tick's blocks first: past `max_blocks`, the older ones are the ones left out.
            state.ahead.clear();
            state.ahead.extend_from_slice(&state.touched);
            state.ahead.extend_from_slice(&state.before);
            state.ahead.truncate(self.max_blocks);
            state.ahead.sort_unstable();
            state.ahead.dedup();
            std::mem::swap(&mut state.before, &mut state.touched);
            state.touched.clear();
        }
        state.ahead_due = !state.ahead.is_empty();
    }
}

impl<M: RemoteMemory> RemoteMemory for PageCache<M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        if buf.len() as u64 > 2 * PAGE || addr == 0 {
            return self.inner.read(addr, buf);
        }
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        if state.ahead_due {
            state.ahead_due = false;
            state.blocks.read_ahead(&self.inner, &state.ahead);
        }
        if state
            .blocks
            .read(&self.inner, addr, buf, &mut state.touched, self.max_blocks)
        {
            return true;
        }
        self.inner.read(addr, buf)
    }
}

impl<M> std::ops::Deref for PageCache<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.inner
    }
}

impl<M> std::ops::DerefMut for PageCache<M> {
    fn deref_mut(&mut self) -> &mut M {
        &mut self.inner
    }
}

#[cfg(test)]
#[path = "fake_memory.rs"]
pub(crate) mod fake;
