//! Placement throughput of each scheduling strategy.
//!
//! `cargo bench --bench placement` measures how many tasks per second each
//! strategy (round-robin, epvm, bin-pack, spread) places on a simulated,
//! in-memory cluster of 1,000 and of 10,000 node snapshots: no engine, no
//! actors, no HTTP, only `cube::scheduler::place` and the filter under it.
//! The nodes are generated deterministically (a xorshift PRNG with a fixed
//! seed) with varied capacities, allocations and measured usage, all ready.
//! Each placement is followed by `NodeSnapshot::add` on the chosen node, as
//! the Scheduler actor does within a batch, so later tasks see earlier ones.
//!
//! Prints a markdown table. Not a test: it asserts nothing beyond sanity
//! (every placement fits; the tasks mostly get placed).

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::Instant;

use cube::config::SchedulerKind;
use cube::scheduler::filter::fits;
use cube::scheduler::{NodeSnapshot, Resources, TaskRequest, Usage, place};
use cube::wire::Capacity;
use uuid::Uuid;

/// (node count, tasks placed per run).
const SIZES: [(usize, usize); 2] = [(1_000, 6_000), (10_000, 1_500)];

/// xorshift64: small, deterministic, good enough to vary a cluster.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const NAMES: [&str; 10] = [
    "web", "api", "db", "cache", "queue", "worker", "cron", "proxy", "search", "metrics",
];

fn nodes(count: usize, rng: &mut XorShift) -> Vec<NodeSnapshot> {
    (0..count)
        .map(|i| {
            let cpus = rng.pick(&[2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
            let memory_mb = (cpus as u64) * rng.pick(&[1024, 2048, 4096]);
            let disk_mb = 50_000 + rng.below(450_000);
            // Up to 60% allocated; measured usage anywhere up to capacity.
            let allocated = Resources {
                cpu: cpus * 0.6 * rng.unit(),
                memory_mb: (memory_mb as f64 * 0.6 * rng.unit()) as u64,
                disk_mb: (disk_mb as f64 * 0.6 * rng.unit()) as u64,
            };
            let usage = Usage {
                cpu: cpus * rng.unit(),
                memory_mb: (memory_mb as f64 * rng.unit()) as u64,
            };
            let mut names = BTreeMap::new();
            let tasks = rng.below(20) as usize;
            for _ in 0..tasks {
                *names.entry(rng.pick(&NAMES).to_string()).or_insert(0) += 1;
            }
            let host_ports: BTreeSet<u16> = (0..rng.below(3))
                .map(|_| 8000 + rng.below(20) as u16)
                .collect();
            NodeSnapshot {
                name: format!("node-{i:05}"),
                ready: true,
                capacity: Capacity {
                    cpus,
                    memory_mb,
                    disk_mb,
                },
                allocated,
                usage,
                tasks,
                names,
                host_ports,
            }
        })
        .collect()
}

fn tasks(count: usize, rng: &mut XorShift) -> Vec<TaskRequest> {
    (0..count)
        .map(|_| TaskRequest {
            id: Uuid::nil(),
            name: rng.pick(&NAMES).to_string(),
            resources: Resources {
                cpu: rng.pick(&[0.1, 0.25, 0.5, 1.0, 2.0]),
                memory_mb: rng.pick(&[64, 128, 256, 512, 1024]),
                disk_mb: rng.below(1000),
            },
            // One task in ten binds a host port.
            host_ports: if rng.below(10) == 0 {
                vec![8000 + rng.below(20) as u16]
            } else {
                Vec::new()
            },
        })
        .collect()
}

struct Row {
    kind: SchedulerKind,
    nodes: usize,
    placed: usize,
    seconds: f64,
}

/// Places every task in turn on a fresh copy of `cluster`, adding each
/// placement to the chosen snapshot.
fn run(kind: SchedulerKind, cluster: &[NodeSnapshot], work: &[TaskRequest]) -> Row {
    let mut nodes = cluster.to_vec();
    let mut cursor = 0;
    let mut placed = 0;
    let start = Instant::now();
    for task in work {
        if let Ok(i) = place(kind, black_box(task), &nodes, &mut cursor) {
            // Sanity: the node fits (one node's filter, cheap next to a
            // placement, which filters every node).
            assert!(
                fits(task, &nodes[i]).is_ok(),
                "{kind} placed on a node that does not fit"
            );
            nodes[i].add(task);
            placed += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    black_box(&nodes);
    Row {
        kind,
        nodes: cluster.len(),
        placed,
        seconds,
    }
}

fn main() {
    let mut rows = Vec::new();
    for (count, task_count) in SIZES {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ count as u64);
        let cluster = nodes(count, &mut rng);
        let work = tasks(task_count, &mut rng);
        for kind in SchedulerKind::ALL {
            let row = run(kind, &cluster, &work);
            assert!(
                row.placed * 10 >= task_count * 9,
                "{kind}: only {} of {task_count} tasks placed on {count} nodes",
                row.placed
            );
            rows.push(row);
        }
    }

    println!("| strategy | nodes | tasks placed | seconds | tasks/s |");
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.3} | {:.0} |",
            row.kind,
            row.nodes,
            row.placed,
            row.seconds,
            row.placed as f64 / row.seconds
        );
    }
}
