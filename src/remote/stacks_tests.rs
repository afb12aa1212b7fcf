//! Tests of the stack reader against a made-up address space.
//!
//! The reader runs against a live process that does not stop while it is read, so what these
//! tests guard is the promise in the module's header: a torn read is reported as an error
//! (which the sampler drops and counts), never turned into a panic, an endless walk, or a
//! frame that names a function, a file or a line the target never had.
//!
//! Everything runs on a [`FakeMemory`]: a sparse map of mapped regions where a read succeeds
//! only when it falls wholly inside one region, as `process_vm_readv` does. [`Image::build`]
//! lays out a small interpreter in it for one CPython version — type objects, compact strings
//! of all three widths, bytes objects holding real line tables of the version's format, code
//! objects, frame chains (with a C-stack shim frame on 3.12+), thread states and the GIL
//! record — taking every offset from that version's table in `python_offsets/`, never from
//! this file. On that image the tests check:
//!
//! - a well-formed image reads back exactly, for every version and with the regions cut to
//!   page size or to the byte (the page cache's fallback to exact reads);
//! - the code cache: one decode per code object, a re-check once a second that notices a
//!   changed name, and a position past the cached bytecode re-decoded or reported as torn;
//! - cycles in frame chains and thread lists end at [`MAX_DEPTH`]; code pointers at anything
//!   but a code object, frame owners out of range, and strings that are no compact strings
//!   are torn reads;
//! - fuzzing, with a seeded xorshift generator so any failure replays from the seed it prints:
//!   memory of random bytes, well-formed images with their mutable state (frames, thread
//!   states, the interpreter, the GIL record) torn in every way we could think of, images with
//!   random bytes flipped anywhere, and memory that changes while a walk is under way. Every
//!   call must return, and every frame read must be one of the image's real code objects at a
//!   line its line table can produce (where the corruption left code objects alone);
//! - the caches stay bounded (at most [`MAX_CODES`] code objects) however many are seen.
//!
//! They found two reader bugs, fixed since and kept as regression tests:
//! `extreme_words_never_panic` (overflow-checked arithmetic on garbage words panicked in
//! debug builds) and `a_short_ascii_name_at_the_end_of_a_mapping_is_read` (a short ASCII name
//! ending its mapping failed the whole stack).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::remote::memory::fake::{
    fuzz, FakeMemory, Rng, ShiftingMemory, PAGE_BYTES, STATE_ASCII, STATE_BIT7, STATE_COMPACT,
    STATE_INTERNED,
};
use crate::remote::memory::PAGE;
use crate::remote::offsets::for_minor;

/// Every CPython minor version with an offset table.
const MINORS: [u64; 6] = [8, 9, 10, 11, 12, 13];

/// Fuzz iterations per version, for each kind of fuzzing.
const TORN_IMAGES: u64 = 500;
const FLIPPED_IMAGES: u64 = 400;
const RANDOM_MEMORIES: u64 = 500;
const MID_WALK_CHANGES: u64 = 300;

/// The fake memory's `no_pages` refuses reads of exactly the reader's page.
const _: () = assert!(PAGE as usize == PAGE_BYTES);

// ------------------------------------------------------------------------------------------
// The program laid out in every image.

/// `units` code units executing `line` (an offset from the first line; None: no location,
/// the line before goes on).
type Run = (u32, Option<u32>);

/// A code object of the synthetic program.
#[derive(Debug, Clone)]
struct CodeSpec {
    name: &'static str,
    qualname: &'static str,
    file: &'static str,
    first_line: u32,
    runs: Vec<Run>,
}

impl CodeSpec {
    fn units(&self) -> u32 {
        self.runs.iter().map(|&(units, _)| units).sum()
    }

    /// The line of code unit `unit` (past the end: the last line).
    fn line_of(&self, unit: u32) -> u32 {
        let (mut line, mut end) = (self.first_line, 0);
        for &(units, at) in &self.runs {
            if let Some(offset) = at {
                line = self.first_line + offset;
            }
            end += units;
            if unit < end {
                break;
            }
        }
        line
    }

    /// Every line the code object's table can give, whatever the position.
    fn lines(&self) -> HashSet<u32> {
        let mut lines: HashSet<u32> = (0..=self.units()).map(|u| self.line_of(u)).collect();
        lines.insert(self.first_line);
        lines
    }
}

const MAIN: usize = 0;
const RUN: usize = 1;
const NAIVE: usize = 2;
const SNAKE: usize = 3;
const HELPER: usize = 4;
const SHIM: usize = 5;

/// The program: a function per line-table feature, names of all three string widths, and a
/// shim code object (file `<shim>`) that a stack must leave out.
fn program() -> Vec<CodeSpec> {
    let spec = |name, qualname, file, first_line, runs: &[Run]| CodeSpec {
        name,
        qualname,
        file,
        first_line,
        runs: runs.to_vec(),
    };
    vec![
        // A run without a location keeps the line before.
        spec(
            "main",
            "main",
            "/srv/app/main.py",
            1,
            &[(2, Some(0)), (3, Some(2)), (1, None), (4, Some(5))],
        ),
        // A jump of 97 lines (a two-byte varint) and one back of 98.
        spec(
            "run",
            "Worker.run",
            "/srv/app/worker.py",
            40,
            &[(1, Some(1)), (8, Some(3)), (2, Some(100)), (2, Some(2))],
        ),
        // Latin-1 function name, UCS-2 file name.
        spec(
            "naïve",
            "Parser.naïve",
            "/srv/δοκιμή.py",
            7,
            &[(3, Some(0)), (3, Some(1))],
        ),
        // UCS-4 function name.
        spec(
            "snake_🐍",
            "snake_🐍",
            "/srv/app/main.py",
            20,
            &[(4, Some(1)), (1, Some(1)), (2, Some(3))],
        ),
        // Every 3.11 entry form that keeps the line: one-line, long, short.
        spec(
            "helper",
            "helper",
            "/srv/app/util.py",
            300,
            &[(2, Some(0)), (1, Some(0)), (2, Some(0))],
        ),
        spec("<shim>", "<shim>", "<shim>", 0, &[(1, None)]),
    ]
}

/// The table of `spec` in `format`.
fn line_table(format: LineTableFormat, spec: &CodeSpec) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line = spec.first_line as i64;
    match format {
        // (byte delta, line delta) pairs; a line holds from the address it is paired with.
        LineTableFormat::Lnotab => {
            let (mut addr, mut start) = (0u32, 0u32);
            for &(units, at) in &spec.runs {
                if let Some(offset) = at {
                    let target = (spec.first_line + offset) as i64;
                    out.push(u8::try_from(start - addr).expect("short runs"));
                    out.push(i8::try_from(target - line).expect("small deltas") as u8);
                    (addr, line) = (start, target);
                }
                start += 2 * units;
            }
        }
        // (range bytes, line delta) pairs, -128 for no line.
        LineTableFormat::Linetable310 => {
            for &(units, at) in &spec.runs {
                out.push(u8::try_from(2 * units).expect("short runs"));
                match at {
                    None => out.push(0x80),
                    Some(offset) => {
                        let target = (spec.first_line + offset) as i64;
                        out.push(i8::try_from(target - line).expect("small deltas") as u8);
                        line = target;
                    }
                }
            }
        }
        // Objects/locations.md, each entry's form chosen by its index to use them all.
        LineTableFormat::Locations311 => {
            for (i, &(units, at)) in spec.runs.iter().enumerate() {
                assert!((1..=8).contains(&units));
                let head = 0x80 | (units - 1) as u8;
                let Some(offset) = at else {
                    out.push(head | 15 << 3);
                    continue;
                };
                let target = (spec.first_line + offset) as i64;
                let delta = target - line;
                line = target;
                match (i % 3, delta) {
                    // One-line form: the line moves by 0–2, start and end columns follow.
                    (0, 0..=2) => out.extend([head | ((10 + delta) as u8) << 3, 4, 12]),
                    // Long form: line delta, end line delta, column + 1, end column + 1.
                    (1, _) => {
                        out.push(head | 14 << 3);
                        signed_varint(&mut out, delta);
                        for value in [0, 5, 9] {
                            varint(&mut out, value);
                        }
                    }
                    // Short form: same line, one column byte.
                    (2, 0) => out.extend([head | 3 << 3, 0x21]),
                    // No columns, a signed line delta.
                    _ => {
                        out.push(head | 13 << 3);
                        signed_varint(&mut out, delta);
                    }
                }
            }
        }
    }
    out
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 64 {
        out.push(64 | (value & 63) as u8);
        value >>= 6;
    }
    out.push(value as u8);
}

fn signed_varint(out: &mut Vec<u8>, value: i64) {
    let zigzag = if value < 0 {
        (value.unsigned_abs() << 1) | 1
    } else {
        (value as u64) << 1
    };
    varint(out, zigzag);
}

// ------------------------------------------------------------------------------------------
// Laying out an interpreter.

/// Where each kind of object lives; areas are far apart, so they never touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Area {
    Rodata,
    Types,
    Heap,
    Stack,
    Threads,
    Interp,
    Gil,
}

impl Area {
    const ALL: [Area; 7] = [
        Area::Rodata,
        Area::Types,
        Area::Heap,
        Area::Stack,
        Area::Threads,
        Area::Interp,
        Area::Gil,
    ];

    fn base(self) -> u64 {
        0x5555_0000_0000 + ((self as u64) << 28)
    }

    fn of(addr: u64) -> Area {
        *Area::ALL
            .iter()
            .rev()
            .find(|area| addr >= area.base())
            .expect("inside an area")
    }
}

/// What an object in the image is, to aim corruptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    CString,
    Type,
    Str,
    Bytes,
    Dict,
    Code,
    Frame,
    CFrame,
    Thread,
    Interp,
    Gil,
}

