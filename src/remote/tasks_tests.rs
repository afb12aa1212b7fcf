//! Tests of the task reader against a made-up address space.
//!
//! The reader runs against a live process that does not stop while it is read: the
//! `{loop: task}` dict gains an entry and loses one with every task step, and gets a new keys
//! table every few steps while the old one is freed and soon reused by some other dict. What
//! these tests guard is the promise in the module's header: a read that does not add up yields
//! no task — never a panic, never an endless read, never a task the target does not have.
//!
//! Everything runs on a [`FakeMemory`] (shared with the stack reader's tests): a sparse map of
//! mapped regions where a read succeeds only when it falls wholly inside one region, as
//! `process_vm_readv` does. [`Image::build`] lays out what the reader walks, for one CPython
//! version, taking every offset from that version's table in `python_offsets/`: type objects,
//! compact strings of all three widths, ints (3.12+ keeps an unnamed task's name as the int N
//! of `Task-N`), `sys.modules` (big enough for two-byte indices), the `asyncio.tasks` module and
//! its `__dict__`, and `_current_tasks` with deleted entries and two loops' running tasks, plus
//! idle tasks, coroutines and loops. Dicts follow the version's `keys_layout`: "3.8" (`dk_size`,
//! indices as wide as the size needs, 24-byte entries) or "3.11" (`dk_log2_index_bytes`,
//! `dk_kind`, 16-byte entries for str keys). On that image the tests check:
//!
//! - exact reads on every version, with the regions cut to pages or to the byte: each task's
//!   address, name and coroutine, names of every width, `Task-N` from an int, the generation;
//! - the generation follows every task step (an insert, a delete, a new keys table), an
//!   unchanged dict costs three reads, and the lookup retries from 10 ms doubling to 1 s;
//! - torn and garbage state, case by case: wrong type names, huge counts, split tables,
//!   cycles, values that are no task of their loop, strings that are no compact strings,
//!   unmapped and extreme pointers — no task, or only the right ones;
//! - bounds: the largest dict read, and one entry more;
//! - fuzzing with a seeded generator (each failure names its seed): images torn in the ways a
//!   running target tears them, images with random bytes anywhere, memory of random words, and
//!   memory changing between two reads of one call. Every call must return within a read
//!   budget ([`MAX_READS_PER_CALL`]), and on the torn images every task reported must be one
//!   of the image's tasks, with its own name and coroutine (or none, where the tear left the
//!   coroutine's qualname unreadable).
//!
//! What writing them turned up in the reader as it was (each fixed, and each fix shown to
//! matter by taking it out again and watching these tests fail):
//!
//! - a type name or a short ASCII name in the last bytes of a mapping could not be read (32
//!   bytes were read at `tp_name`, and a whole non-ASCII header at every str):
//!   `names_at_the_end_of_a_mapping_are_read`;
//! - unchecked `+` on words read from the target panicked in debug builds:
//!   `extreme_words_never_panic`, `huge_counts_and_split_tables_give_no_task` ("a table
//!   wrapping around") and the fuzz tests, run in a debug build;
//! - a lookup during `import asyncio` could find `tasks.py`'s placeholder `_current_tasks = {}`
//!   and keep it for good, so that no task was ever reported:
//!   `a_placeholder_dict_gives_way_to_the_live_one`;
//! - nothing checked that a value of the dict was a task, nor that a coroutine's qualname was
//!   a str: `a_value_that_is_no_task_of_its_loop_is_skipped`, `wrong_type_names_give_no_task`,
//!   and the two fuzz tests that must give real tasks, which report the image's decoy (a
//!   task-shaped object) without the check;
//! - only Latin-1 names were read: `names_and_coroutines_of_every_width_are_read`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::*;
use crate::remote::memory::fake::{
    fuzz, FakeMemory, Rng, ShiftingMemory, STATE_ASCII, STATE_BIT7, STATE_COMPACT, STATE_INTERNED,
};
use crate::remote::offsets::for_minor;

/// Every CPython minor version with an offset table.
const MINORS: [u64; 6] = [8, 9, 10, 11, 12, 13];

/// Fuzz cases per version, for each kind of fuzzing.
const TORN_IMAGES: u64 = 600;
const FLIPPED_IMAGES: u64 = 400;
const RANDOM_MEMORIES: u64 = 500;
const MID_READ_CHANGES: u64 = 400;

/// The most reads one call may make, whatever the memory holds: the lookup reads the modules
/// pointer, two dicts (header, keys header, entries: 3 reads each), up to three reads per key
/// for up to [`MAX_ENTRIES`] keys each, `md_dict` and the found dict's type (4); the tasks cost
/// three reads for the dict and at most 15 per entry (the loop, the task's fields, the name's
/// type (4) and characters (2), the qualname pointer, its type (4) and characters (2)).
const MAX_READS_PER_CALL: u64 = (1 + 3 + 3 * MAX_ENTRIES) * 2 + 4 + 3 + 15 * MAX_ENTRIES;

/// Where each kind of object lives; areas are far apart, so they never touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Area {
    Rodata,
    Types,
    Heap,
    Keys,
    Runtime,
}

