//! Every asyncio task of a process, read from outside it (`loopspy tasks`): where each one is
//! suspended, and which tasks wait for it. CPython 3.8–3.13, asyncio's loop and uvloop alike
//! (uvloop runs asyncio's C `Task`, so its tasks sit in the same registries).
//!
//! Where tasks are found (`Lib/asyncio/tasks.py`, `Modules/_asynciomodule.c`):
//! - 3.8–3.11: `asyncio.tasks._all_tasks`, a `weakref.WeakSet` of every task not yet freed;
//! - 3.12–3.13: `_scheduled_tasks` (a `WeakSet`) plus `_eager_tasks` (a `set`, tasks started
//!   eagerly and still running their first step).
//!
//! A `WeakSet` keeps its weak references in the set held by its `data` attribute, so the reader
//! reads instance attributes the way each version keeps them ([`InstanceDict`]). Finished tasks
//! stay in the weak set until freed: only pending ones (`fut_state` 0) are listed, as
//! `asyncio.all_tasks()` does.
//!
//! For each task: its name and coroutine (through [`TaskReader`]), and the coroutine frames it
//! is suspended in, followed from the task's coroutine through each `await` to the innermost
//! (the awaited object is the top of a suspended coroutine's value stack — `_PyGen_yf` in
//! `Objects/genobject.c` — only once the instruction after the suspension point says it is
//! an `await`/`yield from`), through async generators (`async_generator_asend`). Frames are
//! decoded by the stack reader's code cache ([`StackReader::frame_of`]).
//!
//! Who waits for whom (`awaited_by`), best effort: task W waits for task T when W's
//! `task_fut_waiter` is T itself (`await T`), or is an object one of T's done callbacks holds:
//! a closure cell (`gather`'s `_done_callback` holds the `_GatheringFuture` its parent awaits;
//! `shield`'s holds the outer future), a `functools.partial` argument (`wait_for` up to 3.11
//! releases its waiter future that way), or an attribute of a bound method's `self` (a
//! `TaskGroup`'s `_on_task_done` and its `_on_completed_fut`, awaited in `__aexit__`).
//!
//! Nothing read is trusted: every object is type-checked by its type's `tp_name` (a task must be
//! an `_asyncio.Task` or a subclass), every count and depth is capped, every address is added
//! with wrapping arithmetic, and a read that does not add up drops the task or ends its chain —
//! never a made-up task, never a panic. The target is never paused.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use super::memory::{word_at, RemoteMemory};
use super::offsets::{AllTasksOffsets, FrameLayout, InstanceDict, PythonOffsets, StackKind};
use super::stacks::StackReader;
use super::tasks::TaskReader;
use crate::sample::Frame;

