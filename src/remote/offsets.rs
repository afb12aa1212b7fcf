//! The per-version struct-offset tables in `python_offsets/` (one TOML file per CPython minor
//! version, each number with its source in CPython's tree), compiled into the binary.

use serde::{Deserialize, Serialize};

/// `PyDictObject` and its keys object.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DictOffsets {
    /// `ma_used`.
    pub ma_used: usize,
    /// `ma_keys`.
    pub ma_keys: usize,
    /// `ma_values` (split tables; loopspy only walks combined ones).
    pub ma_values: usize,
    /// `"3.8"` (dk_size + width by size) or `"3.11"` (dk_log2_index_bytes + dk_kind).
    pub keys_layout: String,
}

/// `PyModuleObject`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModuleOffsets {
    /// `md_dict`.
    pub md_dict: usize,
}

/// Compact unicode objects.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct UnicodeOffsets {
    /// `length`.
    pub length: usize,
    /// The `state` bitfield.
    pub state: usize,
    /// Data of a compact ASCII string (`sizeof(PyASCIIObject)`).
    pub ascii_data: usize,
    /// Data of a compact non-ASCII string (`sizeof(PyCompactUnicodeObject)`).
    pub compact_data: usize,
}

/// `PyLongObject`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LongOffsets {
    /// `ob_size` (or `lv_tag` when `tagged`).
    pub tag: usize,
    /// First 30-bit digit.
    pub digits: usize,
    /// 3.12+: the size word is `ndigits << 3 | sign`.
    pub tagged: bool,
}

/// `PyTypeObject`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TypeOffsets {
    /// `tp_name`.
    pub tp_name: usize,
}

/// `_asyncio.Task` (`TaskObj`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TaskOffsets {
    /// `task_coro`.
    pub task_coro: usize,
    /// `task_name`.
    pub task_name: usize,
    /// Whether `task_name` may hold an int N for the default name `Task-N`.
    pub lazy_int_names: bool,
}

/// Coroutine objects.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CoroOffsets {
    /// `cr_qualname`.
    pub qualname: usize,
}

/// `PyInterpreterState`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct InterpreterOffsets {
    /// The head of the thread-state list (`tstate_head`, or `threads.head` from 3.11).
    pub threads_head: usize,
}

/// `PyThreadState`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ThreadOffsets {
    /// `next` in the interpreter's thread list.
    pub next: usize,
    /// The current frame pointer held directly in the thread state (`frame` up to 3.10,
    /// `current_frame` from 3.13).
    #[serde(default)]
    pub frame: Option<usize>,
    /// 3.11 and 3.12: the `_PyCFrame *cframe` whose `current_frame` is the innermost frame.
    #[serde(default)]
    pub cframe: Option<usize>,
    /// `current_frame` inside `_PyCFrame`.
    #[serde(default)]
    pub cframe_current_frame: Option<usize>,
    /// `thread_id` (the `pthread_t`, `threading.get_ident()`).
    pub thread_id: usize,
    /// `native_thread_id` (the kernel tid), 3.11+.
    #[serde(default)]
    pub native_thread_id: Option<usize>,
    /// `context_ver`: counts every entry into and exit from a `contextvars.Context` on this
    /// thread. asyncio and uvloop run each callback inside its context, so the count is the
    /// thread's callback clock: unchanged between two reads means the same callback ran.
    #[serde(default)]
    pub context_ver: Option<usize>,
}

fn tuple_items_before_3_14() -> usize {
    24
}

/// Which frame struct a version keeps on its frame chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameLayout {
    /// `PyFrameObject` (3.8–3.10): a heap object per frame, `f_lasti` for the position.
    Object,
    /// `_PyInterpreterFrame` (3.11+): frames on the thread's data stack (or inside a
    /// generator), an instruction pointer for the position.
    Interpreter,
}