impl Area {
    const ALL: [Area; 5] = [
        Area::Rodata,
        Area::Types,
        Area::Heap,
        Area::Keys,
        Area::Runtime,
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

/// Where tests map objects of their own, away from every area.
const SPARE: u64 = 0x7700_0000_0000;

/// What an object in the image is, to aim corruptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    CString,
    Type,
    Str,
    Int,
    Module,
    Dict,
    Keys,
    Task,
    Coro,
    Loop,
    Plain,
    Runtime,
}

impl Kind {
    /// State the interpreter changes as it runs (what a torn read can catch half-written):
    /// dicts, their keys tables, modules and the interpreter's `modules` pointer. Tasks,
    /// coroutines and strings are left alone by the tears that must give real tasks.
    fn mutable(self) -> bool {
        matches!(self, Kind::Dict | Kind::Keys | Kind::Module | Kind::Runtime)
    }
}

#[derive(Debug, Clone, Copy)]
struct Obj {
    kind: Kind,
    addr: u64,
    len: usize,
}

// ------------------------------------------------------------------------------------------
// Objects, as bytes.

/// A compact str (ASCII, or 1-, 2- or 4-byte kind) of type `str_type`.
fn str_bytes(t: &PythonOffsets, str_type: u64, text: &str) -> Vec<u8> {
    let u = &t.unicode;
    let widest = text.chars().map(|c| c as u32).max().unwrap_or(0);
    let (kind, ascii) = match widest {
        0..=0x7f => (1, true),
        0x80..=0xff => (1, false),
        0x100..=0xffff => (2, false),
        _ => (4, false),
    };
    let chars = text.chars().count();
    let data_at = if ascii { u.ascii_data } else { u.compact_data };
    let mut obj = vec![0u8; data_at + (chars + 1) * kind];
    put(&mut obj, 0, 1);
    put(&mut obj, 8, str_type);
    put(&mut obj, u.length, chars as u64);
    put(&mut obj, 24, u64::MAX); // hash -1: not computed
    let state = STATE_INTERNED
        | (kind as u32) << 2
        | STATE_COMPACT
        | if ascii { STATE_ASCII } else { 0 }
        | STATE_BIT7;
    obj[u.state..u.state + 4].copy_from_slice(&state.to_ne_bytes());
    let mut at = data_at;
    for c in text.chars() {
        let bytes = (c as u32).to_ne_bytes();
        obj[at..at + kind].copy_from_slice(&bytes[..kind]);
        at += kind;
    }
    obj
}

/// An int of type `int_type`: 30-bit digits, the size word signed (up to 3.11) or tagged
/// `ndigits << 3 | sign` (3.12+, sign 0 positive, 1 zero, 2 negative).
fn int_bytes(t: &PythonOffsets, int_type: u64, value: i128) -> Vec<u8> {
    let l = &t.long;
    let mut digits = Vec::new();
    let mut rest = value.unsigned_abs();
    while rest > 0 {
        digits.push((rest & ((1 << 30) - 1)) as u32);
        rest >>= 30;
    }
    let ndigits = digits.len() as u64;
    let tag = if l.tagged {
        let sign = match value.signum() {
            0 => 1,
            1 => 0,
            _ => 2,
        };
        ndigits << 3 | sign
    } else if value < 0 {
        (ndigits as i64).wrapping_neg() as u64
    } else {
        ndigits
    };
    let mut obj = vec![0u8; l.digits + 4 * digits.len().max(2)];
    put(&mut obj, 0, 1);
    put(&mut obj, 8, int_type);
    put(&mut obj, l.tag, tag);
    for (i, digit) in digits.iter().enumerate() {
        obj[l.digits + 4 * i..l.digits + 4 * i + 4].copy_from_slice(&digit.to_ne_bytes());
    }
    obj
}

fn put(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

/// One entry of a dict as laid out: live `(hash, key, value)`, or deleted (a task step's
/// `_leave_task`: key and value cleared).
type Slot = Option<(u64, u64, u64)>;

/// A keys table as laid out, and where its parts are.
#[derive(Debug, Clone)]
struct KeysImage {
    bytes: Vec<u8>,
    /// Offset of the first entry.
    entries: usize,
    entry_size: usize,
    /// Offset of the key in an entry (the value follows it).
    key_at: usize,
    /// Entries it has room for.
    usable: usize,
}

/// A keys table holding `slots`, with room for at least `room` entries. `general`: keys of
/// any type (24-byte entries with the hash); otherwise str keys (16-byte entries on 3.11+).
fn keys_bytes(t: &PythonOffsets, slots: &[Slot], general: bool, room: usize) -> KeysImage {
    let mut log2_size = 3;
    while (2 << log2_size) / 3 < slots.len().max(room) {
        log2_size += 1;
    }
    let size = 1usize << log2_size;
    let usable = (2 * size) / 3;
    let v311 = t.dict.keys_layout == "3.11";
    let (header, index_bytes) = if v311 {
        // Objects/dictobject.c calculate_log2_keysize's counterpart: 1-byte indices up to 128
        // slots, then 2, 4 and 8 bytes.
        let extra = match log2_size {
            0..=7 => 0,
            8..=15 => 1,
            16..=31 => 2,
            _ => 3,
        };
        (32, 1usize << (log2_size + extra))
    } else {
        let width = match size {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xffff_ffff => 4,
            _ => 8,
        };
        (40, size * width)
    };
    let (entry_size, key_at) = if v311 && !general { (16, 0) } else { (24, 8) };
    let entries = header + index_bytes;
    let mut bytes = vec![0u8; entries + usable * entry_size];
    put(&mut bytes, 0, 1); // dk_refcnt
    let free = (usable - slots.len()) as u64;
    if v311 {
        bytes[8] = log2_size as u8;
        bytes[9] = index_bytes.trailing_zeros() as u8;
        bytes[10] = if general { 0 } else { 1 };
        put(&mut bytes, 16, free);
        put(&mut bytes, 24, slots.len() as u64);
    } else {
        put(&mut bytes, 8, size as u64);
        put(&mut bytes, 16, 0x5555_0fff_1230); // dk_lookup, a function
        put(&mut bytes, 24, free);
        put(&mut bytes, 32, slots.len() as u64);
    }
    // Indices: entry i in slot i (DKIX_DUMMY, -2, for a deleted one), the rest DKIX_EMPTY.
    let width = index_bytes / size;
    bytes[header..entries].fill(0xff);
    for (i, slot) in slots.iter().enumerate() {
        let index = if slot.is_some() { i as i64 } else { -2 };
        let at = header + i * width;
        bytes[at..at + width].copy_from_slice(&index.to_ne_bytes()[..width]);
    }
    for (i, slot) in slots.iter().enumerate() {
        let at = entries + i * entry_size;
        if let Some((hash, key, value)) = *slot {
            if entry_size == 24 {
                put(&mut bytes, at, hash);
            }
            put(&mut bytes, at + key_at, key);
            put(&mut bytes, at + key_at + 8, value);
        } else if entry_size == 24 {
            put(&mut bytes, at, 0x1234_5678); // a deleted entry keeps its hash
        }
    }
    KeysImage {
        bytes,
        entries,
        entry_size,
        key_at,
        usable,
    }
}

/// A stand-in for a str's hash (the reader never looks at it).
fn hash_of(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

// ------------------------------------------------------------------------------------------
// Laying out an interpreter.

/// Lays objects out area by area.
struct Builder {
    t: PythonOffsets,
    areas: BTreeMap<Area, Vec<u8>>,
    objects: Vec<Obj>,
    strings: HashMap<String, u64>,
    types: HashMap<&'static str, u64>,
}

/// The types of the image; a near miss of each name the reader checks, so that a check of a
/// prefix, or of too few bytes, cannot pass.
const TYPES: [&str; 16] = [
    "type",
    "dict",
    "str",
    "int",
    "module",
    "_asyncio.Task",
    "TracedTask",
    "coroutine",
    "generator",
    "_UnixSelectorEventLoop",
    "NoneType",
    "function",
    "dict_keys",
    "string",
    "in",
    "st",
];

impl Builder {
    fn new(t: PythonOffsets) -> Builder {
        let mut b = Builder {
            t,
            areas: BTreeMap::new(),
            objects: Vec::new(),
            strings: HashMap::new(),
            types: HashMap::new(),
        };
        for name in TYPES {
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

    fn place(&mut self, area: Area, kind: Kind, bytes: &[u8]) -> u64 {
        let addr = self.alloc(area, kind, bytes.len());
        self.write(addr, bytes);
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

    /// `ob_refcnt` and `ob_type`.
    fn header(&mut self, addr: u64, type_name: &str) {
        let ty = self.types[type_name];
        self.put_u64(addr, 1);
        self.put_u64(addr + OB_TYPE, ty);
    }

    fn type_obj(&mut self, name: &'static str) -> u64 {
        let mut c_name = name.as_bytes().to_vec();
        c_name.push(0);
        let c_name = self.place(Area::Rodata, Kind::CString, &c_name);
        let addr = self.alloc(Area::Types, Kind::Type, 416);
        let meta = self.types.get("type").copied().unwrap_or(addr);
        self.put_u64(addr, 1);
        self.put_u64(addr + OB_TYPE, meta);
        self.put_u64(addr + self.t.r#type.tp_name as u64, c_name);
        self.types.insert(name, addr);
        addr
    }

    /// One str object per distinct text.
    fn str_obj(&mut self, text: &str) -> u64 {
        if let Some(&addr) = self.strings.get(text) {
            return addr;
        }
        let bytes = str_bytes(&self.t, self.types["str"], text);
        let addr = self.place(Area::Heap, Kind::Str, &bytes);
        self.strings.insert(text.to_string(), addr);
        addr
    }

    fn int_obj(&mut self, value: i128) -> u64 {
        let bytes = int_bytes(&self.t, self.types["int"], value);
        self.place(Area::Heap, Kind::Int, &bytes)
    }

    /// An object of type `type_name` whose other words hold `filler`.
    fn plain_obj(&mut self, type_name: &str, kind: Kind, len: usize, filler: u64) -> u64 {
        let addr = self.alloc(Area::Heap, kind, len);
        for word in (16..len as u64).step_by(8) {
            self.put_u64(addr + word, filler);
        }
        self.header(addr, type_name);
        addr
    }

    fn module(&mut self, dict: u64) -> u64 {
        let addr = self.plain_obj("module", Kind::Module, 64, 0);
        self.put_u64(addr + self.t.module.md_dict as u64, dict);
        addr
    }

    /// A dict of `slots` whose keys table has room for `room` entries.
    fn dict(&mut self, slots: &[Slot], general: bool, room: usize) -> DictImage {
        let keys_image = keys_bytes(&self.t, slots, general, room);
        let keys = self.place(Area::Keys, Kind::Keys, &keys_image.bytes);
        let addr = self.alloc(Area::Heap, Kind::Dict, 48);
        self.header(addr, "dict");
        let d = self.t.dict.clone();
        let used = slots.iter().flatten().count() as u64;
        self.put_u64(addr + d.ma_used as u64, used);
        self.put_u64(addr + 24, 0x10_0001); // ma_version_tag
        self.put_u64(addr + d.ma_keys as u64, keys);
        DictImage {
            addr,
            keys,
            entries: keys + keys_image.entries as u64,
            entry_size: keys_image.entry_size as u64,
            key_at: keys_image.key_at as u64,
            usable: keys_image.usable,
            len: keys_image.bytes.len(),
            slots: slots.to_vec(),
            general,
        }
    }

    /// A dict with str keys.
    fn str_dict(&mut self, items: &[(&str, u64)], general: bool) -> DictImage {
        let slots: Vec<Slot> = items
            .iter()
            .map(|&(key, value)| {
                let key_obj = self.str_obj(key);
                Some((hash_of(key), key_obj, value))
            })
            .collect();
        self.dict(&slots, general, 0)
    }

    /// The memory: each area mapped at its base, cut to whole pages or (`tight`) to the byte.
    fn finish(self, tight: bool) -> (FakeMemory, Vec<Obj>) {
        let mut mem = FakeMemory::default();
        for (area, mut data) in self.areas {
            if !tight {
                let len = data.len().next_multiple_of(4096);
                data.resize(len, 0);
            }
            mem.map(area.base(), data);
        }
        (mem, self.objects)
    }
}

/// A dict as laid out.
#[derive(Debug, Clone)]
struct DictImage {
    addr: u64,
    keys: u64,
    /// Address of the first entry.
    entries: u64,
    entry_size: u64,
    key_at: u64,
    usable: usize,
    /// Bytes of the keys table.
    len: usize,
    slots: Vec<Slot>,
    general: bool,
}

impl DictImage {
    /// Where entry `i` keeps its key; its value is the next word.
    fn key_field(&self, i: usize) -> u64 {
        self.entries + i as u64 * self.entry_size + self.key_at
    }

    fn value_field(&self, i: usize) -> u64 {
        self.key_field(i) + 8
    }
}

/// A task to lay out.
struct TaskSpec {
    /// What `get_name()` gives.
    name: &'static str,
    /// For an unnamed task, the N of `Task-N`: 3.12+ keeps the int until asked for the name.
    int_name: Option<i128>,
    /// The coroutine's `__qualname__`.
    coroutine: &'static str,
    /// `coroutine`, or `generator` for a generator-based coroutine.
    coro_type: &'static str,
    /// Which of the image's two loops it runs on.
    on_loop: usize,
    /// `_asyncio.Task` or a subclass.
    task_type: &'static str,
}

/// A task as laid out.
#[derive(Debug, Clone)]
struct TaskImage {
    addr: u64,
    loop_: u64,
    coro: u64,
    /// What the reader must report.
    name: String,
    coroutine: String,
}

impl TaskImage {
    fn expected(&self) -> RunningTask {
        RunningTask {
            address: self.addr,
            name: self.name.clone(),
            coroutine: self.coroutine.clone(),
        }
    }
}

/// Every task of an image, as the reader must report it.
type Oracle = HashSet<(u64, String, String)>;

/// The tasks running in a pristine image: on loop 0 and on loop 1.
const RUNNING: [usize; 2] = [0, 1];
/// Idle tasks: Latin-1, UCS-2 and UCS-4 names (and coroutines), a two-digit `Task-N`.
const LATIN1: usize = 2;
const UCS2: usize = 3;
const UCS4: usize = 4;
const BIG_N: usize = 5;

/// A synthetic interpreter of one CPython version, its asyncio imported and two loops running.
#[derive(Debug, Clone)]
struct Image {
    t: PythonOffsets,
    mem: FakeMemory,
    objects: Vec<Obj>,
    types: HashMap<&'static str, u64>,
    strings: HashMap<String, u64>,
    /// Where the interpreter keeps its `modules` pointer (what the sampler passes).
    modules_ptr: u64,
    sys_modules: DictImage,
    /// `sys.modules` entry of "asyncio.tasks".
    tasks_entry: usize,
    tasks_module: u64,
    /// `asyncio.tasks.__dict__` and its entry of "_current_tasks".
    module_dict: DictImage,
    current_entry: usize,
    /// `_current_tasks`.
    current: DictImage,
    /// What `tasks.py` binds `_current_tasks` to first: an empty dict no task enters.
    placeholder: DictImage,
    /// Free memory in the keys area, big enough for `current`'s keys table: where a resize
    /// puts the new one.
    spare_keys: u64,
    loops: [u64; 2],
    tasks: Vec<TaskImage>,
    /// `None`, for tests to point at.
    none: u64,
    /// No task, but a coroutine and a str where a task keeps its coroutine and name (a freed
    /// task's memory reused by another object, say): only the loop a task names tells them
    /// apart.
    decoy: u64,
}

impl Image {
    fn build(minor: u64, tight: bool) -> Image {
        let t = for_minor(minor).expect("offset table");
        let mut b = Builder::new(t.clone());
        let none = b.plain_obj("NoneType", Kind::Plain, 16, 0);
        let loops = [
            b.plain_obj("_UnixSelectorEventLoop", Kind::Loop, 80, none),
            b.plain_obj("_UnixSelectorEventLoop", Kind::Loop, 80, none),
        ];
        let spec = |name, int_name, coroutine, coro_type, on_loop, task_type| TaskSpec {
            name,
            int_name,
            coroutine,
            coro_type,
            on_loop,
            task_type,
        };
        let specs = [
            spec(
                "fetch-user",
                None,
                "Worker.fetch",
                "coroutine",
                0,
                "_asyncio.Task",
            ),
            spec("Task-7", Some(7), "main", "coroutine", 1, "_asyncio.Task"),
            spec(
                "café-sync",
                None,
                "Überprüfung.run",
                "coroutine",
                0,
                "TracedTask",
            ),
            spec(
                "загрузка",
                None,
                "Загрузчик.run",
                "generator",
                1,
                "_asyncio.Task",
            ),
            spec(
                "snake_🐍",
                None,
                "serve_🐍",
                "coroutine",
                0,
                "_asyncio.Task",
            ),
            spec(
                "Task-1073741829",
                Some((1 << 30) + 5),
                "main",
                "coroutine",
                1,
                "_asyncio.Task",
            ),
        ];
        let mut tasks = Vec::new();
        for spec in specs {
            let (name, qualname, on) = (spec.name, spec.coroutine, spec.on_loop);
            let q = t.coro.qualname;
            let coro = b.plain_obj(spec.coro_type, Kind::Coro, q + 48, 0);
            let qualname_obj = b.str_obj(qualname);
            let short = qualname.rsplit('.').next().unwrap_or(qualname);
            let name_obj = b.str_obj(short);
            b.put_u64(coro + q as u64 - 8, name_obj); // gi_name
            b.put_u64(coro + q as u64, qualname_obj);
            let name_obj = match spec.int_name {
                Some(n) if t.task.lazy_int_names => b.int_obj(n),
                _ => b.str_obj(name),
            };
            let task = b.plain_obj(spec.task_type, Kind::Task, t.task.task_name + 56, none);
            b.put_u64(task + TASK_LOOP, loops[on]);
            b.put_u64(task + t.task.task_coro as u64, coro);
            b.put_u64(task + t.task.task_name as u64, name_obj);
            tasks.push(TaskImage {
                addr: task,
                loop_: loops[on],
                coro,
                name: name.to_string(),
                coroutine: qualname.to_string(),
            });
        }

        // {loop: task}: three deleted entries (steps that ended) and two running tasks.
        let run = |i: usize| Some((0x51ab_0000 + i as u64, tasks[i].loop_, tasks[i].addr));
        let current = b.dict(&[None, run(0), None, None, run(1)], true, 10);
        let placeholder = b.dict(&[], true, 0);
        let spare_keys = b.alloc(Area::Keys, Kind::Keys, current.len);

        let function = b.plain_obj("function", Kind::Plain, 64, none);
        let decoy = b.plain_obj("function", Kind::Plain, t.task.task_name + 56, 3);
        b.put_u64(decoy + t.task.task_coro as u64, tasks[0].coro);
        b.put_u64(decoy + t.task.task_name as u64, b.strings["fetch-user"]);
        let task_type = b.types["_asyncio.Task"];
        let module_name = b.str_obj("asyncio.tasks");
        let module_dict = b.str_dict(
            &[
                ("__name__", module_name),
                ("__doc__", none),
                ("Task", task_type),
                ("_all_tasks", placeholder.addr),
                ("_current_tasks", current.addr),
                ("_enter_task", function),
                ("_leave_task", function),
                ("current_task", function),
            ],
            false,
        );
        let current_entry = 4;
        let tasks_module = b.module(module_dict.addr);
        let asyncio_dict = b.str_dict(&[("__name__", module_name)], false);
        let other_module = b.module(asyncio_dict.addr);

        // sys.modules: enough modules for two-byte indices, one deleted, one blocked (None).
        let mut names: Vec<String> = ["builtins", "sys", "_frozen_importlib", "encodings"]
            .map(String::from)
            .to_vec();
        names.extend((0..96).map(|i| format!("app.module_{i:03}")));
        names.extend(
            [
                "asyncio",
                "asyncio.events",
                "asyncio.tasks",
                "_asyncio",
                "blocked",
            ]
            .map(String::from),
        );
        let mut slots: Vec<Slot> = Vec::new();
        let mut tasks_entry = 0;
        for name in &names {
            let value = match name.as_str() {
                "asyncio.tasks" => {
                    tasks_entry = slots.len();
                    tasks_module
                }
                "blocked" => none,
                _ => other_module,
            };
            let key = b.str_obj(name);
            slots.push(Some((hash_of(name), key, value)));
            if name == "encodings" {
                slots.push(None);
            }
        }
        let sys_modules = b.dict(&slots, false, 0);
        let runtime = b.alloc(Area::Runtime, Kind::Runtime, 64);
        let modules_ptr = runtime + 16;
        b.put_u64(modules_ptr, sys_modules.addr);

        let types = b.types.clone();
        let strings = b.strings.clone();
        let (mem, objects) = b.finish(tight);
        Image {
            t,
            mem,
            objects,
            types,
            strings,
            modules_ptr,
            sys_modules,
            tasks_entry,
            tasks_module,
            module_dict,
            current_entry,
            current,
            placeholder,
            spare_keys,
            loops,
            tasks,
            none,
            decoy,
        }
    }

    fn reader(&self) -> TaskReader<FakeMemory> {
        TaskReader::new(self.mem.clone(), self.t.clone(), self.modules_ptr as usize)
    }

    fn oracle(&self) -> Oracle {
        self.tasks
            .iter()
            .map(|t| (t.addr, t.name.clone(), t.coroutine.clone()))
            .collect()
    }

    fn running(&self) -> Vec<RunningTask> {
        RUNNING.iter().map(|&i| self.tasks[i].expected()).collect()
    }

    fn generation(&self) -> TaskGeneration {
        TaskGeneration {
            keys: self.current.keys,
            entries: self.current.slots.len() as u64,
        }
    }

    /// Where the keys table's entry count is.
    fn nentries_field(&self, keys: u64) -> u64 {
        keys + if self.t.dict.keys_layout == "3.11" {
            NENTRIES_311 as u64
        } else {
            NENTRIES_38 as u64
        }
    }

    fn ma_used_field(&self, dict: u64) -> u64 {
        dict + self.t.dict.ma_used as u64
    }

    fn ma_keys_field(&self, dict: u64) -> u64 {
        dict + self.t.dict.ma_keys as u64
    }

    fn name_field(&self, task: usize) -> u64 {
        self.tasks[task].addr + self.t.task.task_name as u64
    }

    fn coro_field(&self, task: usize) -> u64 {
        self.tasks[task].addr + self.t.task.task_coro as u64
    }

    fn tp_name_field(&self, type_name: &str) -> u64 {
        self.types[type_name] + self.t.r#type.tp_name as u64
    }
}

/// A task step on `mem`: `_leave_task` of entry `leave` and `_enter_task` of `enter` (a task
/// index) appended, as the target does them; or, with no room left, the resize that moves the
/// live entries to a new keys table at `image.spare_keys` (the old one left as it was: freed
/// memory). Returns the dict as it now is.
fn step(
    image: &Image,
    mem: &mut FakeMemory,
    dict: &DictImage,
    leave: Option<usize>,
    enter: Option<usize>,
) -> DictImage {
    let mut dict = dict.clone();
    let mut used = peek_u64(mem, image.ma_used_field(dict.addr)).unwrap_or(0);
    if let Some(i) = leave {
        mem.poke_u64(dict.key_field(i), 0);
        mem.poke_u64(dict.value_field(i), 0);
        dict.slots[i] = None;
        used = used.wrapping_sub(1);
    }
    if let Some(task) = enter {
        let task = &image.tasks[task];
        let slot = Some((0x51ab_1000 + dict.slots.len() as u64, task.loop_, task.addr));
        if dict.slots.len() < dict.usable {
            let i = dict.slots.len();
            if dict.general {
                mem.poke_u64(dict.key_field(i) - 8, 0x51ab_1000 + i as u64);
            }
            mem.poke_u64(dict.key_field(i), task.loop_);
            mem.poke_u64(dict.value_field(i), task.addr);
            dict.slots.push(slot);
            mem.poke_u64(image.nentries_field(dict.keys), dict.slots.len() as u64);
        } else {
            let mut live: Vec<Slot> = dict.slots.iter().copied().filter(Option::is_some).collect();
            live.push(slot);
            let keys = keys_bytes(&image.t, &live, dict.general, 0);
            assert!(
                keys.bytes.len() <= image.current.len,
                "the spare keys table is big enough"
            );
            let at = if dict.keys == image.spare_keys {
                image.current.keys
            } else {
                image.spare_keys
            };
            mem.poke(at, &keys.bytes);
            mem.poke_u64(image.ma_keys_field(dict.addr), at);
            dict.keys = at;
            dict.entries = at + keys.entries as u64;
            dict.usable = keys.usable;
            dict.slots = live;
        }
        used = used.wrapping_add(1);
    }
    mem.poke_u64(image.ma_used_field(dict.addr), used);
    dict
}

/// The word at `addr`, if mapped (a tear may have unmapped it).
fn peek_u64(mem: &FakeMemory, addr: u64) -> Option<u64> {
    let mut word = [0u8; 8];
    mem.peek(addr, &mut word).then(|| u64::from_ne_bytes(word))
}

/// One call at `now`, with the reads it made.
fn call<M: RemoteMemory>(
    reader: &mut TaskReader<M>,
    now: Instant,
    reads: impl Fn(&TaskReader<M>) -> u64,
) -> (Vec<RunningTask>, Option<TaskGeneration>, u64) {
    let before = reads(reader);
    let (tasks, generation) = reader.running_tasks_at(now);
    (tasks, generation, reads(reader) - before)
}

fn fake_reads(reader: &TaskReader<FakeMemory>) -> u64 {
    reader.mem.reads.get()
}

/// The names of `tasks`.
fn names(tasks: &[RunningTask]) -> Vec<&str> {
    tasks.iter().map(|t| t.name.as_str()).collect()
}

// ------------------------------------------------------------------------------------------
// Well-formed images.

#[test]
fn well_formed_images_read_back_exactly() {
    for minor in MINORS {
        for tight in [false, true] {
            let image = Image::build(minor, tight);
            let mut reader = image.reader();
            let now = Instant::now();
            let (tasks, generation, _) = call(&mut reader, now, fake_reads);
            assert_eq!(tasks, image.running(), "3.{minor} tight {tight}");
            assert_eq!(generation, Some(image.generation()), "3.{minor}");
            // The image's own model against literals, so that a model and a reader wrong in
            // the same way cannot agree.
            assert_eq!(names(&tasks), ["fetch-user", "Task-7"], "3.{minor}");
            assert_eq!(tasks[0].coroutine, "Worker.fetch");
            assert_eq!(generation.unwrap().entries, 5);
            // Nothing changed: the dict's header, keys header and entries, nothing more.
            let (again, generation_again, reads) = call(&mut reader, now, fake_reads);
            assert_eq!((again, generation_again), (tasks, generation), "3.{minor}");
            // One read: the pages of the dict's header, keys header and entries, read ahead.
            assert_eq!(reads, 1, "3.{minor}: an unchanged dict is not read again");
        }
    }
}

#[test]
fn sys_modules_needs_wide_indices_and_str_keys_have_short_entries() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let (sys_modules, module_dict) = (&image.sys_modules, &image.module_dict);
        let index_bytes = sys_modules.entries - sys_modules.keys;
        if image.t.dict.keys_layout == "3.11" {
            assert_eq!(sys_modules.entry_size, 16, "3.{minor}: str keys, no hash");
            assert_eq!(image.current.entry_size, 24, "3.{minor}: loops as keys");
            assert_eq!(index_bytes, 32 + 256 * 2, "3.{minor}: 256 two-byte indices");
        } else {
            assert_eq!(sys_modules.entry_size, 24, "3.{minor}");
            assert_eq!(index_bytes, 40 + 256 * 2, "3.{minor}: 256 two-byte indices");
        }
        assert!(
            module_dict.slots.len() < 10,
            "a small dict with one-byte indices"
        );
        // And a str-keyed sys.modules as a general dict (a non-str key was once inserted).
        let mut mem = image.mem.clone();
        let general = keys_bytes(&image.t, &image.sys_modules.slots, true, 0);
        mem.map(SPARE, general.bytes);
        mem.put_u64(image.ma_keys_field(image.sys_modules.addr), SPARE);
        let mut reader = TaskReader::new(mem, image.t.clone(), image.modules_ptr as usize);
        assert_eq!(reader.running_tasks(&[]).0, image.running(), "3.{minor}");
    }
}

#[test]
fn names_and_coroutines_of_every_width_are_read() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let mut mem = image.mem.clone();
        // Every idle task made to run, under its own loop.
        let mut dict = image.current.clone();
        // (Two tasks filed under each loop: the reader does not mind.)
        for (leave, enter) in [
            (Some(1), LATIN1),
            (Some(4), UCS2),
            (None, UCS4),
            (None, BIG_N),
        ] {
            dict = step(&image, &mut mem, &dict, leave, Some(enter));
        }
        let mut reader = TaskReader::new(mem, image.t.clone(), image.modules_ptr as usize);
        let (tasks, _) = reader.running_tasks(&[]);
        let expected: Vec<RunningTask> = [LATIN1, UCS2, UCS4, BIG_N]
            .iter()
            .map(|&i| image.tasks[i].expected())
            .collect();
        assert_eq!(tasks, expected, "3.{minor}");
        assert_eq!(
            names(&tasks),
            ["café-sync", "загрузка", "snake_🐍", "Task-1073741829"],
            "3.{minor}: Latin-1, UCS-2, UCS-4, and two 30-bit digits on 3.12+"
        );
        assert_eq!(tasks[0].coroutine, "Überprüfung.run", "a subclass of Task");
        assert_eq!(
            tasks[1].coroutine, "Загрузчик.run",
            "a generator-based coroutine"
        );
    }
}

#[test]
fn task_names_held_as_ints_only_where_the_table_says() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let lazy = image.t.task.lazy_int_names;
        let int_type = image.types["int"];
        let mut cases: Vec<(i128, Option<String>)> = vec![
            (0, Some("Task-0".into())),
            (7, Some("Task-7".into())),
            ((1 << 30) - 1, Some(format!("Task-{}", (1 << 30) - 1))),
            ((1 << 60) - 1, Some(format!("Task-{}", (1u64 << 60) - 1))),
            // Three digits: no task count gets there; a garbage int is no name.
            (1 << 60, None),
            (-7, None),
        ];
        if !lazy {
            // Before 3.12 a task's name is always a str: an int there is something else.
            cases.iter_mut().for_each(|case| case.1 = None);
        }
        for (n, expected) in cases {
            let mut mem = image.mem.clone();
            mem.map(SPARE, int_bytes(&image.t, int_type, n));
            mem.put_u64(image.name_field(0), SPARE);
            let mut reader = TaskReader::new(mem, image.t.clone(), image.modules_ptr as usize);
            let (tasks, _) = reader.running_tasks(&[]);
            let first = tasks.iter().find(|t| t.address == image.tasks[0].addr);
            assert_eq!(
                first.map(|t| t.name.clone()),
                expected,
                "3.{minor}: int {n}"
            );
            assert_eq!(
                names(&tasks).last(),
                Some(&"Task-7"),
                "3.{minor}: the other task"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// The generation, the cache and the lookup.

#[test]
fn the_generation_follows_every_task_step() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let mut reader = image.reader();
        let now = Instant::now();
        let (_, first) = reader.running_tasks_at(now);
        let mut seen = vec![first.unwrap()];
        let mut dict = image.current.clone();
        // Loop 0 steps its tasks in turn: each step ends (a delete) and the next one starts
        // (an insert), until the keys table is full and the dict gets a new one, twice.
        let mut running = [0, 1];
        for (n, next) in [
            LATIN1, UCS4, 0, LATIN1, UCS4, 0, LATIN1, UCS4, 0, LATIN1, UCS4,
        ]
        .into_iter()
        .enumerate()
        {
            let live = dict
                .slots
                .iter()
                .position(|s| s.map(|(_, _, v)| v) == Some(image.tasks[running[0]].addr))
                .unwrap();
            reader.mem.put_u64(dict.key_field(live), 0);
            reader.mem.put_u64(dict.value_field(live), 0);
            dict.slots[live] = None;
            let used = reader.mem.get_u64(image.ma_used_field(dict.addr));
            reader.mem.put_u64(image.ma_used_field(dict.addr), used - 1);
            // Between two steps: loop 0 runs no task; the generation stays (a delete appends
            // nothing), but the reader sees the task is gone.
            let (between, generation) = reader.running_tasks_at(now);
            assert_eq!(names(&between), ["Task-7"], "3.{minor} step {n}");
            assert_eq!(generation.as_ref(), seen.last(), "3.{minor} step {n}");
            dict = step(&image, &mut reader.mem, &dict, None, Some(next));
            running[0] = next;
            let (tasks, generation) = reader.running_tasks_at(now);
            let generation = generation.unwrap();
            assert!(
                !seen.contains(&generation),
                "3.{minor} step {n}: {generation:?} again"
            );
            seen.push(generation);
            assert_eq!(generation.keys, dict.keys, "3.{minor}");
            assert_eq!(generation.entries, dict.slots.len() as u64, "3.{minor}");
            let mut expected = vec![image.tasks[1].expected(), image.tasks[next].expected()];
            // Entry order: a resize keeps the live ones in order and appends the new one.
            expected.sort_by_key(|t| {
                dict.slots
                    .iter()
                    .position(|s| s.map(|(_, _, v)| v) == Some(t.address))
            });
            assert_eq!(tasks, expected, "3.{minor} step {n}");
        }
        // Two resizes, to the spare table and back to the first one's memory (as a free list
        // hands out a freed table again).
        let keys_tables: HashSet<u64> = seen.iter().map(|g| g.keys).collect();
        assert_eq!(keys_tables.len(), 2, "3.{minor}: two resizes");
        assert_eq!(dict.keys, image.current.keys, "3.{minor}");

        // No task running anywhere: an empty dict still has its generation.
        reader.mem.put_u64(image.ma_used_field(dict.addr), 0);
        let (tasks, generation) = reader.running_tasks_at(now);
        assert!(tasks.is_empty(), "3.{minor}");
        assert_eq!(generation.as_ref(), seen.last(), "3.{minor}");
    }
}

#[test]
fn the_same_generation_with_other_tasks_is_read_again() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let mut reader = image.reader();
        let now = Instant::now();
        assert_eq!(reader.running_tasks_at(now).0, image.running());
        // A task swapped in place (same keys table, same count): read, not taken from before.
        reader
            .mem
            .put_u64(image.current.value_field(1), image.tasks[UCS4].addr);
        // (The names show it: the page holding the new task was read ahead with the dict.)
        let (tasks, generation, _) = call(&mut reader, now, fake_reads);
        assert_eq!(names(&tasks), ["snake_🐍", "Task-7"], "3.{minor}");
        assert_eq!(generation, Some(image.generation()));
        // Once they are read, a change inside a task is not seen while the dict holds the same
        // tasks (the dict holds them alive, and a task's name or coroutine seldom changes).
        reader.mem.put_u64(image.name_field(1), 0);
        let (tasks, _, reads) = call(&mut reader, now, fake_reads);
        assert_eq!(names(&tasks), ["snake_🐍", "Task-7"], "3.{minor}");
        assert_eq!(reads, 1, "3.{minor}");
        // A task that could not be read when its generation began: the others are reported,
        // and every call tries again.
        reader
            .mem
            .put_u64(image.current.value_field(1), image.tasks[UCS2].addr);
        reader
            .mem
            .put_u64(image.current.key_field(1), image.tasks[UCS2].loop_);
        let (tasks, ..) = call(&mut reader, now, fake_reads);
        assert_eq!(names(&tasks), ["загрузка"], "3.{minor}");
        let (tasks, _, reads) = call(&mut reader, now, fake_reads);
        assert_eq!(names(&tasks), ["загрузка"], "3.{minor}");
        // The steady state is one read (the pages read ahead): more is the unread task tried.
        assert!(
            reads > 1,
            "3.{minor}: a short read is not cached as complete"
        );
    }
}

#[test]
fn the_lookup_is_retried_from_10ms_doubling_to_1s() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let entry = image.sys_modules.value_field(image.tasks_entry);
        let mut reader = image.reader();
        // asyncio not imported yet.
        reader.mem.put_u64(entry - 8, image.strings["asyncio"]);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let (tasks, generation, reads) = call(&mut reader, at(0), fake_reads);
        assert!(tasks.is_empty() && generation.is_none(), "3.{minor}");
        assert!(reads > 1, "3.{minor}: sys.modules walked ({reads} reads)");
        // Looked up again after 10, 20, 40 ... 640 ms, then every second; not in between.
        let lookups = [10, 30, 70, 150, 310, 630, 1270, 2270, 3270];
        let mut looked_up = Vec::new();
        for ms in 1..4000 {
            let (_, _, reads) = call(&mut reader, at(ms), fake_reads);
            if reads > 0 {
                looked_up.push(ms);
            }
        }
        assert_eq!(looked_up, lookups, "3.{minor}");
        // asyncio imported: found at the next lookup, not before.
        reader
            .mem
            .put_u64(entry - 8, image.strings["asyncio.tasks"]);
        assert!(reader.running_tasks_at(at(4269)).1.is_none(), "3.{minor}");
        let (tasks, generation) = reader.running_tasks_at(at(4270));
        assert_eq!(tasks, image.running(), "3.{minor}");
        assert_eq!(generation, Some(image.generation()), "3.{minor}");
    }
}

