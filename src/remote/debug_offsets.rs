//! CPython 3.13+ describes its own struct layout: `_PyRuntime` begins with `_Py_DebugOffsets`
//! (cookie `xdebugpy`, `PY_VERSION_HEX`, `free_threaded`, then one `uint64_t` per field of the
//! runtime, interpreter and thread states, frames, code objects, strings...). loopspy reads
//! every offset its stack reader needs from there, so a patch release that moves a field
//! (3.14.5 moved every `PyInterpreterState` field after `gc` by 24 bytes) is followed, not
//! misread. `python_offsets/3.8–3.12` stay: those versions have no debug offsets.
//!
//! What is *not* in the debug offsets comes from the version's headers and is written here
//! with its source: the frame-owner enum, the `_PyStackRef` tag bits, the string `state`
//! bits, the dict-keys layout, and (3.13) the task layout, which 3.14+ publishes in
//! `_asyncio`'s own section (see `remote::tasks`).
//!
//! Where the table lives: the `.PyRuntime` section of the executable or `libpython` the
//! target maps (`remote::elf`). Its bytes are the target's and are checked before use: the
//! cookie, a final-release version loopspy knows the table layout of, a GIL build, and every
//! value within bounds that keep the reader's fixed-size reads meaningful.

use super::elf;
use super::memory::{word_at, RemoteMemory};
use super::offsets::{
    BytesOffsets, CodeOffsets, CoroOffsets, DictOffsets, FrameLayout, FrameOffsets, GilLayout,
    GilOffsets, InterpreterOffsets, LineTableFormat, LongOffsets, ModuleOffsets, PythonOffsets,
    TaskOffsets, ThreadOffsets, TypeOffsets, UnicodeOffsets,
};

/// The table's first bytes.
pub const COOKIE: &[u8; 8] = b"xdebugpy";
/// Minor versions whose table layout loopspy knows.
pub const KNOWN_MINORS: std::ops::RangeInclusive<u64> = 13..=15;
/// Largest offset accepted inside a thread state, frame or code object: the reader reads
/// these structs' heads into 256-byte buffers.
const MAX_SMALL_OFFSET: u64 = 248;
/// Largest offset accepted inside the runtime or an interpreter state.
const MAX_STATE_OFFSET: u64 = 4 << 20;

/// Why a target's debug offsets cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DebugOffsetsError {
    /// The bytes at `_PyRuntime` are not a debug-offsets table.
    #[error("no debug offsets at _PyRuntime (cookie {0:?})")]
    NoCookie(String),
    /// A version whose table layout loopspy does not know (or a pre-release).
    #[error("Python {version}: {why}")]
    UnknownVersion {
        /// `3.16.0`, `3.15.0b1`...
        version: String,
        /// What is not known.
        why: &'static str,
    },
    /// A free-threaded build (`python3.14t`).
    #[error("Python {0} is a free-threaded build")]
    FreeThreaded(String),
    /// A value that cannot be a real offset.
    #[error("implausible debug offset {field} = {value}")]
    Implausible {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

/// A version from `PY_VERSION_HEX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionHex(pub u64);

impl VersionHex {
    /// Major version.
    pub fn major(self) -> u64 {
        (self.0 >> 24) & 0xff
    }
    /// Minor version.
    pub fn minor(self) -> u64 {
        (self.0 >> 16) & 0xff
    }
    /// Micro version.
    pub fn micro(self) -> u64 {
        (self.0 >> 8) & 0xff
    }
    /// A final release (`PY_RELEASE_LEVEL_FINAL`).
    pub fn is_final(self) -> bool {
        (self.0 >> 4) & 0xf == 0xf
    }
}

impl std::fmt::Display for VersionHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major(), self.minor(), self.micro())?;
        let serial = self.0 & 0xf;
        match (self.0 >> 4) & 0xf {
            0xa => write!(f, "a{serial}"),
            0xb => write!(f, "b{serial}"),
            0xc => write!(f, "rc{serial}"),
            _ => Ok(()),
        }
    }
}

