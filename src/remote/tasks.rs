//! Which asyncio task is running right now, read from the target without running any code in
//! it: `sys.modules["asyncio.tasks"]._current_tasks` is the C module's `{loop: task}` dict that
//! every task step updates (CPython 3.8–3.13, uvloop included). From each task we read its
//! name (`create_task(name=...)`, or `Task-N`) and its coroutine's qualified name, using the
//! offsets in `python_offsets/`. Addresses found once (the dict) are cached; everything else is
//! read fresh each tick, because a freed task's address is soon reused by another object.
//! Any read that does not add up (torn state, an unexpected object) yields no task, never a
//! wrong one: every object read is type-checked by its type's name, and a task must name the
//! loop it is filed under as its own.
//!
//! The reader sees the target only through [`RemoteMemory`], so its tests run it on made-up
//! memory images (`tasks_tests.rs`); the sampler gives it the live process ([`ProcessMemory`]).
//! Every address read from the target is added to with wrapping arithmetic: a garbage word
//! must give no task, not an overflow panic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::memory::{word_at, PageCache, ProcessMemory, RemoteMemory};
use super::offsets::PythonOffsets;
use super::pystr::{self, StrHeader};
use crate::sample::{RunningTask, TaskGeneration};

/// Blocks of the target a tick's task reads may keep (256 KiB).
const TICK_BLOCKS: usize = 512;

/// A dict's header and its keys table's header.
struct DictTable {
    header: Vec<u8>,
    keys: u64,
    keys_header: Vec<u8>,
}

/// The types the reader tells apart, by their `tp_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TypeName {
    Dict,
    Str,
    Int,
    /// Any other name.
    Other,
}

/// Reads running tasks of one process through `M`: the live process by default (so the
/// sampler's `Option<TaskReader>` names no memory), fake memory in the tests.
pub struct TaskReader<M = ProcessMemory> {
    /// The target, through a page cache: a tick's dict, keys, entries and task objects sit on
    /// a few pages, read ahead together at the start of the next tick.
    mem: PageCache<M>,
    offsets: PythonOffsets,
    /// Address of the interpreter's `modules` pointer (sys.modules).
    modules_ptr: u64,
    current_tasks: Option<u64>,
    /// A task has been read from `current_tasks`: it is the live dict, not looked up again.
    confirmed: bool,
    next_lookup: Instant,
    lookup_retry: Duration,
    type_names: HashMap<u64, TypeName>,
    /// The tasks read at the last generation.
    last: Option<(TaskGeneration, Vec<RunningTask>)>,
    /// Where running tasks are recorded in this version.
    source: TaskSource,
}

/// Where a version records the task each loop is stepping.
#[derive(Debug, Clone)]
enum TaskSource {
    /// 3.8–3.13: the `{loop: task}` dict `asyncio.tasks._current_tasks`.
    CurrentTasksDict,
    /// 3.14+: each thread state's `asyncio_running_loop` and `asyncio_running_task` (the dict
    /// stays empty), at offsets `_asyncio` publishes in its `.AsyncioDebug` section.
    ThreadStates {
        /// The process, whose mapped binaries hold the section; 0 in tests.
        pid: i32,
        /// `interpreter_state.size` of the target's debug offsets, which the section repeats
        /// (its check: the section has no cookie).
        interpreter_size: u64,
        /// The interpreter state, whose thread list is walked when no thread is named.
        interpreter: u64,
        /// The section, once found (it is mapped only once `_asyncio` is imported on 3.14).
        asyncio: Option<AsyncioDebug>,
        /// The task last read from each thread state: reused while the task and its fields
        /// are the same (a blocked loop costs two reads a tick).
        last: Vec<(u64, RunningTask, [u64; 2])>,
    },
}

/// `Py_AsyncioModuleDebugOffsets` (`Modules/_asynciomodule.c`, 3.14+): `uint64_t`s only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncioDebug {
    /// `asyncio_task_object.task_name`.
    pub task_name: u64,
    /// `asyncio_task_object.task_coro`.
    pub task_coro: u64,
    /// `asyncio_thread_state.asyncio_running_loop` (in `_PyThreadStateImpl`).
    pub running_loop: u64,
    /// `asyncio_thread_state.asyncio_running_task`.
    pub running_task: u64,
}

/// Bytes of `Py_AsyncioModuleDebugOffsets` (13 words).
pub const ASYNCIO_DEBUG_LEN: usize = 104;

