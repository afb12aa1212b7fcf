//! loopspy: an out-of-process sampling profiler that answers the asyncio developer's question,
//! *what blocked my event loop, where, and for how long?*
//!
//! Data flows one way: [`target`] (the other process) -> [`sampler`] (a thread reading stacks at a
//! fixed rate) -> a `crossbeam-channel` -> [`analyzer`] (loop detection, incidents, causes) ->
//! [`output`] sinks. [`record`] wires the chain together for the `record` command; [`cli`] turns
//! raw arguments into the small typed settings the rest of the crate takes.

pub mod agent;
pub mod analyzer;
pub mod cli;
pub mod dump;
pub mod error;
pub mod histogram;
pub mod output;
pub mod record;
pub mod remote;
pub mod sample;
pub mod sampler;
pub mod session;
pub mod syscalls;
pub mod tasks_cmd;
pub mod text;
pub mod view;

#[cfg(test)]
mod layers_test;
