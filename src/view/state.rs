//! What the live view shows, updated only from incoming samples (the analyzer keeps loop health
//! and incidents; this keeps the py-spy-top-style function table) and from actions (the
//! [`ViewState`]: sort, pause, thread filter — UI state only).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::analyzer::loop_detect::{self, LoopPosition};
use crate::sample::{OsState, Sample};

/// Own and total time of one function.
#[derive(Debug, Clone, Default)]
pub struct FunctionStats {
    /// Time as the leaf frame, µs.
    pub own_us: u64,
    /// Time anywhere on the stack, µs.
    pub total_us: u64,
    /// Line of the most recent sample.
    pub line: u32,
}

/// The function table, per thread.
#[derive(Debug, Default)]
pub struct FunctionTable {
    /// (thread id, function, file) -> stats.
    pub stats: HashMap<(u64, Arc<str>, Arc<str>), FunctionStats>,
    /// Time covered per thread, µs (the 100% of the percentages).
    pub thread_time_us: HashMap<u64, u64>,
}

impl FunctionTable {
    /// Adds a sample, each thread weighted by `interval` times the ticks its read stands for
    /// (threads without a loop are read less often). Idle samples — a loop waiting in its
    /// selector, or a non-loop thread the kernel shows off CPU — count only if `include_idle`.
    pub fn add(&mut self, sample: &Sample, interval: Duration, include_idle: bool) {
        for thread in &sample.threads {
            if thread.frames.is_empty() {
                continue;
            }
            let us = interval.as_micros() as u64 * u64::from(thread.every.max(1));
            let idle = match loop_detect::classify(&thread.frames) {
                LoopPosition::Idle(_) => true,
                // Unreadable is not idle: only a thread known off CPU is.
                LoopPosition::NoLoop => matches!(thread.os_state, OsState::Waiting { .. }),
                _ => false,
            };
            if idle && !include_idle {
                continue;
            }
            *self.thread_time_us.entry(thread.os_tid).or_default() += us;
            let mut seen: Vec<(&str, &str)> = Vec::with_capacity(thread.frames.len());
            for (depth, frame) in thread.frames.iter().enumerate() {
                let key = (&*frame.function, &*frame.file);
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                let stats = self
                    .stats
                    .entry((thread.os_tid, frame.function.clone(), frame.file.clone()))
                    .or_default();
                stats.total_us += us;
                if depth == 0 {
                    stats.own_us += us;
                    stats.line = frame.line;
                } else if stats.line == 0 {
                    stats.line = frame.line;
                }
            }
        }
    }

    /// Rows for the threads in `threads` (all when None), merged by function, sorted.
    pub fn rows(&self, threads: Option<&[u64]>, sort: SortColumn) -> (Vec<Row>, u64) {
        let wanted = |tid: &u64| threads.is_none_or(|list| list.contains(tid));
        let total: u64 = self
            .thread_time_us
            .iter()
            .filter(|(tid, _)| wanted(tid))
            .map(|(_, us)| us)
            .sum();
        let mut merged: HashMap<(&str, &str), Row> = HashMap::new();
        for ((tid, function, file), stats) in &self.stats {
            if !wanted(tid) {
                continue;
            }
            let row = merged.entry((&**function, &**file)).or_insert_with(|| Row {
                function: function.to_string(),
                file: file.to_string(),
                line: stats.line,
                own_us: 0,
                total_us: 0,
            });
            row.own_us += stats.own_us;
            row.total_us += stats.total_us;
        }
        let mut rows: Vec<Row> = merged.into_values().collect();
        rows.sort_by(|a, b| {
            let key = |r: &Row| match sort {
                SortColumn::OwnPct | SortColumn::OwnTime => r.own_us,
                SortColumn::TotalPct | SortColumn::TotalTime => r.total_us,
                SortColumn::Function => 0,
            };
            if sort == SortColumn::Function {
                a.function.cmp(&b.function)
            } else {
                key(b).cmp(&key(a)).then(a.function.cmp(&b.function))
            }
        });
        (rows, total)
    }
}