impl AsyncioDebug {
    /// The section's bytes, checked: it repeats the interpreter state's size (which the
    /// target's debug offsets give), and every offset lies inside its struct.
    pub fn parse(bytes: &[u8], interpreter_size: u64) -> Option<Self> {
        let w = |i: usize| word_at(bytes, i * 8);
        if bytes.len() < ASYNCIO_DEBUG_LEN || w(7) != interpreter_size || interpreter_size == 0 {
            return None;
        }
        let (task_size, thread_size) = (w(0), w(9));
        let in_task = |at: u64| at + 8 <= task_size;
        let in_thread = |at: u64| at + 8 <= thread_size;
        let ok = task_size <= 4096
            && thread_size <= 1 << 16
            && in_task(w(1))
            && in_task(w(5))
            && in_task(w(6) + 8)
            && in_thread(w(10))
            && in_thread(w(11));
        ok.then(|| AsyncioDebug {
            task_name: w(1),
            task_coro: w(5),
            running_loop: w(10),
            running_task: w(11),
        })
    }
}

/// How soon to look for `asyncio.tasks` again after a lookup found nothing (or a dict no task
/// has been read from yet): at first soon (a program launched under loopspy imports asyncio a
/// moment later, and a lookup can be torn by the target changing `sys.modules`), then doubling
/// up to [`LOOKUP_RETRY_MAX`] so a program without asyncio costs nothing.
const LOOKUP_RETRY_FIRST: Duration = Duration::from_millis(10);
const LOOKUP_RETRY_MAX: Duration = Duration::from_secs(1);
/// Upper bounds that keep a garbage read from turning into a huge one.
const MAX_ENTRIES: u64 = 1 << 16;
/// Thread states walked at most (3.14+, when no thread is named).
const MAX_THREADS: usize = 4096;
const MAX_STR: u64 = 1024;
/// Type objects whose names are remembered.
const MAX_TYPES: usize = 256;
/// `PyObject_HEAD`'s `ob_type`.
const OB_TYPE: u64 = 8;
/// `fut_loop` of `_asyncio.Task`: the first field after `PyObject_HEAD` in `FutureObj_HEAD`
/// (`Modules/_asynciomodule.c`, 3.8–3.13, subclasses of `asyncio.Task` included). A task step
/// files its task under this loop (`enter_task(state, task->task_loop, task)`), so a value of
/// the dict that does not name its key here is no task: a torn read of a keys table freed and
/// reused by another dict, or a task freed and its memory reused.
const TASK_LOOP: u64 = 16;
/// `dk_nentries` in the keys header, per `keys_layout`.
const NENTRIES_311: usize = 24;
const NENTRIES_38: usize = 32;

impl<M: RemoteMemory> TaskReader<M> {
    /// A reader of the process behind `mem`, whose `sys.modules` pointer lives at `modules_ptr`.
    pub fn new(mem: M, offsets: PythonOffsets, modules_ptr: usize) -> Self {
        Self::with_cache(mem, offsets, modules_ptr, TICK_BLOCKS)
    }

    /// [`Self::new`] with a page cache of `blocks` blocks (a one-shot read of every task reads
    /// far more than a tick).
    pub fn with_cache(mem: M, offsets: PythonOffsets, modules_ptr: usize, blocks: usize) -> Self {
        TaskReader {
            mem: PageCache::new(mem, blocks),
            offsets,
            modules_ptr: modules_ptr as u64,
            current_tasks: None,
            confirmed: false,
            next_lookup: Instant::now(),
            lookup_retry: LOOKUP_RETRY_FIRST,
            type_names: HashMap::new(),
            last: None,
            source: TaskSource::CurrentTasksDict,
        }
    }

    /// Reads tasks where CPython 3.`minor` of process `pid` records them (from 3.14: in the
    /// thread states; `interpreter_size` is the target's `interpreter_state.size`).
    pub fn for_target(
        mut self,
        pid: i32,
        minor: u64,
        interpreter: u64,
        interpreter_size: u64,
    ) -> Self {
        if minor >= 14 {
            self.source = TaskSource::ThreadStates {
                pid,
                interpreter_size,
                interpreter,
                asyncio: None,
                last: Vec::new(),
            };
        }
        self
    }

    /// Reads 3.14+ thread states with this `_asyncio` layout (tests; the sampler finds it).
    pub fn with_asyncio_debug(mut self, interpreter: u64, asyncio: AsyncioDebug) -> Self {
        self.source = TaskSource::ThreadStates {
            pid: 0,
            interpreter_size: 0,
            interpreter,
            asyncio: Some(asyncio),
            last: Vec::new(),
        };
        self.offsets.task.task_coro = asyncio.task_coro as usize;
        self.offsets.task.task_name = asyncio.task_name as usize;
        self
    }