/// The fields loopspy takes from the table. Each has a position per known layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `runtime_state.interpreters_head`.
    InterpretersHead,
    /// `interpreter_state.size`.
    InterpSize,
    /// `interpreter_state.threads_head`.
    ThreadsHead,
    /// `interpreter_state.imports_modules`.
    ImportsModules,
    /// `interpreter_state.ceval_gil`.
    CevalGil,
    /// `interpreter_state.gil_runtime_state`.
    GilRuntimeState,
    /// `interpreter_state.gil_runtime_state_locked`.
    GilLocked,
    /// `interpreter_state.gil_runtime_state_holder`.
    GilHolder,
    /// `thread_state.size`.
    ThreadSize,
    /// `thread_state.next`.
    ThreadNext,
    /// `thread_state.current_frame`.
    ThreadFrame,
    /// `thread_state.thread_id`.
    ThreadId,
    /// `thread_state.native_thread_id`.
    NativeThreadId,
    /// `interpreter_frame.previous`.
    FramePrevious,
    /// `interpreter_frame.executable`.
    FrameExecutable,
    /// `interpreter_frame.instr_ptr`.
    FrameInstr,
    /// `interpreter_frame.owner`.
    FrameOwner,
    /// `interpreter_frame.localsplus`.
    FrameLocalsplus,
    /// `code_object.filename`.
    CodeFilename,
    /// `code_object.name`.
    CodeName,
    /// `code_object.qualname`.
    CodeQualname,
    /// `code_object.linetable`.
    CodeLinetable,
    /// `code_object.firstlineno`.
    CodeFirstLine,
    /// `code_object.localsplusnames`.
    CodeLocalsplusnames,
    /// `code_object.co_code_adaptive`.
    CodeAdaptive,
    /// `pyobject.size`.
    ObjectSize,
    /// `pyobject.ob_type`.
    ObType,
    /// `type_object.tp_name`.
    TpName,
    /// `dict_object.ma_keys`.
    DictKeys,
    /// `dict_object.ma_values`.
    DictValues,
    /// `long_object.lv_tag`.
    LongTag,
    /// `long_object.ob_digit`.
    LongDigit,
    /// `bytes_object.ob_size`.
    BytesSize,
    /// `bytes_object.ob_sval`.
    BytesData,
    /// `unicode_object.state`.
    StrState,
    /// `unicode_object.length`.
    StrLength,
    /// `unicode_object.asciiobject_size`.
    StrAsciiSize,
    /// `gen_object.gi_name` (3.14+).
    GenName,
}

/// Byte positions in `_Py_DebugOffsets` of 3.13, 3.14 and 3.15 (`Include/internal/
/// pycore_debug_offsets.h` of each; `python_offsets/debug-offsets-3.13-3.15.md` lists every
/// field with the Debian binaries' values). None: not in that layout.
fn position(field: Field, minor: u64) -> Option<usize> {
    use Field::*;
    let [v13, v14, v15]: [i32; 3] = match field {
        InterpretersHead => [40, 40, 40],
        InterpSize => [48, 48, 48],
        ThreadsHead => [72, 72, 72],
        ImportsModules => [88, 96, 96],
        CevalGil => [112, 120, 120],
        GilRuntimeState => [120, 128, 128],
        GilLocked => [136, 144, 144],
        GilHolder => [144, 152, 152],
        ThreadSize => [152, 176, 176],
        ThreadNext => [168, 192, 192],
        ThreadFrame => [184, 208, 208],
        ThreadId => [192, 216, 240],
        NativeThreadId => [200, 224, 248],
        FramePrevious => [232, 256, 320],
        FrameExecutable => [240, 264, 328],
        FrameInstr => [248, 272, 336],
        FrameOwner => [264, 288, 352],
        FrameLocalsplus => [256, 280, 344],
        CodeFilename => [280, 320, 384],
        CodeName => [288, 328, 392],
        CodeQualname => [296, 336, 400],
        CodeLinetable => [304, 344, 408],
        CodeFirstLine => [312, 352, 416],
        CodeLocalsplusnames => [328, 368, 432],
        CodeAdaptive => [344, 384, 448],
        ObjectSize => [352, 400, 464],
        ObType => [360, 408, 472],
        TpName => [376, 424, 488],
        DictKeys => [456, 536, 632],
        DictValues => [464, 544, 640],
        LongTag => [496, 576, 672],
        LongDigit => [504, 584, 680],
        BytesSize => [520, 600, 696],
        BytesData => [528, 608, 704],
        StrState => [544, 624, 720],
        StrLength => [552, 632, 728],
        StrAsciiSize => [560, 640, 736],
        GenName => [-1, 672, 800],
    };
    let at = match minor {
        13 => v13,
        14 => v14,
        15 => v15,
        _ => -1,
    };
    usize::try_from(at).ok()
}