/// One line of the function table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Function name.
    pub function: String,
    /// Source file.
    pub file: String,
    /// A line in it.
    pub line: u32,
    /// Own time, µs.
    pub own_us: u64,
    /// Total time, µs.
    pub total_us: u64,
}

/// Columns of the function table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortColumn {
    /// Own time share.
    OwnPct,
    /// Total time share.
    TotalPct,
    /// Own time.
    OwnTime,
    /// Total time.
    TotalTime,
    /// Function name.
    Function,
}

impl SortColumn {
    /// All, in display order.
    pub const ALL: [SortColumn; 5] = [
        SortColumn::OwnPct,
        SortColumn::TotalPct,
        SortColumn::OwnTime,
        SortColumn::TotalTime,
        SortColumn::Function,
    ];

    /// The next column.
    pub fn next(self) -> SortColumn {
        let idx = Self::ALL.iter().position(|c| *c == self).unwrap_or(0);
        Self::ALL[(idx + 1) % Self::ALL.len()]
    }
}

/// Which threads the function table shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadFilter {
    /// The n-th event-loop thread (by thread id order).
    Loop(usize),
    /// Every thread.
    All,
}

/// UI-only state.
#[derive(Debug, Clone)]
pub struct ViewState {
    /// Sort column of the function table.
    pub sort: SortColumn,
    /// Display frozen.
    pub paused: bool,
    /// Function-table thread filter.
    pub threads: ThreadFilter,
    /// Idle samples counted.
    pub include_idle: bool,
    /// Help shown.
    pub help: bool,
}

impl Default for ViewState {
    fn default() -> Self {
        ViewState {
            sort: SortColumn::OwnPct,
            paused: false,
            threads: ThreadFilter::Loop(0),
            include_idle: false,
            help: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Frame, ThreadSample};

    fn sample(frames: &[(&str, &str)]) -> Sample {
        Sample {
            pid: 1,
            at: std::time::Instant::now(),
            unix: 0.0,
            running_tasks: vec![],
            task_generation: None,
            threads: vec![ThreadSample {
                os_tid: 7,
                python_tid: 7,
                name: None,
                frames: frames
                    .iter()
                    .map(|(f, file)| Frame {
                        function: (*f).into(),
                        file: (*file).into(),
                        line: 1,
                    })
                    .collect(),
                os_state: OsState::Running,
                owns_gil: true,
                every: 1,
                truncated: false,
                context_ver: None,
                handle_index: None,
                clock_after: None,
                ns_tid: None,
                counters: None,
            }],
        }
    }

    #[test]
    fn own_and_total_time() {
        let mut table = FunctionTable::default();
        let ms = Duration::from_millis(1);
        table.add(&sample(&[("leaf", "a.py"), ("outer", "a.py")]), ms, false);
        table.add(&sample(&[("outer", "a.py")]), ms, false);
        let (rows, total) = table.rows(None, SortColumn::TotalPct);
        assert_eq!(total, 2000);
        assert_eq!(rows[0].function, "outer");
        assert_eq!((rows[0].own_us, rows[0].total_us), (1000, 2000));
        assert_eq!((rows[1].own_us, rows[1].total_us), (1000, 1000));
        assert!(table.rows(Some(&[8]), SortColumn::OwnPct).0.is_empty());
        assert_eq!(SortColumn::Function.next(), SortColumn::OwnPct);
    }

    #[test]
    fn a_thread_read_every_tenth_tick_weighs_ten_ticks() {
        let mut table = FunctionTable::default();
        let mut rare = sample(&[("worker", "w.py")]);
        rare.threads[0].every = 10;
        table.add(&rare, Duration::from_millis(1), false);
        let (rows, total) = table.rows(None, SortColumn::TotalPct);
        assert_eq!((total, rows[0].own_us), (10_000, 10_000));
    }
}