impl Kind {
    /// State the interpreter changes as it runs (what a torn read can catch half-written).
    fn mutable(self) -> bool {
        matches!(
            self,
            Kind::Frame | Kind::CFrame | Kind::Thread | Kind::Interp | Kind::Gil
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Obj {
    kind: Kind,
    addr: u64,
    len: usize,
}

/// A frame's position in its code object.
#[derive(Debug, Clone, Copy)]
enum Pos {
    /// Executing the given code unit.
    Unit(u32),
    /// Not started (`f_lasti == -1`, `prev_instr` one unit before the code).
    NotStarted,
}

/// One frame slot of a thread's chain, innermost first.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// A frame of code object `code`, at `pos`, owned per `owner` (3.11+: 0 thread,
    /// 1 generator).
    Code(usize, Pos, u8),
    /// A C-stack shim frame (3.12+ only; left out on older versions).
    CStack,
}

/// Lays objects out area by area.
struct Builder {
    t: PythonOffsets,
    areas: BTreeMap<Area, Vec<u8>>,
    objects: Vec<Obj>,
    strings: HashMap<String, u64>,
    types: HashMap<&'static str, u64>,
}

impl Builder {
    fn new(t: PythonOffsets) -> Builder {
        let mut b = Builder {
            t,
            areas: BTreeMap::new(),
            objects: Vec::new(),
            strings: HashMap::new(),
            types: HashMap::new(),
        };
        for name in ["type", "code", "codec", "dict", "str", "bytes", "frame"] {
            b.type_obj(name);
        }
        b
    }

    fn alloc(&mut self, area: Area, kind: Kind, len: usize) -> u64 {
        let buf = self.areas.entry(area).or_default();
        let at = buf.len().next_multiple_of(16);
        buf.resize(at + len, 0);
        let addr = area.base() + at as u64;
        self.objects.push(Obj { kind, addr, len });
        addr
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) {
        let area = Area::of(addr);
        let at = (addr - area.base()) as usize;
        let buf = self.areas.get_mut(&area).expect("allocated area");
        buf[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn put_u64(&mut self, addr: u64, value: u64) {
        self.write(addr, &value.to_ne_bytes());
    }

    fn put_i32(&mut self, addr: u64, value: i32) {
        self.write(addr, &value.to_ne_bytes());
    }

    /// `ob_refcnt` and `ob_type`.
    fn header(&mut self, addr: u64, type_name: &str) {
        let ty = self.types[type_name];
        self.put_u64(addr, 1);
        self.put_u64(addr + 8, ty);
    }

    fn type_obj(&mut self, name: &'static str) -> u64 {
        let c_name = self.alloc(Area::Rodata, Kind::CString, name.len() + 1);
        self.write(c_name, name.as_bytes());
        let addr = self.alloc(Area::Types, Kind::Type, 416);
        let meta = self.types.get("type").copied().unwrap_or(addr);
        self.put_u64(addr, 1);
        self.put_u64(addr + 8, meta);
        self.put_u64(addr + self.t.r#type.tp_name as u64, c_name);
        self.types.insert(name, addr);
        addr
    }

    /// A compact string (ASCII, or 1-, 2- or 4-byte kind), one object per distinct text.
    fn str_obj(&mut self, text: &str) -> u64 {
        if let Some(&addr) = self.strings.get(text) {
            return addr;
        }
        let u = self.t.unicode.clone();
        let widest = text.chars().map(|c| c as u32).max().unwrap_or(0);
        let (kind, ascii) = match widest {
            0..=0x7f => (1, true),
            0x80..=0xff => (1, false),
            0x100..=0xffff => (2, false),
            _ => (4, false),
        };
        let chars = text.chars().count();
        let data_at = if ascii { u.ascii_data } else { u.compact_data };
        let addr = self.alloc(Area::Heap, Kind::Str, data_at + (chars + 1) * kind);
        self.header(addr, "str");
        self.put_u64(addr + u.length as u64, chars as u64);
        self.put_u64(addr + 24, u64::MAX); // hash -1: not computed
        let state = STATE_INTERNED
            | (kind as u32) << 2
            | STATE_COMPACT
            | if ascii { STATE_ASCII } else { 0 }
            | STATE_BIT7;
        self.put_i32(addr + u.state as u64, state as i32);
        let data: Vec<u8> = text
            .chars()
            .flat_map(|c| {
                let bytes = (c as u32).to_ne_bytes();
                match kind {
                    1 => vec![c as u8],
                    2 => (c as u16).to_ne_bytes().to_vec(),
                    _ => bytes.to_vec(),
                }
            })
            .collect();
        self.write(addr + data_at as u64, &data);
        self.strings.insert(text.to_string(), addr);
        addr
    }

    fn bytes_obj(&mut self, data: &[u8]) -> u64 {
        let b = self.t.bytes.clone();
        let addr = self.alloc(Area::Heap, Kind::Bytes, b.ob_sval + data.len() + 1);
        self.header(addr, "bytes");
        self.put_u64(addr + b.ob_size as u64, data.len() as u64);
        self.write(addr + b.ob_sval as u64, data);
        addr
    }

    /// An object of type `type_name` with nothing else in it.
    fn plain_obj(&mut self, type_name: &str, len: usize) -> u64 {
        let addr = self.alloc(Area::Heap, Kind::Dict, len);
        self.header(addr, type_name);
        addr
    }

    fn code_obj(&mut self, spec: &CodeSpec) -> CodeImage {
        let c = self.t.code.clone();
        let units = spec.units();
        let table = line_table(c.line_table, spec);
        let linetable = self.bytes_obj(&table);
        let filename = self.str_obj(spec.file);
        let name = self.str_obj(spec.name);
        let qualname = c.qualname.map(|_| self.str_obj(spec.qualname));
        let co_code = c
            .code
            .map(|_| self.bytes_obj(&vec![0x64; 2 * units as usize]));
        let fields_end = code_header_len(&c);
        let size = match c.code_adaptive {
            Some(at) => (at + 2 * units as usize).max(fields_end),
            None => fields_end,
        };
        let addr = self.alloc(Area::Heap, Kind::Code, size);
        self.header(addr, "code");
        if let Some(adaptive) = c.code_adaptive {
            // 3.11+: a variable-size object, ob_size counting code units, bytecode inline.
            self.put_u64(addr + 16, units as u64);
            self.write(
                addr + adaptive as u64,
                &vec![0x97; 2 * units as usize], // RESUME, NOP and friends
            );
        }
        self.put_i32(addr + c.firstlineno as u64, spec.first_line as i32);
        self.put_u64(addr + c.filename as u64, filename);
        self.put_u64(addr + c.name as u64, name);
        if let (Some(at), Some(qualname)) = (c.qualname, qualname) {
            self.put_u64(addr + at as u64, qualname);
        }
        self.put_u64(addr + c.linetable as u64, linetable);
        if let (Some(at), Some(co_code)) = (c.code, co_code) {
            self.put_u64(addr + at as u64, co_code);
        }
        let function = if c.qualname.is_some() {
            spec.qualname
        } else {
            spec.name
        };
        CodeImage {
            addr,
            function: function.to_string(),
            file: spec.file.to_string(),
            spec: spec.clone(),
            shim: spec.file.is_empty() || spec.file == "<shim>",
        }
    }

    /// The value of `f_lasti` / `prev_instr` / `instr_ptr` for `pos` in `code`.
    fn position(&self, code: &CodeImage, pos: Pos) -> u64 {
        let f = &self.t.frame;
        match f.layout {
            FrameLayout::Object => {
                let lasti = match pos {
                    Pos::NotStarted => -1,
                    // 3.10 counts code units, earlier versions bytes.
                    Pos::Unit(unit) if self.t.code.line_table == LineTableFormat::Linetable310 => {
                        unit as i32
                    }
                    Pos::Unit(unit) => 2 * unit as i32,
                };
                lasti as u32 as u64
            }
            FrameLayout::Interpreter => {
                let start = code.addr + self.t.code.code_adaptive.expect("3.11+") as u64;
                match pos {
                    Pos::Unit(unit) => start + 2 * unit as u64,
                    // 3.11/3.12 point at the instruction started last, 3.13 at the next one.
                    Pos::NotStarted if f.instr_is_previous => start - 2,
                    Pos::NotStarted => start,
                }
            }
        }
    }

    /// A frame whose code pointer is `code` and whose caller is `back`; its other words hold
    /// `filler` (a plausible pointer, such as the globals dict).
    fn frame(&mut self, code: u64, position: u64, back: u64, owner: u8, filler: u64) -> u64 {
        let f = self.t.frame.clone();
        let fields_end = [
            Some(f.back),
            Some(f.code),
            f.globals,
            f.lasti,
            f.instr,
            f.owner,
        ]
        .into_iter()
        .flatten()
        .max()
        .expect("fields")
            + 8;
        let len = fields_end.next_multiple_of(8) + 24; // and a few locals
        let area = match (f.layout, owner) {
            // 3.11+ frames sit on the thread's data stack, a generator's in the heap.
            (FrameLayout::Interpreter, 0 | 3) => Area::Stack,
            _ => Area::Heap,
        };
        let addr = self.alloc(area, Kind::Frame, len);
        for word in (0..len as u64).step_by(8) {
            self.put_u64(addr + word, filler);
        }
        if f.layout == FrameLayout::Object {
            self.header(addr, "frame");
            self.put_u64(addr + 16, 0);
        }
        self.put_u64(addr + f.back as u64, back);
        self.put_u64(addr + f.code as u64, code);
        if let Some(at) = f.lasti {
            self.put_u64(addr + at as u64, 0);
            self.put_i32(addr + at as u64, position as u32 as i32);
        }
        if let Some(at) = f.instr {
            self.put_u64(addr + at as u64, position);
        }
        if let Some(at) = f.owner {
            // The owner shares its word with stacktop/return_offset: zero it, then the byte.
            let word = at as u64 & !7;
            self.put_u64(addr + word, 0);
            self.write(addr + at as u64, &[owner]);
        }
        addr
    }

    /// A thread state whose innermost frame is `frame`; returns it and the address holding
    /// the frame pointer. On 3.11/3.12 the frame hangs off a `_PyCFrame`: on the C stack, or
    /// (`embedded`) the thread state's own root cframe.
    fn thread(&mut self, ids: (u64, u64), frame: u64, interp: u64, embedded: bool) -> (u64, u64) {
        let t = self.t.thread.clone();
        let fields_end = [
            Some(t.next),
            t.frame,
            t.cframe,
            Some(t.thread_id),
            t.native_thread_id,
            t.context_ver,
        ]
        .into_iter()
        .flatten()
        .max()
        .expect("fields")
            + 8;
        let root_cframe = fields_end.next_multiple_of(16);
        let addr = self.alloc(Area::Threads, Kind::Thread, root_cframe + 32);
        self.put_u64(addr + 16, interp);
        self.put_u64(addr + t.thread_id as u64, ids.0);
        if let Some(at) = t.native_thread_id {
            self.put_u64(addr + at as u64, ids.1);
        }
        if let Some(at) = t.context_ver {
            // The callback clock: any value the thread's history gave it.
            self.put_u64(addr + at as u64, ids.0 * 2 + 1);
        }
        let slot = match (t.frame, t.cframe, t.cframe_current_frame) {
            (Some(at), _, _) => addr + at as u64,
            (None, Some(cframe_at), Some(current)) => {
                let cframe = if embedded {
                    addr + root_cframe as u64
                } else {
                    self.alloc(Area::Stack, Kind::CFrame, 32)
                };
                self.put_u64(addr + cframe_at as u64, cframe);
                cframe + current as u64
            }
            _ => panic!("table {} has no frame pointer", self.t.version),
        };
        self.put_u64(slot, frame);
        (addr, slot)
    }

    /// The memory: each area mapped at its base, cut to whole pages or (`tight`) to the byte.
    fn finish(self, tight: bool) -> (FakeMemory, Vec<Obj>) {
        let mut mem = FakeMemory::default();
        for (area, mut data) in self.areas {
            if !tight {
                let len = data.len().next_multiple_of(PAGE as usize);
                data.resize(len, 0);
            }
            mem.map(area.base(), data);
        }
        (mem, self.objects)
    }
}

/// A code object as laid out.
#[derive(Debug, Clone)]
struct CodeImage {
    addr: u64,
    /// What the reader must call it: `co_qualname` on 3.11+, `co_name` before.
    function: String,
    file: String,
    spec: CodeSpec,
    shim: bool,
}

/// A frame as laid out: `code` is None for a C-stack shim frame.
#[derive(Debug, Clone)]
struct FrameImage {
    addr: u64,
    code: Option<usize>,
}

#[derive(Debug, Clone)]
struct ThreadImage {
    tstate: u64,
    python_tid: u64,
    native_tid: Option<u64>,
    /// Where its innermost frame pointer is kept (in the thread state or its cframe).
    frame_slot: u64,
    /// Every frame of the chain, innermost first, shims included.
    frames: Vec<FrameImage>,
    /// What the reader must report: (function, file, line), innermost first.
    expected: Vec<(String, String, u32)>,
}

/// (function, file) of every real code object -> the lines its table can produce.
type Oracle = HashMap<(String, String), HashSet<u32>>;

/// A synthetic interpreter of one CPython version.
#[derive(Debug, Clone)]
struct Image {
    t: PythonOffsets,
    mem: FakeMemory,
    objects: Vec<Obj>,
    interp: u64,
    gil: u64,
    threads: Vec<ThreadImage>,
    codes: Vec<CodeImage>,
    types: HashMap<&'static str, u64>,
    /// An object of the type `codec` (a near miss of `code`).
    codec: u64,
    /// The str objects, by text.
    strings: HashMap<String, u64>,
    /// Objects laid out for tests to point at: a str and a longer line table for `RUN`.
    spare_name: u64,
    spare_table: u64,
}

impl Image {
    /// Thread 1 (the list's head, holding the GIL): snake_🐍 <- naïve (a generator frame) <-
    /// [C-stack shim] <- <shim> code <- Worker.run <- main. Thread 2: helper (not started)
    /// <- main.
    fn build(minor: u64, tight: bool) -> Image {
        Image::build_with(for_minor(minor).expect("offset table"), tight)
    }

    /// [`Image::build`] laid out by the offsets `t` (a table's, or a target's debug offsets).
    fn build_with(t: PythonOffsets, tight: bool) -> Image {
        let mut b = Builder::new(t.clone());
        let interp = b.alloc(Area::Interp, Kind::Interp, t.interpreter.threads_head + 64);
        let globals = b.plain_obj("dict", 48);
        let codec = b.plain_obj("codec", 256);
        let program = program();
        let codes: Vec<CodeImage> = program.iter().map(|spec| b.code_obj(spec)).collect();
        let spare_name = b.str_obj("Worker.stop");
        let mut grown = program[RUN].clone();
        grown.runs.push((8, Some(120)));
        let spare_table = b.bytes_obj(&line_table(t.code.line_table, &grown));

        let chains: [(u64, u64, Vec<Slot>); 2] = [
            (
                0x7f3a_1c00_0700,
                4242,
                vec![
                    Slot::Code(SNAKE, Pos::Unit(6), 0),
                    Slot::Code(NAIVE, Pos::Unit(4), 1),
                    Slot::CStack,
                    Slot::Code(SHIM, Pos::Unit(0), 0),
                    Slot::Code(RUN, Pos::Unit(10), 0),
                    Slot::Code(MAIN, Pos::Unit(5), 0),
                ],
            ),
            (
                0x7f3a_1b00_0700,
                4243,
                vec![
                    Slot::Code(HELPER, Pos::NotStarted, 0),
                    Slot::Code(MAIN, Pos::Unit(1), 0),
                ],
            ),
        ];
        let mut threads = Vec::new();
        for (i, (python_tid, native_tid, slots)) in chains.into_iter().enumerate() {
            let (mut back, mut frames, mut expected) = (0, Vec::new(), Vec::new());
            // Callers first, so that each frame can point back at its caller.
            for slot in slots.into_iter().rev() {
                match slot {
                    Slot::CStack => {
                        let Some(owner) = t.frame.cstack_owner else {
                            continue;
                        };
                        // Its code pointer is no code object: only skipping it reads on.
                        back = b.frame(globals, 0, back, owner, globals);
                        frames.push(FrameImage {
                            addr: back,
                            code: None,
                        });
                    }
                    Slot::Code(index, pos, owner) => {
                        let code = &codes[index];
                        let position = b.position(code, pos);
                        back = b.frame(code.addr, position, back, owner, globals);
                        frames.push(FrameImage {
                            addr: back,
                            code: Some(index),
                        });
                        if !code.shim {
                            let line = match pos {
                                Pos::Unit(unit) => code.spec.line_of(unit),
                                Pos::NotStarted => code.spec.first_line,
                            };
                            expected.push((code.function.clone(), code.file.clone(), line));
                        }
                    }
                }
            }
            frames.reverse();
            expected.reverse();
            let (tstate, frame_slot) = b.thread((python_tid, native_tid), back, interp, i == 1);
            threads.push(ThreadImage {
                tstate,
                python_tid,
                native_tid: t.thread.native_thread_id.map(|_| native_tid),
                frame_slot,
                frames,
                expected,
            });
        }
        for pair in threads.windows(2) {
            b.put_u64(pair[0].tstate + t.thread.next as u64, pair[1].tstate);
            b.put_u64(pair[1].tstate, pair[0].tstate); // prev
        }
        b.put_u64(
            interp + t.interpreter.threads_head as u64,
            threads[0].tstate,
        );
        let gil = b.alloc(Area::Gil, Kind::Gil, 64);
        match t.gil.layout {
            GilLayout::TstateCurrent => b.put_u64(gil, threads[0].tstate),
            GilLayout::RuntimeState => {
                b.put_u64(gil, 5000); // interval
                b.put_u64(
                    gil + t.gil.last_holder.expect("field") as u64,
                    threads[0].tstate,
                );
                b.put_i32(gil + t.gil.locked.expect("field") as u64, 1);
            }
        }
        let types = b.types.clone();
        let strings = b.strings.clone();
        let (mem, objects) = b.finish(tight);
        Image {
            t,
            mem,
            objects,
            interp,
            gil,
            threads,
            codes,
            types,
            codec,
            strings,
            spare_name,
            spare_table,
        }
    }

    fn reader(&self) -> StackReader<FakeMemory> {
        StackReader::new(self.mem.clone(), self.t.clone(), self.interp, self.gil)
    }

    fn oracle(&self) -> Oracle {
        let mut oracle = Oracle::new();
        for code in self.codes.iter().filter(|code| !code.shim) {
            oracle
                .entry((code.function.clone(), code.file.clone()))
                .or_default()
                .extend(code.spec.lines());
        }
        oracle
    }

    /// Where the function name the reader uses lives in code object `index`.
    fn function_field(&self, index: usize) -> u64 {
        let c = &self.t.code;
        self.codes[index].addr + c.qualname.unwrap_or(c.name) as u64
    }

    /// Sets the position field of the frame at `frame` to the raw value `position`.
    fn set_position(mem: &mut FakeMemory, t: &PythonOffsets, frame: u64, position: u64) {
        match (t.frame.lasti, t.frame.instr) {
            (Some(at), _) => mem.poke_i32(frame + at as u64, position as u32 as i32),
            (None, Some(at)) => mem.poke_u64(frame + at as u64, position),
            _ => panic!("no position field"),
        }
    }

    /// The raw position value for byte offset `offset` into code object `index`.
    fn raw_position(&self, index: usize, offset: i64) -> u64 {
        match self.t.frame.layout {
            FrameLayout::Object if self.t.code.line_table == LineTableFormat::Linetable310 => {
                (offset / 2) as i32 as u32 as u64
            }
            FrameLayout::Object => offset as i32 as u32 as u64,
            FrameLayout::Interpreter => {
                let start =
                    self.codes[index].addr + self.t.code.code_adaptive.expect("3.11+") as u64;
                start.wrapping_add_signed(offset)
            }
        }
    }

    fn frame_of(&self, thread: usize, code: usize) -> u64 {
        self.threads[thread]
            .frames
            .iter()
            .find(|frame| frame.code == Some(code))
            .expect("frame of that code")
            .addr
    }

    fn all_frames(&self) -> Vec<u64> {
        self.threads
            .iter()
            .flat_map(|thread| thread.frames.iter().map(|frame| frame.addr))
            .collect()
    }
}

/// The reader's frames as (function, file, line).
fn triples(frames: &[Frame]) -> Vec<(String, String, u32)> {
    frames
        .iter()
        .map(|f| (f.function.to_string(), f.file.to_string(), f.line))
        .collect()
}

fn head_at(frame: u64) -> ThreadHead {
    ThreadHead {
        tstate: 0,
        python_tid: 0,
        native_tid: None,
        frame,
        cframe: 0,
        context_ver: None,
    }
}

/// Reads every thread's stack of a fresh tick at `now`, panicking on any error.
fn read_all<M: RemoteMemory>(
    reader: &mut StackReader<M>,
    now: Instant,
) -> Vec<Vec<(String, String, u32)>> {
    reader.begin_tick(now);
    let heads = reader.threads().expect("thread list");
    let mut frames = Vec::new();
    heads
        .iter()
        .map(|head| {
            reader.stack(head, &mut frames).expect("stack");
            triples(&frames)
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Well-formed images.

#[test]
fn well_formed_images_read_back_exactly() {
    for minor in MINORS {
        for tight in [false, true] {
            let image = Image::build(minor, tight);
            let mut reader = image.reader();
            reader.begin_tick(Instant::now());
            let heads = reader.threads().expect("thread list");
            assert_eq!(heads.len(), image.threads.len(), "3.{minor}");
            let mut frames = Vec::new();
            for (head, thread) in heads.iter().zip(&image.threads) {
                assert_eq!(head.tstate, thread.tstate, "3.{minor}");
                assert_eq!(head.python_tid, thread.python_tid, "3.{minor}");
                assert_eq!(head.native_tid, thread.native_tid, "3.{minor}");
                assert_eq!(
                    head.context_ver,
                    Some(thread.python_tid * 2 + 1),
                    "3.{minor}"
                );
                assert_eq!(head.frame, thread.frames[0].addr, "3.{minor}");
                reader.stack(head, &mut frames).expect("stack");
                assert_eq!(triples(&frames), thread.expected, "3.{minor} tight {tight}");
            }
            // The image's own model against literal lines (worked out from `program()` by
            // hand), so that a model and a decoder wrong in the same way cannot agree.
            let lines: Vec<Vec<u32>> = image
                .threads
                .iter()
                .map(|t| t.expected.iter().map(|&(_, _, line)| line).collect())
                .collect();
            assert_eq!(lines, [vec![23, 8, 140, 3], vec![300, 1]], "shims left out");
            let shims = if image.t.frame.cstack_owner.is_some() {
                2
            } else {
                1
            };
            assert_eq!(image.threads[0].frames.len(), 4 + shims);
            // Cut to the byte, most regions are shorter than a page: reads of whole pages
            // fail there and exact reads take over.
            let stats = reader.stats();
            if !tight {
                assert!(
                    stats.blocks.page_reads > 0 && stats.blocks.hits > 0,
                    "3.{minor}: {stats:?}"
                );
            }
        }
    }
}

#[test]
fn names_come_from_the_right_field_and_width() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let stacks = read_all(&mut image.reader(), Instant::now());
        let (function, file, _) = &stacks[0][1];
        if minor >= 11 {
            assert_eq!(function, "Parser.naïve", "co_qualname from 3.11");
            assert_eq!(stacks[0][2].0, "Worker.run");
        } else {
            assert_eq!(function, "naïve", "co_name before 3.11");
            assert_eq!(stacks[0][2].0, "run");
        }
        assert_eq!(file, "/srv/δοκιμή.py", "a UCS-2 string");
        assert_eq!(stacks[0][0].0, "snake_🐍", "a UCS-4 string");
    }
}

#[test]
fn gil_holder_follows_each_layout() {
    // Each look is a tick of its own: within a tick the holder's page is read once.
    fn holder<M: RemoteMemory>(reader: &mut StackReader<M>) -> Option<u64> {
        reader.begin_tick(Instant::now());
        reader.gil_holder()
    }
    for minor in MINORS {
        let image = Image::build(minor, false);
        let (first, second) = (image.threads[0].tstate, image.threads[1].tstate);
        let mut reader = image.reader();
        assert_eq!(holder(&mut reader), Some(first), "3.{minor}");
        match image.t.gil.layout {
            GilLayout::TstateCurrent => {
                reader.mem.put_u64(image.gil, second);
                assert_eq!(holder(&mut reader), Some(second), "3.{minor}");
                reader.mem.put_u64(image.gil, 0);
                assert_eq!(holder(&mut reader), None, "3.{minor}: nobody holds it");
            }
            GilLayout::RuntimeState => {
                let last_holder = image.gil + image.t.gil.last_holder.unwrap() as u64;
                let locked = image.gil + image.t.gil.locked.unwrap() as u64;
                reader.mem.put_u64(last_holder, second);
                assert_eq!(holder(&mut reader), Some(second), "3.{minor}");
                reader.mem.put_i32(locked, 0);
                assert_eq!(holder(&mut reader), None, "3.{minor}: released");
                reader.mem.put_i32(locked, 1);
                reader.mem.put_u64(last_holder, 0);
                assert_eq!(holder(&mut reader), None, "3.{minor}: no holder yet");
            }
        }
        reader.mem.unmap(image.gil);
        assert_eq!(holder(&mut reader), None, "3.{minor}: unreadable");
        let mut unknown = StackReader::new(image.mem.clone(), image.t.clone(), image.interp, 0);
        assert_eq!(holder(&mut unknown), None, "3.{minor}: address unknown");
    }
}

#[test]
fn refresh_follows_a_thread_until_its_state_is_reused() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let thread = &image.threads[0];
        let mut reader = image.reader();
        let now = Instant::now();
        reader.begin_tick(now);
        let head = reader.threads().unwrap()[0];
        assert_eq!(reader.refresh(&head), Ok(Some(head)), "3.{minor}");

        // The innermost frame returns: the refreshed head starts at its caller.
        reader.mem.put_u64(thread.frame_slot, thread.frames[1].addr);
        reader.begin_tick(now);
        let popped = reader.refresh(&head).unwrap().expect("same thread");
        assert_eq!(popped.frame, thread.frames[1].addr, "3.{minor}");
        let mut frames = Vec::new();
        reader.stack(&popped, &mut frames).unwrap();
        assert_eq!(triples(&frames), thread.expected[1..], "3.{minor}");

        // No Python code running: an empty stack.
        reader.mem.put_u64(thread.frame_slot, 0);
        reader.begin_tick(now);
        let idle = reader.refresh(&head).unwrap().expect("same thread");
        reader.stack(&idle, &mut frames).unwrap();
        assert!(frames.is_empty(), "3.{minor}");

        // The thread exited and its state went to another thread.
        let id_at = thread.tstate + image.t.thread.thread_id as u64;
        reader.mem.put_u64(id_at, 0x7f00_0000_1234);
        reader.begin_tick(now);
        assert_eq!(reader.refresh(&head), Ok(None), "3.{minor}");

        // ... or its memory was unmapped.
        reader.mem.unmap(thread.tstate);
        reader.begin_tick(now);
        assert!(
            matches!(reader.refresh(&head), Err(StackError::Memory(_))),
            "3.{minor}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// The code cache.

#[test]
fn each_code_object_is_decoded_once() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let expected: Vec<_> = image.threads.iter().map(|t| t.expected.clone()).collect();
        let mut reader = image.reader();
        let now = Instant::now();
        assert_eq!(read_all(&mut reader, now), expected);
        // snake, naïve, <shim>, run, main, helper: main, on both threads, once.
        assert_eq!(reader.stats().codes_decoded, 6, "3.{minor}");
        assert_eq!(reader.cached_codes(), 6, "3.{minor}");
        let pages = reader.stats().blocks.page_reads;

        assert_eq!(
            read_all(&mut reader, now + Duration::from_millis(500)),
            expected
        );
        assert_eq!(reader.stats().codes_decoded, 6, "3.{minor}: cache hits");
        assert_eq!(
            reader.stats().blocks.page_reads,
            2 * pages,
            "3.{minor}: pages per tick"
        );

        // Past the re-check interval: the headers are compared again, nothing is re-decoded.
        let reads = reader.mem.reads.get();
        assert_eq!(
            read_all(&mut reader, now + Duration::from_secs(2)),
            expected
        );
        assert_eq!(
            reader.stats().codes_decoded,
            6,
            "3.{minor}: unchanged codes"
        );
        assert!(
            reader.mem.reads.get() - reads > pages,
            "3.{minor}: headers re-read"
        );
        assert_eq!(reader.stats().cache_resets, 0);
    }
}

#[test]
fn a_changed_name_is_seen_at_the_next_check() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let mut reader = image.reader();
        let now = Instant::now();
        read_all(&mut reader, now);
        reader
            .mem
            .put_u64(image.function_field(RUN), image.spare_name);

        // Within the re-check interval the cached name stands (by design).
        let stacks = read_all(&mut reader, now + Duration::from_millis(900));
        assert_eq!(stacks[0][2].0, image.codes[RUN].function, "3.{minor}");
        assert_eq!(reader.stats().codes_decoded, 6, "3.{minor}");

        let stacks = read_all(&mut reader, now + Duration::from_secs(2));
        assert_eq!(stacks[0][2].0, "Worker.stop", "3.{minor}");
        assert_eq!(stacks[0][2].1, image.codes[RUN].file, "3.{minor}");
        assert_eq!(reader.stats().codes_decoded, 7, "3.{minor}: one re-decode");
    }
}

/// Regression: launched with loopspy from its first instruction, a demo's outermost frames read
/// `TransportSocket (asyncio/trsock.py:70)` for up to a second instead of `run
/// (asyncio/runners.py)`: the class body's code object was cached, freed once `asyncio.trsock`
/// was imported, and `asyncio.run`'s code object took its address with a position that fitted
/// the old bytecode length. A frame under other globals than the cached entry's is re-checked
/// at once; one under the same globals is trusted as before.
#[test]
fn a_code_object_reused_under_other_globals_is_seen_at_once() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let at = image.t.frame.globals.expect("every table has f_globals") as u64;
        let mut reader = image.reader();
        let now = Instant::now();
        read_all(&mut reader, now);
        let frame = image.frame_of(0, RUN);
        let decoded = reader.stats().codes_decoded;

        // Globals are only compared, so any other address stands for another dict.
        // The same code object run under another dict (exec in fresh globals): re-checked
        // (one header read), not re-decoded, and trusted again under those globals.
        reader.mem.put_u64(frame + at, image.codec);
        let stacks = read_all(&mut reader, now + Duration::from_millis(10));
        assert_eq!(stacks[0][2].0, image.codes[RUN].function, "3.{minor}");
        assert_eq!(
            reader.stats().codes_decoded,
            decoded,
            "3.{minor}: no decode"
        );
        let reads = reader.mem.reads.get();
        read_all(&mut reader, now + Duration::from_millis(20));
        let same = reader.mem.reads.get() - reads;
        read_all(&mut reader, now + Duration::from_millis(30));
        assert_eq!(
            reader.mem.reads.get() - reads,
            2 * same,
            "3.{minor}: trusted"
        );

        // Another code object at the same address (its name differs), in another module's
        // frame, well within the once-a-second re-check: its own name at once.
        reader
            .mem
            .put_u64(image.function_field(RUN), image.spare_name);
        let other_module = image.spare_table;
        reader.mem.put_u64(frame + at, other_module);
        let stacks = read_all(&mut reader, now + Duration::from_millis(40));
        assert_eq!(stacks[0][2].0, "Worker.stop", "3.{minor}");
        assert_eq!(reader.stats().codes_decoded, decoded + 1, "3.{minor}");
    }
}

#[test]
fn a_position_outside_the_cached_code_is_redecoded_or_torn() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let mut reader = image.reader();
        let now = Instant::now();
        read_all(&mut reader, now);
        let frame = image.frame_of(0, RUN);
        let units = image.codes[RUN].spec.units() as i64;
        let head = reader.threads().unwrap()[0];
        let mut frames = Vec::new();

