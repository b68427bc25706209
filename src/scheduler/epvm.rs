//! E-PVM: the opportunity-cost model of Amir, Awerbuch, Barak, Borgstrom and
//! Keren, "An opportunity cost approach for job assignment in a scalable
//! computing cluster" (IEEE TPDS, 2000).
//!
//! Each resource of a node costs more the more of it is used, exponentially:
//! a resource at utilization `u` costs `n^u`, where `n` is the number of
//! nodes. A task goes where it adds the least cost. For a node that fits the
//! task, and each resource `r` in {cpu, memory}:
//!
//! ```text
//! load_r = max(allocated_r, usage_r)
//! u_r    = load_r / capacity_r
//! u'_r   = (load_r + request_r) / capacity_r
//! cost   = Σ_r ( n^{u'_r} - n^{u_r} )
//! ```
//!
//! `allocated_r` is what Cube has promised the node's tasks; `usage_r` is
//! what the node's last heartbeat measured, which catches load Cube did not
//! place (or tasks using more than they asked for). A resource with a
//! capacity of 0 adds nothing (the filter already made sure the request fits).
//!
//! "Build an Orchestrator in Go" (Tim Boring) follows this model but computes
//! the CPU term from the same load before and after placement, so it cancels
//! out and only memory counts; here both terms use the request.
//!
//! The lowest cost wins; ties go to the node with fewer tasks, then to the
//! name that sorts first.

use super::filter::candidates;
use super::{NoFit, NodeSnapshot, Standing, TaskRequest};

/// The node (index into `nodes`) where `task` adds the least cost.
pub fn place(task: &TaskRequest, nodes: &[NodeSnapshot]) -> Result<usize, NoFit> {
    candidates(task, nodes)?
        .into_iter()
        .map(|i| standing(task, nodes, i))
        .min()
        .map(|s| s.index)
        .ok_or_else(|| NoFit("no node fits the task".into()))
}

/// Where `nodes[i]` stands for `task`: the lower cost (with `n` the number
/// of `nodes`, at least 2), then fewer tasks, then the name (the lowest
/// standing is chosen).
pub fn standing<'a>(task: &TaskRequest, nodes: &'a [NodeSnapshot], i: usize) -> Standing<'a> {
    let node = &nodes[i];
    Standing {
        same_name: 0,
        score: marginal_cost(task, node, nodes.len().max(2) as f64),
        fewer_tasks: node.tasks,
        name: &node.name,
        index: i,
    }
}

/// What placing `task` on `node` adds to the cluster's cost, with `n` as the
/// base of the exponent (the module doc gives the formula).
pub fn marginal_cost(task: &TaskRequest, node: &NodeSnapshot, n: f64) -> f64 {
    let ln_n = n.ln();
    let cpu = term(
        node.allocated.cpu.max(node.usage.cpu),
        task.resources.cpu.max(0.0),
        node.capacity.cpus,
        ln_n,
    );
    let memory = term(
        node.allocated.memory_mb.max(node.usage.memory_mb) as f64,
        task.resources.memory_mb as f64,
        node.capacity.memory_mb as f64,
        ln_n,
    );
    cpu + memory
}