/// `asyncio/tasks.py` binds `_current_tasks = {}` and rebinds it to the C module's dict at
/// its end: a lookup in between finds a dict no task ever enters. The reader must go on
/// looking until it has read a task from the dict it found — and then stop looking.
#[test]
fn a_placeholder_dict_gives_way_to_the_live_one() {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let current = image.module_dict.value_field(image.current_entry);
        let mut reader = image.reader();
        reader.mem.put_u64(current, image.placeholder.addr);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let (tasks, generation) = reader.running_tasks_at(at(0));
        assert!(tasks.is_empty(), "3.{minor}");
        assert_eq!(
            generation.map(|g| g.keys),
            Some(image.placeholder.keys),
            "3.{minor}"
        );
        // The import finishes.
        reader.mem.put_u64(current, image.current.addr);
        assert_eq!(
            reader.running_tasks_at(at(5)).0,
            [],
            "3.{minor}: not due yet"
        );
        let (tasks, generation) = reader.running_tasks_at(at(10));
        assert_eq!(tasks, image.running(), "3.{minor}");
        assert_eq!(generation, Some(image.generation()), "3.{minor}");
        // A task was read: the dict is the live one, and the lookup is over.
        reader.mem.put_u64(current, image.placeholder.addr);
        for ms in [30, 70, 5000] {
            let (tasks, _, reads) = call(&mut reader, at(ms), fake_reads);
            assert_eq!(tasks, image.running(), "3.{minor}");
            assert_eq!(reads, 1, "3.{minor}: no lookup at {ms} ms");
        }
    }
}