        // Past the end of the bytecode, and before its start: torn, no frame made up.
        for offset in [2 * units + 2, 2 * units + 4000, -4, -1000] {
            let position = image.raw_position(RUN, offset);
            Image::set_position(&mut reader.mem, &image.t, frame, position);
            reader.begin_tick(now);
            let decoded = reader.stats().codes_decoded;
            assert_eq!(
                reader.stack(&head, &mut frames),
                Err(StackError::Torn("frame position outside its code object")),
                "3.{minor} offset {offset}"
            );
            assert_eq!(
                reader.stats().codes_decoded,
                decoded + 1,
                "3.{minor}: re-decoded"
            );
        }

        // The end itself is inside (the last line).
        let position = image.raw_position(RUN, 2 * units);
        Image::set_position(&mut reader.mem, &image.t, frame, position);
        reader.begin_tick(now);
        reader.stack(&head, &mut frames).unwrap();
        assert_eq!(frames[2].line, image.codes[RUN].spec.line_of(units as u32));

        // A code object with longer bytecode took the old one's address: the position past
        // the cached length makes the reader decode it at once, a second early.
        let code = image.codes[RUN].addr;
        let c = &image.t.code;
        match c.code {
            None => reader.mem.put_u64(code + 16, units as u64 + 8),
            Some(co_code) => {
                let co_code = reader.mem.get_u64(code + co_code as u64);
                let size = co_code + image.t.bytes.ob_size as u64;
                reader.mem.put_u64(size, 2 * (units as u64 + 8));
            }
        }
        reader
            .mem
            .put_u64(code + c.linetable as u64, image.spare_table);
        let position = image.raw_position(RUN, 2 * units + 2);
        Image::set_position(&mut reader.mem, &image.t, frame, position);
        reader.begin_tick(now);
        reader.stack(&head, &mut frames).unwrap();
        let expected = image.codes[RUN].spec.first_line + 120;
        assert_eq!(frames[2].line, expected, "3.{minor}: the new table's line");
        assert_eq!(frames[2].function.as_ref(), image.codes[RUN].function);
    }
}

