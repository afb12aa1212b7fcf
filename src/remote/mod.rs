//! Everything that touches the other process: finding it, checking we may read it, attaching
//! py-spy's interpreter reader to it, launching a new one, and reading the kernel's view of its
//! threads from `/proc`. Nothing here ever writes to the target or pauses it (py-spy's
//! non-blocking mode) unless the user asked for `--blocking`.

pub mod all_tasks;
pub mod attach;
pub mod confinement;
pub mod cost;
pub mod debug_offsets;
pub mod elf;
pub mod launch;
pub mod linetable;
pub mod memory;
pub mod offsets;
pub mod procfs;
pub mod pystr;
pub mod resources;
pub mod small_ints;
pub mod source;
pub mod stacks;
pub mod tasks;
pub mod threads;

pub use attach::{attach, AttachedTarget};
pub use launch::{launch, LaunchedProcess};
