//! Attaching to a running interpreter: the checks that turn "py-spy could not read it" into an
//! error the user can act on (no such process, not Python, wrong version, no permission), and
//! finding where the interpreter is: from the target's own debug offsets on CPython 3.13+, with
//! py-spy's help before.

use std::io;

use py_spy::config::LockingStrategy;
use py_spy::{Config, PythonSpy};

use super::debug_offsets::{self, DebugOffsetsError};
use super::memory::{self, ProcessMemory, RemoteMemory};
use super::offsets::{self, PythonOffsets};
use super::{confinement, procfs};
use crate::error::LoopspyError;

/// Oldest and newest CPython minor versions loopspy supports.
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u64> = 8..=15;

/// Where loopspy's own readers find the interpreter, and the struct layout they read it with.
#[derive(Debug, Clone)]
pub struct ReaderLayout {
    /// The offsets: from the target's debug offsets (3.13+) or `python_offsets/` (3.8–3.13).
    pub offsets: PythonOffsets,
    /// The main interpreter's `PyInterpreterState`.
    pub interpreter: u64,
    /// The GIL holder's record (`_gil_runtime_state`, or `tstate_current` up to 3.11); 0 when
    /// unknown.
    pub gil: u64,
    /// Address of the interpreter's `sys.modules` pointer.
    pub modules_ptr: u64,
    /// The minor version (3.`minor`).
    pub minor: u64,
    /// True when `offsets` came from the target itself (`_Py_DebugOffsets`).
    pub from_target: bool,
    /// The target's `interpreter_state.size` (3.13+; checks `_asyncio`'s debug section).
    pub interpreter_size: u64,
}

/// A target we hold a reader on.
pub struct AttachedTarget {
    /// py-spy's interpreter reader, configured for our use; None where py-spy cannot read the
    /// target (loopspy reads it by itself).
    pub spy: Option<PythonSpy>,
    /// The own readers' way in; None when only py-spy can read this target.
    pub layout: Option<ReaderLayout>,
    /// Process id of the interpreter.
    pub pid: i32,
    /// Full version, e.g. `3.11.7`.
    pub python_version: String,
    /// The target's command line.
    pub command: String,
    /// Pause the target for each read (`--blocking`).
    pub blocking: bool,
}

impl AttachedTarget {
    /// Whether the interpreter has a thread to read yet (a just-started one may not).
    pub fn has_threads(&mut self) -> bool {
        if let Some(layout) = &self.layout {
            let mem = ProcessMemory { pid: self.pid };
            let mut word = [0u8; 8];
            let head = layout
                .interpreter
                .wrapping_add(layout.offsets.interpreter.threads_head as u64);
            return mem.read(head, &mut word) && u64::from_ne_bytes(word) != 0;
        }
        self.spy
            .as_mut()
            .is_some_and(|spy| spy.get_stack_traces().is_ok())
    }
}

/// Attaches to `pid`. `blocking` pauses the target during each read (py-spy's default);
/// loopspy's default is not to.
///
/// From CPython 3.13 the target's own debug offsets say where everything is; py-spy is then
/// attached too where it can be (for thread names and `--reader py-spy`), but not needed.
/// Before 3.13 py-spy finds the interpreter and `python_offsets/` gives the layout.
pub fn attach(pid: i32, blocking: bool) -> Result<AttachedTarget, LoopspyError> {
    attach_found(pid, blocking).map_err(with_container_hint)
}