// ------------------------------------------------------------------------------------------
// Torn chains, deterministically.

#[test]
fn cycles_end_at_max_depth() {
    within(|| {
        // Without the page cache first: a walk that does not end then fails on the read
        // budget at once.
        for (minor, no_pages) in MINORS.into_iter().flat_map(|m| [(m, true), (m, false)]) {
            let mut image = Image::build(minor, false);
            image.mem.no_pages = no_pages;
            let back = image.t.frame.back as u64;
            let thread = &image.threads[0];
            let outermost = thread.frames.last().unwrap().addr;
            let mut reader = image.reader();
            let mut frames = Vec::new();

            // The outermost frame's caller is the innermost one.
            reader.mem.put_u64(outermost + back, thread.frames[0].addr);
            reader.begin_tick(Instant::now());
            let head = reader.threads().unwrap()[0];
            assert_eq!(
                reader.stack(&head, &mut frames),
                Err(StackError::Torn("frame chain does not end")),
                "3.{minor}"
            );
            // A frame that is its own caller.
            reader.mem.put_u64(outermost + back, outermost);
            reader.begin_tick(Instant::now());
            assert!(reader.stack(&head, &mut frames).is_err(), "3.{minor}");

            // A shim frame that is its own caller (skipped frames count too).
            if let Some(shim) = thread.frames.iter().find(|f| f.code.is_none()) {
                reader.mem.put_u64(shim.addr + back, shim.addr);
                reader.begin_tick(Instant::now());
                assert_eq!(
                    reader.stack(&head, &mut frames),
                    Err(StackError::Torn("frame chain does not end")),
                    "3.{minor}"
                );
            }

            // The last thread's successor is the first.
            let last = image.threads.last().unwrap().tstate;
            let next = image.t.thread.next as u64;
            reader.mem.put_u64(last + next, thread.tstate);
            reader.begin_tick(Instant::now());
            assert_eq!(
                reader.threads(),
                Err(StackError::Torn("thread list does not end")),
                "3.{minor}"
            );
            // A thread that is its own successor.
            reader.mem.put_u64(thread.tstate + next, thread.tstate);
            reader.begin_tick(Instant::now());
            assert!(reader.threads().is_err(), "3.{minor}");
        }
    });
}