/// Bytes of the table per layout (`sizeof(_Py_DebugOffsets)`).
pub fn table_len(minor: u64) -> Option<usize> {
    match minor {
        13 => Some(584),
        14 => Some(760),
        15 => Some(888),
        _ => None,
    }
}

/// A checked debug-offsets table.
#[derive(Debug, Clone)]
pub struct DebugOffsets {
    /// The interpreter's version.
    pub version: VersionHex,
    bytes: Vec<u8>,
}

impl DebugOffsets {
    /// Reads and checks the table at `runtime` (the address of `_PyRuntime`).
    pub fn read(mem: &impl RemoteMemory, runtime: u64) -> Result<Self, DebugOffsetsError> {
        let mut head = [0u8; 24];
        if !mem.read(runtime, &mut head) {
            return Err(DebugOffsetsError::NoCookie("unreadable".into()));
        }
        let version = VersionHex(word_at(&head, 8));
        let len = Self::check_head(&head)?;
        let mut bytes = vec![0u8; len];
        if !mem.read(runtime, &mut bytes) {
            return Err(DebugOffsetsError::NoCookie("unreadable".into()));
        }
        Self::parse(bytes).map(|t| DebugOffsets { version, ..t })
    }

    /// Checks the cookie, version and build of a table's first 24 bytes; the table's length.
    fn check_head(head: &[u8]) -> Result<usize, DebugOffsetsError> {
        if head.get(..8) != Some(COOKIE.as_slice()) {
            let shown = String::from_utf8_lossy(head.get(..8).unwrap_or_default()).into_owned();
            return Err(DebugOffsetsError::NoCookie(shown));
        }
        let version = VersionHex(word_at(head, 8));
        let unknown = |why| DebugOffsetsError::UnknownVersion {
            version: version.to_string(),
            why,
        };
        if version.major() != 3 || !KNOWN_MINORS.contains(&version.minor()) {
            return Err(unknown(
                "loopspy knows the debug-offsets layout of CPython 3.13 to 3.15 only",
            ));
        }
        // The layout changed between pre-releases (3.13rc2, 3.14b1, 3.15b4): only final
        // releases are known to share their minor version's layout.
        if !version.is_final() {
            return Err(unknown(
                "pre-releases are not supported (their layouts change)",
            ));
        }
        if word_at(head, 16) != 0 {
            return Err(DebugOffsetsError::FreeThreaded(version.to_string()));
        }
        Ok(table_len(version.minor()).expect("known minor"))
    }

    /// A table from its bytes (tests build them by hand).
    pub fn parse(bytes: Vec<u8>) -> Result<Self, DebugOffsetsError> {
        let len = Self::check_head(&bytes)?;
        if bytes.len() < len {
            return Err(DebugOffsetsError::NoCookie("table cut short".into()));
        }
        let table = DebugOffsets {
            version: VersionHex(word_at(&bytes, 8)),
            bytes,
        };
        table.check_bounds()?;
        Ok(table)
    }

    /// The value of `field` (0 when the layout has no such field).
    pub fn get(&self, field: Field) -> u64 {
        position(field, self.version.minor())
            .map(|at| word_at(&self.bytes, at))
            .unwrap_or(0)
    }

