//! loopspy's own stack reader for CPython 3.8–3.13, driven by the offset tables in
//! `python_offsets/`. It exists because py-spy's reader re-reads every code object, name,
//! file name and line table for every frame of every thread on every sample (about eight
//! `process_vm_readv` calls a frame); at 1 kHz that costs most of a core.
//!
//! Per tick this reader does one read per thread state (to walk the thread list), one per
//! frame of the threads the sampler asks for, and one for the GIL holder. Everything that never
//! changes while a code object lives — its names, file name and decoded line table — is cached
//! by the code object's address. A cached entry is re-checked against the target once a second,
//! at once whenever a frame's position does not fit the cached bytecode length, and at once
//! whenever the frame runs under other globals than the entry was last seen with: a code object
//! freed and its address reused by another one (while a program imports, a module's class
//! bodies are freed and the next module's functions take their place) comes back under another
//! module's globals, and trusting the old entry for a second named the wrong function.
//!
//! Nothing here trusts what it reads: the target runs on while we read it, so a frame can be
//! popped or a code object freed half-way through a walk. Every pointer is checked (a code
//! object must have the type named `code`, a position must fall inside its bytecode, a thread
//! list must end within [`MAX_DEPTH`]); a walk that does not add up is reported as
//! [`StackError::Torn`], never turned into a made-up frame, and never a panic.
//!
//! Whatever the target holds, the work and memory of one read are bounded: a frame chain longer
//! than [`MAX_FRAMES`] keeps its innermost frames (where the culprit is) and says it was cut
//! ([`Depth::Truncated`]); a name longer than [`MAX_STR_CHARS`] keeps its start and ends in `…`.

use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;
use std::time::{Duration, Instant};

use super::linetable::LineTable;
use super::memory::{blocks_of, word_at as word, BlockStats, RemoteMemory, TickBlocks};
use super::offsets::{CodeOffsets, FrameLayout, GilLayout, LineTableFormat, PythonOffsets};
use super::pystr::{self, StrHeader};
use super::small_ints::SmallInts;
use crate::sample::{Frame, HandleIndex};

/// Longest thread list accepted; past it the list is taken to be torn.
pub const MAX_DEPTH: usize = 4096;
/// Frames read of one stack, innermost first; a deeper stack is cut (a 20 000-deep recursion
/// still shows its innermost 1024 frames, and a tick's work stays bounded).
pub const MAX_FRAMES: usize = 1024;
/// How long a cached code object is trusted before it is compared with the target again.
const REVALIDATE: Duration = Duration::from_secs(1);
/// Code objects cached at most; the cache starts over past it (bounded memory over hours).
const MAX_CODES: usize = 16_384;
/// Heap bytes the cached names and line tables may hold before the cache starts over.
const MAX_CACHE_BYTES: usize = 32 << 20;
/// Characters of a string (file name, function name) read; a longer one is cut and ends in `…`.
pub const MAX_STR_CHARS: usize = 4096;
/// A string longer than this (1 Gi characters) is garbage from a torn read, not a long name.
const MAX_PLAUSIBLE_CHARS: usize = 1 << 30;
/// Longest line table read, in bytes.
const MAX_LINE_TABLE: usize = 1 << 20;
/// Thread states and frames are read through a tick cache ([`TickBlocks`]): a miss reads a
/// whole page (a coroutine chain's frames sit in coroutine objects allocated side by side, and
/// 3.11+ keeps plain frames contiguous on the thread's data stack), and the blocks a thread's
/// last walk touched are read ahead together when it is next due. Blocks kept per tick (4 MiB);
/// reads past them go straight to the target. Enough for [`MAX_FRAMES`] frames of any
/// version, or the thread states of a few hundred threads.
const MAX_BLOCKS: usize = 8192;
/// Blocks remembered per thread, to be read ahead on its next read: a steady stack (a loop in
/// its selector, a thread in a wait) is then one read with the others due that tick.
const MAX_LEARNED_BLOCKS: usize = 2048;

/// Whether [`StackReader::stack`] read the whole chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Every frame, down to the thread's first.
    Whole,
    /// The chain was longer than [`MAX_FRAMES`]: the innermost ones only.
    Truncated,
}

