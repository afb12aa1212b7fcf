//! A target in a container of its own: its own PID, mount and network namespaces (`unshare
//! --pid --fork --mount --net`), its own root (the Debian sid userland, chrooted) or the host's
//! with a pyenv interpreter (CPython 3.8–3.10), a loopback server inside for the network
//! block. Attached from the host by its host PID, every cause must come out as outside a
//! container, both thread ids must be reported, and source lines must be read from the
//! target's root — the host holds a different file at the same path. `--subprocesses` follows
//! the container's Python children; loopspy run inside the container attaches by the
//! container's own PID.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::causes::check_causes;
use crate::common::*;

/// Where the fixture lives, as the target sees it and (inside its root) as the host sees it.
const APP_DIR: &str = "/opt/loopspy-container-test";

/// The container's main process (unshare, killed with everything in it on drop) and the host
/// pid of the first Python in it.
struct Container {
    _unshare: ChildGuard,
    python_pid: i32,
}

/// What the container runs.
enum Image<'a> {
    /// The Debian sid userland, chrooted, and its `python{minor}`; `io` is bound at
    /// `APP_DIR/io` inside it.
    Sid { minor: &'a str, io: &'a Path },
    /// The host's own root and an interpreter of it (pyenv's CPython 3.8–3.10 exist only
    /// there): the PID, mount and network namespaces are the container's, the files are not.
    Host { python: &'a Path },
}

/// Starts `image` in PID, mount and network namespaces of its own, with its own `/proc` and
/// loopback. `init` keeps the container's first process (a shell) alive after Python exits,
/// as a container's init would: Python is then its child (in-namespace pid 2), and a loopspy
/// running inside is not killed with the namespace before it writes.
fn start_container(image: Image, args: &[&str], init: bool) -> Container {
    let run = if init {
        "\"$@\"; sleep 60"
    } else {
        "exec \"$@\""
    };
    let (script, head): (String, Vec<std::ffi::OsString>) = match image {
        Image::Sid { minor, io } => (
            format!(
                r#"set -e
root="$0"; io="$1"; shift
mount -t proc proc "$root/proc"
mount --bind "$io" "$root{APP_DIR}/io"
ip link set lo up
set -- chroot "$root" /usr/bin/python{minor} "$@"
{run}"#
            ),
            vec![sid_root().into(), io.into()],
        ),
        Image::Host { python } => (
            format!(
                r#"set -e
mount -t proc proc /proc
ip link set lo up
set -- "$0" "$@"
{run}"#
            ),
            vec![python.into()],
        ),
    };
    let child = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--propagation",
            "private",
            "--net",
        ])
        .args(["/bin/sh", "-c", &script])
        .args(head)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare (util-linux) starts the container");
    let guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let python_pid = loop {
        if let Some(pid) = python_below(guard.pid()) {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the container's python never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    Container {
        _unshare: guard,
        python_pid,
    }
}

/// The first Python process among `pid`'s descendants (host pids), breadth first.
fn python_below(pid: i32) -> Option<i32> {
    let mut queue = vec![pid];
    let mut i = 0;
    while i < queue.len() {
        let parent = queue[i];
        i += 1;
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        for child in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            let is_python = std::fs::read_link(format!("/proc/{child}/exe"))
                .is_ok_and(|exe| exe.to_string_lossy().contains("python"));
            if is_python {
                return Some(child);
            }
            queue.push(child);
        }
    }
    None
}

/// The innermost id of `/proc/<pid>/status`'s `NSpid:` (the process's own namespace's id),
/// asserting it lives in a PID namespace of its own.
fn ns_pid(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    let ids: Vec<u64> = line[6..]
        .split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "not in a PID namespace of its own: {line}");
    ids[1]
}

