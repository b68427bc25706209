//! Placement throughput of each scheduling strategy, and the quality kept.
//!
//! `cargo bench --bench placement` places the same tasks on a simulated,
//! in-memory cluster of 1,000 and of 10,000 node snapshots (no engine, no
//! actors, no HTTP), twice per strategy:
//! - exhaustive: `cube::scheduler::place` for every task, which filters and
//!   scores every node (the reference), then `NodeSnapshot::add`;
//! - placer: `cube::scheduler::Placer`, what the manager's core runs for a
//!   batch: above 64 ready nodes epvm, bin-pack and spread score a shortlist,
//!   the batch's last choices and a sample instead of every node.
//!
//! The nodes are generated deterministically (a xorshift PRNG with a fixed
//! seed) with varied capacities, allocations and measured usage, all ready.
//! Each placement is added to the chosen node, so later tasks see earlier ones.
//!
//! Prints one markdown table per strategy; the quality columns are computed
//! on each path's own choices:
//! - bin-pack: nodes that received a task (fewer: packed tighter);
//! - spread: most minus fewest tasks placed on a node, and the most tasks of
//!   one name placed on one node (spread's first rule keeps it low);
//! - epvm: the summed marginal cost of the placements (what epvm minimises,
//!   greedily; lower is better);
//! - round-robin: nodes that received a task;
//! - rank of the chosen node: where the node chosen for a task stands among
//!   every node that fits it, by the strategy's own order, in the state the
//!   task was placed in (1: the node the exhaustive scan chooses); the
//!   median and the 90th percentile over the tasks.
//!
//! Not a test: it asserts only sanity (every placement fits, the tasks
//! mostly get placed).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use cube::config::SchedulerKind;
use cube::scheduler::filter::fits;
use cube::scheduler::{
    NodeSnapshot, Placer, Resources, Standing, TaskRequest, Usage, bin_pack, epvm, place, spread,
};
use cube::wire::Capacity;
use uuid::Uuid;

/// (node count, tasks placed per run).
const SIZES: [(usize, usize); 2] = [(1_000, 6_000), (10_000, 1_500)];

/// Placer runs per measurement; the fastest is printed, the one least
/// disturbed on a shared machine (the exhaustive path, slow enough to run
/// once, is disturbed as much or more).
const PLACER_RUNS: usize = 5;

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
            let host_ports: std::collections::BTreeSet<u16> = (0..rng.below(3))
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
                groups: Default::default(),
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
            group: None,
        })
        .collect()
}

/// One path's run: the node chosen per task (None: refused) and its time.
struct Run {
    chosen: Vec<Option<usize>>,
    seconds: f64,
    /// Nodes scored per task.
    scored: f64,
}

/// Every task through `place` on a fresh copy of `cluster`.
fn exhaustive(kind: SchedulerKind, cluster: &[NodeSnapshot], work: &[TaskRequest]) -> Run {
    let mut nodes = cluster.to_vec();
    let mut cursor = 0;
    let mut chosen = Vec::with_capacity(work.len());
    let start = Instant::now();
    for task in work {
        let choice = place(kind, black_box(task), &nodes, &mut cursor).ok();
        if let Some(i) = choice {
            nodes[i].add(task);
        }
        chosen.push(choice);
    }
    let seconds = start.elapsed().as_secs_f64();
    black_box(&nodes);
    Run {
        chosen,
        seconds,
        scored: cluster.len() as f64,
    }
}

/// Every task through one `Placer` over a fresh copy of `cluster` (copied
/// before the clock starts).
fn placer(kind: SchedulerKind, cluster: &[NodeSnapshot], work: &[TaskRequest]) -> Run {
    let nodes = cluster.to_vec();
    let mut cursor = 0;
    let mut chosen = Vec::with_capacity(work.len());
    let start = Instant::now();
    let mut placer = Placer::new(kind, nodes, 42);
    for task in work {
        chosen.push(placer.place(black_box(task), &mut cursor).ok());
    }
    let seconds = start.elapsed().as_secs_f64();
    black_box(placer.nodes());
    Run {
        chosen,
        seconds,
        scored: placer.scored() as f64 / work.len() as f64,
    }
}

/// A run's choices replayed on `cluster`: asserts each placement fits the
/// node as it was then, and measures the quality.
struct Quality {
    /// Nodes that received a task.
    used: usize,
    /// Most minus fewest tasks placed on a node.
    spread: usize,
    /// Most tasks of one name placed on one node.
    same_name: usize,
    /// Summed epvm marginal cost.
    cost: f64,
    /// The chosen nodes' ranks (1: the scan's choice), when measured.
    ranks: Vec<usize>,
}

/// The strategy's standing of `nodes[i]` for `task` (None: round-robin,
/// which has no order but its cursor).
fn standing<'a>(
    kind: SchedulerKind,
    task: &TaskRequest,
    nodes: &'a [NodeSnapshot],
    i: usize,
) -> Option<Standing<'a>> {
    match kind {
        SchedulerKind::RoundRobin => None,
        SchedulerKind::Epvm => Some(epvm::standing(task, nodes, i)),
        SchedulerKind::BinPack => Some(bin_pack::standing(task, nodes, i)),
        SchedulerKind::Spread => Some(spread::standing(task, nodes, i)),
    }
}