    /// Tasks being stepped right now (usually none or one per loop), and the generation of
    /// the `{loop: task}` dict (3.8–3.13). On 3.14+ the thread states `tstates` are looked at
    /// (the event-loop threads'; every thread's when empty), and there is no generation.
    pub fn running_tasks(&mut self, tstates: &[u64]) -> (Vec<RunningTask>, Option<TaskGeneration>) {
        let now = Instant::now();
        if matches!(self.source, TaskSource::ThreadStates { .. }) {
            return (self.thread_state_tasks(now, tstates), None);
        }
        self.running_tasks_at(now)
    }

    /// The tasks the thread states `tstates` are stepping (3.14+).
    fn thread_state_tasks(&mut self, now: Instant, tstates: &[u64]) -> Vec<RunningTask> {
        self.mem.begin_tick();
        let TaskSource::ThreadStates {
            pid,
            interpreter_size,
            interpreter,
            asyncio,
            ..
        } = &self.source
        else {
            return Vec::new();
        };
        let (pid, interpreter_size, interpreter) = (*pid, *interpreter_size, *interpreter);
        let asyncio = match asyncio {
            Some(a) => *a,
            None if now >= self.next_lookup && pid != 0 => {
                self.next_lookup = now + self.lookup_retry;
                self.lookup_retry = (self.lookup_retry * 2).min(LOOKUP_RETRY_MAX);
                let Some(found) = find_asyncio_debug(pid, &self.mem, interpreter_size) else {
                    return Vec::new();
                };
                self.offsets.task.task_coro = found.task_coro as usize;
                self.offsets.task.task_name = found.task_name as usize;
                if let TaskSource::ThreadStates { asyncio, .. } = &mut self.source {
                    *asyncio = Some(found);
                }
                found
            }
            None => return Vec::new(),
        };
        let walked;
        let tstates = if tstates.is_empty() {
            walked = self.thread_states(interpreter);
            &walked[..]
        } else {
            tstates
        };
        let mut last = match &mut self.source {
            TaskSource::ThreadStates { last, .. } => std::mem::take(last),
            TaskSource::CurrentTasksDict => Vec::new(),
        };
        let mut now_running = Vec::new();
        let mut tasks = Vec::new();
        for &tstate in tstates {
            let (Some(event_loop), Some(task)) = (
                self.read_word(tstate.wrapping_add(asyncio.running_loop)),
                self.read_word(tstate.wrapping_add(asyncio.running_task)),
            ) else {
                continue;
            };
            if event_loop == 0 || task == 0 {
                continue;
            }
            let fields = self.task_fields(task);
            let cached = last
                .iter()
                .position(|(at, t, f)| *at == tstate && t.address == task && Some(*f) == fields);
            let read = match cached {
                Some(i) => Some(last.swap_remove(i).1),
                None => self.read_task(event_loop, task),
            };
            if let (Some(read), Some(fields)) = (read, fields) {
                now_running.push((tstate, read.clone(), fields));
                tasks.push(read);
            }
        }
        if let TaskSource::ThreadStates { last, .. } = &mut self.source {
            *last = now_running;
        }
        tasks
    }

    /// The task's coroutine and name pointers: unchanged, they name the same task.
    fn task_fields(&self, task: u64) -> Option<[u64; 2]> {
        let o = &self.offsets.task;
        Some([
            self.read_word(task.wrapping_add(o.task_coro as u64))?,
            self.read_word(task.wrapping_add(o.task_name as u64))?,
        ])
    }

    /// Every thread state of the interpreter (at most [`MAX_THREADS`]).
    fn thread_states(&self, interpreter: u64) -> Vec<u64> {
        let t = &self.offsets.thread;
        let head = interpreter.wrapping_add(self.offsets.interpreter.threads_head as u64);
        let mut found = Vec::new();
        let mut next = self.read_word(head).unwrap_or(0);
        while next != 0 && found.len() < MAX_THREADS && !found.contains(&next) {
            found.push(next);
            next = self
                .read_word(next.wrapping_add(t.next as u64))
                .unwrap_or(0);
        }
        found
    }