/// A PID taken from `ps` inside a container names another process on the host, or none: a
/// "not Python" or "no such process" error says which host PIDs are Pythons known inside
/// containers by that PID. Only for a PID the user named: the look reads every process's
/// `status`, too much for each child `--subprocesses` finds.
fn with_container_hint(err: LoopspyError) -> LoopspyError {
    let pid = match &err {
        LoopspyError::NotPython { pid, .. } | LoopspyError::NoSuchProcess(pid) => *pid,
        _ => return err,
    };
    let hint = match &confinement::python_known_inside_containers_as(pid)[..] {
        [] => return err,
        [host] => format!(
            "a Python is PID {pid} inside a container: its host PID is {host}, give `--pid {host}`"
        ),
        hosts => format!(
            "Pythons are PID {pid} inside containers: their host PIDs are {}",
            hosts
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    match err {
        LoopspyError::NotPython {
            pid,
            command,
            detail,
        } => LoopspyError::NotPython {
            pid,
            command,
            detail: format!("{detail}; {hint}"),
        },
        _ => LoopspyError::NotVisible { pid, hint },
    }
}

/// [`attach`] for a process loopspy found itself (a launched command's interpreter, a child
/// `--subprocesses` follows): no hints about PIDs the user may have mistaken.
pub fn attach_found(pid: i32, blocking: bool) -> Result<AttachedTarget, LoopspyError> {
    precheck(pid)?;
    let command = procfs::command_line(pid);
    let config = spy_config(blocking);
    let mem = ProcessMemory { pid };
    match debug_offsets::locate(pid, &mem) {
        Some(Ok(runtime)) => {
            let version = runtime.table.version;
            let spy = PythonSpy::new(pid, &config).ok();
            let layout = ReaderLayout {
                offsets: runtime.table.reader_offsets(),
                interpreter: runtime.interpreter,
                gil: runtime.gil,
                modules_ptr: runtime.modules_ptr,
                minor: version.minor(),
                from_target: true,
                interpreter_size: runtime.table.get(debug_offsets::Field::InterpSize),
            };
            return Ok(AttachedTarget {
                spy,
                layout: Some(layout),
                pid,
                python_version: version.to_string(),
                command,
                blocking,
            });
        }
        Some(Err(DebugOffsetsError::FreeThreaded(version))) => {
            return Err(LoopspyError::FreeThreaded { pid, version });
        }
        Some(Err(DebugOffsetsError::UnknownVersion { version, why })) => {
            return Err(LoopspyError::UnsupportedPython {
                pid,
                version,
                detail: format!(": {why}"),
            });
        }
        // An interpreter not initialised yet (no interpreter state), or a table that does not
        // add up: py-spy's way below decides.
        Some(Err(_)) | None => {}
    }
    let spy = PythonSpy::new(pid, &config).map_err(|err| classify_spy_error(pid, &command, err))?;
    let version = spy.version.clone();
    if version.major != 3 || !SUPPORTED_MINORS.contains(&version.minor) {
        return Err(LoopspyError::UnsupportedPython {
            pid,
            version: version.to_string(),
            detail: String::new(),
        });
    }
    // 3.14+ without readable debug offsets: py-spy's reader only.
    let layout = offsets::for_minor(version.minor).map(|offsets| ReaderLayout {
        offsets,
        interpreter: spy.addresses.interpreter_address as u64,
        gil: spy.addresses.threadstate_address as u64,
        modules_ptr: spy.addresses.imports_modules_address as u64,
        minor: version.minor,
        from_target: false,
        interpreter_size: 0,
    });
    Ok(AttachedTarget {
        python_version: version.to_string(),
        spy: Some(spy),
        layout,
        pid,
        command,
        blocking,
    })
}

/// The py-spy configuration loopspy reads with: Python frames only, thread names on.
pub fn spy_config(blocking: bool) -> Config {
    Config {
        blocking: if blocking {
            LockingStrategy::Lock
        } else {
            LockingStrategy::NonBlocking
        },
        native: false,
        collect_thread_names: true,
        include_idle: true,
        ..Config::default()
    }
}

/// Cheap checks before py-spy's heavier probing, so that the common mistakes get precise
/// messages: a wrong PID, a permission problem, a process with no Python in it.
fn precheck(pid: i32) -> Result<(), LoopspyError> {
    if pid <= 0 || !procfs::is_alive(pid) {
        return Err(match confinement::not_visible_hint() {
            Some(hint) if pid > 0 => LoopspyError::NotVisible {
                pid,
                hint: hint.to_string(),
            },
            _ => LoopspyError::NoSuchProcess(pid),
        });
    }
    let maps = match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        Ok(maps) => maps,
        Err(err) if is_permission(&err) => return Err(permission_denied(pid)),
        Err(_) => return Err(LoopspyError::NoSuchProcess(pid)),
    };
    // Reading /proc/<pid>/maps can be allowed where reading memory is not (yama scope 1+).
    if let Some(addr) = first_readable_address(&maps) {
        if let Err(err) = memory::read_exact(pid, addr, &mut [0u8; 1]) {
            if is_permission(&err) {
                return Err(permission_denied(pid));
            }
        }
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let has_python = maps.lines().any(|line| line.contains("libpython"))
        || exe
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("python"));
    if !has_python {
        return Err(LoopspyError::NotPython {
            pid,
            command: procfs::command_line(pid),
            detail: format!("its executable is {exe} and it maps no libpython"),
        });
    }
    Ok(())
}

fn classify_spy_error(pid: i32, command: &str, err: anyhow::Error) -> LoopspyError {
    if !procfs::is_alive(pid) {
        return LoopspyError::NoSuchProcess(pid);
    }
    let chain = format!("{err:#}");
    if chain.contains("Permission denied") || chain.contains("Operation not permitted") {
        return permission_denied(pid);
    }
    LoopspyError::NotPython {
        pid,
        command: command.to_string(),
        detail: chain,
    }
}

/// The permission error, with the hint for where loopspy runs.
fn permission_denied(pid: i32) -> LoopspyError {
    LoopspyError::PermissionDenied {
        pid,
        hint: confinement::permission_hint(),
    }
}

fn is_permission(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::PermissionDenied) || err.raw_os_error() == Some(libc::EPERM)
}

fn first_readable_address(maps: &str) -> Option<usize> {
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let perms = fields.next()?;
        if !perms.starts_with('r') {
            return None;
        }
        usize::from_str_radix(range.split('-').next()?, 16).ok()
    })
}