/// The frame struct.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FrameOffsets {
    /// Which struct this is.
    pub layout: FrameLayout,
    /// `f_back` / `previous`: the caller.
    pub back: usize,
    /// `f_code` / `f_executable`.
    pub code: usize,
    /// `f_globals`: the module dict the frame runs in. A code object whose address is reused
    /// by another one almost always comes back under another module's globals, so the code
    /// cache checks it at once (`remote::stacks`).
    #[serde(default)]
    pub globals: Option<usize>,
    /// `f_lasti` (an `int`), `PyFrameObject` only.
    #[serde(default)]
    pub lasti: Option<usize>,
    /// `prev_instr` / `instr_ptr`, `_PyInterpreterFrame` only.
    #[serde(default)]
    pub instr: Option<usize>,
    /// True when `instr` points at the instruction started last (3.11, 3.12), false when at
    /// the one executing or next (3.13).
    #[serde(default)]
    pub instr_is_previous: bool,
    /// `owner` (a `char`), `_PyInterpreterFrame` only.
    #[serde(default)]
    pub owner: Option<usize>,
    /// The first `owner` value that is no Python function's frame (3.12–3.13: the C stack's
    /// shim frames; 3.14+: the interpreter's entry frames too): frames owned by it or above are
    /// skipped.
    #[serde(default)]
    pub cstack_owner: Option<u8>,
    /// The largest valid `owner` (3.14 has two non-Python owners, 3 and 4); a larger one is a
    /// torn read. Defaults to `cstack_owner`.
    #[serde(default)]
    pub max_owner: Option<u8>,
    /// Tag bits of the code pointer (3.14+ hold it as a `_PyStackRef`, whose low two bits are
    /// flags): masked off before the pointer is followed.
    #[serde(default)]
    pub code_tag_bits: u64,
    /// `localsplus`, the frame's locals (3.13+, from the debug offsets): `Handle._run`'s
    /// `self` is read there to tell one callback from the next.
    #[serde(default)]
    pub localsplus: Option<usize>,
}

/// How a code object maps bytecode offsets to lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LineTableFormat {
    /// 3.8–3.9 `co_lnotab`.
    Lnotab,
    /// 3.10 `co_linetable` (PEP 626).
    Linetable310,
    /// 3.11+ `co_linetable` (the location table).
    Locations311,
}

/// `PyCodeObject`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CodeOffsets {
    /// `co_filename`.
    pub filename: usize,
    /// `co_name`.
    pub name: usize,
    /// `co_qualname` (3.11+).
    #[serde(default)]
    pub qualname: Option<usize>,
    /// `co_firstlineno` (an `int`).
    pub firstlineno: usize,
    /// `co_lnotab` / `co_linetable`.
    pub linetable: usize,
    /// `co_code` (a bytes object), up to 3.10.
    #[serde(default)]
    pub code: Option<usize>,
    /// `co_code_adaptive`, the bytecode inside the code object (3.11+).
    #[serde(default)]
    pub code_adaptive: Option<usize>,
    /// The line table's format.
    /// The tuple of the code's local names: `co_varnames` up to 3.10, `co_localsplusnames`
    /// from 3.11 (where `_run_once` keeps its handle loop's index `i`).
    #[serde(default)]
    pub varnames: Option<usize>,
    /// Where that tuple's items start: `ob_item` after PyObject_VAR_HEAD (24), or after the
    /// cached `ob_hash` 3.14 added (32).
    #[serde(default = "tuple_items_before_3_14")]
    pub names_items: usize,
    pub line_table: LineTableFormat,
}

/// `PyBytesObject`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BytesOffsets {
    /// `ob_size`.
    pub ob_size: usize,
    /// `ob_sval`, the data.
    pub ob_sval: usize,
}

/// Where the GIL holder is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GilLayout {
    /// Up to 3.11: a word holding the thread state that holds the GIL (0 when free).
    TstateCurrent,
    /// 3.12+: `struct _gil_runtime_state` with `locked` and `last_holder`.
    RuntimeState,
}

/// The GIL.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct GilOffsets {
    /// Which form.
    pub layout: GilLayout,
    /// `last_holder` in `_gil_runtime_state`.
    #[serde(default)]
    pub last_holder: Option<usize>,
    /// `locked` in `_gil_runtime_state`.
    #[serde(default)]
    pub locked: Option<usize>,
}

/// Where a suspended coroutine keeps the object it awaits (`_PyGen_yf` in
/// `Objects/genobject.c`): the top of its frame's value stack, found three ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StackKind {
    /// 3.8, 3.9: `f_stacktop` points past the top (NULL while the frame runs).
    Pointer,
    /// 3.10: `f_valuestack[f_stackdepth - 1]`.
    Depth,
    /// 3.11+: `localsplus[stacktop - 1]` of the `_PyInterpreterFrame` inside the coroutine.
    Index,
}

/// How a version keeps a Python instance's attributes (`WeakSet.data`, a `TaskGroup`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum InstanceDict {
    /// Up to 3.10: a dict pointer at the type's `tp_dictoffset`.
    #[serde(rename = "offset")]
    Offset,
    /// 3.11: the dict at `obj - 24`, else the values at `obj - 32`.
    #[serde(rename = "3.11")]
    V311,
    /// 3.12: `obj - 24` holds the dict, or the values pointer minus one (low bit set).
    #[serde(rename = "3.12")]
    V312,
    /// 3.13: the dict at `obj - 24`, else inline values at `obj + tp_basicsize`.
    #[serde(rename = "3.13")]
    V313,
}

