//! Which asyncio task is running right now, read from the target without running any code in
//! it: `sys.modules["asyncio.tasks"]._current_tasks` is the C module's `{loop: task}` dict that
//! every task step updates (CPython 3.8–3.13, uvloop included). From each task we read its
//! name (`create_task(name=...)`, or `Task-N`) and its coroutine's qualified name, using the
//! offsets in `python_offsets/`. Addresses found once (the dict) are cached; everything else is
//! read fresh each tick, because a freed task's address is soon reused by another object.
//! Any read that does not add up (torn state, an unexpected object) yields no task, never a
//! wrong one: every object read is type-checked by its type's name.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::memory::{read_vec, read_word, word_at};
use super::offsets::PythonOffsets;
use crate::sample::{RunningTask, TaskGeneration};

/// A dict's header and its keys table's header.
struct DictTable {
    header: Vec<u8>,
    keys: usize,
    keys_header: Vec<u8>,
}

/// Reads running tasks of one process.
pub struct TaskReader {
    pid: i32,
    offsets: PythonOffsets,
    /// Address of the interpreter's `modules` pointer (sys.modules).
    modules_ptr: usize,
    current_tasks: Option<usize>,
    next_lookup: Instant,
    lookup_retry: Duration,
    type_names: HashMap<u64, String>,
    /// The tasks read at the last generation.
    last: Option<(TaskGeneration, Vec<RunningTask>)>,
}

/// How soon to look for `asyncio.tasks` again after a lookup found nothing: at first soon (a
/// program launched under loopspy imports asyncio a moment later, and a lookup can be torn by
/// the target changing `sys.modules`), then doubling up to [`LOOKUP_RETRY_MAX`] so a program
/// without asyncio costs nothing.
const LOOKUP_RETRY_FIRST: Duration = Duration::from_millis(10);
const LOOKUP_RETRY_MAX: Duration = Duration::from_secs(1);
/// Upper bounds that keep a garbage read from turning into a huge one.
const MAX_ENTRIES: u64 = 1 << 16;
const MAX_STR: u64 = 1024;

impl TaskReader {
    /// A reader for `pid`, whose `sys.modules` pointer lives at `modules_ptr`.
    pub fn new(pid: i32, offsets: PythonOffsets, modules_ptr: usize) -> Self {
        TaskReader {
            pid,
            offsets,
            modules_ptr,
            current_tasks: None,
            next_lookup: Instant::now(),
            lookup_retry: LOOKUP_RETRY_FIRST,
            type_names: HashMap::new(),
            last: None,
        }
    }