    fn check_bounds(&self) -> Result<(), DebugOffsetsError> {
        use Field::*;
        let small = [
            ThreadNext,
            ThreadFrame,
            ThreadId,
            NativeThreadId,
            FramePrevious,
            FrameExecutable,
            FrameInstr,
            FrameOwner,
            FrameLocalsplus,
            CodeFilename,
            CodeName,
            CodeQualname,
            CodeLinetable,
            CodeFirstLine,
            CodeLocalsplusnames,
            CodeAdaptive,
            ObjectSize,
            ObType,
            TpName,
            DictKeys,
            DictValues,
            LongTag,
            LongDigit,
            BytesSize,
            BytesData,
            StrState,
            StrLength,
            StrAsciiSize,
            GenName,
        ];
        let large = [
            InterpretersHead,
            InterpSize,
            ThreadsHead,
            ImportsModules,
            CevalGil,
            GilRuntimeState,
            GilLocked,
            GilHolder,
        ];
        let implausible = |field, value| DebugOffsetsError::Implausible { field, value };
        for (fields, max) in [
            (&small[..], MAX_SMALL_OFFSET),
            (&large[..], MAX_STATE_OFFSET),
        ] {
            for &field in fields {
                let value = self.get(field);
                if value > max {
                    return Err(implausible(field_name(field), value));
                }
            }
        }
        // The GIL's fields are found relative to the GIL struct.
        for field in [GilLocked, GilHolder] {
            let rel = self.get(field).checked_sub(self.get(GilRuntimeState));
            if rel.is_none_or(|r| r >= 64) {
                return Err(implausible(field_name(field), self.get(field)));
            }
        }
        if self.get(ObType) != 8 || self.get(ObjectSize) != 16 {
            // Every GIL build has a 16-byte object header; anything else is not one.
            return Err(implausible("pyobject.size", self.get(ObjectSize)));
        }
        Ok(())
    }