// ------------------------------------------------------------------------------------------
// Torn and garbage state, case by case.

/// What a case leaves readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    /// No task at all.
    Nothing,
    /// Only the task running on loop 1 (`Task-7`).
    Second,
    /// Both tasks, the first with an empty coroutine name.
    NoCoroutine,
    /// Both tasks, as if nothing was wrong.
    Both,
    /// With no type named `str`: on 3.12+ the task whose name is the int N of `Task-N`
    /// (without its coroutine, whose qualname is a str); before 3.12 nothing.
    IntNamed,
}

impl Left {
    fn tasks(self, image: &Image) -> Vec<RunningTask> {
        let both = image.running();
        match self {
            Left::Nothing => vec![],
            Left::Second => vec![both[1].clone()],
            Left::NoCoroutine => {
                let mut first = both[0].clone();
                first.coroutine.clear();
                vec![first, both[1].clone()]
            }
            Left::Both => both,
            Left::IntNamed if image.t.task.lazy_int_names => {
                let mut second = both[1].clone();
                second.coroutine.clear();
                vec![second]
            }
            Left::IntNamed => vec![],
        }
    }
}

/// Which readers a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readers {
    /// A new reader only: the case changes a task, a string or a type, which a reader that
    /// read the image before keeps from then (the dict holds its tasks alive, types live
    /// for good), or the lookup.
    Fresh,
    /// A new reader, and one that read the pristine image first (its dict found, its type
    /// names and tasks cached): the case changes the dict, which every call reads again.
    FreshAndWarm,
}

