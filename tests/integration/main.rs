//! loopspy's integration tests, one binary: every test starts real CPython processes, attaches
//! the real `loopspy` binary, and checks what it reports against what the target did.

mod agent;
mod bad_input;
mod browser;
mod causes;
mod ci_gate;
mod common;
mod containers;
mod dump;
mod fleet;
mod formats;
mod hostile;
mod html;
mod reader;
mod record;
mod saturated;
mod task_leaks;
mod tasks;
mod top;
mod wheel;