#[test]
fn a_code_pointer_at_anything_but_a_code_object_is_torn() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let frame = image.threads[0].frames[0].addr;
        let code_at = frame + image.t.frame.code as u64;
        let str_obj = image
            .objects
            .iter()
            .find(|o| o.kind == Kind::Str)
            .unwrap()
            .addr;
        let bytes_obj = image
            .objects
            .iter()
            .find(|o| o.kind == Kind::Bytes)
            .unwrap()
            .addr;
        let targets = [
            ("a str", str_obj),
            ("a bytes object", bytes_obj),
            ("a frame", image.threads[1].frames[0].addr),
            ("a thread state", image.threads[1].tstate),
            ("an object of type codec", image.codec),
            ("the code type itself", image.types["code"]),
            ("the interpreter", image.interp),
            ("a code object's inside", image.codes[MAIN].addr + 8),
        ];
        for (what, target) in targets {
            let mut reader = image.reader();
            reader.mem.put_u64(code_at, target);
            reader.begin_tick(Instant::now());
            let head = reader.threads().unwrap()[0];
            let mut frames = Vec::new();
            let read = reader.stack(&head, &mut frames);
            assert!(
                read.is_err(),
                "3.{minor}, code pointer at {what}: {frames:?}"
            );
        }
        let mut reader = image.reader();
        reader.mem.put_u64(code_at, 0);
        let head = reader.threads().unwrap()[0];
        assert_eq!(
            reader.stack(&head, &mut Vec::new()),
            Err(StackError::Torn("frame without a code object"))
        );
        reader.mem.put_u64(code_at, image.codec);
        reader.begin_tick(Instant::now());
        assert_eq!(
            reader.stack(&head, &mut Vec::new()),
            Err(StackError::Torn(
                "frame's code pointer is not a code object"
            ))
        );
    }
}

#[test]
fn odd_frame_owners_are_torn_or_skipped() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let (Some(owner_at), Some(cstack)) = (image.t.frame.owner, image.t.frame.cstack_owner)
        else {
            continue;
        };
        let frame = image.threads[0].frames[0].addr;
        let mut reader = image.reader();
        let head = reader.threads().unwrap()[0];
        let mut frames = Vec::new();
        for owner in cstack + 1..=u8::MAX {
            reader.mem.write(frame + owner_at as u64, &[owner]);
            reader.begin_tick(Instant::now());
            assert_eq!(
                reader.stack(&head, &mut frames),
                Err(StackError::Torn("frame owner out of range")),
                "3.{minor} owner {owner}"
            );
        }
        // Marked as a C-stack frame, the innermost frame is left out.
        reader.mem.write(frame + owner_at as u64, &[cstack]);
        reader.begin_tick(Instant::now());
        reader.stack(&head, &mut frames).unwrap();
        assert_eq!(
            triples(&frames),
            image.threads[0].expected[1..],
            "3.{minor}"
        );
    }
}

#[test]
fn strings_that_are_no_compact_strings_are_torn() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let u = &image.t.unicode;
        let ucs2 = image.strings["/srv/δοκιμή.py"];
        let ucs4 = image.strings["snake_🐍"];
        let ascii = image.strings["/srv/app/main.py"];
        let state = |obj: u64| obj + u.state as u64;
        let compact = |kind: u32| (STATE_INTERNED | kind << 2 | STATE_COMPACT) as i32;
        let cases: [(&str, u64, Vec<u8>, &str); 7] = [
            (
                "a lone surrogate in a UCS-2 string",
                ucs2 + u.compact_data as u64,
                0xd800u16.to_ne_bytes().to_vec(),
                "invalid character",
            ),
            (
                "a UCS-4 character past U+10FFFF",
                ucs4 + u.compact_data as u64,
                0x11_0000u32.to_ne_bytes().to_vec(),
                "invalid character",
            ),
            (
                "a byte past 0x7f in an ASCII string",
                ascii + u.ascii_data as u64,
                vec![0xff],
                "not ASCII",
            ),
            (
                "kind 3",
                state(ucs2),
                compact(3).to_ne_bytes().to_vec(),
                "not a compact string",
            ),
            (
                "kind 0 (a legacy string before PyUnicode_READY)",
                state(ucs4),
                compact(0).to_ne_bytes().to_vec(),
                "not a compact string",
            ),
            (
                "not compact",
                state(ascii),
                (STATE_INTERNED | 1 << 2 | STATE_ASCII)
                    .to_ne_bytes()
                    .to_vec(),
                "not a compact string",
            ),
            (
                "longer than the address space",
                ascii + u.length as u64,
                (u64::MAX / 2).to_ne_bytes().to_vec(),
                "not a compact string",
            ),
        ];
        for (what, at, bytes, why) in cases {
            let mut reader = image.reader();
            reader.mem.write(at, &bytes);
            reader.begin_tick(Instant::now());
            let head = reader.threads().unwrap()[0];
            let mut frames = Vec::new();
            assert_eq!(
                reader.stack(&head, &mut frames),
                Err(StackError::Torn(why)),
                "3.{minor}: {what}"
            );
        }
    }
}

/// A compact ASCII str object holding `text`, exactly its size (`ascii_data + length + 1`,
/// NUL-terminated), to map alone somewhere.
fn ascii_str_obj(image: &Image, text: &[u8]) -> Vec<u8> {
    let u = &image.t.unicode;
    let mut obj = vec![0u8; u.ascii_data + text.len() + 1];
    obj[..8].copy_from_slice(&1u64.to_ne_bytes());
    obj[8..16].copy_from_slice(&image.types["str"].to_ne_bytes());
    obj[u.length..u.length + 8].copy_from_slice(&(text.len() as u64).to_ne_bytes());
    let state = STATE_INTERNED | 1 << 2 | STATE_COMPACT | STATE_ASCII;
    obj[u.state..u.state + 4].copy_from_slice(&state.to_ne_bytes());
    obj[u.ascii_data..u.ascii_data + text.len()].copy_from_slice(text);
    obj
}

/// A compact ASCII string is `ascii_data + length + 1` bytes long: the reader must not read
/// a `compact_data`-sized header (the larger non-ASCII one) at its address, or a short name in
/// the last bytes of a mapping is unreadable and the whole stack is lost.
#[test]
fn a_short_ascii_name_at_the_end_of_a_mapping_is_read() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let mut mem = image.mem.clone();
        // "tick", alone in a mapping of exactly its size.
        let at = 0x7700_0000_0000;
        mem.map(at, ascii_str_obj(&image, b"tick"));
        mem.put_u64(image.function_field(HELPER), at);
        let mut reader = StackReader::new(mem, image.t.clone(), image.interp, image.gil);
        reader.begin_tick(Instant::now());
        let heads = reader.threads().unwrap();
        let mut frames = Vec::new();
        assert_eq!(
            reader.stack(&heads[1], &mut frames),
            Ok(Depth::Whole),
            "3.{minor}"
        );
        assert_eq!(frames[0].function.as_ref(), "tick", "3.{minor}");
    }
}

/// Words at the very top of the address space. Each must give an error, in release builds and
/// in debug builds alike (with overflow checks on, an unchecked `+` or `*` on such a word in
/// the reader would panic).
#[test]
fn extreme_words_never_panic() {
    let mut panics = Vec::new();
    for minor in MINORS {
        let image = Image::build(minor, false);
        let (c, frame) = (&image.t.code, image.threads[0].frames[0].addr);
        let code = image.codes[SNAKE].addr;
        // (what, where, value, whether the thread list rather than the stack must fail)
        let mut cases = vec![
            (
                "frame's code pointer",
                frame + image.t.frame.code as u64,
                i64::MAX as u64,
                false,
            ),
            ("code object's ob_type", code + 8, u64::MAX - 7, false),
            (
                "code object's line table",
                code + c.linetable as u64,
                u64::MAX - 7,
                false,
            ),
        ];
        match c.code {
            Some(co_code) => cases.push(("co_code", code + co_code as u64, u64::MAX - 7, false)),
            None => cases.push(("code object's ob_size", code + 16, 1 << 62, false)),
        }
        if let Some(cframe) = image.t.thread.cframe {
            let at = image.threads[0].tstate + cframe as u64;
            cases.push(("thread state's cframe", at, u64::MAX - 3, true));
        }
        for (what, at, value, list) in cases {
            let mut reader = image.reader();
            reader.mem.put_u64(at, value);
            let read = panic::catch_unwind(AssertUnwindSafe(|| {
                let walked = reader.stack(&head_at(frame), &mut Vec::new()).is_err();
                let listed = reader.threads().is_err();
                if list {
                    listed
                } else {
                    walked
                }
            }));
            match read {
                Err(_) => panics.push(format!("3.{minor}: {what} := {value:#x}")),
                Ok(failed) => assert!(failed, "3.{minor}: {what} := {value:#x} read fine"),
            }
        }
    }
    assert!(panics.is_empty(), "the reader panicked on: {panics:#?}");
}