/// `n^{(load + request) / capacity} - n^{load / capacity}` (given `ln n`), or
/// 0 when the capacity is 0; computed as
/// `n^{load / capacity} (n^{request / capacity} - 1)` with `exp` and `exp_m1`,
/// faster than `powf` and without the cancellation.
fn term(load: f64, request: f64, capacity: f64, ln_n: f64) -> f64 {
    if capacity.is_nan() || capacity <= 0.0 {
        return 0.0;
    }
    (load / capacity * ln_n).exp() * (request / capacity * ln_n).exp_m1()
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
                "cpu matters: equal memory, w1 busier in cpu",
                vec![
                    node("w1", 4.0, 4096, 0).with_allocated(3.0, 1024, 0),
                    node("w2", 4.0, 4096, 0).with_allocated(1.0, 1024, 0),
                ],
                task("t", 1.0, 512, 0),
                "w2",
            ),
            (
                "real usage matters: equal allocation, w1 busy in fact",
                vec![
                    node("w1", 4.0, 4096, 0)
                        .with_allocated(1.0, 1024, 0)
                        .with_usage(3.5, 3500),
                    node("w2", 4.0, 4096, 0)
                        .with_allocated(1.0, 1024, 0)
                        .with_usage(0.2, 900),
                ],
                task("t", 1.0, 512, 0),
                "w2",
            ),
            (
                "usage below the allocation does not lower the load",
                vec![
                    node("w1", 4.0, 4096, 0)
                        .with_allocated(3.0, 3072, 0)
                        .with_usage(0.1, 100),
                    node("w2", 4.0, 4096, 0)
                        .with_allocated(2.0, 2048, 0)
                        .with_usage(2.0, 2048),
                ],
                task("t", 1.0, 512, 0),
                "w2",
            ),
            (
                "memory matters: equal cpu, w2 fuller in memory",
                vec![
                    node("w1", 4.0, 8192, 0).with_allocated(1.0, 1024, 0),
                    node("w2", 4.0, 8192, 0).with_allocated(1.0, 6144, 0),
                ],
                task("t", 0.5, 1024, 0),
                "w1",
            ),
            (
                "a bigger node costs less for the same load",
                vec![
                    node("w1", 2.0, 2048, 0).with_allocated(1.0, 1024, 0),
                    node("w2", 8.0, 8192, 0).with_allocated(1.0, 1024, 0),
                ],
                task("t", 1.0, 512, 0),
                "w2",
            ),
            (
                "a node that does not fit is never chosen",
                vec![
                    node("w1", 64.0, 512, 0),
                    node("w2", 2.0, 4096, 0).with_allocated(1.5, 3000, 0),
                ],
                task("t", 0.5, 1024, 0),
                "w2",
            ),
            (
                // Equal costs, so the name decides; a NaN cost (0 / 0) would
                // sort last and lose.
                "zero capacity adds no cost",
                vec![
                    node("w1", 0.0, 4096, 0).with_allocated(0.0, 2048, 0),
                    node("w2", 4.0, 4096, 0).with_allocated(2.0, 2048, 0),
                ],
                task("t", 0.0, 512, 0),
                "w1",
            ),
            (
                "tie: fewer tasks wins",
                vec![
                    node("w1", 4.0, 4096, 0).with_tasks(3),
                    node("w2", 4.0, 4096, 0).with_tasks(1),
                ],
                task("t", 1.0, 512, 0),
                "w2",
            ),
            (
                "tie: then the name",
                vec![node("w2", 4.0, 4096, 0), node("w1", 4.0, 4096, 0)],
                task("t", 1.0, 512, 0),
                "w1",
            ),
        ];
        for (case, nodes, task, expected) in cases {
            let i = place(&task, &nodes).expect(case);
            assert_eq!(nodes[i].name, expected, "{case}");
        }
    }

    #[test]
    fn the_cost_is_the_formula() {
        let n = node("w1", 4.0, 1000, 0)
            .with_allocated(1.0, 250, 0)
            .with_usage(2.0, 100);
        let t = task("t", 1.0, 250, 0);
        // cpu: load 2 -> 3 of 4; memory: load 250 -> 500 of 1000; base 3.
        let expected = (3f64.powf(0.75) - 3f64.powf(0.5)) + (3f64.powf(0.5) - 3f64.powf(0.25));
        assert!((marginal_cost(&t, &n, 3.0) - expected).abs() < 1e-12);
    }

    #[test]
    fn no_fit_is_passed_on() {
        let nodes = vec![node("w1", 1.0, 1024, 0)];
        let err = place(&task("t", 0.0, 2048, 0), &nodes).unwrap_err();
        assert!(err.0.contains("no node has 2048 MB memory free"), "{err}");
    }
}
