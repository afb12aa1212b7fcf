//! Who waits for whom, as the last task census found it: what an incident's await chain is
//! read from (`order-7 <- batch <- server`). A census is a snapshot; tasks come and go and
//! their addresses are reused, so the graph is replaced by each census, and a chain is given
//! only for a task the census knew at that address under that name — else none, never a stale
//! one.

use std::collections::{HashMap, HashSet};

use super::incident::TaskRef;
use crate::sample::TaskLink;

/// The last census's await graph: who waits for whom, by task address.
#[derive(Debug, Default)]
pub struct AwaitGraph {
    tasks: HashMap<u64, TaskLink>,
}

/// Tasks followed outward at most in one chain.
const MAX_CHAIN: usize = 16;

impl AwaitGraph {
    /// Takes the graph of a new census (the old one is stale: tasks come and go).
    pub fn replace(&mut self, links: &[TaskLink]) {
        self.tasks.clear();
        for link in links {
            self.tasks.insert(link.address, link.clone());
        }
    }

    /// The tasks waiting for the task at `address` named `name`, outward: its first awaiter,
    /// that one's, ... Empty when the graph does not know it under that name (a task newer
    /// than the census, or its address reused since).
    pub fn chain(&self, address: u64, name: &str) -> Vec<TaskRef> {
        let mut chain = Vec::new();
        let Some(mut task) = self.tasks.get(&address).filter(|t| t.name == name) else {
            return chain;
        };
        let mut seen = HashSet::from([address]);
        while let Some(&next) = task.awaited_by.first() {
            if chain.len() >= MAX_CHAIN || !seen.insert(next) {
                break;
            }
            let Some(awaiter) = self.tasks.get(&next) else {
                break;
            };
            chain.push(TaskRef {
                name: awaiter.name.clone(),
                coroutine: awaiter.coroutine.clone(),
            });
            task = awaiter;
        }
        chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_await_chain_is_followed_outward_and_only_for_the_task_it_names() {
        let link = |address, name: &str, awaited_by: Vec<u64>| TaskLink {
            address,
            name: name.into(),
            coroutine: format!("{name}_coro"),
            awaited_by,
        };
        let mut graph = AwaitGraph::default();
        graph.replace(&[
            link(1, "order-7", vec![2]),
            link(2, "batch", vec![3]),
            link(3, "server", vec![]),
            link(8, "loop-a", vec![9]),
            link(9, "loop-b", vec![8]),
        ]);
        let names = |chain: Vec<TaskRef>| chain.into_iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(names(graph.chain(1, "order-7")), ["batch", "server"]);
        assert_eq!(graph.chain(1, "order-7")[0].coroutine, "batch_coro");
        // The address reused by another task since the census: no chain, not a wrong one.
        assert_eq!(names(graph.chain(1, "order-8")), Vec::<String>::new());
        assert_eq!(names(graph.chain(3, "server")), Vec::<String>::new());
        // A cycle (a torn read) ends.
        assert_eq!(names(graph.chain(8, "loop-a")), ["loop-b"]);
    }
}
