//! `loopspy tasks`: every asyncio task of a running process, once — as a tree like `pstree`
//! (each task, the coroutine frames it is suspended in, then the tasks it waits for beneath
//! it) and a flat table, or as JSON. One read of the target, never paused
//! ([`crate::remote::all_tasks`] does the reading); attaching and its errors are `dump`'s.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::time::Instant;

use serde_json::{json, Value};

use crate::error::LoopspyError;
use crate::remote::all_tasks::{ListedTask, TaskLister, TaskListing};
use crate::remote::memory::ProcessMemory;
use crate::remote::tasks::TaskReader;
use crate::text;

/// Settings for `loopspy tasks`.
#[derive(Debug, Clone)]
pub struct TasksSettings {
    /// Target pid.
    pub pid: i32,
    /// Print JSON instead of text.
    pub json: bool,
    /// Tasks listed at most (the rest are counted as left out).
    pub max_tasks: usize,
}

/// Runs the command, printing to stdout.
pub fn run(settings: TasksSettings) -> Result<i32, LoopspyError> {
    let target = crate::remote::attach(settings.pid, false)?;
    let unsupported = || -> LoopspyError {
        anyhow::anyhow!(
            "`loopspy tasks` reads CPython 3.8 to 3.13 so far, and process {} runs Python {} (`loopspy dump --pid {}` names the task each loop is running)",
            target.pid,
            target.python_version,
            target.pid
        )
        .into()
    };
    let Some(layout) = target.layout.as_ref() else {
        return Err(unsupported());
    };
    let mem = ProcessMemory { pid: target.pid };
    let started = Instant::now();
    // The tasks being stepped right now (3.8–3.13: `_current_tasks`).
    let mut running = TaskReader::new(mem, layout.offsets.clone(), layout.modules_ptr as usize);
    let running: Vec<u64> = running
        .running_tasks(&[])
        .0
        .iter()
        .map(|t| t.address)
        .collect();
    let Some(mut lister) = TaskLister::new(
        &mem,
        layout.offsets.clone(),
        layout.modules_ptr,
        layout.interpreter,
    ) else {
        return Err(unsupported());
    };
    let listing = lister.list(settings.max_tasks, &running);
    let read_ms = started.elapsed().as_secs_f64() * 1000.0;
    if settings.json {
        let doc = listing_json(&target, &listing, read_ms);
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!(
            "{}",
            render_text(
                &target.python_version,
                &target.command,
                target.pid,
                &listing
            )
        );
    }
    Ok(0)
}

fn state(task: &ListedTask) -> &'static str {
    if task.running {
        "running"
    } else {
        "pending"
    }
}

fn listing_json(
    target: &crate::remote::AttachedTarget,
    listing: &TaskListing,
    read_ms: f64,
) -> Value {
    let tasks: Vec<Value> = listing
        .tasks
        .iter()
        .map(|t| {
            json!({
                "id": t.address,
                "name": t.name,
                "state": state(t),
                // The kernel's thread id (3.11+), and Python's `threading.get_ident()`.
                "thread_id": t.thread_native,
                "thread_ident": t.thread_ident,
                "loop": t.event_loop,
                "coroutine": t.coroutine,
                "coroutine_stack": t.stack.iter().map(|f| json!({
                    "function": f.function, "file": f.file, "line": f.line,
                })).collect::<Vec<_>>(),
                "stack_complete": !t.stack_cut,
                "awaited_by": t.awaited_by,
            })
        })
        .collect();
    json!({
        "pid": target.pid,
        "python_version": target.python_version,
        "command": target.command,
        "asyncio": listing.asyncio,
        "tasks": tasks,
        "left_out": listing.left_out,
        "read_ms": (read_ms * 10.0).round() / 10.0,
    })
}

