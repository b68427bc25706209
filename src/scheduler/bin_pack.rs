//! Bin-pack: best fit, so that whole nodes stay free for large tasks.
//!
//! The score is Nomad's binpack score (`ScoreFitBinPack`), computed on what
//! would be allocated after placing the task:
//!
//! ```text
//! free_r = 1 - (allocated_r + request_r) / capacity_r     r in {cpu, memory}
//! score  = 20 - (10^free_cpu + 10^free_memory)
//! ```
//!
//! An empty node scores 0 and a node filled exactly scores 18; the
//! exponential penalizes a resource left mostly free, so a node filled evenly
//! scores higher than one full in one resource and empty in the other. A
//! resource a node has none of counts as full.
//! Only allocations count (the promise made to tasks), not measured usage.
//!
//! The highest score wins; ties go to the node with more tasks, then to the
//! name that sorts first.

use super::filter::candidates;
use super::{NoFit, NodeSnapshot, Standing, TaskRequest, fraction_after};

/// The fitting node (index into `nodes`) that would be fullest with `task`.
pub fn place(task: &TaskRequest, nodes: &[NodeSnapshot]) -> Result<usize, NoFit> {
    candidates(task, nodes)?
        .into_iter()
        .map(|i| standing(task, nodes, i))
        .min()
        .map(|s| s.index)
        .ok_or_else(|| NoFit("no node fits the task".into()))
}

/// Where `nodes[i]` stands for `task`: the higher score, then more tasks,
/// then the name (the lowest standing is chosen).
pub fn standing<'a>(task: &TaskRequest, nodes: &'a [NodeSnapshot], i: usize) -> Standing<'a> {
    let node = &nodes[i];
    Standing {
        same_name: 0,
        score: -score(task, node),
        fewer_tasks: usize::MAX - node.tasks,
        name: &node.name,
        index: i,
    }
}

/// Nomad's binpack score of `node` with `task` on it (the module doc gives
/// the formula): higher is fuller.
pub fn score(task: &TaskRequest, node: &NodeSnapshot) -> f64 {
    let free_cpu = 1.0
        - fraction_after(
            node.allocated.cpu,
            task.resources.cpu.max(0.0),
            node.capacity.cpus,
        );
    let free_memory = 1.0
        - fraction_after(
            node.allocated.memory_mb as f64,
            task.resources.memory_mb as f64,
            node.capacity.memory_mb as f64,
        );
    20.0 - (ten_to(free_cpu) + ten_to(free_memory))
}

/// `10^x`, by `exp` (faster than `powf`).
fn ten_to(x: f64) -> f64 {
    (x * std::f64::consts::LN_10).exp()
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
                "the fuller node wins",
                vec![
                    node("w1", 4.0, 4096, 0).with_allocated(1.0, 1024, 0),
                    node("w2", 4.0, 4096, 0).with_allocated(2.0, 2048, 0),
                ],
                task("t", 1.0, 1024, 0),
                "w2",
            ),
            (
                "an exact fit wins",
                vec![
                    node("w1", 8.0, 8192, 0),
                    node("w2", 2.0, 2048, 0).with_allocated(1.0, 1024, 0),
                    node("w3", 4.0, 4096, 0),
                ],
                task("t", 1.0, 1024, 0),
                "w2",
            ),
            (
                "a node the task does not fit is skipped",
                vec![
                    node("w1", 4.0, 4096, 0).with_allocated(3.5, 4000, 0),
                    node("w2", 4.0, 4096, 0).with_allocated(1.0, 1024, 0),
                ],
                task("t", 1.0, 1024, 0),
                "w2",
            ),
            (
                "equal cpu: the fuller in memory wins",
                vec![
                    node("w1", 4.0, 4096, 0).with_allocated(1.0, 1024, 0),
                    node("w2", 4.0, 4096, 0).with_allocated(1.0, 3072, 0),
                ],
                task("t", 1.0, 512, 0),
                "w2",
            ),
            (
                "measured usage does not count",
                vec![
                    node("w1", 4.0, 4096, 0)
                        .with_allocated(1.0, 1024, 0)
                        .with_usage(4.0, 4096),
                    node("w2", 4.0, 4096, 0).with_allocated(2.0, 2048, 0),
                ],
                task("t", 1.0, 1024, 0),
                "w2",
            ),
            (
                "tie: more tasks wins",
                vec![
                    node("w1", 4.0, 4096, 0).with_tasks(1),
                    node("w2", 4.0, 4096, 0).with_tasks(3),
                ],
                task("t", 1.0, 1024, 0),
                "w2",
            ),
            (
                "tie: then the name",
                vec![node("w2", 4.0, 4096, 0), node("w1", 4.0, 4096, 0)],
                task("t", 1.0, 1024, 0),
                "w1",
            ),
        ];
        for (case, nodes, task, expected) in cases {
            let i = place(&task, &nodes).expect(case);
            assert_eq!(nodes[i].name, expected, "{case}");
        }
    }

    #[test]
    fn the_score_runs_from_empty_to_full() {
        let empty = node("w1", 4.0, 4096, 0);
        assert!((score(&task("t", 0.0, 0, 0), &empty) - 0.0).abs() < 1e-12);
        assert!((score(&task("t", 4.0, 4096, 0), &empty) - 18.0).abs() < 1e-12);
    }
}
