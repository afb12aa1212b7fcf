//! Outputs written while recording, so that even a `kill -9` of loopspy loses at most the last
//! few seconds: `incidents.jsonl` gets each incident as it closes (one JSON object a line, the
//! fields of `incidents.json`), and `checkpoint.collapsed` holds the busy-loop profile as folded
//! stacks, rewritten atomically every few seconds and removed once the final files are written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::analyzer::incident::Incident;
use crate::analyzer::Analysis;

/// How often the profile checkpoint is rewritten.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// The streaming sinks of one recording.
pub struct Streams {
    jsonl: BufWriter<File>,
    checkpoint: PathBuf,
    last_checkpoint: Instant,
    /// Incidents streamed.
    pub streamed: u64,
}

impl Streams {
    /// Creates (truncates) `incidents.jsonl` in `dir`.
    pub fn create(dir: &Path) -> std::io::Result<Streams> {
        Ok(Streams {
            jsonl: BufWriter::new(File::create(dir.join("incidents.jsonl"))?),
            checkpoint: dir.join("checkpoint.collapsed"),
            last_checkpoint: Instant::now(),
            streamed: 0,
        })
    }

    /// Appends incidents, one line each, and flushes them to the OS.
    pub fn incidents(
        &mut self,
        analysis: &Analysis,
        incidents: &[Incident],
    ) -> std::io::Result<()> {
        for incident in incidents {
            let line = super::json::incident_json(analysis, incident);
            serde_json::to_writer(&mut self.jsonl, &line)?;
            self.jsonl.write_all(b"\n")?;
            self.streamed += 1;
        }
        if !incidents.is_empty() {
            self.jsonl.flush()?;
        }
        Ok(())
    }

    /// Rewrites the checkpoint when it is due.
    pub fn maybe_checkpoint(&mut self, analysis: &Analysis) -> std::io::Result<()> {
        if self.last_checkpoint.elapsed() < CHECKPOINT_EVERY {
            return Ok(());
        }
        self.last_checkpoint = Instant::now();
        let lines = super::flamegraph::collapsed_lines(analysis, &analysis.busy_profile);
        let tmp = self.checkpoint.with_extension("collapsed.tmp");
        std::fs::write(&tmp, lines.join("\n") + "\n")?;
        std::fs::rename(&tmp, &self.checkpoint)
    }

    /// The final files are written: the checkpoint is no longer needed.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.jsonl.flush()?;
        match std::fs::remove_file(&self.checkpoint) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