/// What `loopspy tasks` reads besides the running-task reader's fields: futures' state and
/// done callbacks, what a task waits on, suspended coroutines' frames and value stacks, and
/// the registries' types (sets, weak sets, instance attributes). Measured by `derive.py`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AllTasksOffsets {
    /// `fut_state` (an int: 0 pending, 1 cancelled, 2 finished).
    pub fut_state: usize,
    /// `fut_callback0`, the first done callback.
    pub fut_callback0: usize,
    /// `fut_callbacks`, a list of `(callback, context)` tuples for the others.
    pub fut_callbacks: usize,
    /// `task_fut_waiter`, the future the task waits on.
    pub task_fut_waiter: usize,
    /// `gi_frame` (a pointer, 3.8–3.10) or `gi_iframe` (the frame inside the object, 3.11+).
    pub gen_frame: usize,
    /// How the value stack's top is found.
    pub stack_kind: StackKind,
    /// `f_stacktop` (pointer), `f_stackdepth` (depth, an int) or `stacktop` (index, an int).
    pub frame_stack: usize,
    /// `f_valuestack` (3.10).
    #[serde(default)]
    pub frame_valuestack: Option<usize>,
    /// `localsplus` (3.11+).
    #[serde(default)]
    pub frame_localsplus: Option<usize>,
    /// `tp_basicsize`.
    pub type_basicsize: usize,
    /// `tp_flags`.
    pub type_flags: usize,
    /// `tp_base`.
    pub type_base: usize,
    /// `tp_dictoffset`.
    pub type_dictoffset: usize,
    /// Where instance attributes are.
    pub instance_dict: InstanceDict,
    /// `ht_cached_keys` of a heap type (3.11+).
    #[serde(default)]
    pub type_cached_keys: Option<usize>,
    /// `PySetObject.mask`.
    pub set_mask: usize,
    /// `PySetObject.table`.
    pub set_table: usize,
    /// `PyFunctionObject.func_closure`.
    pub func_closure: usize,
    /// The thread state's `dict`, where `_asyncio` files the thread's running loop (3.8–3.12;
    /// 3.13 keeps it elsewhere).
    #[serde(default)]
    pub thread_dict: Option<usize>,
    /// The running loop is filed in a holder whose `rl_loop` (16) is the loop (up to 3.11).
    #[serde(default)]
    pub running_loop_holder: bool,
}

/// One version's table.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PythonOffsets {
    /// `3.X`.
    pub version: String,
    /// Dicts.
    pub dict: DictOffsets,
    /// Modules.
    pub module: ModuleOffsets,
    /// Strings.
    pub unicode: UnicodeOffsets,
    /// Ints.
    pub long: LongOffsets,
    /// Types.
    pub r#type: TypeOffsets,
    /// Tasks.
    pub task: TaskOffsets,
    /// Coroutines.
    pub coro: CoroOffsets,
    /// The interpreter state.
    pub interpreter: InterpreterOffsets,
    /// Thread states.
    pub thread: ThreadOffsets,
    /// Frames.
    pub frame: FrameOffsets,
    /// Code objects.
    pub code: CodeOffsets,
    /// Bytes objects (line tables).
    pub bytes: BytesOffsets,
    /// The GIL holder.
    pub gil: GilOffsets,
    /// Every task and what it awaits (`loopspy tasks`); None where not known (3.14+).
    #[serde(default)]
    pub all_tasks: Option<AllTasksOffsets>,
}

const TABLES: &[(u64, &str)] = &[
    (8, include_str!("../../python_offsets/3.8.toml")),
    (9, include_str!("../../python_offsets/3.9.toml")),
    (10, include_str!("../../python_offsets/3.10.toml")),
    (11, include_str!("../../python_offsets/3.11.toml")),
    (12, include_str!("../../python_offsets/3.12.toml")),
    (13, include_str!("../../python_offsets/3.13.toml")),
];

/// The table for CPython 3.`minor`, if loopspy has one.
pub fn for_minor(minor: u64) -> Option<PythonOffsets> {
    let (_, text) = TABLES.iter().find(|(m, _)| *m == minor)?;
    Some(toml::from_str(text).expect("python_offsets tables are valid (unit-tested)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_parses_and_names_its_version() {
        for (minor, _) in TABLES {
            let table = for_minor(*minor).unwrap();
            assert_eq!(table.version, format!("3.{minor}"));
            assert!(table.task.task_name == table.task.task_coro + 8);
            let all = table.all_tasks.expect("every table has [all_tasks]");
            assert_eq!(all.task_fut_waiter + 8, table.task.task_coro);
        }
        assert!(for_minor(7).is_none());
    }
}
