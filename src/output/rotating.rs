//! JSON lines in files that rotate, for an agent that runs for days: `incidents.jsonl` takes
//! new lines; when it would pass its share of the budget it becomes `incidents.jsonl.1` (the
//! older ones move up, the oldest is dropped). Total size stays under the budget, and a
//! restart appends to what is there.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Files kept: the live one and this many rotated ones.
const ROTATED_FILES: u32 = 3;

/// A JSON-lines file with a size budget.
pub struct RotatingJsonl {
    path: PathBuf,
    max_file_bytes: u64,
    file: BufWriter<File>,
    written: u64,
}

impl RotatingJsonl {
    /// Opens (appending) `dir/name`; all its files together stay under `max_total_bytes`.
    pub fn open(dir: &Path, name: &str, max_total_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        Ok(RotatingJsonl {
            path,
            max_file_bytes: (max_total_bytes / (ROTATED_FILES as u64 + 1)).max(4096),
            file: BufWriter::new(file),
            written,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Appends one line (flushed to the OS), rotating first when it would not fit. A line
    /// larger than a whole file's share is dropped (an incident is a few KB).
    pub fn write(&mut self, value: &serde_json::Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        let len = line.len() as u64;
        if len > self.max_file_bytes {
            return Ok(());
        }
        if self.written + len > self.max_file_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.file.flush()?;
        self.written += len;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        for n in (1..ROTATED_FILES).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        self.file = BufWriter::new(
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&self.path)?,
        );
        self.written = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_under_its_budget_and_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = RotatingJsonl::open(dir.path(), "incidents.jsonl", 40_000).unwrap();
        for n in 0..2_000 {
            out.write(&serde_json::json!({"n": n, "pad": "x".repeat(80)}))
                .unwrap();
        }
        let mut total = 0;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
            total += entry.metadata().unwrap().len();
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "incidents.jsonl",
                "incidents.jsonl.1",
                "incidents.jsonl.2",
                "incidents.jsonl.3"
            ]
        );
        assert!(total <= 40_000, "{total}");
        let live = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(live.lines().last().unwrap()).unwrap();
        assert_eq!(last["n"], 1_999);
        // Reopened, it appends.
        drop(out);
        let mut out = RotatingJsonl::open(dir.path(), "incidents.jsonl", 40_000).unwrap();
        out.write(&serde_json::json!({"n": 2_000})).unwrap();
        let live = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
        assert!(live.lines().count() > 1);
    }
}