/// Why a read did not produce a stack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// The memory could not be read at all (the process is gone, or the address unmapped).
    #[error("cannot read the target's memory at {0:#x}")]
    Memory(u64),
    /// What was read does not add up: the target changed it while we read.
    #[error("torn read: {0}")]
    Torn(&'static str),
}

/// One Python thread as found on the interpreter's thread list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadHead {
    /// Address of its `PyThreadState`.
    pub tstate: u64,
    /// `threading.get_ident()` (the `pthread_t`).
    pub python_tid: u64,
    /// The kernel tid (3.11+ records it; None before).
    pub native_tid: Option<u64>,
    /// Its innermost frame (0: no Python code running).
    frame: u64,
    /// The `_PyCFrame` its current frame was read through (3.11–3.12; 0 otherwise).
    cframe: u64,
    /// `context_ver`, the thread's callback clock ([`crate::sample::ThreadSample::context_ver`]),
    /// read with the frame pointer.
    pub context_ver: Option<u64>,
}

impl ThreadHead {
    /// Address of its innermost frame (0: none): the same address on two reads with the same
    /// innermost function and line is, for a thread that was waiting, most likely the same wait.
    pub fn innermost_frame(&self) -> u64 {
        self.frame
    }
}

/// What the reader knows of one code object.
#[derive(Debug)]
struct CodeInfo {
    function: Arc<str>,
    file: Arc<str>,
    lines: LineTable,
    /// Bytecode length in bytes: positions must fall inside it.
    code_bytes: i64,
    /// The fields the entry was decoded from, compared when the entry is re-checked.
    fingerprint: [u64; 4],
    /// The `f_globals` of the frame it was last seen in (0 where the table has none).
    globals: u64,
    checked_at: Instant,
    /// 3.13 shim frames (`<shim>` or an empty file name), which py-spy and we leave out.
    shim: bool,
    /// asyncio's `BaseEventLoop._run_once`: the fast-local slot of its handle loop's index `i`.
    run_once_slot: Option<usize>,
}

impl CodeInfo {
    /// Heap bytes this entry holds (its strings may be shared with samples, counted anyway).
    fn heap_bytes(&self) -> usize {
        self.function.len() + self.file.len() + self.lines.heap_bytes()
    }
}

/// Counters a benchmark or a curious user can look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Code objects decoded (cache misses, including re-decodes).
    pub codes_decoded: u64,
    /// Thread-state and frame reads of the tick cache: misses, read-aheads, hits.
    pub blocks: BlockStats,
    /// Times the code cache was emptied for being full.
    pub cache_resets: u64,
}

/// Reads thread lists and stacks of one interpreter.
pub struct StackReader<M> {
    mem: M,
    offsets: PythonOffsets,
    interpreter: u64,
    gil: u64,
    codes: HashMap<u64, CodeInfo>,
    /// Heap bytes held by `codes` (names, file names, line tables).
    cache_bytes: usize,
    /// Type object address -> whether its `tp_name` is `code`.
    code_types: HashMap<u64, bool>,
    frame_len: usize,
    tstate_len: usize,
    code_len: usize,
    now: Instant,
    stats: ReaderStats,
    pages: TickPages,
    /// Where the last walk found `_run_once`'s handle index `i` (the address of its slot).
    index_slot: Option<u64>,
    /// `_run_once`'s handle index in the last [`StackReader::stack`], when believed.
    handle_index: Option<HandleIndex>,
    small_ints: SmallInts,
    /// Which ranges of the handle-index reads were read (kept: those reads run every busy tick).
    read_flags: Vec<bool>,
}

/// The target's blocks read during the current tick, and what each thread's walk touched.
struct TickPages {
    blocks: TickBlocks,
    /// Blocks the current [`StackReader::stack`] walked, in order (learned for the next read).
    touched: Vec<u64>,
    /// Each thread state's blocks of its last two reads: read ahead the next time it is due.
    learned: HashMap<u64, (Vec<u64>, Vec<u64>)>,
}

impl Default for TickPages {
    fn default() -> Self {
        TickPages {
            blocks: TickBlocks::new(MAX_BLOCKS),
            touched: Vec::new(),
            learned: HashMap::default(),
        }
    }
}