    /// The stack and task readers' offsets for this interpreter.
    pub fn reader_offsets(&self) -> PythonOffsets {
        use Field::*;
        let minor = self.version.minor();
        let get = |f| self.get(f) as usize;
        // `_frameowner` (Include/internal/pycore_frame.h in 3.13, pycore_interpframe_structs.h
        // from 3.14): THREAD 0, GENERATOR 1, FRAME_OBJECT 2; then 3.13 CSTACK 3; 3.14
        // INTERPRETER 3 and CSTACK 4; 3.15 INTERPRETER 3 (its per-thread base frame too).
        let max_owner = if minor == 14 { 4 } else { 3 };
        PythonOffsets {
            version: format!("3.{minor}"),
            dict: DictOffsets {
                // `ma_used` follows PyObject_HEAD.
                ma_used: get(ObjectSize),
                ma_keys: get(DictKeys),
                ma_values: get(DictValues),
                // `struct _dictkeysobject` is the 3.11 one through 3.15.
                keys_layout: "3.11".into(),
            },
            // `PyModuleObject`: PyObject_HEAD, then md_dict.
            module: ModuleOffsets {
                md_dict: get(ObjectSize),
            },
            unicode: UnicodeOffsets {
                length: get(StrLength),
                state: get(StrState),
                ascii_data: get(StrAsciiSize),
                // sizeof(PyCompactUnicodeObject) = PyASCIIObject + utf8_length + utf8.
                compact_data: get(StrAsciiSize) + 16,
            },
            long: LongOffsets {
                tag: get(LongTag),
                digits: get(LongDigit),
                tagged: true,
            },
            r#type: TypeOffsets {
                tp_name: get(TpName),
            },
            // 3.13's TaskObj (Modules/_asynciomodule.c: FutureObj_HEAD, task_fut_waiter,
            // task_coro 120, task_name 128); 3.14+ take theirs from `.AsyncioDebug`.
            task: if minor == 13 {
                TaskOffsets {
                    task_coro: 120,
                    task_name: 128,
                    lazy_int_names: true,
                }
            } else {
                TaskOffsets {
                    task_coro: 128,
                    task_name: 136,
                    lazy_int_names: true,
                }
            },
            // `gi_qualname` follows `gi_name` (_PyGenObject_HEAD).
            coro: CoroOffsets {
                qualname: if minor == 13 { 32 } else { get(GenName) + 8 },
            },
            interpreter: InterpreterOffsets {
                threads_head: get(ThreadsHead),
            },
            thread: ThreadOffsets {
                next: get(ThreadNext),
                frame: Some(get(ThreadFrame)),
                cframe: None,
                cframe_current_frame: None,
                thread_id: get(ThreadId),
                native_thread_id: Some(get(NativeThreadId)),
                context_ver: Some(context_ver_offset(minor)).filter(|at| at + 8 <= get(ThreadSize)),
            },
            frame: FrameOffsets {
                layout: FrameLayout::Interpreter,
                back: get(FramePrevious),
                code: get(FrameExecutable),
                lasti: None,
                instr: Some(get(FrameInstr)),
                instr_is_previous: false,
                owner: Some(get(FrameOwner)),
                cstack_owner: Some(3),
                max_owner: Some(max_owner),
                // `_PyStackRef` from 3.14: Py_TAG_BITS is 3 in GIL builds.
                code_tag_bits: if minor >= 14 { 3 } else { 0 },
                localsplus: Some(get(FrameLocalsplus)),
                // Not in the debug offsets: `_PyInterpreterFrame` is f_executable (0),
                // previous (8), f_funcobj (16), f_globals (24) in 3.13
                // (Include/internal/pycore_frame.h) and 3.14–3.15
                // (pycore_interpframe_structs.h).
                globals: Some(24),
            },
            code: CodeOffsets {
                filename: get(CodeFilename),
                name: get(CodeName),
                qualname: Some(get(CodeQualname)),
                firstlineno: get(CodeFirstLine),
                linetable: get(CodeLinetable),
                code: None,
                code_adaptive: Some(get(CodeAdaptive)),
                varnames: Some(get(CodeLocalsplusnames)),
                // Include/cpython/tupleobject.h: 3.14 caches the hash before the items.
                names_items: if minor >= 14 { 32 } else { 24 },
                line_table: LineTableFormat::Locations311,
            },
            bytes: BytesOffsets {
                ob_size: get(BytesSize),
                ob_sval: get(BytesData),
            },
            gil: GilOffsets {
                layout: GilLayout::RuntimeState,
                last_holder: Some(get(GilHolder) - get(GilRuntimeState)),
                locked: Some(get(GilLocked) - get(GilRuntimeState)),
            },
            // The debug offsets of 3.13 say nothing of futures, coroutine value stacks or
            // instance attributes: `python_offsets/3.13.toml` does (3.13.x share one layout).
            all_tasks: if minor == 13 {
                super::offsets::for_minor(13).and_then(|t| t.all_tasks)
            } else {
                None
            },
        }
    }
}

