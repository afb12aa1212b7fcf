//! The x86_64 system calls loopspy meets in `/proc/<pid>/task/<tid>/syscall`, in one table:
//! their names (what a cause's detail says) and which of them wait on a file descriptor
//! (what `remote::resources` resolves). Numbers from the kernel's
//! `arch/x86/entry/syscalls/syscall_64.tbl`.

/// `read`.
pub const READ: i64 = 0;
/// `poll`.
pub const POLL: i64 = 7;
/// `select`.
pub const SELECT: i64 = 23;
/// `futex`: how a thread waiting to take the GIL (or any lock) waits.
pub const FUTEX: i64 = 202;
/// `epoll_wait`.
pub const EPOLL_WAIT: i64 = 232;
/// `pselect6`.
pub const PSELECT6: i64 = 270;
/// `ppoll`.
pub const PPOLL: i64 = 271;
/// `epoll_pwait`.
pub const EPOLL_PWAIT: i64 = 281;
/// `epoll_pwait2`.
pub const EPOLL_PWAIT2: i64 = 441;

/// (number, name) of the syscalls a blocked thread is commonly found in.
const NAMES: &[(i64, &str)] = &[
    (0, "read"),
    (1, "write"),
    (2, "open"),
    (3, "close"),
    (4, "stat"),
    (5, "fstat"),
    (6, "lstat"),
    (7, "poll"),
    (8, "lseek"),
    (9, "mmap"),
    (10, "mprotect"),
    (11, "munmap"),
    (12, "brk"),
    (13, "rt_sigaction"),
    (14, "rt_sigprocmask"),
    (16, "ioctl"),
    (17, "pread64"),
    (18, "pwrite64"),
    (19, "readv"),
    (20, "writev"),
    (21, "access"),
    (22, "pipe"),
    (23, "select"),
    (24, "sched_yield"),
    (25, "mremap"),
    (26, "msync"),
    (28, "madvise"),
    (32, "dup"),
    (33, "dup2"),
    (34, "pause"),
    (35, "nanosleep"),
    (39, "getpid"),
    (40, "sendfile"),
    (41, "socket"),
    (42, "connect"),
    (43, "accept"),
    (44, "sendto"),
    (45, "recvfrom"),
    (46, "sendmsg"),
    (47, "recvmsg"),
    (48, "shutdown"),
    (49, "bind"),
    (50, "listen"),
    (51, "getsockname"),
    (52, "getpeername"),
    (53, "socketpair"),
    (54, "setsockopt"),
    (55, "getsockopt"),
    (56, "clone"),
    (57, "fork"),
    (58, "vfork"),
    (59, "execve"),
    (60, "exit"),
    (61, "wait4"),
    (62, "kill"),
    (63, "uname"),
    (72, "fcntl"),
    (73, "flock"),
    (74, "fsync"),
    (75, "fdatasync"),
    (76, "truncate"),
    (77, "ftruncate"),
    (78, "getdents"),
    (79, "getcwd"),
    (80, "chdir"),
    (82, "rename"),
    (83, "mkdir"),
    (84, "rmdir"),
    (85, "creat"),
    (86, "link"),
    (87, "unlink"),
    (88, "symlink"),
    (89, "readlink"),
    (90, "chmod"),
    (92, "chown"),
    (96, "gettimeofday"),
    (130, "rt_sigsuspend"),
    (137, "statfs"),
    (138, "fstatfs"),
    (162, "sync"),
    (186, "gettid"),
    (187, "readahead"),
    (200, "tkill"),
    (202, "futex"),
    (213, "epoll_create"),
    (217, "getdents64"),
    (228, "clock_gettime"),
    (230, "clock_nanosleep"),
    (231, "exit_group"),
    (232, "epoll_wait"),
    (233, "epoll_ctl"),
    (234, "tgkill"),
    (247, "waitid"),
    (253, "inotify_add_watch"),
    (257, "openat"),
    (262, "newfstatat"),
    (263, "unlinkat"),
    (270, "pselect6"),
    (271, "ppoll"),
    (275, "splice"),
    (277, "sync_file_range"),
    (281, "epoll_pwait"),
    (282, "signalfd"),
    (283, "timerfd_create"),
    (284, "eventfd"),
    (285, "fallocate"),
    (288, "accept4"),
    (290, "eventfd2"),
    (291, "epoll_create1"),
    (293, "pipe2"),
    (295, "preadv"),
    (296, "pwritev"),
    (299, "recvmmsg"),
    (306, "syncfs"),
    (307, "sendmmsg"),
    (318, "getrandom"),
    (319, "memfd_create"),
    (326, "copy_file_range"),
    (327, "preadv2"),
    (328, "pwritev2"),
    (332, "statx"),
    (425, "io_uring_setup"),
    (426, "io_uring_enter"),
    (435, "clone3"),
    (437, "openat2"),
    (441, "epoll_pwait2"),
];

/// The syscall's name (`syscall_<nr>` for one not in the table).
pub fn name(nr: i64) -> std::borrow::Cow<'static, str> {
    match NAMES.binary_search_by_key(&nr, |&(n, _)| n) {
        Ok(i) => NAMES[i].1.into(),
        Err(_) => format!("syscall_{nr}").into(),
    }
}

/// An event loop waiting for I/O in its selector.
pub fn is_epoll_wait(nr: i64) -> bool {
    matches!(nr, EPOLL_WAIT | EPOLL_PWAIT | EPOLL_PWAIT2)
}

/// Syscalls whose first argument is the file descriptor they wait on.
pub fn waits_on_first_arg_fd(nr: i64) -> bool {
    // read write pread64 pwrite64 readv writev sendfile connect accept sendto recvfrom
    // sendmsg recvmsg flock fsync fdatasync ftruncate sync_file_range fallocate accept4
    // preadv pwritev recvmmsg sendmmsg preadv2 pwritev2
    matches!(
        nr,
        0 | 1 | 17..=20 | 40 | 42..=47 | 73..=75 | 77 | 277 | 285 | 288 | 295 | 296 | 299 | 307 | 327 | 328
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_named() {
        assert!(NAMES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(name(45), "recvfrom");
        assert_eq!(name(230), "clock_nanosleep");
        assert_eq!(name(9999), "syscall_9999");
        assert!(is_epoll_wait(232) && is_epoll_wait(281) && !is_epoll_wait(7));
        assert!(waits_on_first_arg_fd(0) && !waits_on_first_arg_fd(POLL));
    }
}