// ------------------------------------------------------------------------------------------
// Bounded memory.

#[test]
fn the_code_cache_stays_bounded() {
    // 20,000 distinct code objects on twenty 1,000-frame stacks.
    const CODES: usize = 20_000;
    const DEPTH: usize = 1_000;
    for minor in [8, 12] {
        let t = for_minor(minor).unwrap();
        let mut b = Builder::new(t.clone());
        let interp = b.alloc(Area::Interp, Kind::Interp, t.interpreter.threads_head + 64);
        let globals = b.plain_obj("dict", 48);
        let spec = CodeSpec {
            name: "f",
            qualname: "f",
            file: "/srv/gen.py",
            first_line: 1,
            runs: vec![(2, Some(0)), (2, Some(1))],
        };
        let code = b.code_obj(&spec);
        let mut codes = vec![code.addr];
        // The same names and table, a new object each time.
        let header = b.areas[&Area::Heap][(code.addr - Area::Heap.base()) as usize..].to_vec();
        for _ in 1..CODES {
            let addr = b.alloc(Area::Heap, Kind::Code, header.len());
            b.write(addr, &header);
            codes.push(addr);
        }
        let mut tstates = Vec::new();
        for chunk in codes.chunks(DEPTH) {
            let mut back = 0;
            for &addr in chunk.iter().rev() {
                let code = CodeImage {
                    addr,
                    ..code.clone()
                };
                let position = b.position(&code, Pos::Unit(3));
                back = b.frame(addr, position, back, 0, globals);
            }
            tstates.push(
                b.thread((tstates.len() as u64 + 1, 0), back, interp, false)
                    .0,
            );
        }
        for pair in tstates.windows(2) {
            b.put_u64(pair[0] + t.thread.next as u64, pair[1]);
        }
        b.put_u64(interp + t.interpreter.threads_head as u64, tstates[0]);
        let (mem, _) = b.finish(false);
        let mut reader = StackReader::new(mem, t, interp, 0);

        let mut seen = 0;
        for tick in 0..2u64 {
            let now = Instant::now() + Duration::from_secs(2 * tick);
            for stack in read_all(&mut reader, now) {
                assert!(stack
                    .iter()
                    .all(|f| f == &("f".into(), "/srv/gen.py".into(), 2)));
                seen += stack.len();
                assert!(reader.cached_codes() <= MAX_CODES);
            }
        }
        assert_eq!(seen, 2 * CODES, "3.{minor}");
        let stats = reader.stats();
        assert!(stats.cache_resets >= 2, "3.{minor}: {stats:?}");
        assert!(reader.cached_codes() <= MAX_CODES, "3.{minor}");
        let held: usize = reader.codes.values().map(CodeInfo::heap_bytes).sum();
        assert_eq!(
            reader.cache_bytes, held,
            "3.{minor}: the byte count drifted"
        );
        assert!(reader.cache_bytes <= MAX_CACHE_BYTES);
        assert!(reader.code_types.len() <= 1024);
        assert!(reader.pages.blocks.slots() <= MAX_BLOCKS);
    }
}

// ------------------------------------------------------------------------------------------
// Fuzzing.

/// What a fuzzed read may return, beyond an error.
enum Expect<'a> {
    /// Frames of the image's real code objects only, each at a line its table can produce.
    Real(&'a Oracle),
    /// Anything bounded: the code objects themselves were corrupted, so their text may be.
    Bounded,
    /// No frame at all: no type in memory is named `code`.
    Nothing,
}

impl Expect<'_> {
    fn check(&self, frames: &[Frame]) -> Result<(), String> {
        if frames.len() > MAX_DEPTH {
            return Err(format!("{} frames", frames.len()));
        }
        for frame in frames {
            match self {
                Expect::Real(oracle) => {
                    let key = (frame.function.to_string(), frame.file.to_string());
                    match oracle.get(&key) {
                        Some(lines) if lines.contains(&frame.line) => {}
                        Some(_) => return Err(format!("{frame:?}: a line its table lacks")),
                        None => return Err(format!("{frame:?}: no code object of the image")),
                    }
                }
                Expect::Bounded => {
                    let long = |s: &str| s.chars().count() > MAX_STR_CHARS + 1;
                    if long(&frame.function) || long(&frame.file) {
                        return Err(format!("an overlong name in {frame:?}"));
                    }
                }
                Expect::Nothing => return Err(format!("{frame:?} out of memory with no code")),
            }
        }
        Ok(())
    }
}

/// How the fuzzed stack reads came out: proof that the fuzzing gets past the first check.
#[derive(Debug, Default)]
struct Tally {
    /// Stacks read with at least one frame.
    frames: u64,
    /// Stacks read empty (every frame a shim, or none).
    empty: u64,
    /// `StackError::Torn`.
    torn: u64,
    /// `StackError::Memory`.
    unreadable: u64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.frames + self.empty + self.torn + self.unreadable
    }
}

/// Reads the stack of `head`, counts how it came out and checks what it gave.
fn read_stack<M: RemoteMemory>(
    reader: &mut StackReader<M>,
    head: &ThreadHead,
    expect: &Expect,
    tally: &mut Tally,
) -> Result<(), String> {
    let mut frames = Vec::new();
    let read = reader.stack(head, &mut frames);
    match read {
        Ok(_) if frames.is_empty() => tally.empty += 1,
        Ok(_) => tally.frames += 1,
        Err(StackError::Torn(_)) => tally.torn += 1,
        Err(StackError::Memory(_)) => tally.unreadable += 1,
    }
    match read {
        Ok(_) => expect.check(&frames),
        Err(_) => Ok(()),
    }
}

/// One tick of everything the sampler does — the thread list, each thread's stack, a refresh
/// of each, the GIL holder — plus stacks started at `starts`; every result checked.
fn exercise<M: RemoteMemory>(
    reader: &mut StackReader<M>,
    now: Instant,
    starts: &[u64],
    expect: &Expect,
    tally: &mut Tally,
) -> Result<(), String> {
    reader.begin_tick(now);
    let heads = reader.threads().unwrap_or_default();
    if heads.len() > MAX_DEPTH {
        return Err(format!("{} threads", heads.len()));
    }
    for head in &heads[..heads.len().min(4)] {
        read_stack(reader, head, expect, tally)?;
        if let Ok(Some(again)) = reader.refresh(head) {
            if (again.tstate, again.python_tid) != (head.tstate, head.python_tid) {
                return Err(format!("refresh of {head:?} gave {again:?}"));
            }
            read_stack(reader, &again, expect, tally)?;
        }
    }
    for &start in starts {
        read_stack(reader, &head_at(start), expect, tally)?;
    }
    let _ = reader.gil_holder();
    if reader.cached_codes() > MAX_CODES
        || reader.cache_bytes > MAX_CACHE_BYTES + MAX_LINE_TABLE * 16
        || reader.code_types.len() > 1024
        || reader.pages.blocks.slots() > MAX_BLOCKS
    {
        return Err("caches past their bounds".into());
    }
    Ok(())
}

/// How long a test may run before a walk is taken not to end (minutes more than it needs).
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `body` on a thread of its own and fails if it does not finish by [`DEADLINE`]: a walk
/// that never ends (and never reads, its pages and code objects cached) fails the test rather
/// than hanging it.
fn within(body: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let worker = thread::spawn(move || {
        body();
        let _ = done.send(());
    });
    match finished.recv_timeout(DEADLINE) {
        Ok(()) => worker.join().expect("finished"),
        Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                panic::resume_unwind(panic);
            }
        }
        Err(RecvTimeoutError::Timeout) => {
            panic!("still running after {DEADLINE:?}: a walk does not end")
        }
    }
}

/// Whether the fake memory of fuzz case `seed` refuses whole-page reads: for the first cases
/// of each version (so that a reader whose walks do not end fails on the read budget before
/// a cached walk can spin until memory runs out), then for three cases in ten.
fn refuse_pages(seed: u64, rng: &mut Rng) -> bool {
    seed & 0xffff_ffff < 64 || rng.chance(30)
}

/// A value a torn word may hold: zero, extremes, real or interior or just-unmapped addresses.
fn nasty_word(image: &Image, rng: &mut Rng) -> u64 {
    let obj = *rng.pick(&image.objects);
    match rng.below(10) {
        0 => 0,
        1 => rng.next_u64(),
        2 => *rng.pick(&[
            1,
            u64::MAX,
            u64::MAX - 7,
            i64::MAX as u64,
            1 << 63,
            1 << 62,
            0xffff_ffff,
        ]),
        3 | 4 => obj.addr,
        5 => obj.addr + rng.below(obj.len.max(1)) as u64,
        6 => {
            let (start, len) = *rng.pick(&image.mem.spans());
            start + len as u64 + rng.below(16) as u64
        }
        7 => *rng.pick(&image.all_frames()),
        8 => image.codes[rng.below(image.codes.len())].addr,
        _ => {
            let (start, len) = *rng.pick(&image.mem.spans());
            start + rng.below(len) as u64
        }
    }
}

fn pick_obj(image: &Image, rng: &mut Rng, want: impl Fn(Kind) -> bool) -> Obj {
    let candidates: Vec<Obj> = image
        .objects
        .iter()
        .copied()
        .filter(|o| want(o.kind))
        .collect();
    *rng.pick(&candidates)
}

