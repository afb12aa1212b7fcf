//! `pip install loopspy`: the maturin `bin` wheel is built from this checkout the way it ships
//! (`--zig --compatibility manylinux2014`: zig links against glibc 2.17's symbols), its tag and
//! the glibc versions its binary needs are checked, it is installed into a fresh virtual
//! environment (offline, from the file), and the installed `loopspy` records a real blocking
//! program.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;

/// The glibc symbol versions an ELF binary names (`GLIBC_2.17` → (2, 17)), sorted: the
/// version-needed strings of its dynamic section, found in its bytes (no binutils needed).
fn glibc_versions(binary: &[u8]) -> Vec<(u32, u32)> {
    let marker = b"GLIBC_2.";
    let mut found: Vec<(u32, u32)> = binary
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .filter_map(|(at, _)| {
            let rest = &binary[at + marker.len()..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            // A version string ends in NUL (`GLIBC_2.17\0`; `GLIBC_2.2.5` has a third part).
            let minor = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
            matches!(rest.get(digits), Some(0) | Some(b'.')).then_some((2, minor))
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

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
    if !require_module(&python, "maturin") || !require_module(&python, "ziglang") {
        return;
    }
    // The zig build compiles everything once more (for the explicit target, in its own
    // folder under the target directory, so nothing the other tests run is relinked): minutes
    // of both cores the first time, which would starve the timing tests.
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let wheels = dir.path().join("wheels");
    // maturin finds zig as `python-zig`, installed beside the interpreter by `ziglang`.
    let bin_dir = python.parent().unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    check(
        "maturin build --zig",
        Command::new(&python)
            .args(["-m", "maturin", "build", "--release", "--zig"])
            .args(["--compatibility", "manylinux2014", "-o"])
            .arg(&wheels)
            .env("PATH", path)
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
    // glibc >= 2.17: Debian 9+, Ubuntu 18.04+, RHEL/CentOS 7+, Amazon Linux 2 (README).
    assert!(
        name.ends_with("-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"),
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
    let needed = glibc_versions(&std::fs::read(&installed).unwrap());
    assert!(
        needed.last().is_some_and(|&v| v <= (2, 17)),
        "the binary needs glibc {needed:?}, the tag promises 2.17"
    );
    let version = check(
        "loopspy --version",
        Command::new(&installed).arg("--version").output().unwrap(),
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("loopspy {}", env!("CARGO_PKG_VERSION"))
    );

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