/// Tasks listed at most by default; the rest are counted ([`TaskListing::left_out`]).
pub const DEFAULT_MAX_TASKS: usize = 20_000;
/// Slots of a registry set read at most (16 MiB of set table).
const MAX_SET_SLOTS: u64 = 1 << 20;
/// `await` levels followed at most from a task's coroutine.
pub const MAX_AWAIT_DEPTH: usize = 64;
/// Done callbacks of a task looked at.
const MAX_CALLBACKS: usize = 16;
/// Objects a callback links to (closure cells, partial arguments, attributes).
const MAX_LINKS: usize = 32;
/// Instance attributes read of one object.
const MAX_ATTRS: usize = 64;
/// Base classes walked to tell a task subclass.
const MAX_BASES: usize = 8;
/// Type names remembered.
const MAX_TYPES: usize = 4096;
/// A value stack deeper than this is a torn read.
const MAX_STACK: i64 = 1 << 16;
/// Blocks of the target the lister's page cache keeps (32 MiB): 10 000 tasks, their names,
/// coroutines and weak references fit, read a page at a time.
const CACHE_BLOCKS: usize = 1 << 16;
/// `PyObject_HEAD`'s `ob_type`; `fut_loop`, the first field after it in a future.
const OB_TYPE: u64 = 8;
const FUT_LOOP: usize = 16;
/// `PyWeakReference.wr_object`, `PyCellObject.ob_ref`, `PyAsyncGenASend.ags_gen`,
/// `futureiterobject.future`, `PyMethodObject.im_func`: the first field after `PyObject_HEAD`
/// (checked by `derive.py`).
const FIRST_FIELD: u64 = 16;
/// `PyMethodObject.im_self`, `partialobject.args` (checked by `derive.py`).
const SECOND_FIELD: u64 = 24;
/// `PyListObject`: `ob_size` (16), `ob_item` (24).
const LIST_SIZE: u64 = 16;
const LIST_ITEMS: u64 = 24;
/// `Py_TPFLAGS_INLINE_VALUES` (3.13) and `Py_TPFLAGS_MANAGED_DICT` (3.11+), Include/object.h.
const TPFLAGS_INLINE_VALUES: u64 = 1 << 2;
const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
/// Where a managed dict (3.11+) or the 3.11 values pointer sits before the object.
const MANAGED_DICT: u64 = 24;
const MANAGED_VALUES_311: u64 = 32;
/// `YIELD_FROM`, 3.8–3.10 (Include/opcode.h): the instruction a coroutine suspended in an
/// `await` executes again on resuming.
const YIELD_FROM: u8 = 72;

/// One pending task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTask {
    /// Address of the task object (its identity while it lives).
    pub address: u64,
    /// `task.get_name()`.
    pub name: String,
    /// The task's coroutine's `__qualname__`.
    pub coroutine: String,
    /// The task its loop is stepping right now.
    pub running: bool,
    /// Address of its loop.
    pub event_loop: u64,
    /// `threading.get_ident()` of the thread running its loop: the thread whose state files
    /// the loop as running (3.8–3.12, uvloop too), else the loop's `_thread_id` (asyncio's loops).
    pub thread_ident: Option<u64>,
    /// That thread's kernel id (3.11+ record it).
    pub thread_native: Option<u64>,
    /// The coroutine frames it is suspended in, innermost first.
    pub stack: Vec<Frame>,
    /// The await chain went on past [`MAX_AWAIT_DEPTH`] or could not be read to its end.
    pub stack_cut: bool,
    /// What it waits on (`task_fut_waiter`; 0: nothing).
    pub waits_on: u64,
    /// Addresses of the tasks waiting for it.
    pub awaited_by: Vec<u64>,
}

/// What [`TaskLister::list`] found.
#[derive(Debug, Clone, Default)]
pub struct TaskListing {
    /// Whether `asyncio.tasks` was imported (and its registries found).
    pub asyncio: bool,
    /// Pending tasks, at most the cap.
    pub tasks: Vec<ListedTask>,
    /// Pending tasks past the cap, not listed.
    pub left_out: usize,
}

/// What a type is, to the lister.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `coroutine`, `generator`, `async_generator`: a frame, maybe awaiting something.
    Generator,
    /// `async_generator_asend`: the async generator it drives is at [`FIRST_FIELD`].
    AsyncGenSend,
    /// `coroutine_wrapper` (`coro.__await__()`): the coroutine at [`FIRST_FIELD`].
    CoroWrapper,
    Task,
    Future,
    /// `_asyncio.FutureIter` (`await future`): the future at [`FIRST_FIELD`].
    FutureIter,
    Function,
    Method,
    Partial,
    Cell,
    Tuple,
    List,
    Set,
    WeakRef,
    Int,
    Other,
}

fn kind_of_name(name: &str) -> Kind {
    match name {
        "coroutine" | "generator" | "async_generator" => Kind::Generator,
        "async_generator_asend" => Kind::AsyncGenSend,
        "coroutine_wrapper" => Kind::CoroWrapper,
        "_asyncio.Task" => Kind::Task,
        "_asyncio.Future" => Kind::Future,
        "_asyncio.FutureIter" => Kind::FutureIter,
        "function" => Kind::Function,
        "method" => Kind::Method,
        "functools.partial" => Kind::Partial,
        "cell" => Kind::Cell,
        "tuple" => Kind::Tuple,
        "list" => Kind::List,
        "set" => Kind::Set,
        "weakref" | "weakref.ReferenceType" => Kind::WeakRef,
        "int" => Kind::Int,
        _ => Kind::Other,
    }
}

