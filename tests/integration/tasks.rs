//! `loopspy tasks` on CPython 3.8–3.13, asyncio's loop and uvloop: every task the target lists
//! itself (`tests/fixtures/tasks_tree.py` writes `asyncio.all_tasks()` of both its loops, with
//! each coroutine's await chain, before it prints "ready") must be listed with its id, name and
//! coroutine; gather and TaskGroup children name their parent in `awaited_by`; a chain four
//! coroutines deep is followed to its innermost frame; the task blocking its loop is the one
//! running; 10 000 tasks are listed within two seconds; and bad input fails like `dump`'s.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// The fixture, started and ready, and the truth it wrote.
fn start_tree(python: &Path, dir: &Path, uvloop: bool, many: usize) -> (ChildGuard, Value) {
    start_tree_with(python, dir, uvloop, many, &[])
}

/// [`start_tree`] with more fixture flags.
fn start_tree_with(
    python: &Path,
    dir: &Path,
    uvloop: bool,
    many: usize,
    extra: &[&str],
) -> (ChildGuard, Value) {
    let truth = dir.join("truth.json");
    let script = fixture("tasks_tree.py");
    let many = many.to_string();
    let mut args = vec![
        script.to_str().unwrap(),
        truth.to_str().unwrap(),
        "--many",
        &many,
    ];
    if uvloop {
        args.push("--uvloop");
    }
    args.extend_from_slice(extra);
    let target = start_until_ready(python, &args);
    // The blocker task starts blocking its loop 0.5 s after it was made (before "ready").
    std::thread::sleep(Duration::from_millis(700));
    let truth = read_json(&truth);
    (target, truth)
}