    /// [`Self::running_tasks`] of the dict, at `now` (which times the lookup retries).
    fn running_tasks_at(&mut self, now: Instant) -> (Vec<RunningTask>, Option<TaskGeneration>) {
        self.mem.begin_tick();
        let Some(table) = self.current_tasks_dict(now).and_then(|d| self.read_dict(d)) else {
            return (Vec::new(), None);
        };
        // Every task step inserts its task into the dict (`_enter_task`) and deletes it after
        // (`_leave_task`). A delete leaves a dummy slot and an insert appends a new entry, so
        // the entry count only grows, until the dict outgrows its keys table and gets a new
        // one: the keys table's address and entry count change with every step.
        let generation = TaskGeneration {
            keys: table.keys,
            entries: self.entry_count(&table),
        };
        if word_at(&table.header, self.offsets.dict.ma_used) == 0 {
            self.last = None;
            return (Vec::new(), Some(generation));
        }
        let entries = self.entries(&table).unwrap_or_default();
        // No task step started or ended since the last tick, and the same task objects in the
        // dict (which holds them alive): what was read of them still holds. A loop blocked in
        // one callback costs three small reads a tick.
        if let Some((last_generation, tasks)) = &self.last {
            if *last_generation == generation
                && tasks.len() == entries.len()
                && tasks
                    .iter()
                    .zip(&entries)
                    .all(|(t, (_, e))| t.address == *e)
            {
                return (tasks.clone(), Some(generation));
            }
        }
        let tasks: Vec<RunningTask> = entries
            .into_iter()
            .filter_map(|(event_loop, task)| self.read_task(event_loop, task))
            .collect();
        self.confirmed |= !tasks.is_empty();
        self.last = Some((generation, tasks.clone()));
        (tasks, Some(generation))
    }

    /// The `_current_tasks` dict, looked up on the retry schedule until a task has been read
    /// from it. A dict found but never seen holding a task is looked up again because
    /// `asyncio/tasks.py` first binds `_current_tasks = {}`, a placeholder, and only at its
    /// end rebinds it to the C module's dict: a lookup while asyncio is being imported (what
    /// the quick first retries are for) can find the placeholder, which no task ever enters.
    fn current_tasks_dict(&mut self, now: Instant) -> Option<u64> {
        if !self.confirmed && now >= self.next_lookup {
            self.next_lookup = now + self.lookup_retry;
            self.lookup_retry = (self.lookup_retry * 2).min(LOOKUP_RETRY_MAX);
            if let Some(found) = self.find_current_tasks() {
                if self.current_tasks != Some(found) {
                    self.current_tasks = Some(found);
                    self.last = None;
                }
            }
        }
        self.current_tasks
    }

    fn find_current_tasks(&mut self) -> Option<u64> {
        let module_dict = self.module_dict("asyncio.tasks")?;
        let current = self.dict_get(module_dict, "_current_tasks")?;
        (self.type_name(current)? == TypeName::Dict).then_some(current)
    }

    /// The `__dict__` of `sys.modules[name]`.
    pub(super) fn module_dict(&mut self, name: &str) -> Option<u64> {
        let modules = self.read_word(self.modules_ptr)?;
        let module = self.dict_get(modules, name)?;
        let md_dict = module.wrapping_add(self.offsets.module.md_dict as u64);
        let module_dict = self.read_word(md_dict)?;
        (self.type_name(module_dict)? == TypeName::Dict).then_some(module_dict)
    }

    /// The key objects of a shared ("split") keys table, in entry order: the order of the
    /// values of every instance (or split dict) sharing it.
    pub(super) fn split_keys(&self, keys: u64) -> Option<Vec<u64>> {
        let table = DictTable {
            header: Vec::new(),
            keys,
            keys_header: self.read_vec(keys, 40)?,
        };
        let count = self.entry_count(&table);
        if count > 256 {
            return None;
        }
        let (entries, size, key_at) = if self.offsets.dict.keys_layout == "3.11" {
            let log2_index_bytes = table.keys_header[9] as u32;
            if log2_index_bytes > 20 || table.keys_header[10] == 0 {
                return None;
            }
            (keys.wrapping_add(32 + (1u64 << log2_index_bytes)), 16, 0)
        } else {
            // dk_size, indices as wide as the size needs, 24-byte {hash, key, value} entries.
            let dk_size = word_at(&table.keys_header, 8);
            if dk_size > 1 << 16 {
                return None;
            }
            let width = if dk_size <= 0xff { 1 } else { 2 };
            (keys.wrapping_add(40 + dk_size * width), 24, 8)
        };
        let raw = self.read_vec(entries, count as usize * size)?;
        Some(raw.chunks_exact(size).map(|e| word_at(e, key_at)).collect())
    }