fn field_name(field: Field) -> &'static str {
    use Field::*;
    match field {
        InterpretersHead => "runtime_state.interpreters_head",
        InterpSize => "interpreter_state.size",
        ThreadsHead => "interpreter_state.threads_head",
        ImportsModules => "interpreter_state.imports_modules",
        CevalGil => "interpreter_state.ceval_gil",
        GilRuntimeState => "interpreter_state.gil_runtime_state",
        GilLocked => "interpreter_state.gil_runtime_state_locked",
        GilHolder => "interpreter_state.gil_runtime_state_holder",
        ThreadSize => "thread_state.size",
        ThreadNext => "thread_state.next",
        ThreadFrame => "thread_state.current_frame",
        ThreadId => "thread_state.thread_id",
        NativeThreadId => "thread_state.native_thread_id",
        FramePrevious => "interpreter_frame.previous",
        FrameExecutable => "interpreter_frame.executable",
        FrameInstr => "interpreter_frame.instr_ptr",
        FrameOwner => "interpreter_frame.owner",
        FrameLocalsplus => "interpreter_frame.localsplus",
        CodeFilename => "code_object.filename",
        CodeName => "code_object.name",
        CodeQualname => "code_object.qualname",
        CodeLinetable => "code_object.linetable",
        CodeFirstLine => "code_object.firstlineno",
        CodeLocalsplusnames => "code_object.localsplusnames",
        CodeAdaptive => "code_object.co_code_adaptive",
        ObjectSize => "pyobject.size",
        ObType => "pyobject.ob_type",
        TpName => "type_object.tp_name",
        DictKeys => "dict_object.ma_keys",
        DictValues => "dict_object.ma_values",
        LongTag => "long_object.lv_tag",
        LongDigit => "long_object.ob_digit",
        BytesSize => "bytes_object.ob_size",
        BytesData => "bytes_object.ob_sval",
        StrState => "unicode_object.state",
        StrLength => "unicode_object.length",
        StrAsciiSize => "unicode_object.asciiobject_size",
        GenName => "gen_object.gi_name",
    }
}

/// Where the target's interpreter is, as its debug offsets say.
#[derive(Debug, Clone)]
pub struct RuntimeLayout {
    /// The checked table.
    pub table: DebugOffsets,
    /// `_PyRuntime`'s address.
    pub runtime: u64,
    /// The main interpreter's `PyInterpreterState`.
    pub interpreter: u64,
    /// Its GIL (`struct _gil_runtime_state`), 0 when unreadable.
    pub gil: u64,
    /// Address of its `sys.modules` pointer.
    pub modules_ptr: u64,
    /// The binary holding `_PyRuntime`.
    pub binary: String,
}

/// Finds `_PyRuntime` in the executable or `libpython` `pid` maps (its `.PyRuntime` section)
/// and reads its debug offsets. None when no mapped binary has the section (CPython ≤ 3.12);
/// an error when the table is there and unusable (unknown layout, free-threaded, garbage).
pub fn locate(
    pid: i32,
    mem: &impl RemoteMemory,
) -> Option<Result<RuntimeLayout, DebugOffsetsError>> {
    let section = elf::find_mapped_section(pid, |name| name.contains("python"), ".PyRuntime")?;
    Some(layout_at(mem, section.address, section.file))
}

/// The layout of the runtime at `runtime`.
pub fn layout_at(
    mem: &impl RemoteMemory,
    runtime: u64,
    binary: String,
) -> Result<RuntimeLayout, DebugOffsetsError> {
    let table = DebugOffsets::read(mem, runtime)?;
    let mut word = [0u8; 8];
    let head = runtime.wrapping_add(table.get(Field::InterpretersHead));
    if !mem.read(head, &mut word) || u64::from_ne_bytes(word) == 0 {
        return Err(DebugOffsetsError::Implausible {
            field: "runtime_state.interpreters_head",
            value: 0,
        });
    }
    let interpreter = u64::from_ne_bytes(word);
    let gil_ptr = interpreter.wrapping_add(table.get(Field::CevalGil));
    let gil = if mem.read(gil_ptr, &mut word) {
        u64::from_ne_bytes(word)
    } else {
        0
    };
    Ok(RuntimeLayout {
        modules_ptr: interpreter.wrapping_add(table.get(Field::ImportsModules)),
        table,
        runtime,
        interpreter,
        gil,
        binary,
    })
}