/// Runs `case` on a fresh image of every version and checks what is left.
fn check_case(what: &str, left: Left, readers: Readers, case: impl Fn(&Image, &mut FakeMemory)) {
    for minor in MINORS {
        let image = Image::build(minor, false);
        let mut runs = vec![(true, image.reader())];
        if readers == Readers::FreshAndWarm {
            let mut warm = image.reader();
            assert_eq!(warm.running_tasks(&[]).0, image.running());
            runs.push((false, warm));
        }
        for (fresh, mut reader) in runs {
            case(&image, &mut reader.mem);
            let (tasks, _, reads) = call(&mut reader, Instant::now(), fake_reads);
            assert_eq!(
                tasks,
                left.tasks(&image),
                "3.{minor}, fresh {fresh}: {what}"
            );
            assert!(
                reads <= MAX_READS_PER_CALL,
                "3.{minor}: {what}: {reads} reads"
            );
        }
    }
}

fn rename(image: &Image, mem: &mut FakeMemory, from: &str, to: &str) {
    let name = mem.get_u64(image.tp_name_field(to));
    mem.put_u64(image.tp_name_field(from), name);
}

#[test]
fn wrong_type_names_give_no_task() {
    // `_current_tasks` is no dict: not even looked into.
    for to in ["dict_keys", "st"] {
        for minor in MINORS {
            let image = Image::build(minor, false);
            let mut reader = image.reader();
            rename(&image, &mut reader.mem, "dict", to);
            assert_eq!(
                reader.running_tasks(&[]),
                (vec![], None),
                "3.{minor}: dict renamed {to}"
            );
        }
    }
    // A name that is no str (nor, on 3.12+, an int).
    let fresh = Readers::Fresh;
    check_case("str renamed string", Left::IntNamed, fresh, |image, mem| {
        rename(image, mem, "str", "string")
    });
    check_case("str and int renamed", Left::Nothing, fresh, |image, mem| {
        rename(image, mem, "str", "string");
        rename(image, mem, "int", "in");
    });
    check_case(
        "a name pointing at a dict",
        Left::Second,
        fresh,
        |image, mem| mem.put_u64(image.name_field(0), image.current.addr),
    );
    check_case(
        "a name pointing at a loop",
        Left::Second,
        fresh,
        |image, mem| mem.put_u64(image.name_field(0), image.loops[0]),
    );
    // A qualname that is no str: the task, without its coroutine.
    check_case(
        "a qualname pointing at a loop",
        Left::NoCoroutine,
        fresh,
        |image, mem| {
            let q = image.t.coro.qualname as u64;
            mem.put_u64(image.tasks[0].coro + q, image.loops[0])
        },
    );
    check_case(
        "a qualname whose type is renamed",
        Left::NoCoroutine,
        fresh,
        |image, mem| {
            let q = image.t.coro.qualname as u64;
            let qualname = mem.get_u64(image.tasks[0].coro + q);
            // A str subclass, say: the same bytes, `ob_type` the `string` type.
            let mut copy = vec![0u8; 128];
            mem.peek(qualname, &mut copy);
            copy[8..16].copy_from_slice(&image.types["string"].to_ne_bytes());
            mem.map(SPARE, copy);
            mem.put_u64(image.tasks[0].coro + q, SPARE);
        },
    );
}

#[test]
fn huge_counts_and_split_tables_give_no_task() {
    let both = Readers::FreshAndWarm;
    let nentries = |value: u64| {
        move |image: &Image, mem: &mut FakeMemory| {
            mem.put_u64(image.nentries_field(image.current.keys), value)
        }
    };
    check_case(
        "dk_nentries MAX_ENTRIES + 1",
        Left::Nothing,
        both,
        nentries(MAX_ENTRIES + 1),
    );
    check_case(
        "dk_nentries u64::MAX",
        Left::Nothing,
        both,
        nentries(u64::MAX),
    );
    check_case(
        "dk_nentries 1 << 63",
        Left::Nothing,
        both,
        nentries(1 << 63),
    );
    check_case(
        "dk_nentries past the table",
        Left::Nothing,
        both,
        nentries(4096),
    );
    check_case(
        "dk_nentries 1: the deleted entry",
        Left::Nothing,
        both,
        nentries(1),
    );
    check_case("split table", Left::Nothing, both, |image, mem| {
        mem.put_u64(
            image.current.addr + image.t.dict.ma_values as u64,
            image.none,
        )
    });
    check_case("no entry used", Left::Nothing, both, |image, mem| {
        mem.put_u64(image.ma_used_field(image.current.addr), 0)
    });
    check_case("ma_used huge", Left::Both, both, |image, mem| {
        mem.put_u64(image.ma_used_field(image.current.addr), u64::MAX)
    });
    for size in [u64::MAX, 1 << 62, 1 << 40, (1 << 32) + 8, 1 << 20, 9] {
        // 3.11+: dk_log2_index_bytes past 40, or 255.
        let log2 = if size == u64::MAX {
            255
        } else {
            size.trailing_zeros().max(41) as u8
        };
        check_case(
            &format!("table size {size:#x}"),
            Left::Nothing,
            both,
            move |image, mem| {
                let keys = image.current.keys;
                if image.t.dict.keys_layout == "3.11" {
                    mem.write(keys + 9, &[log2]);
                } else {
                    mem.put_u64(keys + 8, size);
                }
            },
        );
    }
    // 3.8–3.10: indices that end past the top of the address space (an unchecked `+` would
    // overflow); 3.11+: the largest index table taken, 1 TiB.
    check_case(
        "a table wrapping around",
        Left::Nothing,
        both,
        |image, mem| {
            let keys = image.current.keys;
            if image.t.dict.keys_layout == "3.11" {
                mem.write(keys + 9, &[40]);
            } else {
                mem.put_u64(keys + 8, (u64::MAX - keys) / 8 + 1);
            }
        },
    );
    check_case(
        "sys.modules' dk_nentries MAX_ENTRIES + 1",
        Left::Nothing,
        Readers::Fresh,
        |image, mem| {
            mem.put_u64(
                image.nentries_field(image.sys_modules.keys),
                MAX_ENTRIES + 1,
            )
        },
    );
}

#[test]
fn cycles_give_no_task() {
    let both = Readers::FreshAndWarm;
    check_case(
        "a value that is the dict itself",
        Left::Second,
        both,
        |image, mem| mem.put_u64(image.current.value_field(1), image.current.addr),
    );
    check_case(
        "a key and value that are the dict itself",
        Left::Second,
        both,
        |image, mem| {
            mem.put_u64(image.current.key_field(1), image.current.addr);
            mem.put_u64(image.current.value_field(1), image.current.addr);
        },
    );
    check_case(
        "ma_keys at the dict itself",
        Left::Nothing,
        both,
        |image, mem| mem.put_u64(image.ma_keys_field(image.current.addr), image.current.addr),
    );
    check_case(
        "a task whose name is itself",
        Left::Second,
        Readers::Fresh,
        |image, mem| mem.put_u64(image.name_field(0), image.tasks[0].addr),
    );
    check_case(
        "a task whose coroutine is itself",
        Left::NoCoroutine,
        Readers::Fresh,
        |image, mem| mem.put_u64(image.coro_field(0), image.tasks[0].addr),
    );
    // The lookup walked in a circle: asyncio.tasks's __dict__ is sys.modules, or
    // `_current_tasks` is sys.modules or the module's own dict.
    let fresh = Readers::Fresh;
    check_case(
        "md_dict is sys.modules",
        Left::Nothing,
        fresh,
        |image, mem| {
            mem.put_u64(
                image.tasks_module + image.t.module.md_dict as u64,
                image.sys_modules.addr,
            )
        },
    );
    check_case(
        "_current_tasks is sys.modules",
        Left::Nothing,
        fresh,
        |image, mem| {
            mem.put_u64(
                image.module_dict.value_field(image.current_entry),
                image.sys_modules.addr,
            )
        },
    );
    check_case(
        "_current_tasks is its module's dict",
        Left::Nothing,
        fresh,
        |image, mem| {
            mem.put_u64(
                image.module_dict.value_field(image.current_entry),
                image.module_dict.addr,
            )
        },
    );
}

#[test]
fn a_value_that_is_no_task_of_its_loop_is_skipped() {
    let both = Readers::FreshAndWarm;
    let value = |what: fn(&Image) -> u64| {
        move |image: &Image, mem: &mut FakeMemory| {
            mem.put_u64(image.current.value_field(1), what(image))
        }
    };
    check_case("the loop", Left::Second, both, value(|i| i.loops[0]));
    check_case(
        "a coroutine",
        Left::Second,
        both,
        value(|i| i.tasks[0].coro),
    );
    check_case("a module", Left::Second, both, value(|i| i.tasks_module));
    check_case(
        "a str",
        Left::Second,
        both,
        value(|i| i.strings["fetch-user"]),
    );
    check_case(
        "sys.modules",
        Left::Second,
        both,
        value(|i| i.sys_modules.addr),
    );
    check_case(
        "8 bytes into the task",
        Left::Second,
        both,
        value(|i| i.tasks[0].addr + 8),
    );
    check_case(
        "8 bytes before the task",
        Left::Second,
        both,
        value(|i| i.tasks[0].addr - 8),
    );
    check_case(
        "a task of the other loop",
        Left::Second,
        both,
        value(|i| i.tasks[UCS2].addr),
    );
    check_case(
        "a task-shaped object",
        Left::Second,
        both,
        value(|i| i.decoy),
    );
    // (A warm reader keeps what it read of a task still in the dict: fresh only.)
    check_case(
        "a task filed under a task",
        Left::Second,
        Readers::Fresh,
        |image, mem| mem.put_u64(image.current.key_field(1), image.tasks[1].addr),
    );
    // The keys table freed and reused by one of str keys and module values.
    check_case(
        "the keys table of sys.modules",
        Left::Nothing,
        both,
        |image, mem| {
            mem.put_u64(
                image.ma_keys_field(image.current.addr),
                image.sys_modules.keys,
            );
        },
    );
    check_case(
        "the keys table of the module's dict",
        Left::Nothing,
        both,
        |image, mem| {
            mem.put_u64(
                image.ma_keys_field(image.current.addr),
                image.module_dict.keys,
            );
        },
    );
}