/// The tree, then the table.
fn render_text(version: &str, command: &str, pid: i32, listing: &TaskListing) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Process {pid}: {command}\nPython v{version}");
    if !listing.asyncio {
        let _ = writeln!(out, "\nasyncio is not imported: no tasks.");
        return out;
    }
    let tasks = &listing.tasks;
    let _ = write!(out, "{} pending task(s)", tasks.len());
    if listing.left_out > 0 {
        let _ = write!(
            out,
            ", {} more left out (raise --max-tasks)",
            listing.left_out
        );
    }
    let _ = writeln!(out, "\n");
    if tasks.is_empty() {
        return out;
    }
    let by_address: HashMap<u64, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.address, i))
        .collect();
    // Children of a task in the tree: the tasks it waits for (whose awaited_by names it).
    let mut awaits: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, t) in tasks.iter().enumerate() {
        for w in &t.awaited_by {
            if by_address.contains_key(w) {
                awaits.entry(*w).or_default().push(i);
            }
        }
    }
    let mut shown = HashSet::new();
    let roots: Vec<usize> = (0..tasks.len())
        .filter(|&i| {
            tasks[i]
                .awaited_by
                .iter()
                .all(|w| !by_address.contains_key(w))
        })
        .collect();
    let tree = Tree {
        tasks,
        awaits: &awaits,
    };
    for i in roots {
        tree.node(&mut out, i, "", "", &mut shown);
    }
    // Tasks only reachable through a cycle of waits.
    for i in 0..tasks.len() {
        if !shown.contains(&i) {
            tree.node(&mut out, i, "", "", &mut shown);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:<8} {:<24} {:<32} {:<24} WHERE",
        "ID", "STATE", "THREAD", "NAME", "COROUTINE", "AWAITED BY"
    );
    for t in tasks {
        let thread = t
            .thread_native
            .map_or("-".to_string(), |tid| tid.to_string());
        let waiters: Vec<String> = t
            .awaited_by
            .iter()
            .filter_map(|w| {
                by_address
                    .get(w)
                    .map(|&i| text::name(&tasks[i].name).into_owned())
            })
            .collect();
        let awaited = match waiters.len() {
            0 => "-".to_string(),
            1 => waiters[0].clone(),
            n => format!("{} +{}", waiters[0], n - 1),
        };
        let place = t
            .stack
            .first()
            .map_or("-".to_string(), |f| text::frame_label(f, true));
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<8} {:<24} {:<32} {:<24} {}",
            format!("{:#x}", t.address),
            state(t),
            thread,
            text::human(&t.name, 24),
            text::human(&t.coroutine, 32),
            text::human(&awaited, 24),
            place
        );
    }
    out
}

struct Tree<'a> {
    tasks: &'a [ListedTask],
    awaits: &'a HashMap<u64, Vec<usize>>,
}

impl Tree<'_> {
    /// One task, its frames, and the tasks it waits for beneath it, `pstree`-style.
    fn node(
        &self,
        out: &mut String,
        i: usize,
        first: &str,
        rest: &str,
        shown: &mut HashSet<usize>,
    ) {
        let t = &self.tasks[i];
        if !shown.insert(i) {
            let _ = writeln!(
                out,
                "{first}{} (task {:#x}, shown above)",
                text::name(&t.name),
                t.address
            );
            return;
        }
        let _ = writeln!(
            out,
            "{first}{} (task {:#x}, {}, coroutine {})",
            text::name(&t.name),
            t.address,
            state(t),
            text::name(&t.coroutine)
        );
        let children = self
            .awaits
            .get(&t.address)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let bar = if children.is_empty() { "  " } else { "│ " };
        for frame in &t.stack {
            let _ = writeln!(out, "{rest}{bar}  {}", text::frame_label(frame, true));
        }
        if t.stack_cut {
            let _ = writeln!(out, "{rest}{bar}  …");
        }
        for (k, &child) in children.iter().enumerate() {
            let last = k + 1 == children.len();
            let (head, tail) = if last {
                ("└─ ", "   ")
            } else {
                ("├─ ", "│  ")
            };
            self.node(
                out,
                child,
                &format!("{rest}{head}"),
                &format!("{rest}{tail}"),
                shown,
            );
        }
    }
}
