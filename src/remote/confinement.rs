//! Where loopspy itself runs, for the words of its errors: inside a container (a PID namespace
//! of its own, or a container runtime's marks), with or without `CAP_SYS_PTRACE`. A permission
//! error or a PID that does not exist mean different things there than on a host, and the fix
//! the user needs is a different one (a capability in the pod spec, the host's PID).

use std::path::Path;

/// `CAP_SYS_PTRACE`'s bit in the capability sets of `/proc/self/status`.
const CAP_SYS_PTRACE: u32 = 19;
/// The inode of the initial PID namespace (`PROC_PID_INIT_INO` in the kernel): the host's.
const INIT_PID_NAMESPACE: &str = "pid:[4026531836]";

/// Whether loopspy's own PID namespace is not the host's: it sees only the processes of its
/// container. None when that cannot be read.
pub fn in_own_pid_namespace() -> Option<bool> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(link.to_string_lossy() != INIT_PID_NAMESPACE)
}

/// Whether loopspy runs in a container: a PID namespace of its own, Docker's or Podman's
/// marker file, or a container runtime named in the cgroup of its PID 1.
pub fn in_container() -> bool {
    if in_own_pid_namespace() == Some(true) {
        return true;
    }
    if Path::new("/.dockerenv").exists() || Path::new("/run/.containerenv").exists() {
        return true;
    }
    let cgroup = std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
    ["docker", "kubepods", "containerd", "libpod", "lxc"]
        .iter()
        .any(|runtime| cgroup.contains(runtime))
}

/// Whether loopspy holds `CAP_SYS_PTRACE` in its effective set. None when unreadable.
pub fn has_cap_sys_ptrace() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    has_cap(&status, CAP_SYS_PTRACE)
}

fn has_cap(status: &str, bit: u32) -> Option<bool> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    let caps = u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()?;
    Some(caps & (1 << bit) != 0)
}

/// What to do about a permission error reading a target, worded for where loopspy runs.
pub fn permission_hint() -> String {
    let users = "run loopspy as the same user as the target or as root; if kernel.yama.ptrace_scope is 1 or more, run as root or `sysctl kernel.yama.ptrace_scope=0`";
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match (in_container(), has_cap_sys_ptrace()) {
        (true, Some(false)) => format!("loopspy runs in a container without CAP_SYS_PTRACE, which reading another process's memory needs: add it (docker run --cap-add SYS_PTRACE; Kubernetes: securityContext.capabilities.add: [SYS_PTRACE] on loopspy's container, or an ephemeral container: kubectl debug -it POD --image=IMAGE --target=CONTAINER --profile=general), or run loopspy on the host with the target's host PID; {users}"),
        (false, Some(false)) if root => format!("loopspy runs as root but without CAP_SYS_PTRACE (dropped from its capabilities), which reading a process with more capabilities needs: run it with the capability (in a container: docker run --cap-add SYS_PTRACE); {users}"),
        _ => "run loopspy as the same user as the target or as root; in a container add CAP_SYS_PTRACE (docker run --cap-add SYS_PTRACE); if kernel.yama.ptrace_scope is 1 or more, run as root or `sysctl kernel.yama.ptrace_scope=0`".to_string(),
    }
}

/// What to say about a PID that is not there, when loopspy cannot see the whole machine.
pub fn not_visible_hint() -> Option<&'static str> {
    (in_own_pid_namespace() == Some(true)).then_some(
        "loopspy runs in a PID namespace of its own (a container), which sees only that container's processes: give the PID as `ps` inside this container shows it, or run loopspy on the host with the host PID (`docker inspect -f '{{.State.Pid}}' CONTAINER`)",
    )
}

/// Host PIDs of Python processes that are PID `pid` inside a PID namespace of their own: what
/// a user who took the PID from `ps` inside a container meant. At most a few, from `/proc`.
pub fn python_known_inside_containers_as(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(host) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{host}/status")) else {
            continue;
        };
        let Some(line) = status.lines().find(|l| l.starts_with("NSpid:")) else {
            continue;
        };
        let ids: Vec<&str> = line["NSpid:".len()..].split_whitespace().collect();
        let inner = ids.last().and_then(|id| id.parse::<i32>().ok());
        if ids.len() < 2 || inner != Some(pid) || host == pid {
            continue;
        }
        let python = std::fs::read_link(format!("/proc/{host}/exe")).is_ok_and(|exe| {
            exe.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("python"))
        });
        if python {
            found.push(host);
            if found.len() >= 8 {
                break;
            }
        }
    }
    found.sort_unstable();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(has_cap(status, CAP_SYS_PTRACE), Some(true));
        let dropped = "CapEff:\t000001fffff7ffff\n";
        assert_eq!(has_cap(dropped, CAP_SYS_PTRACE), Some(false));
        assert_eq!(has_cap("Name:\tx\n", CAP_SYS_PTRACE), None);
        assert!(has_cap_sys_ptrace().is_some());
    }
}
