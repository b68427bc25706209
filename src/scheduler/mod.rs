//! Placement: strategies are pure functions over node snapshots; the
//! manager's core (`core::place`) holds the chosen strategy and its state
//! (the round-robin cursor) and places batches with [`place_batch`].
//!
//! Every strategy first filters (ready nodes where the task's CPU, memory
//! and disk requests fit the capacity not yet allocated, and whose host ports
//! are free: [`filter`]), then scores what is left. [`place`] does exactly
//! that, node by node: it is the reference, and what small clusters get.
//! A batch goes through a [`Placer`] ([`placer`]), which on a large cluster
//! scores a few dozen well-chosen nodes per task instead of all of them.

pub mod bin_pack;
pub mod epvm;
pub mod filter;
pub mod placer;
pub mod round_robin;
pub mod spread;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::config::SchedulerKind;
use crate::wire::Capacity;

pub use placer::{EXHAUSTIVE_UP_TO, Placer};

/// Resources a task asks for, or their sum over a node's tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub cpu: f64,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

/// What a strategy sees of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest {
    pub id: Uuid,
    /// The task's name: `spread` keeps tasks of one name apart.
    pub name: String,
    pub resources: Resources,
    /// Host ports the task needs on its node.
    pub host_ports: Vec<u16>,
    /// The service it is a replica of: replicas of one service go to nodes
    /// holding none of them while such a node fits.
    pub group: Option<String>,
}

/// A node's live use of its machine, from its last heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU cores busy over the last stats interval.
    pub cpu: f64,
    /// Memory in use (total - available), MiB.
    pub memory_mb: u64,
}

/// What a strategy sees of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    pub name: String,
    /// Heard from within the down threshold.
    pub ready: bool,
    pub capacity: Capacity,
    /// The sum of the requests of the tasks placed on it that have not ended.
    pub allocated: Resources,
    pub usage: Usage,
    /// Tasks placed on it that have not ended.
    pub tasks: usize,
    /// Those tasks counted by task name.
    pub names: BTreeMap<String, usize>,
    /// Host ports those tasks hold.
    pub host_ports: BTreeSet<u16>,
    /// Those tasks counted by service.
    pub groups: BTreeMap<String, usize>,
}

/// Why a task could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoFit(pub String);

/// Places `task` on one of `nodes` with the strategy `kind`, and returns the
/// chosen node's index. Round-robin starts at `cursor` and moves it past the
/// node chosen; the other strategies leave it alone.
pub fn place(
    kind: SchedulerKind,
    task: &TaskRequest,
    nodes: &[NodeSnapshot],
    cursor: &mut usize,
) -> Result<usize, NoFit> {
    match kind {
        SchedulerKind::RoundRobin => {
            let (i, next) = round_robin::place(task, nodes, *cursor)?;
            *cursor = next;
            Ok(i)
        }
        SchedulerKind::Epvm => epvm::place(task, nodes),
        SchedulerKind::BinPack => bin_pack::place(task, nodes),
        SchedulerKind::Spread => spread::place(task, nodes),
    }
}

/// Where a node stands for a task under a strategy: the lowest standing is
/// chosen. Each strategy fills it from its own score (`epvm::standing`,
/// `bin_pack::standing`, `spread::standing`); [`place`] and the [`Placer`]
/// both choose by it, so they prefer nodes in the same order.
#[derive(Debug, Clone, Copy)]
pub struct Standing<'a> {
    /// Spread: the node's tasks of the task's name; 0 for the others.
    pub same_name: usize,
    /// Lower is better: the epvm cost, minus the bin-pack score, the spread
    /// fill (compared with `f64::total_cmp`).
    pub score: f64,
    /// Lower is better: the task count (bin-pack: `usize::MAX - tasks`).
    pub fewer_tasks: usize,
    pub name: &'a str,
    /// The node's index: of equals, the scan keeps the first.
    pub index: usize,
}

impl Ord for Standing<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.same_name
            .cmp(&other.same_name)
            .then_with(|| self.score.total_cmp(&other.score))
            .then_with(|| self.fewer_tasks.cmp(&other.fewer_tasks))
            .then_with(|| self.name.cmp(other.name))
            .then_with(|| self.index.cmp(&other.index))
    }
}

