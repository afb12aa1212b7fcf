//! The task census: about once a second, the target's pending asyncio tasks counted by the
//! coroutine each runs, sent to the analyzer (task-leak detection, `analyzer::task_leaks`).
//!
//! It runs on a thread of its own beside the sampler, reading through its own lister
//! ([`crate::remote::all_tasks`]), so a census of thousands of tasks never delays a tick of the
//! loop thread's reads. Its cost is bounded by time, not by count: the next census waits at
//! least [`COST_FACTOR`] times as long as the last one took (a 100 ms census of 10 000 tasks is
//! taken every 2 s: 5 % of a core), and each lists at most [`MAX_CENSUS_TASKS`] tasks (the
//! rest counted as left out). A callback that holds its loop past 30 ms asks for a census at
//! once: the blocked task may be younger than the last census, and while the loop is stuck its
//! tasks cannot change, so the census reads the await chain the incident will name. Such a
//! census follows the last one after 50 ms at the soonest, and after [`ASKED_COST_FACTOR`]
//! times as long as it took (a storm of blocks costs at most 1/5 of a core in censuses). Like
//! every read of the target, it never pauses it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::remote::all_tasks::{TaskLister, TaskListing};
use crate::remote::attach::ReaderLayout;
use crate::remote::memory::ProcessMemory;
use crate::sample::{CoroutineCount, SamplerMessage, TaskCensus, TaskLink};

/// The shortest time between two censuses.
pub const CENSUS_INTERVAL: Duration = Duration::from_secs(1);
/// A census waits at least this many times as long as the last one took.
const COST_FACTOR: u32 = 20;
/// Tasks one census lists at most.
pub const MAX_CENSUS_TASKS: usize = 20_000;
/// Coroutines one census reports at most (the most numerous).
const MAX_COROUTINES: usize = 512;
/// Tasks of the await graph one census sends at most.
const MAX_LINKS: usize = 4096;
/// The soonest a census asked for by a long callback follows the last one.
const SOONEST: Duration = Duration::from_millis(50);
/// A census asked for waits at least this many times as long as the last one took.
const ASKED_COST_FACTOR: u32 = 5;

/// What the sampler tells the census thread.
pub struct Signals {
    /// Set when the sampler stops: the census thread ends.
    pub stop: Arc<AtomicBool>,
    /// Sent by the sampler when a callback has held its loop a while: a census is wanted now.
    /// The sampler dropping its end wakes the census thread to end too.
    pub wanted: Receiver<()>,
}

/// Starts the census thread of the target `pid`, which `layout` reads; None when this version
/// has no task registry the lister knows (3.14+ so far).
pub fn spawn(
    pid: i32,
    layout: ReaderLayout,
    signals: Signals,
    tx: Sender<SamplerMessage>,
) -> Option<JoinHandle<()>> {
    layout.offsets.all_tasks.as_ref()?;
    std::thread::Builder::new()
        .name("loopspy-census".into())
        .spawn(move || run(pid, &layout, &signals, &tx))
        .ok()
}

fn run(pid: i32, layout: &ReaderLayout, signals: &Signals, tx: &Sender<SamplerMessage>) {
    let stop = &*signals.stop;
    let mem = ProcessMemory { pid };
    let Some(mut lister) = TaskLister::new(
        &mem,
        layout.offsets.clone(),
        layout.modules_ptr,
        layout.interpreter,
    ) else {
        return;
    };
    let mut next = Instant::now();
    // The soonest an asked-for census may start: the cost bound without the 1 s interval.
    let mut soonest = next;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            match signals.wanted.recv_timeout(next - now) {
                // Asked too soon after the last: at the soonest, then (the callback that
                // asked is likely still running; if not, the census is merely early).
                Ok(()) => std::thread::sleep(soonest.saturating_duration_since(Instant::now())),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let now = Instant::now();
        let listing = lister.list(MAX_CENSUS_TASKS, &[]);
        let took = now.elapsed();
        next = now + CENSUS_INTERVAL.max(took * COST_FACTOR);
        soonest = now + SOONEST.max(took * ASKED_COST_FACTOR);
        if !listing.asyncio {
            continue;
        }
        let census = count(pid, now, &listing);
        if tx.try_send(SamplerMessage::Census(census)).is_err() && stop.load(Ordering::Relaxed) {
            break;
        }
    }
}

/// A listing's pending tasks counted by coroutine: its name and the file of its own frame
/// (the outermost of the task's stack), with one task's line and name as the example.
pub fn count(pid: i32, at: Instant, listing: &TaskListing) -> TaskCensus {
    let mut by: HashMap<(&str, &str), CoroutineCount> = HashMap::new();
    for task in &listing.tasks {
        let outer = task.stack.last();
        let file = outer.map_or("", |f| &f.file);
        let entry = by
            .entry((task.coroutine.as_str(), file))
            .or_insert_with(|| CoroutineCount {
                coroutine: task.coroutine.clone(),
                file: file.to_string(),
                line: outer.map_or(0, |f| f.line),
                pending: 0,
                example_task: Some(task.name.clone()),
            });
        entry.pending += 1;
    }
    let mut counts: Vec<CoroutineCount> = by.into_values().collect();
    counts.sort_by(|a, b| {
        b.pending
            .cmp(&a.pending)
            .then_with(|| a.coroutine.cmp(&b.coroutine))
    });
    let dropped: u64 = counts.iter().skip(MAX_COROUTINES).map(|c| c.pending).sum();
    counts.truncate(MAX_COROUTINES);
    TaskCensus {
        pid,
        at,
        by_coroutine: counts,
        left_out: listing.left_out as u64 + dropped,
        links: links(listing),
    }
}

/// The await graph's tasks: those awaited by another, and those awaiting one.
fn links(listing: &TaskListing) -> Vec<TaskLink> {
    let awaiting: std::collections::HashSet<u64> = listing
        .tasks
        .iter()
        .flat_map(|t| t.awaited_by.iter().copied())
        .collect();
    listing
        .tasks
        .iter()
        .filter(|t| !t.awaited_by.is_empty() || awaiting.contains(&t.address))
        .take(MAX_LINKS)
        .map(|t| TaskLink {
            address: t.address,
            name: t.name.clone(),
            coroutine: t.coroutine.clone(),
            awaited_by: t.awaited_by.clone(),
        })
        .collect()
}
