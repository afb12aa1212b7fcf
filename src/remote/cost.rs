//! What reading a target costs, in system calls, counted per thread: each sampler is a thread
//! of its own (several targets are sampled side by side), so its counts are its target's. The
//! benchmark and `incidents.json` report them per tick.

use std::cell::Cell;

thread_local! {
    static MEMORY_READS: Cell<u64> = const { Cell::new(0) };
    static PROC_READS: Cell<u64> = const { Cell::new(0) };
}

/// System calls this thread has made to read targets so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCost {
    /// `process_vm_readv` calls.
    pub memory_reads: u64,
    /// Reads of `/proc` files (a thread's `syscall`, `stat`, `io`).
    pub proc_reads: u64,
}

/// Counts one `process_vm_readv`.
pub fn memory_read() {
    MEMORY_READS.with(|c| c.set(c.get() + 1));
}

/// Counts one read of a `/proc` file.
pub fn proc_read() {
    PROC_READS.with(|c| c.set(c.get() + 1));
}

/// This thread's counts so far.
pub fn so_far() -> ReadCost {
    ReadCost {
        memory_reads: MEMORY_READS.with(Cell::get),
        proc_reads: PROC_READS.with(Cell::get),
    }
}