/// Tears the image in one way that leaves its code objects' meaning alone (what the reader
/// can be held to: a real code object or an error), and says how.
fn tear(image: &mut Image, rng: &mut Rng) -> String {
    let t = image.t.clone();
    let value = nasty_word(image, rng);
    match rng.below(16) {
        0 | 1 => {
            let obj = pick_obj(image, rng, Kind::mutable);
            let at = obj.addr + 8 * rng.below(obj.len / 8) as u64;
            image.mem.poke_u64(at, value);
            format!("word {at:#x} of {:?} := {value:#x}", obj.kind)
        }
        2 => {
            let obj = pick_obj(image, rng, Kind::mutable);
            let at = obj.addr + rng.below(obj.len) as u64;
            let byte = rng.next_u64() as u8;
            image.mem.poke(at, &[byte]);
            format!("byte {at:#x} of {:?} := {byte:#x}", obj.kind)
        }
        3 => {
            // A cycle: a frame's caller is itself or a frame further in.
            let thread = rng.pick(&image.threads);
            let i = rng.below(thread.frames.len());
            let j = rng.below(i + 1);
            let (from, to) = (thread.frames[i].addr, thread.frames[j].addr);
            image.mem.poke_u64(from + t.frame.back as u64, to);
            format!("frame {from:#x} back := {to:#x}")
        }
        4 => {
            let from = rng.pick(&image.threads).tstate;
            let to = rng.pick(&image.threads).tstate;
            image.mem.poke_u64(from + t.thread.next as u64, to);
            format!("thread {from:#x} next := {to:#x}")
        }
        5 => {
            // A code pointer at some other object (or another code object).
            let frame = *rng.pick(&image.all_frames());
            let to = rng.pick(&image.objects).addr;
            image.mem.poke_u64(frame + t.frame.code as u64, to);
            format!("frame {frame:#x} code := {to:#x}")
        }
        6 => {
            let frame = *rng.pick(&image.all_frames());
            let Some(owner_at) = t.frame.owner else {
                return "nothing".into();
            };
            let owner = match rng.below(3) {
                0 => t.frame.cstack_owner.unwrap_or(3),
                1 => rng.below(5) as u8,
                _ => rng.next_u64() as u8,
            };
            image.mem.poke(frame + owner_at as u64, &[owner]);
            format!("frame {frame:#x} owner := {owner}")
        }
        7 => {
            // Any position in or around any code object.
            let frame = *rng.pick(&image.all_frames());
            let code = rng.below(image.codes.len());
            let offset = rng.below(200) as i64 - 40;
            let position = match rng.below(4) {
                0 => value,
                1 => *rng.pick(&[i32::MIN as u32 as u64, i32::MAX as u64, u32::MAX as u64]),
                _ => image.raw_position(code, offset),
            };
            Image::set_position(&mut image.mem, &t, frame, position);
            format!("frame {frame:#x} position := {position:#x}")
        }
        8 => {
            // Huge lengths: strings, line tables, bytecode.
            let obj = pick_obj(image, rng, |k| {
                matches!(k, Kind::Str | Kind::Bytes | Kind::Code)
            });
            let huge = *rng.pick(&[
                u64::MAX,
                1 << 62,
                i64::MAX as u64,
                1 << 40,
                (1 << 20) + 1,
                MAX_STR_CHARS as u64 + 1,
            ]);
            let at = match obj.kind {
                Kind::Str => obj.addr + t.unicode.length as u64,
                Kind::Bytes => obj.addr + t.bytes.ob_size as u64,
                _ if t.code.code_adaptive.is_some() => obj.addr + 16,
                _ => return "nothing".into(),
            };
            let huge = if obj.kind == Kind::Str {
                huge.max(MAX_STR_CHARS as u64 + 1)
            } else {
                huge.max((1 << 30) + 1)
            };
            image.mem.poke_u64(at, huge);
            format!("length at {at:#x} of {:?} := {huge:#x}", obj.kind)
        }
        9 => {
            // A string of no valid kind, or not compact.
            let obj = pick_obj(image, rng, |k| k == Kind::Str);
            let at = obj.addr + t.unicode.state as u64;
            let state = match rng.below(2) {
                0 => (*rng.pick(&[0u32, 3, 5, 6, 7]) << 2) | STATE_COMPACT,
                _ => 1 << 2 | STATE_ASCII,
            };
            image.mem.poke_i32(at, state as i32);
            format!("str {:#x} state := {state:#x}", obj.addr)
        }
        10 => {
            let code = rng.pick(&image.codes).addr;
            let line = -1 - rng.below(1000) as i32;
            image.mem.poke_i32(code + t.code.firstlineno as u64, line);
            format!("code {code:#x} first line := {line}")
        }
        11 => {
            // A name, file name or line table pointer that leads nowhere.
            let code = rng.pick(&image.codes).addr;
            let field = *rng.pick(&[t.code.filename, t.code.name, t.code.linetable]);
            let to = *rng.pick(&[0, 1, u64::MAX - 3, 0x10, 0x7700_0000_0000]);
            image.mem.poke_u64(code + field as u64, to);
            format!("code {code:#x} field {field} := {to:#x}")
        }
        12 => {
            let addr = rng.pick(&image.objects).addr;
            image.mem.unmap(addr);
            format!("unmapped the region of {addr:#x}")
        }
        13 => {
            // The code type renamed (every code object is now something else).
            let ty = image.types["code"];
            let to = *rng.pick(&[image.types["codec"], image.types["dict"], 0]);
            let mut name = [0u8; 8];
            if to != 0 {
                image.mem.peek(to + t.r#type.tp_name as u64, &mut name);
            }
            let name = u64::from_ne_bytes(name);
            image.mem.poke_u64(ty + t.r#type.tp_name as u64, name);
            "code type renamed".into()
        }
        14 => {
            // The innermost frame returns and its slot is reused by another call.
            let thread = rng.pick(&image.threads).clone();
            if thread.frames.len() < 2 {
                return "nothing".into();
            }
            image.mem.poke_u64(thread.frame_slot, thread.frames[1].addr);
            let slot = thread.frames[0].addr;
            let code = rng.below(image.codes.len());
            image
                .mem
                .poke_u64(slot + t.frame.code as u64, image.codes[code].addr);
            if rng.chance(50) {
                let units = image.codes[code].spec.units() as usize;
                let position = image.raw_position(code, 2 * rng.below(units) as i64);
                Image::set_position(&mut image.mem, &t, slot, position);
            }
            format!("thread {:#x} popped a frame, slot reused", thread.tstate)
        }
        _ => {
            // The thread list's head, or a thread's frame pointer, somewhere else.
            let at = match rng.below(2) {
                0 => image.interp + t.interpreter.threads_head as u64,
                _ => rng.pick(&image.threads).frame_slot,
            };
            image.mem.poke_u64(at, value);
            format!("pointer {at:#x} := {value:#x}")
        }
    }
}

/// Pristine images per version (and their oracles), built once per test.
fn pristine() -> Vec<(u64, Image, Oracle)> {
    MINORS
        .iter()
        .map(|&minor| {
            let image = Image::build(minor, false);
            let oracle = image.oracle();
            (minor, image, oracle)
        })
        .collect()
}

#[test]
fn fuzz_torn_images_give_real_frames_or_errors() {
    within(|| {
        let mut tally = Tally::default();
        for (minor, pristine, oracle) in pristine() {
            fuzz(minor, TORN_IMAGES, |seed| {
                let mut rng = Rng::new(seed);
                let mut image = pristine.clone();
                let tears: Vec<String> = (0..1 + rng.below(4))
                    .map(|_| tear(&mut image, &mut rng))
                    .collect();
                image.mem.no_pages = refuse_pages(seed, &mut rng);
                let mut reader = image.reader();
                let starts = image.all_frames();
                let now = Instant::now();
                let expect = Expect::Real(&oracle);
                exercise(&mut reader, now, &starts, &expect, &mut tally)
                    .and_then(|()| {
                        let later = now + Duration::from_secs(2);
                        exercise(&mut reader, later, &starts, &expect, &mut tally)
                    })
                    .map_err(|why| format!("{why} after {tears:?}"))
            });
        }
        eprintln!("torn images: {tally:?}");
        let total = tally.total();
        assert!(
            tally.frames > total / 4 && tally.torn > total / 10,
            "{tally:?}"
        );
        assert!(tally.unreadable > total / 20, "{tally:?}");
    });
}

#[test]
fn fuzz_images_with_random_bytes_anywhere_stay_bounded() {
    within(|| {
        let mut tally = Tally::default();
        for (minor, pristine, _) in pristine() {
            // One reader for all images, as over a long run: its caches must stay bounded.
            let mut reader = pristine.reader();
            let epoch = Instant::now();
            let mut tick = 0;
            fuzz(minor, FLIPPED_IMAGES, |seed| {
                let mut rng = Rng::new(seed);
                let mut image = pristine.clone();
                for _ in 0..rng.below(3) {
                    tear(&mut image, &mut rng);
                }
                let regions: Vec<u64> = image.mem.regions.keys().copied().collect();
                for _ in 0..1 + rng.below(64) {
                    let start = *rng.pick(&regions);
                    let data = image.mem.regions.get_mut(&start).unwrap();
                    let at = rng.below(data.len());
                    data[at] = rng.next_u64() as u8;
                }
                let starts = image.all_frames();
                image.mem.no_pages = refuse_pages(seed, &mut rng);
                reader.mem = image.mem;
                tick += 1;
                exercise(
                    &mut reader,
                    epoch + Duration::from_millis(700 * tick),
                    &starts,
                    &Expect::Bounded,
                    &mut tally,
                )
            });
            assert!(reader.cached_codes() <= MAX_CODES);
        }
        eprintln!("flipped bytes: {tally:?}");
        let total = tally.total();
        assert!(
            tally.frames > total / 4 && tally.torn + tally.unreadable > total / 10,
            "{tally:?}"
        );
    });
}

/// Random memory: the interpreter, the GIL record and some frames are pointed into it, and
/// what it holds is garbage.
struct Garbage {
    mem: FakeMemory,
    interp: u64,
    gil: u64,
    /// Where to start stack walks.
    starts: Vec<u64>,
}

/// How much sense garbage makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Garble {
    /// Every word random.
    Random,
    /// Mostly pointers into the memory itself and small numbers; no type object anywhere.
    SelfPointing,
    /// As `SelfPointing`, with real-looking objects laid out and then scrambled.
    Planted,
}

/// A garbage word: unless `Random`, mostly pointers into the memory itself or at `anchors`,
/// and small numbers.
fn garbage_word(rng: &mut Rng, garble: Garble, spans: &[(u64, usize)], anchors: &[u64]) -> u64 {
    if garble == Garble::Random {
        return rng.next_u64();
    }
    let (start, len) = *rng.pick(spans);
    match rng.below(10) {
        0 | 1 => start + (rng.below(len) as u64 & !7),
        2 | 3 if !anchors.is_empty() => *rng.pick(anchors),
        4 => start + rng.below(len) as u64,
        5 | 6 => rng.below(300) as u64,
        7 => 0,
        _ => rng.next_u64(),
    }
}

/// Garbage memory for the offsets `t`. Planted, a few real-looking objects are laid out
/// first — types, strings, line tables, code objects and frames chained together — and then
/// scrambled a word at a time, while the rest mostly points at them or into itself: walks go
/// deep before they go wrong. Otherwise no type object is mapped at all.
fn garbage(t: &PythonOffsets, rng: &mut Rng, garble: Garble) -> Garbage {
    let planted = garble == Garble::Planted;
    let mut b = Builder::new(t.clone());
    let mut frames = Vec::new();
    if planted {
        let program = program();
        let codes: Vec<CodeImage> = (0..4).map(|_| b.code_obj(rng.pick(&program))).collect();
        for _ in 0..8 {
            let code = rng.pick(&codes);
            let unit = rng.below(code.spec.units() as usize + 2) as u32;
            let position = b.position(code, Pos::Unit(unit));
            let back = match frames.len() {
                0 => 0,
                n => frames[rng.below(n)],
            };
            let owner = rng.below(5) as u8;
            frames.push(b.frame(code.addr, position, back, owner, 0));
        }
    }
    let planted_objects: Vec<Obj> = if planted {
        b.objects.clone()
    } else {
        Vec::new()
    };
    let areas = [
        Area::Heap,
        Area::Stack,
        Area::Threads,
        Area::Interp,
        Area::Gil,
    ];
    let fills: Vec<(u64, usize)> = areas
        .into_iter()
        .map(|area| {
            let len = PAGE as usize * (1 + rng.below(3));
            (b.alloc(area, Kind::Dict, len), len)
        })
        .collect();
    let (mut mem, _) = b.finish(false);
    if !planted {
        mem.unmap(Area::Rodata.base());
        mem.unmap(Area::Types.base());
    }
    let spans = mem.spans();
    let anchors: Vec<u64> = planted_objects.iter().map(|o| o.addr).collect();
    for &(at, len) in &fills {
        for word in (at..at + len as u64).step_by(8) {
            let value = garbage_word(rng, garble, &spans, &anchors);
            mem.put_u64(word, value);
        }
    }
    // Scramble the planted objects (all but their type pointers), one word in eight.
    for obj in planted_objects.iter().filter(|o| o.kind != Kind::Type) {
        for word in (obj.addr..obj.addr + obj.len as u64 - 7).step_by(8) {
            if word != obj.addr + 8 && rng.chance(12) {
                let value = garbage_word(rng, garble, &spans, &anchors);
                mem.put_u64(word, value);
            }
        }
    }
    let mut inside = |at: u64| at + 8 * rng.below(64) as u64;
    let mut starts = vec![inside(fills[0].0), inside(fills[1].0), inside(fills[2].0)];
    starts.extend(frames);
    Garbage {
        interp: inside(fills[3].0),
        gil: inside(fills[4].0),
        starts,
        mem,
    }
}

#[test]
fn fuzz_random_memory_never_panics() {
    within(|| {
        let garbles = [Garble::Random, Garble::SelfPointing, Garble::Planted];
        let mut tallies: [Tally; 3] = Default::default();
        for minor in MINORS {
            let t = for_minor(minor).unwrap();
            fuzz(minor, RANDOM_MEMORIES, |seed| {
                let mut rng = Rng::new(seed);
                let kind = seed as usize % garbles.len();
                let mut g = garbage(&t, &mut rng, garbles[kind]);
                g.mem.no_pages = refuse_pages(seed, &mut rng);
                let mut reader = StackReader::new(g.mem, t.clone(), g.interp, g.gil);
                // Without a type named `code` nothing may come out as a frame.
                let expect = match garbles[kind] {
                    Garble::Planted => Expect::Bounded,
                    _ => Expect::Nothing,
                };
                exercise(
                    &mut reader,
                    Instant::now(),
                    &g.starts,
                    &expect,
                    &mut tallies[kind],
                )
            });
        }
        eprintln!("random memory: {tallies:?}");
        let [random, self_pointing, planted] = &tallies;
        assert!(random.total() > 0 && self_pointing.total() > 0);
        assert!(planted.frames > 0 && planted.torn > 0, "{planted:?}");
    });
}

#[test]
fn fuzz_memory_changing_mid_walk_gives_real_frames_or_errors() {
    within(|| {
        let mut tally = Tally::default();
        for (minor, pristine, oracle) in pristine() {
            let expected: Vec<_> = pristine
                .threads
                .iter()
                .map(|t| t.expected.clone())
                .collect();
            fuzz(minor, MID_WALK_CHANGES, |seed| {
                let mut rng = Rng::new(seed);
                let warm = rng.chance(50);
                // Within the reads of a tick: few once the code objects are cached.
                let reads = if warm { 12 } else { 48 };
                let mut torn = pristine.clone();
                let mut schedule = Vec::new();
                let mut tears = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    let before = torn.mem.clone();
                    tears.push(tear(&mut torn, &mut rng));
                    let at = rng.below(reads) as u64;
                    // The words of one change land a read or two apart: torn within a frame.
                    for change in before.diff(&torn.mem) {
                        schedule.push((at + rng.below(3) as u64, change));
                    }
                }
                schedule.sort_by_key(|&(at, _)| at);
                let mut mem = pristine.mem.clone();
                mem.no_pages = refuse_pages(seed, &mut rng);
                let memory = ShiftingMemory {
                    mem: RefCell::new(mem),
                    reads: Cell::new(0),
                    schedule: RefCell::new(Vec::new()),
                };
                let mut reader =
                    StackReader::new(memory, pristine.t.clone(), pristine.interp, pristine.gil);
                let now = Instant::now();
                if warm {
                    // A warm cache first, from a clean read.
                    if read_all(&mut reader, now) != expected {
                        return Err("the clean read differs".into());
                    }
                }
                let offset = reader.mem.reads.get();
                *reader.mem.schedule.borrow_mut() = schedule
                    .into_iter()
                    .map(|(at, c)| (at + offset, c))
                    .collect();
                let starts = pristine.all_frames();
                for tick in 1..=3 {
                    let at = now + Duration::from_millis(600 * tick);
                    exercise(&mut reader, at, &starts, &Expect::Real(&oracle), &mut tally)
                        .map_err(|why| format!("{why} after {tears:?}"))?;
                }
                Ok(())
            });
        }
        eprintln!("changing mid-walk: {tally:?}");
        let total = tally.total();
        assert!(
            tally.frames > total / 4 && tally.torn > total / 20,
            "{tally:?}"
        );
    });
}