/// Puts the fixture `name` into the sid root at `APP_DIR`, and a decoy at the same path on the
/// host: lines read from the host's file would not hold the source the fixture logs.
fn install_fixture(name: &str) {
    let inner = sid_root().join(APP_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(inner.join("io")).unwrap();
    let fixture_text = std::fs::read_to_string(fixture(name)).unwrap();
    std::fs::write(inner.join(name), &fixture_text).unwrap();
    let decoy_dir = PathBuf::from(APP_DIR);
    std::fs::create_dir_all(&decoy_dir).unwrap();
    let decoy: String = fixture_text
        .lines()
        .map(|_| "# the host's file\n")
        .collect();
    std::fs::write(decoy_dir.join(name), decoy).unwrap();
}

fn require_sid(minor: &str) {
    if sid_python(minor).is_none() {
        missing(&format!(
            "CPython {minor} of the Debian sid userland (tests/setup.sh)"
        ));
    }
}

/// The causes fixture's arguments, its files in `dir` (as the target sees it).
fn causes_args(dir: &str) -> Vec<String> {
    vec![
        "--truth".into(),
        format!("{dir}/truth.json"),
        "--go-file".into(),
        format!("{dir}/go"),
        "--workdir".into(),
        format!("{dir}/"),
    ]
}

/// Records `container` from the host by its host pid, starts the fixture, checks every cause
/// and that the loop is reported by both thread ids.
fn check_causes_from_the_host(container: Container, io: &Path) {
    let pid = container.python_pid;
    assert_eq!(ns_pid(pid), 1, "the container's python is its pid 1");
    let out = io.join("out");
    let mut running = Running::start(record_pid(pid, &out, &[]));
    running.wait_for_stderr("sampling pid", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(io.join("go"), b"go").unwrap();
    let run = running.finish(Duration::from_secs(90));
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    drop(container);
    let json = read_json(&out.join("incidents.json"));
    let truth = read_json(&io.join("truth.json"))
        .as_array()
        .cloned()
        .unwrap_or_default();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    // Both ids: the host's (what /proc is read by) and the container's (what the app logs).
    let loops = json["loops"].as_array().unwrap();
    assert_eq!(loops.len(), 1, "{:#}", json["loops"]);
    assert_eq!(loops[0]["thread_id"], pid, "the loop thread by its host id");
    assert_eq!(
        loops[0]["ns_thread_id"], 1,
        "the loop thread by its container id"
    );
    assert_eq!(json["target"]["pid"], pid, "the process by its host pid");
    assert_eq!(
        json["target"]["ns_pid"], 1,
        "the process by its container pid"
    );
    check_causes(&json, &truth, &report);
    assert!(
        !report.contains("unreadable"),
        "every thread's kernel view was read:\n{report}"
    );
}

fn causes_in_a_container(minor: &str) {
    require_sid(minor);
    let _serial = timing_lock();
    install_fixture("causes.py");
    let io = tempfile::tempdir().unwrap();
    let mut args = vec![format!("{APP_DIR}/causes.py")];
    args.extend(causes_args(&format!("{APP_DIR}/io")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let container = start_container(
        Image::Sid {
            minor,
            io: io.path(),
        },
        &args,
        false,
    );
    check_causes_from_the_host(container, io.path());
    let _ = std::fs::remove_dir_all(APP_DIR);
}

/// CPython 3.8–3.10 record no kernel thread id, only the `pthread_t`: the host tid behind it
/// is found through the tid in the target's `struct pthread`, which is its namespace's (`1`,
/// `2`, ... — values a dozen other fields of the struct hold too). Every cause needs the
/// kernel's view of the loop thread, so every cause named right says it was found.
fn causes_in_a_pid_namespace(minor: &str) {
    let Some(python) = require_python(minor) else {
        return;
    };
    let _serial = timing_lock();
    let io = tempfile::tempdir().unwrap();
    let mut args = vec![fixture("causes.py").to_string_lossy().into_owned()];
    args.extend(causes_args(&io.path().to_string_lossy()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let container = start_container(Image::Host { python: &python }, &args, false);
    check_causes_from_the_host(container, io.path());
}

/// `--subprocesses` on a container's main process finds its Python children by their host
/// pids, and reports the child's block with both of its ids.
#[test]
fn subprocesses_are_followed_inside_a_container() {
    require_sid("3.13");
    let _serial = timing_lock();
    install_fixture("blocker.py");
    let io = tempfile::tempdir().unwrap();
    let inner = format!("{APP_DIR}/io");
    // The container's main process is a Python that starts the asyncio worker as its child.
    let parent = format!(
        "import subprocess, sys; subprocess.run([sys.executable, '{APP_DIR}/blocker.py', \
         '--truth', '{inner}/truth.json', '--go-file', '{inner}/go', '--scenarios', 'sleep,cpu'])"
    );
    let container = start_container(
        Image::Sid {
            minor: "3.13",
            io: io.path(),
        },
        &["-c", &parent],
        false,
    );
    let parent_pid = container.python_pid;
    let out = io.path().join("out");
    let mut running = Running::start(record_pid(parent_pid, &out, &["--subprocesses"]));
    running.wait_for_stderr("following child pid", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(io.path().join("go"), b"go").unwrap();
    let run = running.finish(Duration::from_secs(60));
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    drop(container);
    let json = read_json(&out.join("incidents.json"));
    let truth = read_json(&io.path().join("truth.json"))
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(truth.len(), 2, "{truth:?}");
    let incidents = json["incidents"].as_array().unwrap();
    for t in &truth {
        let found: Vec<&serde_json::Value> = incidents
            .iter()
            .filter(|i| {
                let (s, e) = (
                    i["start_unix"].as_f64().unwrap(),
                    i["end_unix"].as_f64().unwrap(),
                );
                s < t["end"].as_f64().unwrap() && e > t["start"].as_f64().unwrap()
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{t}: one incident expected\n{:#}",
            json["incidents"]
        );
        let inc = found[0];
        assert_ne!(inc["pid"], parent_pid, "the child's incident: {inc:#}");
        // The child's loop runs in its main thread: its container id is its pid there.
        assert_eq!(inc["ns_thread_id"], t["thread_id"], "{inc:#}");
        assert_ne!(inc["thread_id"], t["thread_id"], "the host's id: {inc:#}");
        assert_eq!(inc["cause"]["category"], t["cause"], "{inc:#}");
        assert_eq!(inc["culprit"]["function"], t["function"], "{inc:#}");
    }
    let _ = std::fs::remove_dir_all(APP_DIR);
}

/// loopspy copied into the container and run there (`docker cp` + `docker exec`: the same PID,
/// mount and network namespaces, the container's root), attached by the in-container pid:
/// every cause, thread ids as the container knows them.
#[test]
fn runs_inside_the_container_by_its_own_pid() {
    require_sid("3.13");
    let _serial = timing_lock();
    install_fixture("causes.py");
    let io = tempfile::tempdir().unwrap();
    let binary = io.path().join("loopspy");
    std::fs::copy(loopspy_path(), &binary).unwrap();
    let mut args = vec![format!("{APP_DIR}/causes.py")];
    let inner = format!("{APP_DIR}/io");
    args.extend(causes_args(&inner));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let container = start_container(
        Image::Sid {
            minor: "3.13",
            io: io.path(),
        },
        &args,
        true,
    );
    let pid = container.python_pid;
    let inside_pid = ns_pid(pid);
    let mut cmd = Command::new("nsenter");
    cmd.args([
        "--target",
        &pid.to_string(),
        "--pid",
        "--mount",
        "--net",
        "--root",
        "--",
    ])
    .arg(format!("{inner}/loopspy"))
    .args(["record", "--pid", &inside_pid.to_string(), "--rate", "500"])
    .args(["-o", &format!("{inner}/out")]);
    let mut running = Running::start(cmd);
    running.wait_for_stderr("sampling pid", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(io.path().join("go"), b"go").unwrap();
    let run = running.finish(Duration::from_secs(90));
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    drop(container);
    let out = io.path().join("out");
    let json = read_json(&out.join("incidents.json"));
    let truth = read_json(&io.path().join("truth.json"))
        .as_array()
        .cloned()
        .unwrap_or_default();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let loops = json["loops"].as_array().unwrap();
    assert_eq!(loops.len(), 1, "{:#}", json["loops"]);
    // loopspy shares the target's namespace: one id, the container's.
    assert_eq!(loops[0]["thread_id"], inside_pid, "{:#}", json["loops"]);
    assert!(loops[0]["ns_thread_id"].is_null(), "{:#}", json["loops"]);
    check_causes(&json, &truth, &report);
    let _ = std::fs::remove_dir_all(APP_DIR);
}

#[test]
fn names_every_cause_in_a_container_on_cpython_3_14() {
    causes_in_a_container("3.14");
}

#[test]
fn names_every_cause_in_a_container_on_cpython_3_13() {
    causes_in_a_container("3.13");
}

#[test]
fn names_every_cause_in_a_pid_namespace_on_cpython_3_8() {
    causes_in_a_pid_namespace("3.8");
}

#[test]
fn names_every_cause_in_a_pid_namespace_on_cpython_3_10() {
    causes_in_a_pid_namespace("3.10");
}

/// loopspy as root in a container that lacks `CAP_SYS_PTRACE` (Docker's and Kubernetes'
/// default): the permission error names the capability and where each platform grants it.
#[test]
fn ptrace_denied_inside_a_container_names_the_capability() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    // The container's shell starts the target, then execs loopspy with CAP_SYS_PTRACE dropped
    // from every set it could come back from.
    let script = r#""$0" -c "import time; time.sleep(30)" &
sleep 0.5
exec setpriv --bounding-set=-sys_ptrace --inh-caps=-sys_ptrace -- "$1" record --pid $! -o "$2""#;
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .args(["/bin/sh", "-c", script])
        .arg(&python)
        .arg(loopspy_path())
        .arg(out.path().join("out"));
    let run = Running::start(cmd).finish(Duration::from_secs(30));
    assert_eq!(run.code(), 6, "{}", run.stderr);
    let line = error_line(&run);
    for needle in [
        "permission denied reading process 2",
        "container without CAP_SYS_PTRACE",
        "--cap-add SYS_PTRACE",
        "capabilities.add: [SYS_PTRACE]",
        "kubectl debug",
        "--profile=general",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
}

/// A PID loopspy cannot see from inside a container (the host's, another container's): not
/// "no such process" alone, but where the right PID comes from.
#[test]
fn a_pid_outside_the_container_is_said_to_be_invisible_from_it() {
    let out = tempfile::tempdir().unwrap();
    // The test's own pid exists on the host, and not in a fresh PID namespace (its pids start
    // at 1).
    let host_pid = std::process::id().to_string();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(loopspy_path())
        .args(["record", "--pid", &host_pid, "-o"])
        .arg(out.path().join("out"));
    let run = Running::start(cmd).finish(Duration::from_secs(30));
    assert_eq!(run.code(), 3, "{}", run.stderr);
    let line = error_line(&run);
    let visible = format!("no process with PID {host_pid} is visible here");
    for needle in [&*visible, "PID namespace of its own", "docker inspect"] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
}

/// The PID `ps` shows inside a container, given on the host, is some other process, or none:
/// the error names the host PID of the Python meant.
#[test]
fn a_container_pid_given_on_the_host_names_the_host_pid() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let container = start_container(
        Image::Host { python: &python },
        &["-c", "import time; time.sleep(30)"],
        true,
    );
    let inside = ns_pid(container.python_pid).to_string();
    let run = run_loopspy(&["record", "--pid", &inside], Duration::from_secs(30));
    // The same number on the host is another process (not Python), or none.
    assert!([3, 4].contains(&run.code()), "{}", run.stderr);
    let line = error_line(&run);
    assert!(
        line.contains("inside a container") && line.contains(&container.python_pid.to_string()),
        "{line}"
    );
}

fn error_line(run: &Run) -> String {
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("loopspy: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{}", run.stderr);
    errors[0].to_string()
}
