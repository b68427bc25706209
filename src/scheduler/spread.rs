//! Spread: keep tasks of one name apart, then fill the emptiest nodes.
//!
//! Among the nodes that fit, the node chosen is, in order of precedence:
//! 1. the one with the fewest tasks of the task's name (`node.names`);
//! 2. the emptiest after placement: the lowest mean, over cpu and memory, of
//!    `(allocated_r + request_r) / capacity_r` (a resource a node has none of
//!    counts as full);
//! 3. the one with the fewest tasks;
//! 4. the name that sorts first.

use super::filter::candidates;
use super::{NoFit, NodeSnapshot, Standing, TaskRequest, fraction_after};

/// The fitting node (index into `nodes`) that spreads `task` best.
pub fn place(task: &TaskRequest, nodes: &[NodeSnapshot]) -> Result<usize, NoFit> {
    candidates(task, nodes)?
        .into_iter()
        .map(|i| standing(task, nodes, i))
        .min()
        .map(|s| s.index)
        .ok_or_else(|| NoFit("no node fits the task".into()))
}

/// Where `nodes[i]` stands for `task`, in the order of the module doc (the
/// lowest standing is chosen).
pub fn standing<'a>(task: &TaskRequest, nodes: &'a [NodeSnapshot], i: usize) -> Standing<'a> {
    let node = &nodes[i];
    Standing {
        same_name: same_name(task, node),
        score: fill_after(task, node),
        fewer_tasks: node.tasks,
        name: &node.name,
        index: i,
    }
}

/// How many tasks named like `task` the node holds.
fn same_name(task: &TaskRequest, node: &NodeSnapshot) -> usize {
    node.names.get(&task.name).copied().unwrap_or(0)
}

/// The mean allocated fraction of cpu and memory with `task` placed.
pub fn fill_after(task: &TaskRequest, node: &NodeSnapshot) -> f64 {
    let cpu = fraction_after(
        node.allocated.cpu,
        task.resources.cpu.max(0.0),
        node.capacity.cpus,
    );
    let memory = fraction_after(
        node.allocated.memory_mb as f64,
        task.resources.memory_mb as f64,
        node.capacity.memory_mb as f64,
    );
    (cpu + memory) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{node, task};

    #[test]
    fn table() {
        // (case, nodes, task, expected node)
        let cases: Vec<(&str, Vec<NodeSnapshot>, TaskRequest, &str)> = vec![
            (
                "fewer tasks of the same name wins over emptier",
                vec![
                    node("w1", 8.0, 8192, 0).with_names(&[("web", 1)]),
                    node("w2", 8.0, 8192, 0)
                        .with_allocated(6.0, 6144, 0)
                        .with_names(&[("db", 3)]),
                ],
                task("web", 1.0, 512, 0),
                "w2",
            ),
            (
                "same count of the name: the emptiest wins",
                vec![
                    node("w1", 4.0, 4096, 0)
                        .with_allocated(2.0, 2048, 0)
                        .with_names(&[("web", 1)]),
                    node("w2", 4.0, 4096, 0)
                        .with_allocated(1.0, 1024, 0)
                        .with_names(&[("web", 1)]),
                ],
                task("web", 1.0, 512, 0),
                "w2",
            ),
            (
                "emptiness is relative to capacity",
                vec![
                    node("w1", 2.0, 2048, 0).with_allocated(1.0, 1024, 0),
                    node("w2", 16.0, 16384, 0).with_allocated(4.0, 4096, 0),
                ],
                task("web", 1.0, 512, 0),
                "w2",
            ),
            (
                "a node the task does not fit is skipped",
                vec![
                    node("w1", 4.0, 512, 0),
                    node("w2", 4.0, 4096, 0)
                        .with_allocated(3.0, 3072, 0)
                        .with_names(&[("web", 2)]),
                ],
                task("web", 1.0, 1024, 0),
                "w2",
            ),
            (
                "same fill: fewer tasks wins",
                vec![
                    node("w1", 4.0, 4096, 0).with_tasks(5),
                    node("w2", 4.0, 4096, 0).with_tasks(2),
                ],
                task("web", 1.0, 512, 0),
                "w2",
            ),
            (
                "all equal: the name",
                vec![node("w2", 4.0, 4096, 0), node("w1", 4.0, 4096, 0)],
                task("web", 1.0, 512, 0),
                "w1",
            ),
        ];
        for (case, nodes, task, expected) in cases {
            let i = place(&task, &nodes).expect(case);
            assert_eq!(nodes[i].name, expected, "{case}");
        }
    }

    #[test]
    fn a_batch_of_one_name_lands_on_distinct_nodes() {
        let mut nodes = vec![
            node("w1", 4.0, 4096, 0),
            node("w2", 4.0, 4096, 0),
            node("w3", 4.0, 4096, 0),
        ];
        let t = task("web", 0.5, 256, 0);
        let mut chosen = Vec::new();
        for _ in 0..3 {
            let i = place(&t, &nodes).expect("fits");
            nodes[i].add(&t);
            chosen.push(nodes[i].name.clone());
        }
        chosen.sort();
        assert_eq!(chosen, vec!["w1", "w2", "w3"]);
    }
}