/// Lists the tasks of one process through `M` (the live process, or fake memory in tests).
pub struct TaskLister<'m, M: RemoteMemory> {
    tasks: TaskReader<&'m M>,
    stacks: StackReader<&'m M>,
    offsets: PythonOffsets,
    all: AllTasksOffsets,
    kinds: HashMap<u64, Kind>,
    /// Instance attribute names by the name object's address (they are interned).
    names: HashMap<u64, Option<Rc<str>>>,
}

/// One task's fields, read in one go.
struct TaskHead {
    address: u64,
    event_loop: u64,
    coro: u64,
    name_obj: u64,
    waits_on: u64,
    callback0: u64,
    callbacks: u64,
}

impl<'m, M: RemoteMemory> TaskLister<'m, M> {
    /// A lister of the interpreter at `interpreter` whose `sys.modules` pointer is at
    /// `modules_ptr`; None when the table has no `[all_tasks]` section (3.14+).
    pub fn new(
        mem: &'m M,
        offsets: PythonOffsets,
        modules_ptr: u64,
        interpreter: u64,
    ) -> Option<Self> {
        let all = offsets.all_tasks.clone()?;
        Some(TaskLister {
            tasks: TaskReader::with_cache(mem, offsets.clone(), modules_ptr as usize, CACHE_BLOCKS),
            stacks: StackReader::new(mem, offsets.clone(), interpreter, 0),
            offsets,
            all,
            kinds: HashMap::new(),
            names: HashMap::new(),
        })
    }

    /// Every pending task (at most `max_tasks`; the rest counted), its await chain and who
    /// awaits it. `running`: the addresses of the tasks being stepped now.
    pub fn list(&mut self, max_tasks: usize, running: &[u64]) -> TaskListing {
        self.stacks.begin_tick(std::time::Instant::now());
        self.tasks.begin_read();
        let Some(module) = self.tasks.module_dict("asyncio.tasks") else {
            return TaskListing::default();
        };
        let mut found: Vec<u64> = Vec::new();
        let mut any = false;
        for weak_set in ["_all_tasks", "_scheduled_tasks"] {
            let Some(set) = self.tasks.dict_get(module, weak_set) else {
                continue;
            };
            any = true;
            let Some(data) = self.attr(set, "data") else {
                continue;
            };
            for weakref in self.set_items(data) {
                if self.kind(weakref) == Some(Kind::WeakRef) {
                    if let Some(task) = self.word(weakref.wrapping_add(FIRST_FIELD)) {
                        found.push(task);
                    }
                }
            }
        }
        if let Some(eager) = self.tasks.dict_get(module, "_eager_tasks") {
            any = true;
            found.extend(self.set_items(eager));
        }
        let mut seen = HashSet::new();
        found.retain(|t| *t != 0 && seen.insert(*t));

        let mut listing = TaskListing {
            asyncio: any,
            ..TaskListing::default()
        };
        let mut heads = Vec::new();
        for task in found {
            let Some(head) = self.pending_task(task) else {
                continue;
            };
            if heads.len() >= max_tasks {
                listing.left_out += 1;
                continue;
            }
            heads.push(head);
        }
        let thread_heads = self.stacks.threads().unwrap_or_default();
        let native: HashMap<u64, u64> = thread_heads
            .iter()
            .filter_map(|h| Some((h.python_tid, h.native_tid?)))
            .collect();
        let mut threads = self.running_loops(&thread_heads);
        let mut links: Vec<Vec<u64>> = Vec::with_capacity(heads.len());
        for head in &heads {
            let Some(name) = self.tasks.task_name(head.name_obj) else {
                links.push(Vec::new());
                continue;
            };
            let is_running = running.contains(&head.address);
            let (stack, stack_cut) = self.await_chain(head.coro, is_running);
            let thread_ident = match threads.get(&head.event_loop) {
                Some(&ident) => ident,
                None => {
                    let ident = self.loop_thread(head.event_loop);
                    threads.insert(head.event_loop, ident);
                    ident
                }
            };
            listing.tasks.push(ListedTask {
                address: head.address,
                name,
                coroutine: self.tasks.coroutine_qualname(head.coro),
                running: is_running,
                event_loop: head.event_loop,
                thread_ident,
                thread_native: thread_ident.and_then(|i| native.get(&i).copied()),
                stack,
                stack_cut,
                waits_on: head.waits_on,
                awaited_by: Vec::new(),
            });
            links.push(self.callback_links(head));
        }
        // `links` has one entry per head; keep those of the tasks listed.
        let listed: HashSet<u64> = listing.tasks.iter().map(|t| t.address).collect();
        let links: HashMap<u64, Vec<u64>> = heads
            .iter()
            .zip(links)
            .filter(|(h, _)| listed.contains(&h.address))
            .map(|(h, l)| (h.address, l))
            .collect();
        link_waiters(&mut listing.tasks, &links);
        listing
    }