    pub(super) fn dict_get(&mut self, dict: u64, key: &str) -> Option<u64> {
        self.dict_entries(dict)?
            .into_iter()
            .find(|&(k, _)| self.str_equals(k, key))
            .map(|(_, v)| v)
    }

    /// (key, value) of every live entry of a combined-table dict.
    pub(super) fn dict_entries(&self, dict: u64) -> Option<Vec<(u64, u64)>> {
        self.entries(&self.read_dict(dict)?)
    }

    /// A dict's header and its keys table's header, read once.
    fn read_dict(&self, dict: u64) -> Option<DictTable> {
        let header = self.read_vec(dict, 48)?;
        let keys = word_at(&header, self.offsets.dict.ma_keys);
        let keys_header = self.read_vec(keys, 40)?;
        Some(DictTable {
            header,
            keys,
            keys_header,
        })
    }

    /// `dk_nentries`: entries used in the keys table, live or deleted.
    fn entry_count(&self, table: &DictTable) -> u64 {
        let at = if self.offsets.dict.keys_layout == "3.11" {
            NENTRIES_311
        } else {
            NENTRIES_38
        };
        word_at(&table.keys_header, at)
    }

    /// (key, value) of every live entry of a combined-table dict.
    fn entries(&self, table: &DictTable) -> Option<Vec<(u64, u64)>> {
        let o = &self.offsets.dict;
        if word_at(&table.header, o.ma_values) != 0 {
            return None;
        }
        let (keys, keys_header) = (table.keys, &table.keys_header);
        let (entries, size, key_at) = if o.keys_layout == "3.11" {
            let log2_index_bytes = keys_header[9] as u32;
            let kind = keys_header[10];
            if log2_index_bytes > 40 {
                return None;
            }
            let (size, key_at) = if kind == 0 { (24, 8) } else { (16, 0) };
            let indices = 32 + (1u64 << log2_index_bytes);
            (keys.wrapping_add(indices), size, key_at)
        } else {
            let dk_size = word_at(keys_header, 8);
            let width = match dk_size {
                0..=0xff => 1,
                0x100..=0xffff => 2,
                0x1_0000..=0xffff_ffff => 4,
                _ => 8,
            };
            let indices = dk_size.checked_mul(width)?.checked_add(40)?;
            (keys.wrapping_add(indices), 24, 8)
        };
        let count = self.entry_count(table);
        if count > MAX_ENTRIES {
            return None;
        }
        let raw = self.read_vec(entries, count as usize * size)?;
        Some(
            raw.chunks_exact(size)
                .map(|e| (word_at(e, key_at), word_at(e, key_at + 8)))
                .filter(|(k, v)| *k != 0 && *v != 0)
                .collect(),
        )
    }

    /// The task at `task`, filed under `event_loop`; None unless it is one.
    fn read_task(&mut self, event_loop: u64, task: u64) -> Option<RunningTask> {
        if self.read_word(task.wrapping_add(TASK_LOOP))? != event_loop {
            return None;
        }
        let [coro, name_obj] = self.task_fields(task)?;
        let name = self.task_name(name_obj)?;
        let coroutine = self.coroutine_qualname(coro);
        Some(RunningTask {
            address: task,
            name,
            coroutine,
        })
    }

    /// A task's name from its `task_name` object: a str, or (3.12+) the int N of `Task-N`.
    pub(super) fn task_name(&mut self, name_obj: u64) -> Option<String> {
        match self.type_name(name_obj)? {
            TypeName::Str => self.read_str(name_obj),
            TypeName::Int if self.offsets.task.lazy_int_names => {
                Some(format!("Task-{}", self.read_small_int(name_obj)?))
            }
            _ => None,
        }
    }

    /// A coroutine's `__qualname__` ("" when it cannot be read).
    pub(super) fn coroutine_qualname(&mut self, coro: u64) -> String {
        let qualname_at = coro.wrapping_add(self.offsets.coro.qualname as u64);
        self.read_word(qualname_at)
            .filter(|&qualname| self.type_name(qualname) == Some(TypeName::Str))
            .and_then(|qualname| self.read_str(qualname))
            .unwrap_or_default()
    }