// ------------------------------------------------------------------------------------------
// What a hostile target can hold: deeper chains than we read, names longer than we keep.

#[test]
fn a_chain_deeper_than_max_frames_keeps_its_innermost_frames() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let back = image.t.frame.back;
        let leaf = image.threads[0].frames[0].addr;
        let mut reader = image.reader();
        let len = reader.frame_len;
        let mut template = vec![0u8; len];
        assert!(reader.mem.peek(leaf, &mut template));
        // 3000 copies of the innermost frame, each called by the next, above the real chain.
        let (base, n) = (0x6600_0000_0000u64, 3000usize);
        let mut block = vec![0u8; n * len];
        for (i, chunk) in block.chunks_exact_mut(len).enumerate() {
            chunk.copy_from_slice(&template);
            let caller = if i + 1 < n {
                base + ((i + 1) * len) as u64
            } else {
                leaf
            };
            chunk[back..back + 8].copy_from_slice(&caller.to_ne_bytes());
        }
        reader.mem.map(base, block);
        reader.begin_tick(Instant::now());
        let mut frames = Vec::new();
        let depth = reader.stack(&head_at(base), &mut frames);
        assert_eq!(depth, Ok(Depth::Truncated), "3.{minor}");
        assert_eq!(frames.len(), MAX_FRAMES, "3.{minor}");
        // The innermost frames are the ones kept, read exactly.
        let mut whole = Vec::new();
        reader.stack(&head_at(leaf), &mut whole).unwrap();
        assert!(frames.iter().all(|f| *f == whole[0]), "3.{minor}");
        // A chain of exactly MAX_FRAMES is whole.
        let shims = whole.len() < image.threads[0].frames.len();
        if !shims {
            let mut exact = Vec::new();
            let at = base + ((n - (MAX_FRAMES - whole.len())) * len) as u64;
            assert_eq!(
                reader.stack(&head_at(at), &mut exact),
                Ok(Depth::Whole),
                "3.{minor}"
            );
            assert_eq!(exact.len(), MAX_FRAMES, "3.{minor}");
        }
    }
}

#[test]
fn a_name_longer_than_max_str_chars_is_cut_not_dropped() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let mut mem = image.mem.clone();
        // A one-million-character ASCII function name.
        let at = 0x7710_0000_0000;
        let length = 1_000_000usize;
        mem.map(at, ascii_str_obj(&image, &vec![b'x'; length]));
        mem.put_u64(image.function_field(HELPER), at);
        let mut reader = StackReader::new(mem, image.t.clone(), image.interp, image.gil);
        reader.begin_tick(Instant::now());
        let heads = reader.threads().unwrap();
        let mut frames = Vec::new();
        let mut seen = false;
        for head in &heads {
            reader.stack(head, &mut frames).unwrap();
            for f in &frames {
                if f.function.starts_with("xxxx") {
                    seen = true;
                    assert_eq!(f.function.chars().count(), MAX_STR_CHARS + 1, "3.{minor}");
                    assert!(f.function.ends_with('…'), "3.{minor}");
                }
            }
        }
        assert!(seen, "3.{minor}: the long-named frame was read");
    }
}

// ------------------------------------------------------------------------------------------
// Layouts from the target's own debug offsets (3.13+).

/// The reader's offsets from a Debian 3.`minor` debug-offsets table, with `edit` applied.
fn from_debug_offsets(minor: u64, edit: impl Fn(&mut Vec<u8>)) -> PythonOffsets {
    use crate::remote::debug_offsets::{tests::debian_table, DebugOffsets};
    let mut table = debian_table(minor, 2);
    edit(&mut table);
    DebugOffsets::parse(table).expect("table").reader_offsets()
}

fn reads_exactly(image: &Image) -> bool {
    let mut reader = image.reader();
    reader.begin_tick(Instant::now());
    let Ok(heads) = reader.threads() else {
        return false;
    };
    let mut frames = Vec::new();
    heads.len() == image.threads.len()
        && heads.iter().zip(&image.threads).all(|(head, thread)| {
            head.python_tid == thread.python_tid
                && head.native_tid == thread.native_tid
                && reader.stack(head, &mut frames).is_ok()
                && triples(&frames) == thread.expected
        })
}

#[test]
fn images_laid_out_by_3_13_to_3_15_debug_offsets_read_back_exactly() {
    for minor in [13, 14, 15] {
        for tight in [false, true] {
            let image = Image::build_with(from_debug_offsets(minor, |_| ()), tight);
            assert!(reads_exactly(&image), "3.{minor} tight {tight}");
        }
    }
}

#[test]
fn the_reader_follows_fields_the_target_moved() {
    use crate::remote::debug_offsets::{tests::set, Field};
    // A patch release that moves the thread ids, the frame's owner and instruction pointer,
    // and the code object's names (as 3.14.5 moved interpreter fields): the target's table
    // says where they went, and the reader follows.
    let moved = |t: &mut Vec<u8>| {
        set(t, 15, Field::ThreadId, 200);
        set(t, 15, Field::NativeThreadId, 216);
        set(t, 15, Field::FrameOwner, 75);
        set(t, 15, Field::CodeName, 144);
        set(t, 15, Field::CodeQualname, 152);
    };
    let target = from_debug_offsets(15, moved);
    assert_eq!(target.thread.thread_id, 200);
    let image = Image::build_with(target, false);
    assert!(
        reads_exactly(&image),
        "the moved layout read with the target's offsets"
    );
    // The same memory read with what a table for 3.15 would have said: wrong thread ids,
    // a torn read or wrong names — never the image's stacks.
    let table = from_debug_offsets(15, |_| ());
    let mut stale = StackReader::new(image.mem.clone(), table, image.interp, image.gil);
    stale.begin_tick(Instant::now());
    let heads = stale.threads().expect("the list itself did not move");
    assert!(heads
        .iter()
        .zip(&image.threads)
        .all(|(h, t)| h.python_tid != t.python_tid));
}