fn int32(buf: &[u8], at: usize) -> i32 {
    buf.get(at..at + 4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// Bytes to read from a struct's start to cover every field at these offsets (none wider than
/// a pointer), so one read gets them all.
fn span(fields: &[Option<usize>]) -> usize {
    fields.iter().flatten().max().copied().unwrap_or(0) + 8
}

/// Bytes of a code object's start that hold every field the reader uses.
fn code_header_len(c: &CodeOffsets) -> usize {
    span(&[
        Some(c.filename),
        Some(c.name),
        c.qualname,
        Some(c.firstlineno),
        Some(c.linetable),
        c.code,
        c.varnames,
    ])
}

impl<M: RemoteMemory> StackReader<M> {
    /// A reader of the interpreter at `interpreter`, whose GIL holder is recorded at `gil`
    /// (py-spy's `threadstate_address`; 0 when unknown).
    pub fn new(mem: M, offsets: PythonOffsets, interpreter: u64, gil: u64) -> Self {
        let (f, t, c) = (&offsets.frame, &offsets.thread, &offsets.code);
        let frame_len = span(&[
            Some(f.back),
            Some(f.code),
            f.globals,
            f.lasti,
            f.instr,
            f.owner,
        ]);
        let tstate_len = span(&[
            Some(t.next),
            t.frame,
            t.cframe,
            Some(t.thread_id),
            t.native_thread_id,
            t.context_ver,
        ]);
        let code_len = code_header_len(c);
        StackReader {
            mem,
            offsets,
            interpreter,
            gil,
            codes: HashMap::default(),
            cache_bytes: 0,
            code_types: HashMap::default(),
            frame_len,
            tstate_len,
            code_len,
            now: Instant::now(),
            stats: ReaderStats::default(),
            pages: TickPages::default(),
            index_slot: None,
            handle_index: None,
            small_ints: SmallInts::default(),
            read_flags: Vec::with_capacity(3),
        }
    }

    /// The reader's counters.
    pub fn stats(&self) -> ReaderStats {
        ReaderStats {
            blocks: self.pages.blocks.stats,
            ..self.stats
        }
    }

    /// Code objects in the cache.
    pub fn cached_codes(&self) -> usize {
        self.codes.len()
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), StackError> {
        if self.mem.read(addr, buf) {
            Ok(())
        } else {
            Err(StackError::Memory(addr))
        }
    }

    /// Starts a tick: pages read before are stale now, and `now` dates this tick's cache checks.
    pub fn begin_tick(&mut self, now: Instant) {
        self.now = now;
        self.pages.blocks.clear();
    }

    /// Reads ahead, in one system call, the pages this tick's reads of the thread states
    /// `tstates` are expected to need: the GIL holder's word, each thread state, and the pages
    /// its last stack walk touched; and of the threads `walked` (a walk of the thread list)
    /// the states alone, with the C-stack frame (3.11–3.12) their current frame is read from. A block that changed or was unmapped since is only a wasted
    /// copy or a failed range: whatever a read finds missing it reads itself.
    pub fn prefetch(&mut self, tstates: impl IntoIterator<Item = u64>, walked: &[ThreadHead]) {
        let mut wanted: Vec<u64> = Vec::new();
        if self.gil != 0 {
            wanted.extend(blocks_of(self.gil, 32));
        }
        for tstate in tstates {
            wanted.extend(blocks_of(tstate, self.tstate_len));
            if let Some((last, before)) = self.pages.learned.get(&tstate) {
                wanted.extend_from_slice(last);
                wanted.extend_from_slice(before);
            }
        }
        for head in walked {
            wanted.extend(blocks_of(head.tstate, self.tstate_len));
            if head.cframe != 0 {
                wanted.extend(blocks_of(head.cframe, 64));
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        let blocks = &mut self.pages.blocks;
        wanted.retain(|&b| b != 0 && !blocks.holds(b));
        blocks.read_ahead(&self.mem, &wanted);
    }

    /// Reads through the tick's block cache (for thread states and frames).
    fn read_hot(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), StackError> {
        let pages = &mut self.pages;
        if pages
            .blocks
            .read(&self.mem, addr, buf, &mut pages.touched, MAX_LEARNED_BLOCKS)
        {
            return Ok(());
        }
        self.read(addr, buf)
    }

    fn read_word(&self, addr: u64) -> Result<u64, StackError> {
        let mut buf = [0u8; 8];
        self.read(addr, &mut buf)?;
        Ok(u64::from_ne_bytes(buf))
    }

    /// Walks the interpreter's thread list.
    pub fn threads(&mut self) -> Result<Vec<ThreadHead>, StackError> {
        let mut tstate = self.read_word(
            self.interpreter
                .wrapping_add(self.offsets.interpreter.threads_head as u64),
        )?;
        let mut heads = Vec::new();
        while tstate != 0 {
            if heads.len() >= MAX_DEPTH {
                return Err(StackError::Torn("thread list does not end"));
            }
            let (head, next) = self.read_thread(tstate)?;
            heads.push(head);
            tstate = next;
        }
        Ok(heads)
    }

    /// Reads `head`'s thread state again (its current frame), without walking the list: the
    /// event-loop threads between two full walks. None when the state no longer belongs to
    /// that thread (it exited, and the memory went to something else).
    pub fn refresh(&mut self, head: &ThreadHead) -> Result<Option<ThreadHead>, StackError> {
        let (now, _) = self.read_thread(head.tstate)?;
        Ok((now.python_tid == head.python_tid).then_some(now))
    }

    /// One thread state, and the next one on the list.
    fn read_thread(&mut self, tstate: u64) -> Result<(ThreadHead, u64), StackError> {
        let mut buf = [0u8; 256];
        let len = self.tstate_len.min(256);
        self.read_hot(tstate, &mut buf[..len])?;
        let buf = &buf[..len];
        let t = &self.offsets.thread;
        let (thread_id, native, next, context_ver) = (
            word(buf, t.thread_id),
            t.native_thread_id.map(|at| word(buf, at)),
            word(buf, t.next),
            t.context_ver.map(|at| word(buf, at)),
        );
        let (frame, cframe) = match (t.frame, t.cframe, t.cframe_current_frame) {
            (Some(at), _, _) => (word(buf, at), 0),
            (None, Some(cframe), Some(current)) => match word(buf, cframe) {
                0 => (0, 0),
                cframe => {
                    let mut ptr = [0u8; 8];
                    self.read_hot(cframe.wrapping_add(current as u64), &mut ptr)?;
                    (u64::from_ne_bytes(ptr), cframe)
                }
            },
            _ => (0, 0),
        };
        let head = ThreadHead {
            tstate,
            python_tid: thread_id,
            native_tid: native,
            frame,
            cframe,
            context_ver,
        };
        Ok((head, next))
    }

    /// The thread state holding the GIL, if any thread holds it.
    pub fn gil_holder(&mut self) -> Option<u64> {
        if self.gil == 0 {
            return None;
        }
        let g = self.offsets.gil.clone();
        let holder = match g.layout {
            GilLayout::TstateCurrent => {
                let mut buf = [0u8; 8];
                self.read_hot(self.gil, &mut buf).ok()?;
                u64::from_ne_bytes(buf)
            }
            GilLayout::RuntimeState => {
                let mut buf = [0u8; 32];
                self.read_hot(self.gil, &mut buf).ok()?;
                if int32(&buf, g.locked?) == 0 {
                    return None;
                }
                word(&buf, g.last_holder?)
            }
        };
        (holder != 0).then_some(holder)
    }

    /// The thread's frames, innermost first, appended to `out` (cleared first): at most
    /// [`MAX_FRAMES`] of them, and whether that was all.
    pub fn stack(
        &mut self,
        thread: &ThreadHead,
        out: &mut Vec<Frame>,
    ) -> Result<Depth, StackError> {
        out.clear();
        self.handle_index = None;
        self.index_slot = None;
        // What this walk reads is read ahead the next time this thread is due.
        let pages = &mut self.pages;
        pages.touched.clear();
        pages
            .touched
            .extend(blocks_of(thread.tstate, self.tstate_len));
        if thread.cframe != 0 {
            pages.touched.extend(blocks_of(thread.cframe, 64));
        }
        let depth = self.walk_frames(thread, out)?;
        if let Some(slot) = self.index_slot {
            self.handle_index = self.read_handle_index(thread, slot);
        }
        let pages = &mut self.pages;
        if pages.learned.len() >= MAX_DEPTH && !pages.learned.contains_key(&thread.tstate) {
            pages.learned.clear();
        }
        // The last two walks' blocks: a loop thread's stack alternates between a few shapes
        // (in the selector, in a callback), and each is read ahead the tick after.
        let (last, before) = pages.learned.entry(thread.tstate).or_default();
        std::mem::swap(last, before);
        last.clear();
        last.extend(pages.touched.iter().filter(|&&p| p != 0));
        Ok(depth)
    }

    /// [`Self::stack`]'s walk down the frame chain.
    fn walk_frames(
        &mut self,
        thread: &ThreadHead,
        out: &mut Vec<Frame>,
    ) -> Result<Depth, StackError> {
        let mut addr = thread.frame;
        let mut buf = [0u8; 256];
        let len = self.frame_len.min(256);
        // Shim frames are not kept but cost a read: count every frame walked.
        let mut walked = 0;
        // A torn read can close the chain into a loop: Brent's cycle check (a checkpoint
        // address moved to the current frame at every power of two) finds it in O(1) memory,
        // so a loop is reported torn rather than passed off as a deep stack.
        let (mut checkpoint, mut since, mut power) = (0u64, 0usize, 1usize);
        while addr != 0 {
            walked += 1;
            if walked > MAX_FRAMES {
                return Ok(Depth::Truncated);
            }
            if addr == checkpoint {
                return Err(StackError::Torn("frame chain does not end"));
            }
            since += 1;
            if since == power {
                (checkpoint, since, power) = (addr, 0, power * 2);
            }
            self.read_hot(addr, &mut buf[..len])?;
            let frame = &buf[..len];
            let f = &self.offsets.frame;
            let back = word(frame, f.back);
            if let (Some(owner_at), Some(first_skipped)) = (f.owner, f.cstack_owner) {
                let owner = frame.get(owner_at).copied().unwrap_or(u8::MAX);
                if owner > f.max_owner.unwrap_or(first_skipped) {
                    return Err(StackError::Torn("frame owner out of range"));
                }
                if owner >= first_skipped {
                    addr = back;
                    continue;
                }
            }
            let code = word(frame, f.code) & !f.code_tag_bits;
            let globals = f.globals.map_or(0, |at| word(frame, at));
            let position = self.position(frame, code);
            let want_index = self.index_slot.is_none();
            let info = self.code(code, position, globals)?;
            let index_slot = info.run_once_slot.filter(|_| want_index);
            if !info.shim {
                out.push(Frame {
                    function: info.function.clone(),
                    file: info.file.clone(),
                    line: info
                        .lines
                        .line_at(position.clamp(-2, i32::MAX as i64) as i32),
                });
            }
            if let (Some(slot), Some(locals)) = (index_slot, self.offsets.frame.localsplus) {
                self.index_slot = Some(addr.wrapping_add((locals + 8 * slot) as u64));
            }
            addr = back;
        }
        Ok(Depth::Whole)
    }

    /// Where in its code object the frame in `frame` is: a byte offset into the bytecode.
    fn position(&self, frame: &[u8], code: u64) -> i64 {
        let f = &self.offsets.frame;
        match f.layout {
            FrameLayout::Object => {
                let lasti = int32(frame, f.lasti.unwrap_or(0)) as i64;
                match self.offsets.code.line_table {
                    // 3.10 counts code units, earlier versions bytes.
                    LineTableFormat::Linetable310 => lasti * 2,
                    _ => lasti,
                }
            }
            FrameLayout::Interpreter => {
                let instr = word(frame, f.instr.unwrap_or(0)) as i64;
                let start =
                    (code as i64).wrapping_add(self.offsets.code.code_adaptive.unwrap_or(0) as i64);
                instr.wrapping_sub(start)
            }
        }
    }

    /// Bytes of a frame's start that hold every field [`Self::frame_of`] reads.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// The function, file and line of a frame read elsewhere — a suspended coroutine's (its
    /// `_PyInterpreterFrame` inside the coroutine object, or its frame object) — from the
    /// frame's first [`Self::frame_len`] bytes, through the same code cache as the stacks.
    pub fn frame_of(&mut self, frame: &[u8]) -> Result<Frame, StackError> {
        let f = &self.offsets.frame;
        if frame.len() < self.frame_len {
            return Err(StackError::Torn("short frame"));
        }
        let code = word(frame, f.code) & !f.code_tag_bits;
        let globals = f.globals.map_or(0, |at| word(frame, at));
        let position = self.position(frame, code);
        let info = self.code(code, position, globals)?;
        Ok(Frame {
            function: info.function.clone(),
            file: info.file.clone(),
            line: info
                .lines
                .line_at(position.clamp(-2, i32::MAX as i64) as i32),
        })
    }

    /// `_run_once`'s handle index, whose slot is at `slot`, and the callback clock at the
    /// moment it held it. One system call reads the clock, the slot and the clock again: `i`
    /// changes only between two handles, after one's Context is left and before the next's
    /// is entered, so under two equal clock values it did not change in between — whatever
    /// the walk before saw. The int's value: from its address for a cached small int
    /// ([`SmallInts`]); else read with the clock once more (past 256 the int is a fresh object,
    /// freed once the loop moves on, whose memory read late says anything).
    fn read_handle_index(&mut self, thread: &ThreadHead, slot: u64) -> Option<HandleIndex> {
        let clock_at = thread
            .tstate
            .wrapping_add(self.offsets.thread.context_ver? as u64);
        let (mut before, mut pointer, mut after) = ([0u8; 8], [0u8; 8], [0u8; 8]);
        let filled = &mut self.read_flags;
        self.mem.read_many(
            &mut [
                (clock_at, &mut before[..]),
                (slot, &mut pointer[..]),
                (clock_at, &mut after[..]),
            ],
            filled,
        );
        let clock = u64::from_ne_bytes(before);
        if filled.iter().any(|ok| !ok) || clock != u64::from_ne_bytes(after) {
            return None;
        }
        let int = u64::from_ne_bytes(pointer) & !self.offsets.frame.code_tag_bits;
        if let Some(index) = self.small_ints.value_at(int) {
            return Some(HandleIndex { index, clock });
        }
        let len = (self.offsets.long.digits + 4).min(32);
        let (mut object, mut again) = ([0u8; 32], [0u8; 8]);
        self.mem.read_many(
            &mut [(int, &mut object[..len]), (clock_at, &mut again[..])],
            &mut self.read_flags,
        );
        if self.read_flags.iter().any(|ok| !ok) || u64::from_ne_bytes(again) != clock {
            return None;
        }
        let index = self.int_value(&object[..len])?;
        self.small_ints.learn(int, index);
        Some(HandleIndex { index, clock })
    }

    /// The value of the int object read into `buf`, if it is one of at most 30 bits.
    fn int_value(&self, buf: &[u8]) -> Option<u64> {
        let l = &self.offsets.long;
        let size = word(buf, l.tag);
        let (digits, negative) = if l.tagged {
            (size >> 3, size & 3 == 2)
        } else {
            let signed = size as i64;
            (signed.unsigned_abs(), signed < 0)
        };
        let digit = u64::from(u32::from_ne_bytes(
            buf.get(l.digits..l.digits + 4)?.try_into().ok()?,
        ));
        match (digits, negative) {
            (0, _) => Some(0),
            (1, false) if digit < 1 << 30 => Some(digit),
            _ => None,
        }
    }

    /// The slot of the local named `name` in the code's local names tuple (at most 64 read).
    fn local_slot(&self, names: u64, name: &str) -> Option<usize> {
        let count = self.read_word(names.wrapping_add(16)).ok()? as usize;
        let mut items = vec![0u8; count.min(64) * 8];
        let items_at = self.offsets.code.names_items as u64;
        self.read(names.wrapping_add(items_at), &mut items).ok()?;
        (0..count.min(64)).find(|&k| {
            self.read_str(word(&items, k * 8))
                .is_ok_and(|local| local == name)
        })
    }

    /// Where in its handle loop the last [`Self::stack`] found a selector loop: `_run_once`'s
    /// `i`, the index of the handle it runs this iteration, with the callback clock of that
    /// moment; None outside the handle loop, on uvloop, where the table has no locals, or when
    /// a handle boundary came in the middle of the read.
    pub fn handle_index(&self) -> Option<HandleIndex> {
        self.handle_index
    }

    /// `thread`'s callback clock read again, now (None where the table has no clock). What
    /// was read of the thread after its head (its frames, its running task) belongs to the
    /// callback the head's clock names only if this is still the same value.
    pub fn clock_now(&self, thread: &ThreadHead) -> Option<u64> {
        let at = self.offsets.thread.context_ver?;
        thread.context_ver?;
        self.read_word(thread.tstate.wrapping_add(at as u64)).ok()
    }

    /// The cached facts of the code object at `code`, decoding it on first sight, when the
    /// entry is due for a check, when `position` does not fit it, or when the frame's
    /// `globals` are not those the entry was last seen under (a re-check: one header read, and
    /// a decode only if the code object changed; a code object run under several globals, as
    /// `exec` does, costs that read per change).
    fn code(&mut self, code: u64, position: i64, globals: u64) -> Result<&CodeInfo, StackError> {
        /// What the cache entry calls for this time.
        enum Lookup {
            Trust,
            Recheck,
            Decode,
        }
        let fits = |info: &CodeInfo| position >= -2 && position <= info.code_bytes;
        let lookup = match self.codes.get(&code) {
            Some(info) if !fits(info) => Lookup::Decode,
            Some(info) if info.globals != globals => Lookup::Recheck,
            Some(info) if self.now.duration_since(info.checked_at) < REVALIDATE => Lookup::Trust,
            Some(_) => Lookup::Recheck,
            None => Lookup::Decode,
        };
        if !matches!(lookup, Lookup::Trust) {
            let header = self.read_code_header(code)?;
            let fingerprint = self.fingerprint(&header);
            let entry = self.codes.get_mut(&code);
            match entry {
                Some(info)
                    if matches!(lookup, Lookup::Recheck) && info.fingerprint == fingerprint =>
                {
                    info.checked_at = self.now;
                    info.globals = globals;
                }
                _ => {
                    let info = self.decode_code(&header, fingerprint, globals)?;
                    if self.codes.len() >= MAX_CODES || self.cache_bytes >= MAX_CACHE_BYTES {
                        self.codes.clear();
                        self.cache_bytes = 0;
                        self.stats.cache_resets += 1;
                    }
                    self.cache_bytes += info.heap_bytes();
                    self.stats.codes_decoded += 1;
                    if let Some(old) = self.codes.insert(code, info) {
                        self.cache_bytes = self.cache_bytes.saturating_sub(old.heap_bytes());
                    }
                }
            }
        }
        let info = &self.codes[&code];
        if !fits(info) {
            return Err(StackError::Torn("frame position outside its code object"));
        }
        Ok(info)
    }

    fn read_code_header(&mut self, code: u64) -> Result<Vec<u8>, StackError> {
        if code == 0 {
            return Err(StackError::Torn("frame without a code object"));
        }
        let mut header = vec![0u8; self.code_len];
        self.read(code, &mut header)?;
        if !self.is_code_type(word(&header, 8))? {
            return Err(StackError::Torn(
                "frame's code pointer is not a code object",
            ));
        }
        Ok(header)
    }

    fn fingerprint(&self, header: &[u8]) -> [u64; 4] {
        let c = &self.offsets.code;
        [
            word(header, c.filename),
            word(header, c.qualname.unwrap_or(c.name)),
            word(header, c.linetable),
            int32(header, c.firstlineno) as u64,
        ]
    }

    fn is_code_type(&mut self, ty: u64) -> Result<bool, StackError> {
        if let Some(&is_code) = self.code_types.get(&ty) {
            return Ok(is_code);
        }
        let tp_name = self.read_word(ty.wrapping_add(self.offsets.r#type.tp_name as u64))?;
        let mut name = [0u8; 5];
        self.read(tp_name, &mut name)?;
        let is_code = &name == b"code\0";
        if self.code_types.len() < 1024 {
            self.code_types.insert(ty, is_code);
        }
        Ok(is_code)
    }

    fn decode_code(
        &self,
        header: &[u8],
        fingerprint: [u64; 4],
        globals: u64,
    ) -> Result<CodeInfo, StackError> {
        let c = &self.offsets.code;
        let file = self.read_str(word(header, c.filename))?;
        let function = self.read_str(word(header, c.qualname.unwrap_or(c.name)))?;
        let first_line = int32(header, c.firstlineno);
        if first_line < 0 {
            return Err(StackError::Torn("negative first line"));
        }
        let table = self.read_bytes(word(header, c.linetable))?;
        let code_bytes = match (c.code, c.code_adaptive) {
            // 3.11+: the code object is variable-sized, ob_size counting its code units.
            (_, Some(_)) => (word(header, 16) as i64).saturating_mul(2),
            (Some(co_code), None) => self.bytes_len(word(header, co_code))? as i64,
            (None, None) => i64::MAX,
        };
        if code_bytes <= 0 || code_bytes > 1 << 30 {
            return Err(StackError::Torn("implausible bytecode length"));
        }
        let shim = file.is_empty() || &*file == "<shim>";
        let run_once = function.ends_with("_run_once") && file.ends_with("asyncio/base_events.py");
        let run_once_slot = c
            .varnames
            .filter(|_| run_once)
            .and_then(|at| self.local_slot(word(header, at), "i"));
        Ok(CodeInfo {
            lines: LineTable::decode(c.line_table, &table, first_line as u32),
            function: function.into(),
            file: file.into(),
            code_bytes,
            fingerprint,
            globals,
            checked_at: self.now,
            shim,
            run_once_slot,
        })
    }

    fn bytes_len(&self, bytes: u64) -> Result<usize, StackError> {
        let size = self.read_word(bytes.wrapping_add(self.offsets.bytes.ob_size as u64))? as usize;
        if size > MAX_LINE_TABLE {
            return Err(StackError::Torn("implausible bytes length"));
        }
        Ok(size)
    }

    fn read_bytes(&self, bytes: u64) -> Result<Vec<u8>, StackError> {
        let size = self.bytes_len(bytes)?;
        let mut data = vec![0u8; size];
        self.read(
            bytes.wrapping_add(self.offsets.bytes.ob_sval as u64),
            &mut data,
        )?;
        Ok(data)
    }

    /// A compact `str` (every code object's names are compact), any of the three widths.
    fn read_str(&self, obj: u64) -> Result<String, StackError> {
        let u = &self.offsets.unicode;
        let mut header = [0u8; 64];
        // The fixed part every compact str has (a short ASCII name can end its mapping right
        // after its data, so read no further than that).
        let header = &mut header[..u.ascii_data.min(64)];
        self.read(obj, header)?;
        let h = StrHeader::parse(header, u).ok_or(StackError::Torn("not a compact string"))?;
        if !h.compact || h.chars > MAX_PLAUSIBLE_CHARS || !matches!(h.kind, 1 | 2 | 4) {
            return Err(StackError::Torn("not a compact string"));
        }
        let (data_at, width) = (h.data_offset(u), h.width());
        // A long name keeps its start. Its length is checked first: every compact str ends
        // in a NUL character, which a garbage length (a torn read) almost never points at.
        let cut = h.chars > MAX_STR_CHARS;
        if cut {
            let mut nul = [0xffu8; 4];
            let end = (data_at + h.chars * width) as u64;
            self.read(obj.wrapping_add(end), &mut nul[..width])?;
            if nul[..width].iter().any(|&b| b != 0) {
                return Err(StackError::Torn("not a compact string"));
            }
        }
        let length = h.chars.min(MAX_STR_CHARS);
        let mut data = vec![0u8; length * width];
        self.read(obj.wrapping_add(data_at as u64), &mut data)?;
        let mut text = pystr::decode(data, width, h.ascii).map_err(StackError::Torn)?;
        if cut {
            text.push('…');
        }
        Ok(text)
    }
}

#[cfg(test)]
#[path = "stacks_tests.rs"]
mod tests;