impl PartialOrd for Standing<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Standing<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Standing<'_> {}

impl NodeSnapshot {
    /// Records that `task` was placed here, so that the next placement sees
    /// it: its requests are allocated, it counts as a task (and under its
    /// name), and its host ports are held.
    pub fn add(&mut self, task: &TaskRequest) {
        let request = &task.resources;
        if request.cpu > 0.0 {
            self.allocated.cpu += request.cpu;
        }
        self.allocated.memory_mb = self.allocated.memory_mb.saturating_add(request.memory_mb);
        self.allocated.disk_mb = self.allocated.disk_mb.saturating_add(request.disk_mb);
        self.tasks += 1;
        *self.names.entry(task.name.clone()).or_insert(0) += 1;
        self.host_ports.extend(task.host_ports.iter().copied());
        if let Some(group) = &task.group {
            *self.groups.entry(group.clone()).or_insert(0) += 1;
        }
    }
}

/// `(allocated + request) / capacity`, for the strategies that compare how
/// full nodes are; a resource the node has none of counts as full (1).
fn fraction_after(allocated: f64, request: f64, capacity: f64) -> f64 {
    if capacity > 0.0 {
        (allocated + request) / capacity
    } else {
        1.0
    }
}

/// Places a batch of tasks, in order: places each task in turn through a
/// [`Placer`], which adds it to the chosen snapshot before the next task. The
/// placer's sampling is seeded from the first task's id, so a batch places
/// the same way every time it is replayed.
pub fn place_batch(
    kind: SchedulerKind,
    tasks: &[TaskRequest],
    nodes: Vec<NodeSnapshot>,
    cursor: &mut usize,
) -> Vec<(Uuid, Result<String, NoFit>)> {
    let seed = tasks.first().map_or(0, |t| {
        let (high, low) = t.id.as_u64_pair();
        high ^ low
    });
    let mut placer = Placer::new(kind, nodes, seed);
    tasks
        .iter()
        .map(|task| {
            let choice = placer
                .place(task, cursor)
                .map(|i| placer.nodes()[i].name.clone());
            (task.id, choice)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::filter::fits;
    use super::*;
    use proptest::prelude::*;

    /// A ready, empty node with this capacity.
    pub(crate) fn node(name: &str, cpus: f64, memory_mb: u64, disk_mb: u64) -> NodeSnapshot {
        NodeSnapshot {
            name: name.to_string(),
            ready: true,
            capacity: Capacity {
                cpus,
                memory_mb,
                disk_mb,
            },
            allocated: Resources::default(),
            usage: Usage::default(),
            tasks: 0,
            names: BTreeMap::new(),
            host_ports: BTreeSet::new(),
            groups: BTreeMap::new(),
        }
    }

    /// A task asking for these resources and no host ports.
    pub(crate) fn task(name: &str, cpu: f64, memory_mb: u64, disk_mb: u64) -> TaskRequest {
        TaskRequest {
            id: Uuid::new_v4(),
            name: name.to_string(),
            resources: Resources {
                cpu,
                memory_mb,
                disk_mb,
            },
            host_ports: Vec::new(),
            group: None,
        }
    }

    impl NodeSnapshot {
        pub(crate) fn not_ready(mut self) -> Self {
            self.ready = false;
            self
        }

        pub(crate) fn with_allocated(mut self, cpu: f64, memory_mb: u64, disk_mb: u64) -> Self {
            self.allocated = Resources {
                cpu,
                memory_mb,
                disk_mb,
            };
            self
        }

        pub(crate) fn with_usage(mut self, cpu: f64, memory_mb: u64) -> Self {
            self.usage = Usage { cpu, memory_mb };
            self
        }

        pub(crate) fn with_tasks(mut self, tasks: usize) -> Self {
            self.tasks = tasks;
            self
        }

        /// Sets the per-name counts, and the task count to their sum.
        pub(crate) fn with_names(mut self, names: &[(&str, usize)]) -> Self {
            self.names = names.iter().map(|(n, c)| (n.to_string(), *c)).collect();
            self.tasks = names.iter().map(|(_, c)| c).sum();
            self
        }

        pub(crate) fn with_ports(mut self, ports: &[u16]) -> Self {
            self.host_ports = ports.iter().copied().collect();
            self
        }
    }

    impl TaskRequest {
        pub(crate) fn with_ports(mut self, ports: &[u16]) -> Self {
            self.host_ports = ports.to_vec();
            self
        }
    }

    #[test]
    fn add_records_a_placement() {
        let mut n = node("w1", 4.0, 4096, 1000)
            .with_allocated(1.0, 1024, 100)
            .with_names(&[("web", 1)])
            .with_ports(&[80]);
        n.add(&task("web", 0.5, 512, 50).with_ports(&[8080]));
        n.add(&task("db", 1.0, 256, 0));
        assert_eq!(
            n.allocated,
            Resources {
                cpu: 2.5,
                memory_mb: 1792,
                disk_mb: 150
            }
        );
        assert_eq!(n.tasks, 3);
        assert_eq!(n.names.get("web"), Some(&2));
        assert_eq!(n.names.get("db"), Some(&1));
        assert_eq!(n.host_ports, BTreeSet::from([80, 8080]));
    }

    #[test]
    fn place_dispatches_and_round_robin_moves_the_cursor() {
        let nodes = vec![node("w0", 4.0, 4096, 0), node("w1", 4.0, 4096, 0)];
        let t = task("t", 1.0, 512, 0);
        let mut cursor = 1;
        assert_eq!(
            place(SchedulerKind::RoundRobin, &t, &nodes, &mut cursor),
            Ok(1)
        );
        assert_eq!(cursor, 0);
        for kind in [
            SchedulerKind::Epvm,
            SchedulerKind::BinPack,
            SchedulerKind::Spread,
        ] {
            let mut cursor = 1;
            assert!(place(kind, &t, &nodes, &mut cursor).is_ok(), "{kind}");
            assert_eq!(cursor, 1, "{kind} leaves the cursor alone");
        }
    }

    #[test]
    fn a_batch_respects_capacity_across_its_tasks() {
        for kind in SchedulerKind::ALL {
            let first = task("a", 0.0, 600, 0);
            let second = task("b", 0.0, 600, 0);
            let mut cursor = 0;
            let placed = place_batch(
                kind,
                &[first.clone(), second.clone()],
                vec![node("w1", 2.0, 1000, 0)],
                &mut cursor,
            );
            assert_eq!(placed.len(), 2, "{kind}");
            assert_eq!(placed[0], (first.id, Ok("w1".to_string())), "{kind}");
            assert_eq!(placed[1].0, second.id, "{kind}");
            let Err(no_fit) = &placed[1].1 else {
                panic!("{kind}: the second task was placed: {:?}", placed[1]);
            };
            assert!(
                no_fit.0.contains("no node has 600 MB memory free"),
                "{kind}: {no_fit}"
            );
        }
    }

    #[test]
    fn a_batch_keeps_host_ports_apart() {
        for kind in SchedulerKind::ALL {
            let tasks: Vec<TaskRequest> = (0..3)
                .map(|i| task(&format!("t{i}"), 0.0, 0, 0).with_ports(&[8080]))
                .collect();
            let nodes = vec![node("w1", 4.0, 4096, 0), node("w2", 4.0, 4096, 0)];
            let placed = place_batch(kind, &tasks, nodes, &mut 0);
            let mut chosen: Vec<&str> = placed[..2]
                .iter()
                .map(|(_, r)| r.as_deref().expect("fits"))
                .collect();
            chosen.sort();
            assert_eq!(chosen, vec!["w1", "w2"], "{kind}");
            assert!(placed[2].1.is_err(), "{kind}");
        }
    }

    /// A random node: any capacity, allocation and usage (allocations may
    /// exceed capacity), ready or not, holding some of a few host ports.
    pub(crate) fn arb_node() -> impl Strategy<Value = NodeSnapshot> {
        (
            any::<bool>(),
            (0.0..16.0f64, 0u64..8192, 0u64..8192),
            (0.0..20.0f64, 0u64..10_000, 0u64..10_000),
            (0.0..20.0f64, 0u64..10_000),
            (0usize..3, 0usize..3),
            proptest::collection::btree_set(prop_oneof![Just(80u16), Just(443), Just(8080)], 0..3),
        )
            .prop_map(
                |(ready, (cpus, mem, disk), (acpu, amem, adisk), (ucpu, umem), (a, b), ports)| {
                    NodeSnapshot {
                        name: String::new(),
                        ready,
                        capacity: Capacity {
                            cpus,
                            memory_mb: mem,
                            disk_mb: disk,
                        },
                        allocated: Resources {
                            cpu: acpu,
                            memory_mb: amem,
                            disk_mb: adisk,
                        },
                        usage: Usage {
                            cpu: ucpu,
                            memory_mb: umem,
                        },
                        tasks: a + b,
                        names: BTreeMap::from([("a".to_string(), a), ("b".to_string(), b)]),
                        host_ports: ports,
                        groups: BTreeMap::new(),
                    }
                },
            )
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<NodeSnapshot>> {
        proptest::collection::vec(arb_node(), 0..30).prop_map(|mut nodes| {
            for (i, node) in nodes.iter_mut().enumerate() {
                node.name = format!("w{i}");
            }
            nodes
        })
    }

    /// A random task; each resource is 0 a quarter of the time.
    pub(crate) fn arb_task() -> impl Strategy<Value = TaskRequest> {
        (
            prop_oneof![Just("a"), Just("b")],
            prop_oneof![1 => Just(0.0), 3 => 0.0..8.0f64],
            prop_oneof![1 => Just(0u64), 3 => 0u64..6000],
            prop_oneof![1 => Just(0u64), 3 => 0u64..6000],
            proptest::collection::vec(prop_oneof![Just(80u16), Just(443), Just(8080)], 0..2),
        )
            .prop_map(|(name, cpu, memory_mb, disk_mb, host_ports)| TaskRequest {
                id: Uuid::nil(),
                name: name.to_string(),
                resources: Resources {
                    cpu,
                    memory_mb,
                    disk_mb,
                },
                host_ports,
                group: None,
            })
    }

    proptest! {
        /// Every strategy places only where the task fits, and refuses only
        /// when no node fits.
        #[test]
        fn placements_fit_and_refusals_are_real(
            nodes in arb_nodes(),
            task in arb_task(),
            cursor in 0usize..64,
        ) {
            let some_node_fits = nodes.iter().any(|n| fits(&task, n).is_ok());
            for kind in SchedulerKind::ALL {
                let mut c = cursor;
                match place(kind, &task, &nodes, &mut c) {
                    Ok(i) => {
                        prop_assert!(i < nodes.len(), "{}", kind);
                        prop_assert!(fits(&task, &nodes[i]).is_ok(), "{}: {:?}", kind, nodes[i]);
                    }
                    Err(no_fit) => {
                        prop_assert!(!some_node_fits, "{}: refused ({}) though a node fits", kind, no_fit);
                        prop_assert!(!no_fit.0.is_empty());
                    }
                }
            }
        }

        /// Placing a batch on empty nodes never allocates past capacity nor
        /// gives one host port twice on a node.
        #[test]
        fn batches_stay_within_capacity(
            nodes in arb_nodes(),
            tasks in proptest::collection::vec(arb_task(), 0..40),
        ) {
            for kind in SchedulerKind::ALL {
                let mut nodes = nodes.clone();
                for node in &mut nodes {
                    node.allocated = Resources::default();
                    node.host_ports.clear();
                }
                let mut cursor = 0;
                for task in &tasks {
                    if let Ok(i) = place(kind, task, &nodes, &mut cursor) {
                        for port in &task.host_ports {
                            prop_assert!(!nodes[i].host_ports.contains(port), "{}", kind);
                        }
                        nodes[i].add(task);
                    }
                }
                for node in &nodes {
                    prop_assert!(node.allocated.cpu <= node.capacity.cpus + 1e-6, "{}: {:?}", kind, node);
                    prop_assert!(node.allocated.memory_mb <= node.capacity.memory_mb, "{}: {:?}", kind, node);
                    prop_assert!(node.allocated.disk_mb <= node.capacity.disk_mb, "{}: {:?}", kind, node);
                }
            }
        }
    }
}