    /// The task at `task` if it is one and still pending.
    fn pending_task(&mut self, task: u64) -> Option<TaskHead> {
        if self.kind(task)? != Kind::Task {
            return None;
        }
        let t = &self.offsets.task;
        let a = &self.all;
        let len = [
            t.task_coro,
            t.task_name,
            a.fut_state,
            a.task_fut_waiter,
            a.fut_callbacks,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 8;
        let raw = self.tasks.read_vec(task, len)?;
        let state = i32::from_ne_bytes(raw[a.fut_state..a.fut_state + 4].try_into().ok()?);
        if state != 0 {
            return None;
        }
        Some(TaskHead {
            address: task,
            event_loop: word_at(&raw, FUT_LOOP),
            coro: word_at(&raw, t.task_coro),
            name_obj: word_at(&raw, t.task_name),
            waits_on: word_at(&raw, a.task_fut_waiter),
            callback0: word_at(&raw, a.fut_callback0),
            callbacks: word_at(&raw, a.fut_callbacks),
        })
    }

    /// The frames of the coroutine `coro` and of everything it awaits, innermost first; and
    /// whether the chain was cut. A running task's coroutines are executing, not suspended:
    /// only the outermost frame is read (its value stack says nothing then).
    fn await_chain(&mut self, coro: u64, running: bool) -> (Vec<Frame>, bool) {
        let mut frames = Vec::new();
        let mut at = coro;
        let mut visited = HashSet::new();
        let mut cut = true;
        for _ in 0..MAX_AWAIT_DEPTH {
            if !visited.insert(at) {
                break;
            }
            match self.kind(at) {
                Some(Kind::Generator) => {
                    let Some((frame, awaited)) = self.generator_frame(at) else {
                        break;
                    };
                    frames.push(frame);
                    match awaited {
                        Some(next) if !running => at = next,
                        _ => {
                            cut = false;
                            break;
                        }
                    }
                }
                Some(Kind::AsyncGenSend | Kind::CoroWrapper) => {
                    match self.word(at.wrapping_add(FIRST_FIELD)) {
                        Some(next) => at = next,
                        None => break,
                    }
                }
                // A future, a task, or anything else awaited: the chain ends there.
                Some(_) => {
                    cut = false;
                    break;
                }
                None => break,
            }
        }
        frames.reverse();
        (frames, cut)
    }

    /// The frame of a coroutine, generator or async generator, and what it awaits (None
    /// unless suspended in an `await` / `yield from`); None when it has no frame (finished).
    fn generator_frame(&mut self, gen: u64) -> Option<(Frame, Option<u64>)> {
        let a = self.all.clone();
        let f = self.offsets.frame.clone();
        let frame_at = match f.layout {
            FrameLayout::Interpreter => gen.wrapping_add(a.gen_frame as u64),
            FrameLayout::Object => self.word(gen.wrapping_add(a.gen_frame as u64))?,
        };
        if frame_at == 0 {
            return None;
        }
        let len = [
            self.stacks.frame_len(),
            a.frame_stack + 8,
            a.frame_valuestack.unwrap_or(0) + 8,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let raw = self.tasks.read_vec(frame_at, len)?;
        let frame = self.stacks.frame_of(&raw).ok()?;
        let awaited = match a.stack_kind {
            StackKind::Index => {
                let instr = word_at(&raw, f.instr?);
                // The instruction to resume at: RESUME, whose oparg's low bits say after what
                // (2: yield from, 3: await; 0 and 1: start and plain yield).
                let resume = if f.instr_is_previous {
                    instr.wrapping_add(2)
                } else {
                    instr
                };
                let unit = self.tasks.read_vec(resume, 2)?;
                let depth =
                    i32::from_ne_bytes(raw[a.frame_stack..a.frame_stack + 4].try_into().ok()?)
                        as i64;
                if unit[1] & 3 < 2 || !(1..=MAX_STACK).contains(&depth) {
                    None
                } else {
                    let slot = frame_at
                        .wrapping_add(a.frame_localsplus? as u64)
                        .wrapping_add(8 * (depth as u64 - 1));
                    self.word(slot)
                }
            }
            StackKind::Pointer | StackKind::Depth => self.object_frame_awaits(&raw, &a),
        };
        Some((frame, awaited.filter(|&o| o != 0)))
    }

    /// What a 3.8–3.10 frame object awaits: the top of its value stack, when the instruction
    /// after `f_lasti` is `YIELD_FROM` (`_PyGen_yf`).
    fn object_frame_awaits(&mut self, raw: &[u8], a: &AllTasksOffsets) -> Option<u64> {
        let f = &self.offsets.frame;
        let lasti = i32::from_ne_bytes(raw[f.lasti?..f.lasti? + 4].try_into().ok()?) as i64;
        if lasti < 0 {
            return None;
        }
        let lasti_bytes = if a.stack_kind == StackKind::Depth {
            lasti * 2
        } else {
            lasti
        };
        let code = word_at(raw, f.code);
        let co_code = self.word(code.wrapping_add(self.offsets.code.code? as u64))?;
        let next = co_code
            .wrapping_add(self.offsets.bytes.ob_sval as u64)
            .wrapping_add(lasti_bytes as u64 + 2);
        if self.tasks.read_vec(next, 1)?[0] != YIELD_FROM {
            return None;
        }
        let slot = match a.stack_kind {
            StackKind::Pointer => word_at(raw, a.frame_stack).wrapping_sub(8),
            _ => {
                let depth =
                    i32::from_ne_bytes(raw[a.frame_stack..a.frame_stack + 4].try_into().ok()?)
                        as i64;
                if !(1..=MAX_STACK).contains(&depth) {
                    return None;
                }
                word_at(raw, a.frame_valuestack?).wrapping_add(8 * (depth as u64 - 1))
            }
        };
        self.word(slot)
    }

    /// Objects the task's done callbacks hold: closure cells, partial arguments, a bound
    /// method's `self` and its attributes.
    fn callback_links(&mut self, head: &TaskHead) -> Vec<u64> {
        let mut callbacks = vec![head.callback0];
        if self.kind(head.callbacks) == Some(Kind::List) {
            for entry in self.list_items(head.callbacks, MAX_CALLBACKS) {
                // (callback, context) tuples.
                if let Some(&callback) = self.tuple_items(entry, 1).first() {
                    callbacks.push(callback);
                }
            }
        }
        let mut links = Vec::new();
        for callback in callbacks.into_iter().filter(|&c| c != 0) {
            match self.kind(callback) {
                Some(Kind::Function) => {
                    let closure = self
                        .word(callback.wrapping_add(self.all.func_closure as u64))
                        .unwrap_or(0);
                    for cell in self.tuple_items(closure, MAX_LINKS) {
                        if self.kind(cell) == Some(Kind::Cell) {
                            links.extend(self.word(cell.wrapping_add(FIRST_FIELD)));
                        }
                    }
                }
                Some(Kind::Partial) => {
                    let args = self.word(callback.wrapping_add(SECOND_FIELD)).unwrap_or(0);
                    links.extend(self.tuple_items(args, MAX_LINKS));
                }
                Some(Kind::Method) => {
                    if let Some(owner) = self.word(callback.wrapping_add(SECOND_FIELD)) {
                        links.push(owner);
                        links.extend(self.attrs(owner).into_iter().map(|(_, v)| v));
                    }
                }
                _ => {}
            }
            if links.len() >= MAX_LINKS * MAX_CALLBACKS {
                break;
            }
        }
        links.retain(|&l| l != 0 && l != head.address);
        links
    }

    /// The loop each thread runs, as `_asyncio` files it in the thread state's dict
    /// (`__asyncio_running_event_loop__`; 3.8–3.12): loop address -> `threading.get_ident()`.
    fn running_loops(&mut self, heads: &[super::stacks::ThreadHead]) -> HashMap<u64, Option<u64>> {
        let mut loops = HashMap::new();
        let Some(dict_at) = self.all.thread_dict else {
            return loops;
        };
        for head in heads {
            let Some(dict) = self.word(head.tstate.wrapping_add(dict_at as u64)) else {
                continue;
            };
            if dict == 0 {
                continue;
            }
            let Some(filed) = self.tasks.dict_get(dict, "__asyncio_running_event_loop__") else {
                continue;
            };
            let event_loop = if self.all.running_loop_holder {
                self.word(filed.wrapping_add(FIRST_FIELD)).unwrap_or(0)
            } else {
                filed
            };
            if event_loop != 0 {
                loops.insert(event_loop, Some(head.python_tid));
            }
        }
        loops
    }

    /// `threading.get_ident()` of the thread running the loop at `event_loop`: its
    /// `_thread_id` attribute (asyncio's loops; None while not running, and for uvloop).
    fn loop_thread(&mut self, event_loop: u64) -> Option<u64> {
        let ident = self.attr(event_loop, "_thread_id")?;
        if self.kind(ident)? != Kind::Int {
            return None;
        }
        self.tasks.read_small_int(ident).filter(|&i| i != 0)
    }

    /// The instance attribute `name` of `obj`.
    fn attr(&mut self, obj: u64, name: &str) -> Option<u64> {
        for (key, value) in self.attrs(obj) {
            if self.name(key).as_deref() == Some(name) {
                return Some(value);
            }
        }
        None
    }

    /// An attribute name (a str, interned: cached by address).
    fn name(&mut self, key: u64) -> Option<Rc<str>> {
        if let Some(name) = self.names.get(&key) {
            return name.clone();
        }
        let name: Option<Rc<str>> = self.tasks.read_str(key).map(Rc::from);
        if self.names.len() < MAX_TYPES {
            self.names.insert(key, name.clone());
        }
        name
    }

    /// (name, value) of an object's instance attributes, wherever this version keeps them.
    fn attrs(&mut self, obj: u64) -> Vec<(u64, u64)> {
        self.try_attrs(obj).unwrap_or_default()
    }

    fn try_attrs(&mut self, obj: u64) -> Option<Vec<(u64, u64)>> {
        let a = self.all.clone();
        let ty = self.word(obj.wrapping_add(OB_TYPE))?;
        let t = self.tasks.read_vec(ty, a.type_dictoffset + 8)?;
        let flags = word_at(&t, a.type_flags);
        let dictoffset = word_at(&t, a.type_dictoffset) as i64;
        let managed = flags & TPFLAGS_MANAGED_DICT != 0 && a.instance_dict != InstanceDict::Offset;
        if !managed {
            if !(16..1 << 16).contains(&dictoffset) {
                return None;
            }
            let dict = self.word(obj.wrapping_add(dictoffset as u64))?;
            return self.dict_items(dict);
        }
        let dict_word = self.word(obj.wrapping_sub(MANAGED_DICT))?;
        let values = match a.instance_dict {
            InstanceDict::V311 if dict_word == 0 => {
                self.word(obj.wrapping_sub(MANAGED_VALUES_311))?
            }
            InstanceDict::V312 if dict_word & 1 == 1 => dict_word.wrapping_add(1),
            InstanceDict::V313 if dict_word == 0 => {
                if flags & TPFLAGS_INLINE_VALUES == 0 {
                    return None;
                }
                let basicsize = word_at(&t, a.type_basicsize);
                if basicsize > 1 << 16 {
                    return None;
                }
                let values = obj.wrapping_add(basicsize);
                // struct _dictvalues: capacity, size, embedded, valid, then the values.
                let header = self.tasks.read_vec(values, 8)?;
                if header[3] != 1 {
                    return None;
                }
                values.wrapping_add(8)
            }
            _ => return self.dict_items(dict_word),
        };
        if values == 0 {
            return None;
        }
        let cached = self.word(ty.wrapping_add(a.type_cached_keys? as u64))?;
        self.shared_values(cached, values)
    }

    /// The (key, value) pairs of a dict: a combined table, or a split one (an instance dict
    /// sharing its type's keys, the values apart).
    fn dict_items(&mut self, dict: u64) -> Option<Vec<(u64, u64)>> {
        if dict == 0 {
            return None;
        }
        let d = &self.offsets.dict;
        let (ma_keys, ma_values) = (d.ma_keys as u64, d.ma_values as u64);
        let values = self.word(dict.wrapping_add(ma_values))?;
        if values == 0 {
            let mut items = self.tasks.dict_entries(dict)?;
            items.truncate(MAX_ATTRS);
            return Some(items);
        }
        let keys = self.word(dict.wrapping_add(ma_keys))?;
        // 3.13's values carry an 8-byte header (capacity, size, embedded, valid).
        let values = if self.all.instance_dict == InstanceDict::V313 {
            values.wrapping_add(8)
        } else {
            values
        };
        self.shared_values(keys, values)
    }

    /// Attributes kept as a values array indexed like a shared keys table.
    fn shared_values(&mut self, keys: u64, values: u64) -> Option<Vec<(u64, u64)>> {
        let mut names = self.tasks.split_keys(keys)?;
        names.truncate(MAX_ATTRS);
        let raw = self.tasks.read_vec(values, names.len() * 8)?;
        Some(
            names
                .into_iter()
                .enumerate()
                .map(|(i, k)| (k, word_at(&raw, i * 8)))
                .filter(|&(k, v)| k != 0 && v != 0)
                .collect(),
        )
    }

    /// The keys of a `set` (none for anything else or a table past [`MAX_SET_SLOTS`]).
    fn set_items(&mut self, set: u64) -> Vec<u64> {
        if self.kind(set) != Some(Kind::Set) {
            return Vec::new();
        }
        let (Some(mask), Some(table)) = (
            self.word(set.wrapping_add(self.all.set_mask as u64)),
            self.word(set.wrapping_add(self.all.set_table as u64)),
        ) else {
            return Vec::new();
        };
        let slots = mask.wrapping_add(1);
        if !slots.is_power_of_two() || slots > MAX_SET_SLOTS {
            return Vec::new();
        }
        let Some(raw) = self.tasks.read_vec(table, slots as usize * 16) else {
            return Vec::new();
        };
        // setentry {key, hash}; empty slots hold NULL, deleted ones the dummy key (which is no
        // weak reference or task: the caller's type checks drop it).
        raw.chunks_exact(16)
            .map(|e| word_at(e, 0))
            .filter(|&k| k != 0)
            .collect()
    }

    /// The first `max` items of a tuple.
    fn tuple_items(&mut self, tuple: u64, max: usize) -> Vec<u64> {
        if tuple == 0 || self.kind(tuple) != Some(Kind::Tuple) {
            return Vec::new();
        }
        let Some(size) = self.word(tuple.wrapping_add(LIST_SIZE)) else {
            return Vec::new();
        };
        let n = (size as usize).min(max);
        let items_at = tuple.wrapping_add(self.offsets.code.names_items as u64);
        self.words(items_at, n)
    }

    /// The first `max` items of a list.
    fn list_items(&mut self, list: u64, max: usize) -> Vec<u64> {
        let (Some(size), Some(items)) = (
            self.word(list.wrapping_add(LIST_SIZE)),
            self.word(list.wrapping_add(LIST_ITEMS)),
        ) else {
            return Vec::new();
        };
        self.words(items, (size as usize).min(max))
    }

    fn words(&mut self, at: u64, n: usize) -> Vec<u64> {
        match self.tasks.read_vec(at, n * 8) {
            Some(raw) => raw.chunks_exact(8).map(|w| word_at(w, 0)).collect(),
            None => Vec::new(),
        }
    }

    fn word(&self, at: u64) -> Option<u64> {
        self.tasks.read_word(at)
    }

    /// What `obj` is, by its type's `tp_name` (and its bases', for subclasses of `Task` and
    /// `Future`); types are cached.
    fn kind(&mut self, obj: u64) -> Option<Kind> {
        if obj == 0 {
            return None;
        }
        let ty = self.word(obj.wrapping_add(OB_TYPE))?;
        if let Some(&kind) = self.kinds.get(&ty) {
            return Some(kind);
        }
        let mut kind = kind_of_name(&self.type_name(ty)?);
        // A Python subclass of `Task` or `Future` (`_GatheringFuture`) counts as its base.
        let mut at = ty;
        for _ in 0..MAX_BASES {
            if kind != Kind::Other {
                break;
            }
            let Some(base) = self
                .word(at.wrapping_add(self.all.type_base as u64))
                .filter(|&b| b != 0)
            else {
                break;
            };
            match self.type_name(base).map(|n| kind_of_name(&n)) {
                Some(k @ (Kind::Task | Kind::Future)) => kind = k,
                Some(_) => at = base,
                None => break,
            }
        }
        if self.kinds.len() < MAX_TYPES {
            self.kinds.insert(ty, kind);
        }
        Some(kind)
    }

    /// A type's `tp_name` (at most 63 bytes; a C string).
    fn type_name(&mut self, ty: u64) -> Option<String> {
        let tp_name = self.word(ty.wrapping_add(self.offsets.r#type.tp_name as u64))?;
        for len in [64, 24, 8] {
            if let Some(raw) = self.tasks.read_vec(tp_name, len) {
                let end = raw.iter().position(|&b| b == 0)?;
                return std::str::from_utf8(&raw[..end]).ok().map(str::to_string);
            }
        }
        None
    }
}

/// Fills each task's `awaited_by`: the tasks whose `waits_on` is the task itself, or one of the
/// objects its callbacks hold (`links`, by task address).
fn link_waiters(tasks: &mut [ListedTask], links: &HashMap<u64, Vec<u64>>) {
    let mut by_waited: HashMap<u64, Vec<u64>> = HashMap::new();
    for task in tasks.iter() {
        if task.waits_on != 0 {
            by_waited
                .entry(task.waits_on)
                .or_default()
                .push(task.address);
        }
    }
    for task in tasks.iter_mut() {
        let mut waiters: Vec<u64> = Vec::new();
        let held = links.get(&task.address).map(Vec::as_slice).unwrap_or(&[]);
        for waited in std::iter::once(&task.address).chain(held) {
            for &w in by_waited.get(waited).map(Vec::as_slice).unwrap_or(&[]) {
                if w != task.address && !waiters.contains(&w) {
                    waiters.push(w);
                }
            }
        }
        task.awaited_by = waiters;
    }
}

#[cfg(test)]
#[path = "all_tasks_tests.rs"]
mod tests;
