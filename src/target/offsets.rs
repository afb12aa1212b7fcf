//! The per-version struct-offset tables in `python_offsets/` (one TOML file per CPython minor
//! version, each number with its source in CPython's tree), compiled into the binary.

use serde::Deserialize;

/// `PyDictObject` and its keys object.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
pub struct ModuleOffsets {
    /// `md_dict`.
    pub md_dict: usize,
}

/// Compact unicode objects.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
pub struct LongOffsets {
    /// `ob_size` (or `lv_tag` when `tagged`).
    pub tag: usize,
    /// First 30-bit digit.
    pub digits: usize,
    /// 3.12+: the size word is `ndigits << 3 | sign`.
    pub tagged: bool,
}

/// `PyTypeObject`.
#[derive(Debug, Clone, Deserialize)]
pub struct TypeOffsets {
    /// `tp_name`.
    pub tp_name: usize,
}

/// `_asyncio.Task` (`TaskObj`).
#[derive(Debug, Clone, Deserialize)]
pub struct TaskOffsets {
    /// `task_coro`.
    pub task_coro: usize,
    /// `task_name`.
    pub task_name: usize,
    /// Whether `task_name` may hold an int N for the default name `Task-N`.
    pub lazy_int_names: bool,
}

/// Coroutine objects.
#[derive(Debug, Clone, Deserialize)]
pub struct CoroOffsets {
    /// `cr_qualname`.
    pub qualname: usize,
}

/// One version's table.
#[derive(Debug, Clone, Deserialize)]
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
        }
        assert!(for_minor(7).is_none());
    }
}