fn tasks_json(pid: i32) -> Value {
    let run = run_loopspy(
        &["tasks", "--pid", &pid.to_string(), "--json"],
        Duration::from_secs(30),
    );
    assert_eq!(run.code(), 0, "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

fn listing_matches_the_truth(minor: &str, uvloop: bool) {
    let Some(python) = require_python(minor) else {
        return;
    };
    listing_of(&python, minor, uvloop);
}

fn listing_of(python: &Path, minor: &str, uvloop: bool) {
    let python = python.to_path_buf();
    if uvloop && !require_module(&python, "uvloop") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (target, truth) = start_tree(&python, dir.path(), uvloop, 0);
    assert_eq!(truth["uvloop"], uvloop);
    let json = tasks_json(target.pid());
    assert!(json["python_version"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{minor}.")));
    assert_eq!(json["pid"], target.pid());
    assert_eq!(json["left_out"], 0);
    let listed: HashMap<u64, &Value> = json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t))
        .collect();
    let task = |id: u64| {
        *listed
            .get(&id)
            .unwrap_or_else(|| panic!("task {id:#x} not listed: {json:#}"))
    };

    // Every task of both loops, with its name and outermost coroutine; nothing else.
    let truth_tasks = truth["tasks"].as_array().unwrap();
    for t in truth_tasks {
        let got = task(t["id"].as_u64().unwrap());
        assert_eq!(got["name"], t["name"], "{got:#}");
        assert_eq!(got["coroutine"], t["coroutine"], "{got:#}");
        let stack = got["coroutine_stack"].as_array().unwrap();
        let outermost = stack.last().unwrap_or_else(|| panic!("no frames: {got:#}"));
        let chain = t["chain"].as_array().unwrap();
        assert_eq!(outermost["function"], chain[0]["function"], "{got:#}");
        assert_eq!(outermost["file"], chain[0]["file"], "{got:#}");
    }
    assert_eq!(listed.len(), truth_tasks.len(), "{json:#}");

    // States: the blocker runs, everything else waits.
    let blocker = truth["blocker"].as_u64().unwrap();
    for (id, t) in &listed {
        let expect = if *id == blocker { "running" } else { "pending" };
        assert_eq!(t["state"], expect, "{t:#}");
    }

    // The deep chain, innermost first, line for line as the target saw it.
    let deep_id = truth["deep"].as_u64().unwrap();
    let deep = task(deep_id);
    let deep_truth = truth_tasks
        .iter()
        .find(|t| t["id"].as_u64() == Some(deep_id))
        .unwrap();
    let mut chain: Vec<&Value> = deep_truth["chain"].as_array().unwrap().iter().collect();
    chain.reverse();
    let stack = deep["coroutine_stack"].as_array().unwrap();
    let functions: Vec<&str> = stack
        .iter()
        .map(|f| f["function"].as_str().unwrap())
        .collect();
    assert_eq!(
        functions,
        ["sleep", "level_d", "level_c", "level_b", "level_a"],
        "{deep:#}"
    );
    for (got, want) in stack.iter().zip(&chain) {
        assert_eq!(got["function"], want["function"], "{deep:#}");
        assert_eq!(got["line"], want["line"], "{deep:#}");
        assert_eq!(got["file"], want["file"], "{deep:#}");
    }
    assert_eq!(deep["stack_complete"], true);

    // Who waits for whom: gather children and group members name their parent.
    let server = truth["server"].as_u64().unwrap();
    for child in ids(&truth["gather_children"]) {
        assert_eq!(ids(&task(child)["awaited_by"]), [server], "gather child");
    }
    let group = truth["group"].as_u64().unwrap();
    for member in ids(&truth["group_children"]) {
        assert_eq!(ids(&task(member)["awaited_by"]), [group], "group member");
    }
    assert!(ids(&task(server)["awaited_by"]).is_empty());

    // The async generator's frame sits between its consumer and the sleep.
    let ticker = listed
        .values()
        .find(|t| t["name"] == "ticker-consumer")
        .unwrap();
    let ticker_fns: Vec<&str> = ticker["coroutine_stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap())
        .collect();
    assert_eq!(ticker_fns, ["sleep", "ticker", "ticker_consumer"]);

    // Queue consumers wait in Queue.get.
    for name in ["consumer-0", "consumer-1"] {
        let consumer = listed.values().find(|t| t["name"] == name).unwrap();
        let innermost = consumer["coroutine_stack"][0]["function"].as_str().unwrap();
        assert!(innermost.ends_with("get"), "{consumer:#}");
    }

    // The loop's thread: the thread state files its running loop (3.8–3.12, uvloop too),
    // asyncio's loops record it as `_thread_id` (3.13).
    let main_ident = truth["main_thread_ident"].as_u64().unwrap();
    let side_ident = truth["side_thread_ident"].as_u64().unwrap();
    let side = listed.values().find(|t| t["name"] == "side-task").unwrap();
    assert_eq!(side["thread_ident"].as_u64(), Some(side_ident), "{side:#}");
    assert_eq!(task(server)["thread_ident"].as_u64(), Some(main_ident));
    if !["3.8", "3.9", "3.10"].contains(&minor) {
        // 3.11+ record kernel thread ids: the main thread's is the pid.
        assert_eq!(
            task(server)["thread_id"].as_u64(),
            Some(target.pid() as u64)
        );
        assert_ne!(side["thread_id"].as_u64(), Some(target.pid() as u64));
        assert!(side["thread_id"].as_u64().is_some());
    }

    // The tree: names, indentation, frames.
    let run = run_loopspy(
        &["tasks", "--pid", &target.pid().to_string()],
        Duration::from_secs(30),
    );
    assert_eq!(run.code(), 0, "{}", run.stderr);
    let text = &run.stdout;
    assert!(
        text.contains(&format!("Process {}:", target.pid())),
        "{text}"
    );
    assert!(text.contains("server (task 0x"), "{text}");
    assert!(
        text.contains("├─ child-") && text.contains("└─ child-"),
        "{text}"
    );
    assert!(text.contains("│      child (tasks_tree.py:"), "{text}");
    assert!(text.contains("└─ member-"), "{text}");
    assert!(text.contains("    level_a (tasks_tree.py:"), "{text}");
    assert!(
        text.contains("blocker (task 0x") && text.contains(", running,"),
        "{text}"
    );
    assert!(
        text.contains("ID ") && text.contains("AWAITED BY"),
        "{text}"
    );
}

#[test]
fn tasks_on_cpython_3_8() {
    listing_matches_the_truth("3.8", false);
}

#[test]
fn tasks_on_cpython_3_9() {
    listing_matches_the_truth("3.9", false);
}

#[test]
fn tasks_on_cpython_3_10() {
    listing_matches_the_truth("3.10", false);
}

#[test]
fn tasks_on_cpython_3_11() {
    listing_matches_the_truth("3.11", false);
}

#[test]
fn tasks_on_cpython_3_12() {
    listing_matches_the_truth("3.12", false);
}

#[test]
fn tasks_on_cpython_3_13() {
    listing_matches_the_truth("3.13", false);
}

/// Debian's 3.13.18 (the sid userland, in a mount namespace of its own, as in a container),
/// read through its own debug offsets and the 3.13 table's `[all_tasks]`.
#[test]
fn tasks_on_debian_cpython_3_13() {
    let Some(python) = sid_python("3.13") else {
        missing("Debian's CPython 3.13 (tests/setup.sh)");
        return;
    };
    listing_of(&python, "3.13", false);
}

#[test]
fn tasks_under_uvloop_on_3_12() {
    listing_matches_the_truth("3.12", true);
}

#[test]
fn tasks_under_uvloop_on_3_9() {
    listing_matches_the_truth("3.9", true);
}

#[test]
fn ten_thousand_tasks_are_listed_within_two_seconds() {
    let _lock = timing_lock();
    for (minor, uvloop) in [("3.12", false), ("3.10", true)] {
        let Some(python) = require_python(minor) else {
            return;
        };
        if uvloop && !require_module(&python, "uvloop") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (target, truth) = start_tree(&python, dir.path(), uvloop, 10_000);
        let started = Instant::now();
        let json = tasks_json(target.pid());
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{minor}: took {took:?}");
        let truth_tasks = truth["tasks"].as_array().unwrap();
        assert!(truth_tasks.len() > 10_000);
        assert_eq!(json["left_out"], 0);
        let listed: HashMap<u64, &Value> = json["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].as_u64().unwrap(), t))
            .collect();
        assert_eq!(listed.len(), truth_tasks.len());
        for t in truth_tasks {
            let got = listed[&t["id"].as_u64().unwrap()];
            assert_eq!(got["name"], t["name"]);
            assert_eq!(got["coroutine"], t["coroutine"]);
        }
        eprintln!(
            "{minor}{}: {} tasks listed in {took:?} (read {} ms)",
            if uvloop { " uvloop" } else { "" },
            listed.len(),
            json["read_ms"]
        );

        // A cap lists that many and counts the rest.
        let run = run_loopspy(
            &[
                "tasks",
                "--pid",
                &target.pid().to_string(),
                "--json",
                "--max-tasks",
                "100",
            ],
            Duration::from_secs(30),
        );
        assert_eq!(run.code(), 0, "{}", run.stderr);
        let capped: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(capped["tasks"].as_array().unwrap().len(), 100);
        assert_eq!(
            capped["left_out"].as_u64().unwrap() as usize,
            truth_tasks.len() - 100
        );
    }
}

/// A loop making and finishing tasks without pause while it is read: every listing succeeds,
/// lists the tasks that stay (the other loop is blocked) and nothing but real tasks' names.
#[test]
fn a_loop_churning_tasks_is_listed_without_harm() {
    for minor in ["3.12", "3.9"] {
        let Some(python) = require_python(minor) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let (target, truth) = start_tree_with(&python, dir.path(), false, 0, &["--churn"]);
        let stable: HashMap<u64, &Value> = truth["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["thread_ident"] == truth["main_thread_ident"])
            .map(|t| (t["id"].as_u64().unwrap(), t))
            .collect();
        let mut churned = 0;
        for _ in 0..10 {
            let json = tasks_json(target.pid());
            let listed: HashMap<u64, &Value> = json["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (t["id"].as_u64().unwrap(), t))
                .collect();
            for (id, t) in &stable {
                let got = listed
                    .get(id)
                    .unwrap_or_else(|| panic!("{minor}: {} not listed", t["name"]));
                assert_eq!(got["name"], t["name"]);
            }
            for t in listed.values() {
                let name = t["name"].as_str().unwrap();
                if name.starts_with("churn-") {
                    churned += 1;
                    assert_eq!(t["coroutine"], "side_loop.<locals>.short", "{t:#}");
                } else {
                    assert!(
                        truth["tasks"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|k| k["name"] == name),
                        "{minor}: unknown task {t:#}"
                    );
                }
            }
        }
        assert!(churned > 0, "{minor}: the churning tasks were never seen");
    }
}

#[test]
fn tasks_of_a_missing_pid_fail_clearly() {
    let run = run_loopspy(&["tasks", "--pid", "99999999"], Duration::from_secs(20));
    assert_eq!(run.code(), 3, "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("no process with PID 99999999"));
}

#[test]
fn tasks_of_a_non_python_process_fail_clearly() {
    let sleeper = ChildGuard(Command::new("sleep").arg("30").spawn().unwrap());
    let run = run_loopspy(
        &["tasks", "--pid", &sleeper.pid().to_string()],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), 4, "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("is not a Python process"));
}

#[test]
fn tasks_without_a_pid_is_a_usage_error() {
    let run = run_loopspy(&["tasks"], Duration::from_secs(20));
    assert_eq!(run.code(), 2, "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    let run = run_loopspy(
        &["tasks", "--pid", "1", "--max-tasks", "0"],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), 2, "{}", run.stderr);
}

#[test]
fn tasks_of_a_process_without_asyncio_say_so() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let target = start_python(&python, &["-c", "import time; time.sleep(60)"]);
    let json = tasks_json(target.pid());
    assert_eq!(json["asyncio"], false);
    assert_eq!(json["tasks"].as_array().unwrap().len(), 0);
    let run = run_loopspy(
        &["tasks", "--pid", &target.pid().to_string()],
        Duration::from_secs(30),
    );
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("asyncio is not imported"),
        "{}",
        run.stdout
    );
}

/// `derive.py` measures the `[all_tasks]` offsets inside each interpreter: they must be the
/// tables'.
#[test]
fn all_tasks_offsets_match_every_interpreter() {
    use loopspy::remote::offsets::{InstanceDict, StackKind};
    for minor in 8..=13u64 {
        let version = format!("3.{minor}");
        let Some(python) = require_python(&version) else {
            continue;
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_offsets/derive.py");
        let out = Command::new(&python).arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "derive.py on {version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let measured: Value = serde_json::from_slice(&out.stdout).unwrap();
        let table = loopspy::remote::offsets::for_minor(minor).unwrap();
        let a = table.all_tasks.unwrap();
        let expect: Vec<(&str, Option<usize>)> = vec![
            ("fut_state", Some(a.fut_state)),
            ("fut_callback0", Some(a.fut_callback0)),
            ("fut_callbacks", Some(a.fut_callbacks)),
            ("task_fut_waiter", Some(a.task_fut_waiter)),
            ("gen_frame", Some(a.gen_frame)),
            ("frame_stack", Some(a.frame_stack)),
            ("frame_valuestack", a.frame_valuestack),
            ("frame_localsplus", a.frame_localsplus),
            ("type_basicsize", Some(a.type_basicsize)),
            ("type_flags", Some(a.type_flags)),
            ("type_base", Some(a.type_base)),
            ("type_dictoffset", Some(a.type_dictoffset)),
            ("type_cached_keys", a.type_cached_keys),
            ("set_mask", Some(a.set_mask)),
            ("set_table", Some(a.set_table)),
            ("func_closure", Some(a.func_closure)),
            ("thread_dict", a.thread_dict),
        ];
        for (key, want) in expect {
            assert_eq!(
                measured[key].as_u64().map(|v| v as usize),
                want,
                "{version}: {key}"
            );
        }
        let kind = match a.stack_kind {
            StackKind::Pointer => "pointer",
            StackKind::Depth => "depth",
            StackKind::Index => "index",
        };
        assert_eq!(measured["stack_kind"], kind, "{version}: stack_kind");
        let dict = match a.instance_dict {
            InstanceDict::Offset => "offset",
            InstanceDict::V311 => "3.11",
            InstanceDict::V312 => "3.12",
            InstanceDict::V313 => "3.13",
        };
        assert_eq!(measured["instance_dict"], dict, "{version}: instance_dict");
        if a.thread_dict.is_some() {
            assert_eq!(
                measured["running_loop_holder"].as_bool(),
                Some(a.running_loop_holder),
                "{version}: running_loop_holder"
            );
        }
    }
}

/// 3.14 and 3.15 keep their tasks in per-thread lists the lister does not read yet: one line
/// that says so, and a failing exit code.
#[test]
fn tasks_on_cpython_3_14_are_refused_clearly() {
    let Some(python) = require_python("3.14") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (target, _truth) = start_tree(&python, dir.path(), false, 0);
    let run = run_loopspy(
        &["tasks", "--pid", &target.pid().to_string()],
        Duration::from_secs(30),
    );
    assert_eq!(run.code(), 1, "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("reads CPython 3.8 to 3.13 so far") && run.stderr.contains("3.14"),
        "{}",
        run.stderr
    );
}