    /// Tasks being stepped right now (usually none or one per loop), and the generation of
    /// the `{loop: task}` dict.
    pub fn running_tasks(&mut self) -> (Vec<RunningTask>, Option<TaskGeneration>) {
        let Some(table) = self.current_tasks_dict().and_then(|d| self.read_dict(d)) else {
            return (Vec::new(), None);
        };
        // Every task step inserts its task into the dict (`_enter_task`) and deletes it after
        // (`_leave_task`). A delete leaves a dummy slot and an insert appends a new entry, so
        // the entry count only grows, until the dict outgrows its keys table and gets a new
        // one: the keys table's address and entry count change with every step.
        let generation = TaskGeneration {
            keys: table.keys as u64,
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
            .filter_map(|(_, task)| self.read_task(task))
            .collect();
        self.last = Some((generation, tasks.clone()));
        (tasks, Some(generation))
    }

    fn current_tasks_dict(&mut self) -> Option<usize> {
        if self.current_tasks.is_none() && Instant::now() >= self.next_lookup {
            self.next_lookup = Instant::now() + self.lookup_retry;
            self.lookup_retry = (self.lookup_retry * 2).min(LOOKUP_RETRY_MAX);
            self.current_tasks = self.find_current_tasks();
        }
        self.current_tasks
    }

    fn find_current_tasks(&mut self) -> Option<usize> {
        let modules = read_word(self.pid, self.modules_ptr)? as usize;
        let module = self.dict_get(modules, "asyncio.tasks")?;
        let module_dict = read_word(self.pid, module + self.offsets.module.md_dict)? as usize;
        let current = self.dict_get(module_dict, "_current_tasks")?;
        (self.type_name(current as u64)? == "dict").then_some(current)
    }

    fn dict_get(&mut self, dict: usize, key: &str) -> Option<usize> {
        self.dict_entries(dict)?
            .into_iter()
            .find(|(k, _)| self.read_str(*k).as_deref() == Some(key))
            .map(|(_, v)| v as usize)
    }

    /// (key, value) of every live entry of a combined-table dict.
    fn dict_entries(&self, dict: usize) -> Option<Vec<(u64, u64)>> {
        self.entries(&self.read_dict(dict)?)
    }

    /// A dict's header and its keys table's header, read once.
    fn read_dict(&self, dict: usize) -> Option<DictTable> {
        let header = read_vec(self.pid, dict, 48)?;
        let keys = word_at(&header, self.offsets.dict.ma_keys) as usize;
        let keys_header = read_vec(self.pid, keys, 40)?;
        Some(DictTable {
            header,
            keys,
            keys_header,
        })
    }

    /// `dk_nentries`: entries used in the keys table, live or deleted.
    fn entry_count(&self, table: &DictTable) -> u64 {
        let at = if self.offsets.dict.keys_layout == "3.11" {
            24
        } else {
            32
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
            (keys + 32 + (1usize << log2_index_bytes), size, key_at)
        } else {
            let dk_size = word_at(keys_header, 8);
            let width = match dk_size {
                0..=0xff => 1,
                0x100..=0xffff => 2,
                0x1_0000..=0xffff_ffff => 4,
                _ => 8,
            };
            (keys + 40 + (dk_size as usize).checked_mul(width)?, 24, 8)
        };
        let count = self.entry_count(table);
        if count > MAX_ENTRIES {
            return None;
        }
        let raw = read_vec(self.pid, entries, count as usize * size)?;
        Some(
            raw.chunks_exact(size)
                .map(|e| (word_at(e, key_at), word_at(e, key_at + 8)))
                .filter(|(k, v)| *k != 0 && *v != 0)
                .collect(),
        )
    }

    fn read_task(&mut self, task: u64) -> Option<RunningTask> {
        let o = self.offsets.task.clone();
        let fields = read_vec(self.pid, task as usize + o.task_coro, 16)?;
        let (coro, name_obj) = (word_at(&fields, 0), word_at(&fields, 8));
        let name = match self.type_name(name_obj)?.as_str() {
            "str" => self.read_str(name_obj)?,
            "int" if o.lazy_int_names => format!("Task-{}", self.read_small_int(name_obj)?),
            _ => return None,
        };
        let qualname = read_word(self.pid, coro as usize + self.offsets.coro.qualname)?;
        let coroutine = self.read_str(qualname).unwrap_or_default();
        Some(RunningTask {
            address: task,
            name,
            coroutine,
        })
    }

    /// The `tp_name` of an object's type; types live for the whole process, so cached.
    fn type_name(&mut self, obj: u64) -> Option<String> {
        let ty = read_word(self.pid, obj as usize + 8)?;
        if let Some(name) = self.type_names.get(&ty) {
            return Some(name.clone());
        }
        let tp_name = read_word(self.pid, ty as usize + self.offsets.r#type.tp_name)?;
        let raw = read_vec(self.pid, tp_name as usize, 32)?;
        let end = raw.iter().position(|&b| b == 0)?;
        let name = String::from_utf8(raw[..end].to_vec()).ok()?;
        if self.type_names.len() < 256 {
            self.type_names.insert(ty, name.clone());
        }
        Some(name)
    }

    /// A compact str (ASCII or Latin-1); None for anything else.
    fn read_str(&self, obj: u64) -> Option<String> {
        let o = &self.offsets.unicode;
        let header = read_vec(self.pid, obj as usize, o.compact_data)?;
        let length = word_at(&header, o.length);
        let state = u32::from_ne_bytes(header.get(o.state..o.state + 4)?.try_into().ok()?);
        let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
        if length > MAX_STR || compact == 0 || kind != 1 {
            return None;
        }
        let data = if ascii == 1 {
            o.ascii_data
        } else {
            o.compact_data
        };
        let bytes = read_vec(self.pid, obj as usize + data, length as usize)?;
        Some(bytes.iter().map(|&b| b as char).collect())
    }

    /// A non-negative int of at most two 30-bit digits.
    fn read_small_int(&self, obj: u64) -> Option<u64> {
        let o = &self.offsets.long;
        let raw = read_vec(self.pid, obj as usize, o.digits + 8)?;
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
}