/// `context_ver` in the thread state of CPython 3.`minor` (3.13+), the one field the reader
/// uses that the debug offsets do not carry: it follows `context` in the public `struct _ts`
/// (Include/cpython/pystate.h), at 216 in 3.13 and 3.14 and 240 in 3.15, which added fields
/// before it. Measured in Debian's 3.13.18, 3.14.10 and 3.15.2 by `python_offsets/derive.py
/// --context-ver` (the integration tests re-measure it in each).
pub fn context_ver_offset(minor: u64) -> usize {
    if minor >= 15 {
        240
    } else {
        216
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::remote::offsets;

    /// A 3.`minor` table with Debian 3.13.18 / 3.14.10 / 3.15.2's values (the research notes'
    /// table), `version` = 3.`minor`.`micro` final.
    pub(crate) fn debian_table(minor: u64, micro: u64) -> Vec<u8> {
        use Field::*;
        let len = table_len(minor).unwrap();
        let mut b = vec![0u8; len];
        b[..8].copy_from_slice(COOKIE);
        let version = (3 << 24) | (minor << 16) | (micro << 8) | 0xf0;
        b[8..16].copy_from_slice(&version.to_le_bytes());
        let pick = |vals: [u64; 3]| vals[(minor - 13) as usize];
        let values: &[(Field, [u64; 3])] = &[
            (InterpretersHead, [632, 808, 936]),
            (InterpSize, [194984, 225864, 226240]),
            (ThreadsHead, [7344, 7344, 7336]),
            (ImportsModules, [7656, 7688, 7592]),
            (CevalGil, [16, 16, 16]),
            (GilRuntimeState, [7752, 7784, 7736]),
            (GilLocked, [7768, 7800, 7752]),
            (GilHolder, [7760, 7792, 7744]),
            (ThreadSize, [312, 832, 888]),
            (ThreadNext, [8, 8, 8]),
            (ThreadFrame, [72, 72, 72]),
            (ThreadId, [152, 152, 176]),
            (NativeThreadId, [160, 160, 184]),
            (FramePrevious, [8, 8, 8]),
            (FrameExecutable, [0, 0, 0]),
            (FrameInstr, [56, 56, 56]),
            (FrameOwner, [70, 74, 74]),
            (FrameLocalsplus, [72, 80, 80]),
            (CodeFilename, [112, 112, 112]),
            (CodeName, [120, 120, 120]),
            (CodeQualname, [128, 128, 128]),
            (CodeLinetable, [136, 136, 136]),
            (CodeFirstLine, [68, 68, 68]),
            (CodeLocalsplusnames, [96, 96, 96]),
            (CodeAdaptive, [200, 208, 208]),
            (ObjectSize, [16, 16, 16]),
            (ObType, [8, 8, 8]),
            (TpName, [24, 24, 24]),
            (DictKeys, [32, 32, 32]),
            (DictValues, [40, 40, 40]),
            (LongTag, [16, 16, 16]),
            (LongDigit, [24, 24, 24]),
            (BytesSize, [16, 16, 16]),
            (BytesData, [32, 32, 32]),
            (StrState, [32, 32, 32]),
            (StrLength, [16, 16, 16]),
            (StrAsciiSize, [40, 40, 40]),
            (GenName, [0, 24, 24]),
        ];
        for &(field, vals) in values {
            if let Some(at) = position(field, minor) {
                b[at..at + 8].copy_from_slice(&pick(vals).to_le_bytes());
            }
        }
        b
    }

    pub(crate) fn set(table: &mut [u8], minor: u64, field: Field, value: u64) {
        let at = position(field, minor).unwrap();
        table[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn the_3_13_table_and_the_3_13_debug_offsets_agree() {
        let table = offsets::for_minor(13).unwrap();
        let ours = DebugOffsets::parse(debian_table(13, 18))
            .unwrap()
            .reader_offsets();
        // Every value the reader uses; Debug output compares the whole structs.
        let strip = |mut o: PythonOffsets| {
            o.frame.max_owner = o.frame.max_owner.or(o.frame.cstack_owner);
            // Not in the table: only the debug offsets give it.
            o.frame.localsplus = None;
            format!("{o:?}")
        };
        assert_eq!(strip(ours), strip(table));
    }

    #[test]
    fn versions_layouts_and_builds_are_checked() {
        for minor in [13, 14, 15] {
            let t = DebugOffsets::parse(debian_table(minor, 2)).unwrap();
            assert_eq!(t.version.to_string(), format!("3.{minor}.2"));
            assert_eq!(t.reader_offsets().version, format!("3.{minor}"));
        }
        let mut bad = debian_table(14, 10);
        bad[0] = b'X';
        assert!(matches!(
            DebugOffsets::parse(bad),
            Err(DebugOffsetsError::NoCookie(_))
        ));
        // 3.16: a layout loopspy does not know gets its version named, never a guess.
        let mut future = debian_table(15, 0);
        future[8..16].copy_from_slice(&0x0310_00f0u64.to_le_bytes());
        let err = DebugOffsets::parse(future).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Python 3.16.0: loopspy knows the debug-offsets layout of CPython 3.13 to 3.15 only"
        );
        let mut beta = debian_table(15, 0);
        beta[8..16].copy_from_slice(&0x030f_00b1u64.to_le_bytes());
        assert!(DebugOffsets::parse(beta)
            .unwrap_err()
            .to_string()
            .starts_with("Python 3.15.0b1: pre-releases"));
        let mut ft = debian_table(14, 10);
        ft[16] = 1;
        assert_eq!(
            DebugOffsets::parse(ft).unwrap_err(),
            DebugOffsetsError::FreeThreaded("3.14.10".into())
        );
        let mut short = debian_table(15, 2);
        short.truncate(500);
        assert!(DebugOffsets::parse(short).is_err());
    }

    #[test]
    fn a_free_threaded_target_is_refused_from_its_memory() {
        use crate::remote::memory::fake::FakeMemory;
        let runtime = 0x7f00_0000_0000;
        let mut table = debian_table(14, 10);
        table[16] = 1;
        let mut mem = FakeMemory::default();
        table.resize(0x1000, 0);
        mem.map(runtime, table);
        let err = layout_at(&mem, runtime, "/usr/bin/python3.14t".into()).unwrap_err();
        assert_eq!(err.to_string(), "Python 3.14.10 is a free-threaded build");
        // Nothing at all there.
        assert!(matches!(
            layout_at(&mem, 0x1000, String::new()),
            Err(DebugOffsetsError::NoCookie(_))
        ));
    }

    #[test]
    fn implausible_values_are_refused() {
        for (field, value) in [
            (Field::ThreadId, 4096),
            (Field::FrameOwner, u64::MAX),
            (Field::ThreadsHead, 1 << 40),
            (Field::GilLocked, 1),
            (Field::ObjectSize, 32),
        ] {
            let mut t = debian_table(14, 10);
            set(&mut t, 14, field, value);
            assert!(
                matches!(
                    DebugOffsets::parse(t),
                    Err(DebugOffsetsError::Implausible { .. })
                ),
                "{field:?} = {value}"
            );
        }
    }

    #[test]
    fn patch_release_moves_are_followed() {
        // 3.14.0-3.14.4 vs 3.14.5+: imports.modules moved by 24 bytes.
        let mut old = debian_table(14, 4);
        set(&mut old, 14, Field::ImportsModules, 7664);
        let new = DebugOffsets::parse(debian_table(14, 10)).unwrap();
        let old = DebugOffsets::parse(old).unwrap();
        assert_eq!(
            new.get(Field::ImportsModules) - old.get(Field::ImportsModules),
            24
        );
        // 3.15 moved the thread ids.
        let t15 = DebugOffsets::parse(debian_table(15, 2))
            .unwrap()
            .reader_offsets();
        assert_eq!(
            (t15.thread.thread_id, t15.thread.native_thread_id),
            (176, Some(184))
        );
        assert_eq!(t15.frame.code_tag_bits, 3);
        assert_eq!(t15.frame.owner, Some(74));
        let t14 = DebugOffsets::parse(debian_table(14, 10))
            .unwrap()
            .reader_offsets();
        assert_eq!(t14.frame.max_owner, Some(4));
        assert_eq!(t14.code.code_adaptive, Some(208));
        assert_eq!(t14.coro.qualname, 32);
        assert_eq!((t14.gil.last_holder, t14.gil.locked), (Some(8), Some(16)));
    }
}
