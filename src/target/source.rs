//! Source lines of the target's code, read as the target sees its files
//! (`/proc/<pid>/root/<path>`, so a containerised target's files are found). Files are cached
//! after the first read; the cache is bounded.

use std::collections::HashMap;
use std::sync::Arc;

/// Files kept in memory at most.
const MAX_FILES: usize = 256;

/// Per-process cache of source files.
#[derive(Debug)]
pub struct SourceCache {
    pid: i32,
    files: HashMap<String, Option<Arc<Vec<String>>>>,
}

impl SourceCache {
    /// A cache reading `pid`'s files.
    pub fn new(pid: i32) -> Self {
        SourceCache {
            pid,
            files: HashMap::new(),
        }
    }

    /// The trimmed text of `line` (1-based) of `file`, when readable.
    pub fn line(&mut self, file: &str, line: u32) -> Option<String> {
        if line == 0 || !file.starts_with('/') {
            return None;
        }
        if self.files.len() >= MAX_FILES && !self.files.contains_key(file) {
            self.files.clear();
        }
        let pid = self.pid;
        let lines = self
            .files
            .entry(file.to_string())
            .or_insert_with(|| {
                std::fs::read_to_string(format!("/proc/{pid}/root{file}"))
                    .or_else(|_| std::fs::read_to_string(file))
                    .ok()
                    .map(|text| Arc::new(text.lines().map(String::from).collect()))
            })
            .clone()?;
        lines.get(line as usize - 1).map(|l| l.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_source() {
        let mut cache = SourceCache::new(std::process::id() as i32);
        let me = concat!(env!("CARGO_MANIFEST_DIR"), "/src/target/source.rs");
        assert_eq!(
            cache.line(me, 1).as_deref(),
            Some("//! Source lines of the target's code, read as the target sees its files")
        );
        assert_eq!(cache.line(me, 0), None);
        assert_eq!(cache.line("<frozen x>", 3), None);
    }
}