#[test]
fn strings_that_are_no_compact_strings_give_no_name() {
    // Each case on the first task's name, "fetch-user" (compact ASCII).
    type Case = (&'static str, fn(&Image) -> (u64, Vec<u8>));
    fn state(image: &Image, bits: u32) -> (u64, Vec<u8>) {
        let at = image.strings["fetch-user"] + image.t.unicode.state as u64;
        (at, bits.to_ne_bytes().to_vec())
    }
    let cases: [Case; 7] = [
        ("kind 3", |i| {
            state(i, STATE_INTERNED | 3 << 2 | STATE_COMPACT)
        }),
        ("kind 0 (a legacy string)", |i| {
            state(i, STATE_INTERNED | STATE_COMPACT | STATE_ASCII)
        }),
        ("not compact", |i| {
            state(i, STATE_INTERNED | 1 << 2 | STATE_ASCII)
        }),
        ("flagged ASCII, 2 bytes a character", |i| {
            state(i, STATE_INTERNED | 2 << 2 | STATE_COMPACT | STATE_ASCII)
        }),
        ("a byte past 0x7f in an ASCII string", |i| {
            let at = i.strings["fetch-user"] + i.t.unicode.ascii_data as u64 + 3;
            (at, vec![0xe9])
        }),
        ("longer than MAX_STR", |i| {
            let at = i.strings["fetch-user"] + i.t.unicode.length as u64;
            (at, (MAX_STR + 1).to_ne_bytes().to_vec())
        }),
        ("longer than the address space", |i| {
            let at = i.strings["fetch-user"] + i.t.unicode.length as u64;
            (at, (u64::MAX / 2).to_ne_bytes().to_vec())
        }),
    ];
    for (what, case) in cases {
        check_case(what, Left::Second, Readers::Fresh, move |image, mem| {
            let (at, bytes) = case(image);
            mem.write(at, &bytes);
        });
    }
    // Wide strings holding no character: the task keeps its name, not its coroutine.
    for (what, task, text, bad) in [
        (
            "a lone surrogate in UCS-2",
            UCS2,
            "Загрузчик.run",
            0xd800u32,
        ),
        ("past U+10FFFF in UCS-4", UCS4, "serve_🐍", 0x11_0000),
    ] {
        for minor in MINORS {
            let image = Image::build(minor, false);
            let u = &image.t.unicode;
            let mut mem = image.mem.clone();
            let width = if task == UCS4 { 4 } else { 2 };
            mem.write(
                image.strings[text] + u.compact_data as u64,
                &bad.to_ne_bytes()[..width],
            );
            mem.put_u64(image.current.value_field(1), image.tasks[task].addr);
            mem.put_u64(image.current.key_field(1), image.tasks[task].loop_);
            let mut reader = TaskReader::new(mem, image.t.clone(), image.modules_ptr as usize);
            let (tasks, _) = reader.running_tasks(&[]);
            assert_eq!(tasks[0].name, image.tasks[task].name, "3.{minor}: {what}");
            assert_eq!(tasks[0].coroutine, "", "3.{minor}: {what}");
        }
    }
}

#[test]
fn unmapped_pointers_give_no_task() {
    const UNMAPPED: u64 = 0x6000_0000_0000;
    let pointer = |field: fn(&Image) -> u64| {
        move |image: &Image, mem: &mut FakeMemory| mem.put_u64(field(image), UNMAPPED)
    };
    let (both, fresh) = (Readers::FreshAndWarm, Readers::Fresh);
    check_case(
        "the task",
        Left::Second,
        both,
        pointer(|i| i.current.value_field(1)),
    );
    check_case(
        "the keys table",
        Left::Nothing,
        both,
        pointer(|i| i.ma_keys_field(i.current.addr)),
    );
    check_case(
        "the task's name",
        Left::Second,
        fresh,
        pointer(|i| i.name_field(0)),
    );
    check_case(
        "the task's coroutine",
        Left::NoCoroutine,
        fresh,
        pointer(|i| i.coro_field(0)),
    );
    check_case(
        "the str type's name",
        Left::IntNamed,
        fresh,
        pointer(|i| i.tp_name_field("str")),
    );
    check_case(
        "sys.modules",
        Left::Nothing,
        fresh,
        pointer(|i| i.modules_ptr),
    );
    check_case(
        "asyncio.tasks",
        Left::Nothing,
        fresh,
        pointer(|i| i.sys_modules.value_field(i.tasks_entry)),
    );
    check_case(
        "md_dict",
        Left::Nothing,
        fresh,
        pointer(|i| i.tasks_module + i.t.module.md_dict as u64),
    );
    // A region gone, with its objects. (A warm reader needs only the heap and the keys.)
    for (area, warm_left) in [
        (Area::Heap, Left::Nothing),
        (Area::Keys, Left::Nothing),
        (Area::Runtime, Left::Both),
        (Area::Types, Left::Both),
        (Area::Rodata, Left::Both),
    ] {
        let what = format!("{area:?} unmapped");
        check_case(&what, Left::Nothing, fresh, move |_, mem| {
            mem.unmap(area.base())
        });
        for minor in MINORS {
            let image = Image::build(minor, false);
            let mut warm = image.reader();
            warm.running_tasks(&[]);
            warm.mem.unmap(area.base());
            assert_eq!(
                warm.running_tasks(&[]).0,
                warm_left.tasks(&image),
                "3.{minor}: {what}"
            );
        }
    }
}

/// A type's name and a short ASCII name can end their mappings (`"str\0"` the last bytes of
/// a read-only segment, a task name the last bytes of an arena): the reader must not read
/// past what it needs of either.
#[test]
fn names_at_the_end_of_a_mapping_are_read() {
    for minor in MINORS {
        let image = Image::build(minor, true);
        let u = &image.t.unicode;
        let mut mem = image.mem.clone();
        // "str\0" alone in a mapping of its size, the str type's name.
        mem.map(SPARE, b"str\0".to_vec());
        mem.put_u64(image.tp_name_field("str"), SPARE);
        // "dict\0" likewise.
        mem.map(SPARE + 0x1000, b"dict\0".to_vec());
        mem.put_u64(image.tp_name_field("dict"), SPARE + 0x1000);
        // "io", alone in a mapping of exactly its size: ascii_data + 3 bytes.
        let name = str_bytes(&image.t, image.types["str"], "io");
        assert_eq!(name.len(), u.ascii_data + 3);
        mem.map(SPARE + 0x2000, name);
        mem.put_u64(image.name_field(0), SPARE + 0x2000);
        let mut reader = TaskReader::new(mem, image.t.clone(), image.modules_ptr as usize);
        let (tasks, _) = reader.running_tasks(&[]);
        assert_eq!(names(&tasks), ["io", "Task-7"], "3.{minor}");
    }
}

/// Words at the very top of the address space. Each must give no task (or the other one), in
/// release builds and in debug builds alike (with overflow checks on, an unchecked `+` or `*`
/// on such a word would panic).
#[test]
fn extreme_words_never_panic() {
    let mut panics = Vec::new();
    for minor in MINORS {
        let image = Image::build(minor, false);
        let q = image.t.coro.qualname as u64;
        for value in [
            u64::MAX,
            u64::MAX - 7,
            u64::MAX - 40,
            i64::MAX as u64,
            1 << 63,
        ] {
            let cases: [(&str, u64); 9] = [
                ("modules pointer", image.modules_ptr),
                (
                    "sys.modules' keys",
                    image.ma_keys_field(image.sys_modules.addr),
                ),
                (
                    "md_dict",
                    image.tasks_module + image.t.module.md_dict as u64,
                ),
                ("the dict's keys", image.ma_keys_field(image.current.addr)),
                ("a task", image.current.value_field(1)),
                ("a task's coroutine", image.coro_field(0)),
                ("a task's name", image.name_field(0)),
                ("a task's type", image.tasks[0].addr + OB_TYPE),
                ("a coroutine's qualname", image.tasks[0].coro + q),
            ];
            for (what, at) in cases {
                let mut reader = image.reader();
                reader.mem.put_u64(at, value);
                let read = panic::catch_unwind(AssertUnwindSafe(|| reader.running_tasks(&[]).0));
                match read {
                    Err(_) => panics.push(format!("3.{minor}: {what} := {value:#x}")),
                    Ok(tasks) => {
                        let oracle = image.oracle();
                        for task in tasks {
                            let key = (task.address, task.name.clone(), task.coroutine.clone());
                            let partial = task.coroutine.is_empty()
                                && oracle
                                    .iter()
                                    .any(|o| (o.0, &o.1) == (task.address, &task.name));
                            assert!(
                                oracle.contains(&key) || partial,
                                "3.{minor}: {what}: {task:?}"
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(panics.is_empty(), "the reader panicked on: {panics:#?}");
}

// ------------------------------------------------------------------------------------------
// Bounds.

/// The largest dict read, `MAX_ENTRIES` entries, is read whole within the read budget; one
/// entry more gives no task.
#[test]
fn the_largest_dict_read_is_bounded() {
    for minor in [8, 12] {
        let image = Image::build(minor, false);
        let task = &image.tasks[0];
        for count in [MAX_ENTRIES, MAX_ENTRIES + 1] {
            let slots: Vec<Slot> = (0..count)
                .map(|i| Some((i, task.loop_, task.addr)))
                .collect();
            let keys = keys_bytes(&image.t, &slots, true, 0);
            let mut mem = image.mem.clone();
            mem.map(SPARE, keys.bytes);
            mem.put_u64(image.ma_keys_field(image.current.addr), SPARE);
            let mut reader = TaskReader::new(mem, image.t.clone(), image.modules_ptr as usize);
            let (tasks, generation, reads) = call(&mut reader, Instant::now(), fake_reads);
            assert_eq!(generation.map(|g| g.entries), Some(count), "3.{minor}");
            assert!(reads <= MAX_READS_PER_CALL, "3.{minor}: {reads} reads");
            if count == MAX_ENTRIES {
                assert_eq!(tasks.len() as u64, count, "3.{minor}");
                assert!(tasks.iter().all(|t| *t == task.expected()));
            } else {
                assert!(tasks.is_empty(), "3.{minor}: past MAX_ENTRIES");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Fuzzing.

/// What a fuzzed read may return.
enum Expect<'a> {
    /// Only the image's tasks, each with its own name and coroutine (or an empty coroutine,
    /// where the tear left its qualname unreadable: no str type, or its memory unmapped).
    Real(&'a Oracle),
    /// Anything within the bounds.
    Bounded,
    /// No task and no generation: no type in memory is named `dict`, `str` or `int`.
    Nothing,
}

impl Expect<'_> {
    fn check(
        &self,
        tasks: &[RunningTask],
        generation: Option<TaskGeneration>,
    ) -> Result<(), String> {
        if tasks.len() as u64 > MAX_ENTRIES {
            return Err(format!("{} tasks", tasks.len()));
        }
        for task in tasks {
            match self {
                Expect::Real(oracle) => {
                    let real = |coroutine: &str| {
                        oracle.contains(&(task.address, task.name.clone(), coroutine.into()))
                    };
                    let unread = task.coroutine.is_empty()
                        && oracle
                            .iter()
                            .any(|o| (o.0, &o.1) == (task.address, &task.name));
                    if !real(&task.coroutine) && !unread {
                        return Err(format!("{task:?}: no task of the image"));
                    }
                }
                Expect::Bounded => {
                    let long = |s: &str| s.chars().count() > MAX_STR as usize;
                    if long(&task.name) || long(&task.coroutine) {
                        return Err(format!("an overlong name in {task:?}"));
                    }
                }
                Expect::Nothing => return Err(format!("{task:?} out of memory with no types")),
            }
        }
        if matches!(self, Expect::Nothing) && generation.is_some() {
            return Err(format!("a generation {generation:?} of no dict"));
        }
        Ok(())
    }
}

/// How the fuzzed calls came out: proof that the fuzzing gets past the first checks.
#[derive(Debug, Default)]
struct Tally {
    /// Calls that read at least one task.
    tasks: u64,
    /// Calls that read the dict but no task.
    empty: u64,
    /// Calls that found no dict to read.
    none: u64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.tasks + self.empty + self.none
    }

    fn count(&mut self, tasks: &[RunningTask], generation: Option<TaskGeneration>) {
        match (tasks.is_empty(), generation) {
            (false, _) => self.tasks += 1,
            (true, Some(_)) => self.empty += 1,
            (true, None) => self.none += 1,
        }
    }
}

/// Ticks of what the sampler does — a call a tick, as the lookup retries come due — each
/// checked against `expect` and the read budget.
fn exercise<M: RemoteMemory>(
    reader: &mut TaskReader<M>,
    start: Instant,
    reads: impl Fn(&TaskReader<M>) -> u64,
    expect: &Expect,
    tally: &mut Tally,
) -> Result<(), String> {
    for ms in [0, 1, 10, 31] {
        let (tasks, generation, used) = call(reader, start + Duration::from_millis(ms), &reads);
        if used > MAX_READS_PER_CALL {
            return Err(format!("{used} reads in one call"));
        }
        tally.count(&tasks, generation);
        expect.check(&tasks, generation)?;
    }
    if reader.type_names.len() > MAX_TYPES {
        return Err(format!("{} type names cached", reader.type_names.len()));
    }
    Ok(())
}

/// A value a torn word may hold: zero, extremes, small numbers, real or interior or
/// just-unmapped addresses, the image's loops, tasks and dicts.
fn nasty_word(image: &Image, rng: &mut Rng) -> u64 {
    let obj = *rng.pick(&image.objects);
    match rng.below(12) {
        0 => 0,
        1 => rng.next_u64(),
        2 => *rng.pick(&[
            1,
            u64::MAX,
            u64::MAX - 7,
            i64::MAX as u64,
            1 << 63,
            0xffff_ffff,
        ]),
        3 => rng.below(300) as u64,
        4 | 5 => obj.addr,
        6 => obj.addr + rng.below(obj.len.max(1)) as u64,
        7 => {
            let (start, len) = *rng.pick(&image.mem.spans());
            start + len as u64 + rng.below(16) as u64
        }
        8 => *rng.pick(&image.loops),
        9 if rng.chance(25) => image.decoy,
        9 => rng.pick(&image.tasks).addr,
        10 => *rng.pick(&[
            image.current.addr,
            image.sys_modules.addr,
            image.module_dict.addr,
            image.placeholder.addr,
        ]),
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

/// Tears the image in one way a running target can be caught half-way through changing it
/// (its tasks, coroutines and strings left alone: what the reader can be held to is a real
/// task or none), and says how.
fn tear(image: &mut Image, rng: &mut Rng) -> String {
    let value = nasty_word(image, rng);
    let dicts = [
        image.current.clone(),
        image.sys_modules.clone(),
        image.module_dict.clone(),
    ];
    let dict = rng.pick(&dicts).clone();
    let current = image.current.clone();
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
            let i = rng.below(current.usable);
            image.mem.poke_u64(current.value_field(i), value);
            format!("value {i} := {value:#x}")
        }
        4 => {
            let i = rng.below(current.usable);
            image.mem.poke_u64(current.key_field(i), value);
            format!("key {i} := {value:#x}")
        }
        5 => {
            // A keys header field: the entry count, the size, the index width, the kind.
            let keys = dict.keys;
            let at = match rng.below(4) {
                0 => image.nentries_field(keys),
                _ => keys + 8,
            };
            let huge = *rng.pick(&[
                u64::MAX,
                1 << 62,
                MAX_ENTRIES + 1,
                MAX_ENTRIES,
                4096,
                0,
                1,
                255,
            ]);
            let v = if rng.chance(50) { huge } else { value };
            image.mem.poke_u64(at, v);
            if rng.chance(50) {
                image
                    .mem
                    .poke(keys + 8 + rng.below(3) as u64, &[rng.next_u64() as u8]);
            }
            format!("keys header {at:#x} := {v:#x}")
        }
        6 => {
            // ma_keys at another dict's keys table (one freed and reused), or anywhere.
            let to = match rng.below(3) {
                0 => rng.pick(&dicts).keys,
                1 => image.spare_keys,
                _ => value,
            };
            image.mem.poke_u64(image.ma_keys_field(dict.addr), to);
            format!("ma_keys of {:#x} := {to:#x}", dict.addr)
        }
        7 => {
            let (at, v) = match rng.below(3) {
                0 => (
                    image.ma_used_field(dict.addr),
                    *rng.pick(&[0, 1, u64::MAX, value]),
                ),
                _ => (dict.addr + image.t.dict.ma_values as u64, value),
            };
            image.mem.poke_u64(at, v);
            format!("dict {:#x} field {at:#x} := {v:#x}", dict.addr)
        }
        8 => {
            let to = match rng.below(3) {
                0 => *rng.pick(&[
                    image.sys_modules.addr,
                    image.module_dict.addr,
                    image.placeholder.addr,
                ]),
                _ => value,
            };
            image
                .mem
                .poke_u64(image.module_dict.value_field(image.current_entry), to);
            format!("_current_tasks := {to:#x}")
        }
        9 => {
            let at = match rng.below(2) {
                0 => image.sys_modules.value_field(image.tasks_entry),
                _ => image.tasks_module + image.t.module.md_dict as u64,
            };
            image.mem.poke_u64(at, value);
            format!("lookup pointer {at:#x} := {value:#x}")
        }
        10 => {
            image.mem.poke_u64(image.modules_ptr, value);
            format!("modules pointer := {value:#x}")
        }
        11 => {
            let addr = rng.pick(&image.objects).addr;
            image.mem.unmap(addr);
            format!("unmapped the region of {addr:#x}")
        }
        12 => {
            // A type renamed to a name the reader does not take (a type freed and reused).
            let from = *rng.pick(&["dict", "str", "int", "module", "_asyncio.Task", "coroutine"]);
            let to = *rng.pick(&["dict_keys", "string", "in", "st", "NoneType"]);
            if let Some(name) = peek_u64(&image.mem, image.tp_name_field(to)) {
                image.mem.poke_u64(image.tp_name_field(from), name);
            }
            format!("{from} renamed {to}")
        }
        13 => {
            // Task steps, as the target takes them (a new keys table when one is full).
            let mut mem = image.mem.clone();
            let mut d = image.current.clone();
            for _ in 0..1 + rng.below(8) {
                let live: Vec<usize> = (0..d.slots.len())
                    .filter(|&i| d.slots[i].is_some())
                    .collect();
                let leave = (!live.is_empty() && rng.chance(70)).then(|| *rng.pick(&live));
                let enter = rng.chance(70).then(|| rng.below(image.tasks.len()));
                if peek_u64(&mem, image.ma_keys_field(d.addr)) != Some(d.keys) {
                    break;
                }
                d = step(image, &mut mem, &d, leave, enter);
            }
            image.mem = mem;
            "task steps".into()
        }
        14 => {
            // The keys table moved by a resize, and the old one reused by another dict (the
            // bytes of sys.modules' table over it) or scribbled on.
            let mut mem = image.mem.clone();
            let d = step(image, &mut mem, &image.current.clone(), None, None);
            let live: Vec<Slot> = d.slots.iter().copied().filter(Option::is_some).collect();
            let keys = keys_bytes(&image.t, &live, true, 0);
            mem.poke(image.spare_keys, &keys.bytes);
            mem.poke_u64(image.ma_keys_field(d.addr), image.spare_keys);
            let old = image.current.keys;
            let mut other = vec![0u8; image.current.len];
            if rng.chance(50) && mem.peek(image.sys_modules.keys, &mut other) {
                mem.poke(old, &other);
            } else {
                for word in (old..old + image.current.len as u64 - 7).step_by(8) {
                    if rng.chance(30) {
                        let v = nasty_word(image, rng);
                        mem.poke_u64(word, v);
                    }
                }
            }
            image.mem = mem;
            "resized, the old table reused".into()
        }
        _ => {
            // A cycle: a dict's value or keys pointing back at a dict.
            let to = rng.pick(&dicts).addr;
            let at = match rng.below(3) {
                0 => current.value_field(rng.below(current.slots.len())),
                1 => image.ma_keys_field(dict.addr),
                _ => image.tasks_module + image.t.module.md_dict as u64,
            };
            image.mem.poke_u64(at, to);
            format!("cycle {at:#x} := {to:#x}")
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
fn fuzz_torn_images_give_real_tasks_or_none() {
    let mut tally = Tally::default();
    for (minor, pristine, oracle) in pristine() {
        fuzz(minor, TORN_IMAGES, |seed| {
            let mut rng = Rng::new(seed);
            // Half the cases torn after a clean read (the dict found, type names cached).
            let warm = rng.chance(50);
            let mut image = pristine.clone();
            let mut reader = image.reader();
            let start = Instant::now();
            if warm {
                reader.running_tasks_at(start);
            }
            let tears: Vec<String> = (0..1 + rng.below(4))
                .map(|_| tear(&mut image, &mut rng))
                .collect();
            *reader.mem = image.mem.clone();
            exercise(
                &mut reader,
                start,
                fake_reads,
                &Expect::Real(&oracle),
                &mut tally,
            )
            .map_err(|why| format!("{why} after {tears:?} (warm {warm})"))
        });
    }
    eprintln!("torn images: {tally:?}");
    let total = tally.total();
    assert!(
        tally.tasks > total / 4 && tally.empty > total / 20 && tally.none > total / 20,
        "{tally:?}"
    );
}

#[test]
fn fuzz_images_with_random_bytes_anywhere_stay_bounded() {
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
            // Now and then a new lookup too.
            if rng.chance(20) {
                reader = pristine.reader();
            }
            *reader.mem = image.mem;
            tick += 1;
            exercise(
                &mut reader,
                epoch + Duration::from_secs(tick),
                fake_reads,
                &Expect::Bounded,
                &mut tally,
            )
        });
    }
    eprintln!("flipped bytes: {tally:?}");
    let total = tally.total();
    assert!(
        tally.tasks > total / 4 && tally.empty + tally.none > total / 20,
        "{tally:?}"
    );
}

/// How much sense garbage makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Garble {
    /// Every word random.
    Random,
    /// Mostly pointers into the memory itself and small numbers; no type object anywhere.
    SelfPointing,
    /// A whole image, a word in sixteen of its heap, keys tables and runtime scrambled (as
    /// `SelfPointing`, with pointers at the image's objects too).
    Planted,
}

/// Garbage memory for version `minor`, and where its `modules` pointer is.
fn garbage(minor: u64, rng: &mut Rng, garble: Garble) -> (FakeMemory, u64) {
    let image = Image::build(minor, false);
    let mut mem = image.mem.clone();
    let anchors: Vec<u64> = image.objects.iter().map(|o| o.addr).collect();
    if garble != Garble::Planted {
        // Only the heap, keys and runtime areas, full of garbage: no type object mapped.
        mem.unmap(Area::Rodata.base());
        mem.unmap(Area::Types.base());
    }
    let spans = mem.spans();
    let word = |rng: &mut Rng| -> u64 {
        if garble == Garble::Random {
            return rng.next_u64();
        }
        let (start, len) = *rng.pick(&spans);
        match rng.below(10) {
            0 | 1 => start + (rng.below(len) as u64 & !7),
            2 | 3 if garble == Garble::Planted => *rng.pick(&anchors),
            4 => start + rng.below(len) as u64,
            5 | 6 => rng.below(300) as u64,
            7 => 0,
            _ => rng.next_u64(),
        }
    };
    for area in [Area::Heap, Area::Keys, Area::Runtime] {
        let len = mem.regions[&area.base()].len() as u64;
        for at in (area.base()..area.base() + len - 7).step_by(8) {
            let scramble = match garble {
                Garble::Planted => rng.chance(6) && at != image.modules_ptr,
                _ => true,
            };
            if scramble {
                let value = word(rng);
                mem.put_u64(at, value);
            }
        }
    }
    let modules_ptr = match garble {
        Garble::Planted => image.modules_ptr,
        _ => Area::Runtime.base() + 8 * rng.below(8) as u64,
    };
    (mem, modules_ptr)
}

#[test]
fn fuzz_random_memory_never_panics() {
    let garbles = [Garble::Random, Garble::SelfPointing, Garble::Planted];
    let mut tallies: [Tally; 3] = Default::default();
    for minor in MINORS {
        let t = for_minor(minor).unwrap();
        fuzz(minor, RANDOM_MEMORIES, |seed| {
            let mut rng = Rng::new(seed);
            let kind = seed as usize % garbles.len();
            let (mem, modules_ptr) = garbage(minor, &mut rng, garbles[kind]);
            let mut reader = TaskReader::new(mem, t.clone(), modules_ptr as usize);
            let expect = match garbles[kind] {
                Garble::Planted => Expect::Bounded,
                _ => Expect::Nothing,
            };
            exercise(
                &mut reader,
                Instant::now(),
                fake_reads,
                &expect,
                &mut tallies[kind],
            )
        });
    }
    eprintln!("random memory: {tallies:?}");
    let [random, self_pointing, planted] = &tallies;
    assert!(random.total() > 0 && self_pointing.total() > 0);
    assert!(planted.tasks > 0 && planted.none > 0, "{planted:?}");
}

#[test]
fn fuzz_memory_changing_mid_read_gives_real_tasks_or_none() {
    let mut tally = Tally::default();
    for (minor, pristine, oracle) in pristine() {
        fuzz(minor, MID_READ_CHANGES, |seed| {
            let mut rng = Rng::new(seed);
            let warm = rng.chance(50);
            // Within the reads of a call: a lookup walks sys.modules (a few hundred reads),
            // a warm call reads a dozen.
            let reads = if warm { 24 } else { 400 };
            let mut torn = pristine.clone();
            let mut schedule = Vec::new();
            let mut tears = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let before = torn.mem.clone();
                tears.push(tear(&mut torn, &mut rng));
                let at = rng.below(reads) as u64;
                // The words of one change land a read or two apart: torn within an object.
                for change in before.diff(&torn.mem) {
                    schedule.push((at + rng.below(3) as u64, change));
                }
            }
            schedule.sort_by_key(|&(at, _)| at);
            let memory = ShiftingMemory {
                mem: RefCell::new(pristine.mem.clone()),
                reads: Cell::new(0),
                schedule: RefCell::new(Vec::new()),
            };
            let mut reader =
                TaskReader::new(memory, pristine.t.clone(), pristine.modules_ptr as usize);
            let start = Instant::now();
            if warm && reader.running_tasks_at(start).0 != pristine.running() {
                return Err("the clean read differs".into());
            }
            let offset = reader.mem.reads.get();
            *reader.mem.schedule.borrow_mut() = schedule
                .into_iter()
                .map(|(at, c)| (at + offset, c))
                .collect();
            let reads = |r: &TaskReader<ShiftingMemory>| r.mem.reads.get();
            exercise(
                &mut reader,
                start,
                reads,
                &Expect::Real(&oracle),
                &mut tally,
            )
            .map_err(|why| format!("{why} after {tears:?} (warm {warm})"))
        });
    }
    eprintln!("changing mid-read: {tally:?}");
    let total = tally.total();
    assert!(
        tally.tasks > total / 4 && tally.empty + tally.none > total / 20,
        "{tally:?}"
    );
}

// ------------------------------------------------------------------------------------------
// 3.14+: running tasks from thread states, at offsets `_asyncio`'s `.AsyncioDebug` gives.

/// `.AsyncioDebug` as Debian's 3.14.10 has it (python_offsets/debug-offsets-3.13-3.15.md).
fn asyncio_debug_314() -> AsyncioDebug {
    let words: [u64; 13] = [
        168, 136, 96, 108, 109, 128, 152, 225_864, 10_880, 936, 864, 872, 880,
    ];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    AsyncioDebug::parse(&bytes, 225_864).expect("Debian's section")
}

/// Two thread states: the first steps task `order-7` (coroutine `handle_order`) on its loop,
/// the second runs no task. Returns the memory, the thread states and the task.
fn thread_state_image(a: AsyncioDebug) -> (FakeMemory, [u64; 2], u64) {
    use crate::remote::debug_offsets::{tests::debian_table, DebugOffsets};
    let t = DebugOffsets::parse(debian_table(14, 10))
        .unwrap()
        .reader_offsets();
    let mut b = Builder::new(t.clone());
    let event_loop = b.plain_obj("module", Kind::Loop, 64, 0);
    let coro = b.plain_obj("module", Kind::Coro, 64, 0);
    let qualname = b.str_obj("handle_order");
    b.put_u64(coro + t.coro.qualname as u64, qualname);
    let task = b.plain_obj("module", Kind::Task, 168, 0);
    b.put_u64(task + TASK_LOOP, event_loop);
    b.put_u64(task + a.task_coro, coro);
    let name = b.str_obj("order-7");
    b.put_u64(task + a.task_name, name);
    let busy = b.alloc(Area::Runtime, Kind::Runtime, 936);
    b.put_u64(busy + a.running_loop, event_loop);
    b.put_u64(busy + a.running_task, task);
    let idle = b.alloc(Area::Runtime, Kind::Runtime, 936);
    b.put_u64(idle + a.running_loop, event_loop);
    let (mem, _) = b.finish(false);
    (mem, [busy, idle], task)
}

#[test]
fn the_314_running_task_is_read_from_the_thread_state() {
    let a = asyncio_debug_314();
    let (mem, [busy, idle], task) = thread_state_image(a);
    let t = for_minor(13).unwrap();
    let mut reader = TaskReader::new(mem.clone(), t, 0).with_asyncio_debug(0, a);
    let (tasks, generation) = reader.running_tasks(&[busy, idle]);
    assert_eq!(generation, None, "3.14 has no running-task table");
    assert_eq!(
        tasks,
        vec![RunningTask {
            address: task,
            name: "order-7".into(),
            coroutine: "handle_order".into(),
        }]
    );
    // The second tick reuses what it read while the task's fields are unchanged.
    let before = fake_reads(&reader);
    assert_eq!(reader.running_tasks(&[busy, idle]).0.len(), 1);
    assert!(
        fake_reads(&reader) - before <= 6,
        "a blocked loop costs a few reads"
    );
    // A task that does not name the thread's loop as its own is no task.
    let mut other = mem.clone();
    other.write(task + TASK_LOOP, &0x1234u64.to_ne_bytes());
    let mut reader = TaskReader::new(other, for_minor(13).unwrap(), 0).with_asyncio_debug(0, a);
    assert!(reader.running_tasks(&[busy]).0.is_empty());
}

#[test]
fn asyncio_debug_sections_are_checked() {
    let good: Vec<u8> = [
        168u64, 136, 96, 108, 109, 128, 152, 225_864, 10_880, 936, 864, 872, 880,
    ]
    .iter()
    .flat_map(|w| w.to_ne_bytes())
    .collect();
    assert!(AsyncioDebug::parse(&good, 225_864).is_some());
    // Another interpreter's size (not this build's section), a cut section, offsets outside
    // their structs: refused.
    assert!(AsyncioDebug::parse(&good, 225_840).is_none());
    assert!(AsyncioDebug::parse(&good[..96], 225_864).is_none());
    for (word, value) in [(1usize, 4096u64), (11, 1 << 20), (0, u64::MAX)] {
        let mut bad = good.clone();
        bad[word * 8..word * 8 + 8].copy_from_slice(&value.to_ne_bytes());
        assert!(AsyncioDebug::parse(&bad, 225_864).is_none(), "word {word}");
    }
}

#[test]
fn fuzz_314_thread_states_never_panic_and_stay_bounded() {
    let a = asyncio_debug_314();
    let (mem, tstates, _) = thread_state_image(a);
    fuzz(14, 300, |seed| {
        let mut rng = Rng::new(seed);
        let mut torn = mem.clone();
        for _ in 0..8 {
            let spans = torn.spans();
            let (start, len) = spans[rng.below(spans.len())];
            let at = start + rng.below(len - 8) as u64;
            torn.write(at, &rng.next_u64().to_ne_bytes());
        }
        let mut reader = TaskReader::new(torn, for_minor(13).unwrap(), 0).with_asyncio_debug(0, a);
        let (tasks, _) = reader.running_tasks(&tstates);
        let reads = fake_reads(&reader);
        if tasks.len() > 2 || reads >= 200 {
            return Err(format!("{} tasks in {reads} reads", tasks.len()));
        }
        Ok(())
    });
}
