//! `pip install loopspy`: the maturin `bin` wheel is built from this checkout, installed into a
//! fresh virtual environment (offline, from the file), and the installed `loopspy` records a
//! real blocking program.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;

fn check(what: &str, output: Output) -> Output {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn pip_installed_wheel_records_a_blocking_program() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    if !require_module(&python, "maturin") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wheels = dir.path().join("wheels");
    // Same profile and features as `cargo test --release` built, so cargo finds the binary
    // fresh and nothing under test is rebuilt.
    check(
        "maturin build",
        Command::new(&python)
            .args(["-m", "maturin", "build", "--release", "-o"])
            .arg(&wheels)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap(),
    );
    let wheel = std::fs::read_dir(&wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel was built");
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("loopspy-{}-py3-none-", env!("CARGO_PKG_VERSION"))),
        "{name}"
    );

    let venv = dir.path().join("venv");
    check(
        "python -m venv",
        Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .unwrap(),
    );
    let venv_python = venv.join("bin/python");
    check(
        "pip install",
        Command::new(&venv_python)
            .args(["-m", "pip", "install", "--no-index", "--quiet"])
            .arg(&wheel)
            .output()
            .unwrap(),
    );
    let installed = venv.join("bin/loopspy");
    assert!(
        installed.exists(),
        "pip put no loopspy in {}",
        venv.display()
    );
    let version = check(
        "loopspy --version",
        Command::new(&installed).arg("--version").output().unwrap(),
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("loopspy {}", env!("CARGO_PKG_VERSION"))
    );

    let _serial = timing_lock();
    let out = dir.path().join("out");
    let truth = dir.path().join("truth.json");
    let mut cmd = Command::new(&installed);
    cmd.args(["record", "--rate", "500", "-o"])
        .arg(&out)
        .arg("--")
        .arg(&venv_python)
        .arg(fixture("blocker.py"))
        .arg("--truth")
        .arg(&truth)
        .args(["--delay", "0.5", "--scenarios", "sleep,cpu"]);
    let run = Running::start(cmd).finish(Duration::from_secs(60));
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout, run.stderr);
    let json = read_json(&out.join("incidents.json"));
    let culprits: Vec<&str> = json["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["culprit"]["function"].as_str().unwrap())
        .collect();
    assert_eq!(culprits, ["nap_in_handler", "crunch"], "{json:#}");
    assert!(Path::new(&out.join("flamegraph.svg")).exists());
}