/// 1 + how many fitting nodes stand better for `task` than `nodes[chosen]`.
fn rank(
    kind: SchedulerKind,
    task: &TaskRequest,
    nodes: &[NodeSnapshot],
    chosen: usize,
) -> Option<usize> {
    let mine = standing(kind, task, nodes, chosen)?;
    let better = (0..nodes.len())
        .filter(|&i| fits(task, &nodes[i]).is_ok())
        .filter_map(|i| standing(kind, task, nodes, i))
        .filter(|s| *s < mine)
        .count();
    Some(better + 1)
}

fn quality(
    kind: SchedulerKind,
    cluster: &[NodeSnapshot],
    work: &[TaskRequest],
    run: &Run,
    measure_ranks: bool,
) -> Quality {
    let mut nodes = cluster.to_vec();
    let n = nodes.len().max(2) as f64;
    let mut placed = vec![0usize; nodes.len()];
    let mut by_name: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    let mut cost = 0.0;
    let mut ranks = Vec::new();
    for (task, choice) in work.iter().zip(&run.chosen) {
        let Some(i) = *choice else { continue };
        assert!(
            fits(task, &nodes[i]).is_ok(),
            "{kind} placed on a node that does not fit"
        );
        if measure_ranks {
            ranks.extend(rank(kind, task, &nodes, i));
        }
        cost += epvm::marginal_cost(task, &nodes[i], n);
        nodes[i].add(task);
        placed[i] += 1;
        *by_name.entry((i, task.name.as_str())).or_insert(0) += 1;
    }
    let most = placed.iter().max().copied().unwrap_or(0);
    let fewest = placed.iter().min().copied().unwrap_or(0);
    ranks.sort_unstable();
    Quality {
        used: placed.iter().filter(|&&k| k > 0).count(),
        spread: most - fewest,
        same_name: by_name.values().max().copied().unwrap_or(0),
        cost,
        ranks,
    }
}

/// "median / 90th percentile" of the ranks, "1 / 1" for the scan itself.
fn ranks_cell(kind: SchedulerKind, q: &Quality, exhaustive: bool) -> String {
    if kind == SchedulerKind::RoundRobin {
        return "-".to_string();
    }
    if exhaustive || q.ranks.is_empty() {
        return "1 / 1".to_string();
    }
    let at = |p: usize| q.ranks[(q.ranks.len() - 1) * p / 100];
    format!("{} / {}", at(50), at(90))
}

fn quality_header(kind: SchedulerKind) -> &'static str {
    match kind {
        SchedulerKind::Epvm => "summed cost (lower: better)",
        SchedulerKind::Spread => "max - min tasks per node | most of one name on a node",
        SchedulerKind::BinPack => "nodes used (fewer: packed)",
        SchedulerKind::RoundRobin => "nodes used",
    }
}

fn quality_cells(kind: SchedulerKind, q: &Quality) -> String {
    match kind {
        SchedulerKind::Epvm => format!("{:.1}", q.cost),
        SchedulerKind::Spread => format!("{} | {}", q.spread, q.same_name),
        SchedulerKind::BinPack | SchedulerKind::RoundRobin => q.used.to_string(),
    }
}

fn main() {
    let mut tables: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (count, task_count) in SIZES {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ count as u64);
        let cluster = nodes(count, &mut rng);
        let work = tasks(task_count, &mut rng);
        for (k, kind) in SchedulerKind::ALL.into_iter().enumerate() {
            let reference = exhaustive(kind, &cluster, &work);
            let mut runs: Vec<Run> = (0..PLACER_RUNS)
                .map(|_| placer(kind, &cluster, &work))
                .collect();
            runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
            let fast = runs.swap_remove(0);

            let table = tables.entry(k).or_default();
            for (path, run, exhaustive) in
                [("exhaustive", &reference, true), ("placer", &fast, false)]
            {
                let placed = run.chosen.iter().filter(|c| c.is_some()).count();
                assert!(
                    placed * 10 >= task_count * 9,
                    "{kind} {path}: only {placed} of {task_count} tasks placed on {count} nodes"
                );
                let q = quality(kind, &cluster, &work, run, !exhaustive);
                let scored = if kind == SchedulerKind::RoundRobin {
                    "first fit".to_string()
                } else {
                    format!("{:.0}", run.scored)
                };
                table.push(format!(
                    "| {count} | {path} | {placed} | {:.4} | {:.0} | {scored} | {} | {} |",
                    run.seconds,
                    placed as f64 / run.seconds,
                    quality_cells(kind, &q),
                    ranks_cell(kind, &q, exhaustive),
                ));
            }
        }
    }

    for (k, kind) in SchedulerKind::ALL.into_iter().enumerate() {
        let header = quality_header(kind);
        let columns = header.matches('|').count() + 1;
        println!("\n### {kind}\n");
        println!(
            "| nodes | path | tasks placed | seconds | tasks/s | nodes scored per task | {header} | rank of the chosen node (median / p90) |"
        );
        println!(
            "|---:|---|---:|---:|---:|---:|{}---:|",
            "---:|".repeat(columns)
        );
        for line in tables.get(&k).into_iter().flatten() {
            println!("{line}");
        }
    }
}