    /// What the `tp_name` of an object's type is, of the names the reader tells apart; types
    /// live for the whole process, so cached. Only the bytes that tell them apart are read (a
    /// name in the last bytes of a mapping stays readable).
    pub(super) fn type_name(&mut self, obj: u64) -> Option<TypeName> {
        let ty = self.read_word(obj.wrapping_add(OB_TYPE))?;
        if let Some(&name) = self.type_names.get(&ty) {
            return Some(name);
        }
        let tp_name = self.read_word(ty.wrapping_add(self.offsets.r#type.tp_name as u64))?;
        let mut start = [0u8; 4];
        if !self.mem.read(tp_name, &mut start) {
            return None;
        }
        let name = match &start {
            b"str\0" => TypeName::Str,
            b"int\0" => TypeName::Int,
            b"dict" => {
                let mut end = [0xffu8];
                if !self.mem.read(tp_name.wrapping_add(4), &mut end) {
                    return None;
                }
                if end[0] == 0 {
                    TypeName::Dict
                } else {
                    TypeName::Other
                }
            }
            _ => TypeName::Other,
        };
        if self.type_names.len() < MAX_TYPES {
            self.type_names.insert(ty, name);
        }
        Some(name)
    }

    /// The header of a compact str (any of the three widths) and its data address; None for
    /// anything else or one longer than [`MAX_STR`].
    fn str_shape(&self, obj: u64) -> Option<(StrHeader, u64)> {
        let u = &self.offsets.unicode;
        let h = StrHeader::parse(&self.read_vec(obj, u.ascii_data)?, u)?;
        let plausible = matches!((h.kind, h.ascii), (1, _) | (2 | 4, false));
        if h.chars as u64 > MAX_STR || !h.compact || !plausible {
            return None;
        }
        Some((h, obj.wrapping_add(h.data_offset(u) as u64)))
    }

    /// A compact str; None for anything else.
    pub(super) fn read_str(&self, obj: u64) -> Option<String> {
        let (h, data) = self.str_shape(obj)?;
        let bytes = self.read_vec(data, h.chars * h.width())?;
        pystr::decode(bytes, h.width(), h.ascii).ok()
    }

    /// Whether `obj` is a compact str equal to `text`, reading its data only when its length
    /// matches (most keys of `sys.modules` are other names).
    fn str_equals(&self, obj: u64, text: &str) -> bool {
        self.str_shape(obj)
            .filter(|(h, _)| h.chars == text.chars().count())
            .is_some_and(|_| self.read_str(obj).as_deref() == Some(text))
    }

    /// A non-negative int of at most two 30-bit digits.
    pub(super) fn read_small_int(&self, obj: u64) -> Option<u64> {
        let o = &self.offsets.long;
        let raw = self.read_vec(obj, o.digits + 8)?;
        let tag = word_at(&raw, o.tag);
        let ndigits = if o.tagged {
            if tag & 3 == 2 {
                return None;
            }
            tag >> 3
        } else {
            tag
        };
        let digit = |i: usize| {
            u32::from_ne_bytes(
                raw[o.digits + 4 * i..o.digits + 4 * i + 4]
                    .try_into()
                    .unwrap(),
            ) as u64
        };
        match ndigits {
            0 => Some(0),
            1 => Some(digit(0)),
            2 => Some(digit(0) | digit(1) << 30),
            _ => None,
        }
    }

    /// Reads `len` bytes at `addr`, or `None`.
    pub(super) fn read_vec(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.mem.read(addr, &mut buf).then_some(buf)
    }

    /// Reads a native-endian pointer-sized word at `addr`.
    pub(super) fn read_word(&self, addr: u64) -> Option<u64> {
        let mut buf = [0u8; 8];
        self.mem
            .read(addr, &mut buf)
            .then(|| u64::from_ne_bytes(buf))
    }
}

/// Finds `_asyncio`'s `.AsyncioDebug` section (built into the executable or `libpython` on
/// 3.15, the `_asyncio` extension module on 3.14, mapped once asyncio is imported) and reads it.
fn find_asyncio_debug(
    pid: i32,
    mem: &impl RemoteMemory,
    interpreter_size: u64,
) -> Option<AsyncioDebug> {
    let section = super::elf::find_mapped_section(
        pid,
        |name| name.contains("python") || name.starts_with("_asyncio"),
        ".AsyncioDebug",
    )?;
    if section.size < ASYNCIO_DEBUG_LEN as u64 {
        return None;
    }
    let mut bytes = [0u8; ASYNCIO_DEBUG_LEN];
    mem.read(section.address, &mut bytes)
        .then(|| AsyncioDebug::parse(&bytes, interpreter_size))?
}

#[cfg(test)]
#[path = "tasks_tests.rs"]
mod tests;
