//! A target in a container of its own, attached from the host by its host PID: its own PID,
//! mount and network namespaces (`unshare --pid --fork --mount --net`), its own root (the Debian
//! sid userland, chrooted), a loopback server inside for the network block. Every cause must
//! come out as outside a container, both thread ids must be reported, and source lines must be
//! read from the target's root — the host holds a different file at the same path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::causes::check_causes;
use crate::common::*;

/// Where the fixture lives, as the target sees it and (inside its root) as the host sees it.
const APP_DIR: &str = "/opt/loopspy-container-test";

/// The container's main process (unshare, killed with its child on drop) and the host pid of
/// the Python it runs.
struct Container {
    _unshare: ChildGuard,
    python_pid: i32,
}

fn start_container(root: &Path, minor: &str, io: &Path, args: &[&str]) -> Container {
    let script = format!(
        r#"set -e
root="$0"; io="$1"; shift
mount -t proc proc "$root/proc"
mount --bind "$io" "$root{APP_DIR}/io"
ip link set lo up
exec chroot "$root" /usr/bin/python{minor} "$@""#
    );
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
        .arg(root)
        .arg(io)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare (util-linux) starts the container");
    let guard = ChildGuard(child);
    // With --fork, the container's process is unshare's child.
    let deadline = Instant::now() + Duration::from_secs(10);
    let python_pid = loop {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", guard.pid()))
            .unwrap_or_default();
        let exe_is_python = |pid: &i32| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.to_string_lossy().contains("python"))
        };
        if let Some(pid) = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .find(exe_is_python)
        {
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

fn causes_in_a_container(minor: &str) {
    let root = sid_root();
    if sid_python(minor).is_none() {
        missing(&format!(
            "CPython {minor} of the Debian sid userland (tests/setup.sh)"
        ));
    }
    let _serial = timing_lock();
    // The fixture inside the target's root, and a decoy at the same path on the host: lines
    // read from the host's file would not hold the source the fixture logs.
    let inner = root.join(APP_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(inner.join("io")).unwrap();
    let fixture_text = std::fs::read_to_string(fixture("causes.py")).unwrap();
    std::fs::write(inner.join("causes.py"), &fixture_text).unwrap();
    let decoy_dir = PathBuf::from(APP_DIR);
    std::fs::create_dir_all(&decoy_dir).unwrap();
    let decoy: String = fixture_text
        .lines()
        .map(|_| "# the host's file\n")
        .collect();
    std::fs::write(decoy_dir.join("causes.py"), decoy).unwrap();

    let io = tempfile::tempdir().unwrap();
    let in_io = |name: &str| format!("{APP_DIR}/io/{name}");
    let container = start_container(
        &root,
        minor,
        io.path(),
        &[
            &format!("{APP_DIR}/causes.py"),
            "--truth",
            &in_io("truth.json"),
            "--go-file",
            &in_io("go"),
            "--workdir",
            &in_io(""),
        ],
    );
    let pid = container.python_pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.split_whitespace().count() == 3),
        "the target is not in a PID namespace of its own:\n{status}"
    );
    let out = io.path().join("out");
    let mut running = Running::start(record_pid(pid, &out, &[]));
    running.wait_for_stderr("sampling pid", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(io.path().join("go"), b"go").unwrap();
    let run = running.finish(Duration::from_secs(90));
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    drop(container);
    let json = read_json(&out.join("incidents.json"));
    let truth = read_json(&io.path().join("truth.json"))
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
    check_causes(&json, &truth, &report);
    let _ = std::fs::remove_dir_all(&decoy_dir);
}

#[test]
fn names_every_cause_in_a_container_on_cpython_3_14() {
    causes_in_a_container("3.14");
}

#[test]
fn names_every_cause_in_a_container_on_cpython_3_13() {
    causes_in_a_container("3.13");
}
