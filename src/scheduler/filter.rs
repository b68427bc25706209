//! The filter every strategy starts with: which nodes can take a task at all.
//!
//! A node fits a task when it is ready, when what is already allocated on it
//! plus the task's request stays within its capacity for CPU, memory and
//! disk, and when none of the task's host ports is held there. A request of 0
//! (or less) for a resource always fits, even on a node already allocated past
//! its capacity. When no node fits, [`candidates`] says why, naming the
//! constraint that blocks the most ready nodes, with numbers.

use super::{NoFit, NodeSnapshot, TaskRequest};

/// Slack for the CPU sum, so that 0.1 + 0.2 fits in 0.3 cores.
const CPU_EPSILON: f64 = 1e-9;

/// Why one node cannot take one task.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Shortfall {
    #[error("node is not ready")]
    NotReady,
    #[error("needs {} {}, {} free", cores(*requested), cpus_word(*requested), cores(*free))]
    Cpu { requested: f64, free: f64 },
    #[error("needs {requested_mb} MB memory, {free_mb} MB free")]
    Memory { requested_mb: u64, free_mb: u64 },
    #[error("needs {requested_mb} MB disk, {free_mb} MB free")]
    Disk { requested_mb: u64, free_mb: u64 },
    #[error("host ports taken: {}", port_list(.0))]
    HostPorts(Vec<u16>),
}

/// Whether `node` can take `task`; if not, the first reason found (in the
/// order ready, CPU, memory, disk, host ports).
pub fn fits(task: &TaskRequest, node: &NodeSnapshot) -> Result<(), Shortfall> {
    if !node.ready {
        return Err(Shortfall::NotReady);
    }
    // The common case, checked without building the list of every reason.
    let request = &task.resources;
    let resources_fit = cpu_fits(request.cpu, node)
        && fits_u64(
            node.allocated.memory_mb,
            request.memory_mb,
            node.capacity.memory_mb,
        )
        && fits_u64(
            node.allocated.disk_mb,
            request.disk_mb,
            node.capacity.disk_mb,
        );
    let ports_free = task
        .host_ports
        .iter()
        .all(|port| !node.host_ports.contains(port));
    if resources_fit && ports_free {
        return Ok(());
    }
    match resource_shortfalls(task, node).into_iter().next() {
        Some(shortfall) => Err(shortfall),
        None => Ok(()),
    }
}

/// A request of 0 (or less, or not a number) always fits; written so that a
/// NaN in the node does not fit.
fn cpu_fits(request: f64, node: &NodeSnapshot) -> bool {
    request <= 0.0
        || request.is_nan()
        || node.allocated.cpu + request <= node.capacity.cpus + CPU_EPSILON
}

/// Every reason, other than readiness, why `node` cannot take `task`
/// (empty when the resources and host ports fit).
pub fn resource_shortfalls(task: &TaskRequest, node: &NodeSnapshot) -> Vec<Shortfall> {
    let request = &task.resources;
    let mut found = Vec::new();

    if !cpu_fits(request.cpu, node) {
        found.push(Shortfall::Cpu {
            requested: request.cpu,
            free: (node.capacity.cpus - node.allocated.cpu).max(0.0),
        });
    }
    if !fits_u64(
        node.allocated.memory_mb,
        request.memory_mb,
        node.capacity.memory_mb,
    ) {
        found.push(Shortfall::Memory {
            requested_mb: request.memory_mb,
            free_mb: node
                .capacity
                .memory_mb
                .saturating_sub(node.allocated.memory_mb),
        });
    }
    if !fits_u64(
        node.allocated.disk_mb,
        request.disk_mb,
        node.capacity.disk_mb,
    ) {
        found.push(Shortfall::Disk {
            requested_mb: request.disk_mb,
            free_mb: node.capacity.disk_mb.saturating_sub(node.allocated.disk_mb),
        });
    }
    let mut taken: Vec<u16> = task
        .host_ports
        .iter()
        .copied()
        .filter(|port| node.host_ports.contains(port))
        .collect();
    taken.dedup();
    if !taken.is_empty() {
        found.push(Shortfall::HostPorts(taken));
    }
    found
}

/// `allocated + request <= capacity`, without overflow; a request of 0 fits.
fn fits_u64(allocated: u64, request: u64, capacity: u64) -> bool {
    if request == 0 {
        return true;
    }
    match allocated.checked_add(request) {
        Some(total) => total <= capacity,
        None => false,
    }
}

/// The most free room of any ready node, per resource (not all on one
/// node). A task that needs more of one resource than this fits nowhere,
/// whatever the strategy: Pending tasks are tried again only when they may
/// fit in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    pub cpu: f64,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

impl Room {
    /// The room over the ready nodes of `nodes`; `None` when none is ready.
    pub fn of(nodes: &[NodeSnapshot]) -> Option<Room> {
        nodes
            .iter()
            .filter(|node| node.ready)
            .map(|node| Room {
                cpu: (node.capacity.cpus - node.allocated.cpu).max(0.0),
                memory_mb: node
                    .capacity
                    .memory_mb
                    .saturating_sub(node.allocated.memory_mb),
                disk_mb: node.capacity.disk_mb.saturating_sub(node.allocated.disk_mb),
            })
            .reduce(|a, b| Room {
                cpu: a.cpu.max(b.cpu),
                memory_mb: a.memory_mb.max(b.memory_mb),
                disk_mb: a.disk_mb.max(b.disk_mb),
            })
    }

    /// Whether a task needing `request` may fit on some ready node (the
    /// same rules as [`fits`]: a request of 0 always fits).
    pub fn may_hold(&self, request: &super::Resources) -> bool {
        let cpu =
            request.cpu <= 0.0 || request.cpu.is_nan() || request.cpu <= self.cpu + CPU_EPSILON;
        cpu && (request.memory_mb == 0 || request.memory_mb <= self.memory_mb)
            && (request.disk_mb == 0 || request.disk_mb <= self.disk_mb)
    }
}

/// The indices (in order) of the nodes that can take `task`, or why there
/// are none.
pub fn candidates(task: &TaskRequest, nodes: &[NodeSnapshot]) -> Result<Vec<usize>, NoFit> {
    let fitting: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, node)| fits(task, node).is_ok())
        .map(|(i, _)| i)
        .collect();
    if fitting.is_empty() {
        Err(explain(task, nodes))
    } else {
        Ok(fitting)
    }
}

/// The constraints a ready node can fail, in the order their messages are
/// preferred when they block equally many nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Constraint {
    Memory,
    Cpu,
    Disk,
    HostPorts,
}

/// The ready nodes one constraint blocks, each with its shortfall.
struct Blocked<'a> {
    constraint: Constraint,
    nodes: Vec<(&'a NodeSnapshot, Shortfall)>,
}

/// Why no node of `nodes` fits `task` (called only when none does).
fn explain(task: &TaskRequest, nodes: &[NodeSnapshot]) -> NoFit {
    if nodes.is_empty() {
        return NoFit("no worker has registered yet".into());
    }
    let ready: Vec<&NodeSnapshot> = nodes.iter().filter(|node| node.ready).collect();
    if ready.is_empty() {
        return NoFit(match nodes {
            [only] => format!("the only worker, {}, is not ready", only.name),
            _ => format!("none of the {} workers is ready", nodes.len()),
        });
    }

    let mut blocked: Vec<Blocked> = [
        Constraint::Memory,
        Constraint::Cpu,
        Constraint::Disk,
        Constraint::HostPorts,
    ]
    .into_iter()
    .map(|constraint| Blocked {
        constraint,
        nodes: Vec::new(),
    })
    .collect();
    for node in &ready {
        for shortfall in resource_shortfalls(task, node) {
            let constraint = match shortfall {
                Shortfall::NotReady => continue,
                Shortfall::Memory { .. } => Constraint::Memory,
                Shortfall::Cpu { .. } => Constraint::Cpu,
                Shortfall::Disk { .. } => Constraint::Disk,
                Shortfall::HostPorts(_) => Constraint::HostPorts,
            };
            if let Some(b) = blocked.iter_mut().find(|b| b.constraint == constraint) {
                b.nodes.push((node, shortfall));
            }
        }
    }
    blocked.retain(|b| !b.nodes.is_empty());
    // Most blocked nodes first; the sort is stable, so equal counts keep the
    // preference order above.
    blocked.sort_by_key(|b| std::cmp::Reverse(b.nodes.len()));

    let not_ready = nodes.len() - ready.len();
    let suffix = match not_ready {
        0 => String::new(),
        1 => format!("; 1 of the {} workers is not ready", nodes.len()),
        k => format!("; {k} of the {} workers are not ready", nodes.len()),
    };

    let Some(first) = blocked.first() else {
        // Unreachable while `fits` and `resource_shortfalls` agree.
        return NoFit(format!("no ready worker fits the task{suffix}"));
    };
    if first.nodes.len() == ready.len() {
        return NoFit(format!("{}{suffix}", everywhere(task, first)));
    }
    let parts: Vec<String> = blocked.iter().map(|b| on_some(task, b)).collect();
    NoFit(format!(
        "none of the {} ready workers fits: {}{suffix}",
        ready.len(),
        parts.join("; ")
    ))
}

/// The message for a constraint that blocks every ready node.
fn everywhere(task: &TaskRequest, blocked: &Blocked) -> String {
    let request = &task.resources;
    match blocked.constraint {
        Constraint::Memory => {
            let (free, name) = most_free_mb(blocked);
            format!(
                "no node has {} MB memory free (the most free is {free} MB on {name})",
                request.memory_mb
            )
        }
        Constraint::Cpu => {
            let (free, name) = most_free_cpu(blocked);
            format!(
                "no node has {} {} free (the most free is {} on {name})",
                cores(request.cpu),
                cpus_word(request.cpu),
                cores(free)
            )
        }
        Constraint::Disk => {
            let (free, name) = most_free_mb(blocked);
            format!(
                "no node has {} MB disk free (the most free is {free} MB on {name})",
                request.disk_mb
            )
        }
        Constraint::HostPorts => ports_taken(task, blocked, "every ready node"),
    }
}

/// The clause for a constraint that blocks some of the ready nodes.
fn on_some(task: &TaskRequest, blocked: &Blocked) -> String {
    let request = &task.resources;
    let count = blocked.nodes.len();
    let verb = if count == 1 { "has" } else { "have" };
    match blocked.constraint {
        Constraint::Memory => {
            let (free, name) = most_free_mb(blocked);
            format!(
                "{count} {verb} less than {} MB memory free (the most is {free} MB on {name})",
                request.memory_mb
            )
        }
        Constraint::Cpu => {
            let (free, name) = most_free_cpu(blocked);
            format!(
                "{count} {verb} less than {} {} free (the most is {} on {name})",
                cores(request.cpu),
                cpus_word(request.cpu),
                cores(free)
            )
        }
        Constraint::Disk => {
            let (free, name) = most_free_mb(blocked);
            format!(
                "{count} {verb} less than {} MB disk free (the most is {free} MB on {name})",
                request.disk_mb
            )
        }
        Constraint::HostPorts => {
            let place = if count == 1 {
                "1 node".to_string()
            } else {
                format!("{count} nodes")
            };
            ports_taken(task, blocked, &place)
        }
    }
}

/// The largest free memory or disk among the blocked nodes, and where.
fn most_free_mb<'a>(blocked: &Blocked<'a>) -> (u64, &'a str) {
    let mut best: Option<(u64, &str)> = None;
    for (node, shortfall) in &blocked.nodes {
        let free = match shortfall {
            Shortfall::Memory { free_mb, .. } | Shortfall::Disk { free_mb, .. } => *free_mb,
            _ => continue,
        };
        if best.is_none_or(|(most, _)| free > most) {
            best = Some((free, node.name.as_str()));
        }
    }
    best.unwrap_or((0, "none"))
}

/// The largest free CPU among the blocked nodes, and where.
fn most_free_cpu<'a>(blocked: &Blocked<'a>) -> (f64, &'a str) {
    let mut best: Option<(f64, &str)> = None;
    for (node, shortfall) in &blocked.nodes {
        let Shortfall::Cpu { free, .. } = shortfall else {
            continue;
        };
        if best.is_none_or(|(most, _)| *free > most) {
            best = Some((*free, node.name.as_str()));
        }
    }
    best.unwrap_or((0.0, "none"))
}

/// "host port 8080 is taken on {place}", naming a port taken on every blocked
/// node when there is one.
fn ports_taken(task: &TaskRequest, blocked: &Blocked, place: &str) -> String {
    let mut asked: Vec<u16> = task.host_ports.clone();
    asked.sort_unstable();
    asked.dedup();
    let common = asked.iter().find(|port| {
        blocked
            .nodes
            .iter()
            .all(|(node, _)| node.host_ports.contains(port))
    });
    match common {
        Some(port) => format!("host port {port} is taken on {place}"),
        None => format!(
            "one of host ports {} is taken on {place}",
            port_list(&asked)
        ),
    }
}

fn port_list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Cores for a message: at most 3 decimals, no trailing zeros ("4", "1.5").
fn cores(x: f64) -> String {
    let rounded = (x * 1000.0).round() / 1000.0;
    // Avoid printing "-0".
    let rounded = if rounded == 0.0 { 0.0 } else { rounded };
    format!("{rounded}")
}

fn cpus_word(x: f64) -> &'static str {
    if x == 1.0 { "cpu" } else { "cpus" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{node, task};

    #[test]
    fn room_is_the_most_free_of_each_resource_over_ready_nodes() {
        let nodes = vec![
            node("a", 4.0, 1000, 100).with_allocated(3.0, 200, 0),
            node("b", 2.0, 4000, 50).with_allocated(0.0, 3500, 10),
            node("c", 16.0, 64000, 9000).not_ready(),
        ];
        let room = Room::of(&nodes).unwrap();
        assert_eq!(
            room,
            Room {
                cpu: 2.0,
                memory_mb: 800,
                disk_mb: 100
            }
        );
        // Within the room on every resource: may fit (each strategy decides).
        assert!(room.may_hold(&task("t", 2.0, 800, 100).resources));
        assert!(room.may_hold(&task("t", 0.0, 0, 0).resources));
        // More than any ready node has free of one resource: fits nowhere,
        // and the filter agrees on every node.
        for t in [
            task("t", 2.5, 1, 1),
            task("t", 1.0, 801, 1),
            task("t", 1.0, 1, 101),
        ] {
            assert!(!room.may_hold(&t.resources), "{t:?}");
            assert!(candidates(&t, &nodes).is_err(), "{t:?}");
        }
        assert_eq!(Room::of(&[node("x", 1.0, 1, 1).not_ready()]), None);
    }

    #[test]
    fn fits_table() {
        // (case, node, task, expected)
        let cases: Vec<(&str, NodeSnapshot, TaskRequest, Result<(), Shortfall>)> = vec![
            (
                "room for everything",
                node("w1", 4.0, 4096, 1000),
                task("t", 1.0, 1024, 100),
                Ok(()),
            ),
            (
                "exactly full fits",
                node("w1", 4.0, 4096, 1000).with_allocated(3.0, 3072, 900),
                task("t", 1.0, 1024, 100),
                Ok(()),
            ),
            (
                "cpu within the epsilon",
                node("w1", 0.3, 4096, 1000).with_allocated(0.1, 0, 0),
                task("t", 0.2, 0, 0),
                Ok(()),
            ),
            (
                "zero requests fit an over-allocated node",
                node("w1", 1.0, 100, 100).with_allocated(2.0, 200, 200),
                task("t", 0.0, 0, 0),
                Ok(()),
            ),
            (
                "not ready",
                node("w1", 4.0, 4096, 1000).not_ready(),
                task("t", 0.0, 0, 0),
                Err(Shortfall::NotReady),
            ),
            (
                "cpu",
                node("w1", 2.0, 4096, 1000).with_allocated(1.5, 0, 0),
                task("t", 1.0, 0, 0),
                Err(Shortfall::Cpu {
                    requested: 1.0,
                    free: 0.5,
                }),
            ),
            (
                "memory",
                node("w1", 2.0, 1000, 1000).with_allocated(0.0, 600, 0),
                task("t", 0.0, 600, 0),
                Err(Shortfall::Memory {
                    requested_mb: 600,
                    free_mb: 400,
                }),
            ),
            (
                "disk",
                node("w1", 2.0, 1000, 1000).with_allocated(0.0, 0, 900),
                task("t", 0.0, 0, 200),
                Err(Shortfall::Disk {
                    requested_mb: 200,
                    free_mb: 100,
                }),
            ),
            (
                "memory sum overflows",
                node("w1", 2.0, u64::MAX, 1000).with_allocated(0.0, u64::MAX, 0),
                task("t", 0.0, 1, 0),
                Err(Shortfall::Memory {
                    requested_mb: 1,
                    free_mb: 0,
                }),
            ),
            (
                "host port taken",
                node("w1", 4.0, 4096, 1000).with_ports(&[80, 8080]),
                task("t", 0.0, 0, 0).with_ports(&[443, 8080]),
                Err(Shortfall::HostPorts(vec![8080])),
            ),
            (
                "other host ports do not matter",
                node("w1", 4.0, 4096, 1000).with_ports(&[80]),
                task("t", 0.0, 0, 0).with_ports(&[8080]),
                Ok(()),
            ),
        ];
        for (case, node, task, expected) in cases {
            assert_eq!(fits(&task, &node), expected, "{case}");
        }
    }

    proptest::proptest! {
        /// `fits` answers as the first of every reason would.
        #[test]
        fn fits_is_the_first_shortfall(
            node in crate::scheduler::tests::arb_node(),
            task in crate::scheduler::tests::arb_task(),
        ) {
            let expected = if node.ready {
                match resource_shortfalls(&task, &node).into_iter().next() {
                    Some(shortfall) => Err(shortfall),
                    None => Ok(()),
                }
            } else {
                Err(Shortfall::NotReady)
            };
            proptest::prop_assert_eq!(fits(&task, &node), expected);
        }
    }

    #[test]
    fn shortfalls_lists_every_reason() {
        let n = node("w1", 1.0, 100, 100).with_ports(&[80]);
        let t = task("t", 2.0, 200, 200).with_ports(&[80]);
        let found = resource_shortfalls(&t, &n);
        assert_eq!(found.len(), 4, "{found:?}");
    }

    #[test]
    fn candidates_are_the_fitting_nodes_in_order() {
        let nodes = vec![
            node("w0", 4.0, 4096, 1000),
            node("w1", 4.0, 4096, 1000).not_ready(),
            node("w2", 4.0, 512, 1000),
            node("w3", 4.0, 4096, 1000),
        ];
        assert_eq!(candidates(&task("t", 1.0, 1024, 0), &nodes), Ok(vec![0, 3]));
    }

    #[test]
    fn no_fit_messages() {
        // (case, nodes, task, expected message)
        let cases: Vec<(&str, Vec<NodeSnapshot>, TaskRequest, &str)> = vec![
            (
                "no nodes",
                vec![],
                task("t", 0.0, 0, 0),
                "no worker has registered yet",
            ),
            (
                "the only node is down",
                vec![node("w1", 4.0, 4096, 1000).not_ready()],
                task("t", 0.0, 0, 0),
                "the only worker, w1, is not ready",
            ),
            (
                "none ready",
                vec![
                    node("w1", 4.0, 4096, 1000).not_ready(),
                    node("w2", 4.0, 4096, 1000).not_ready(),
                    node("w3", 4.0, 4096, 1000).not_ready(),
                ],
                task("t", 0.0, 0, 0),
                "none of the 3 workers is ready",
            ),
            (
                "memory",
                vec![
                    node("w1", 4.0, 1024, 1000).with_allocated(0.0, 512, 0),
                    node("w2", 4.0, 1024, 1000).with_allocated(0.0, 1000, 0),
                ],
                task("t", 1.0, 2048, 0),
                "no node has 2048 MB memory free (the most free is 512 MB on w1)",
            ),
            (
                "cpu",
                vec![
                    node("w1", 2.0, 4096, 1000).with_allocated(1.0, 0, 0),
                    node("w2", 2.0, 4096, 1000).with_allocated(0.5, 0, 0),
                ],
                task("t", 4.0, 0, 0),
                "no node has 4 cpus free (the most free is 1.5 on w2)",
            ),
            (
                "disk",
                vec![node("w1", 2.0, 4096, 300).with_allocated(0.0, 0, 100)],
                task("t", 0.0, 0, 500),
                "no node has 500 MB disk free (the most free is 200 MB on w1)",
            ),
            (
                "host port",
                vec![
                    node("w1", 2.0, 4096, 1000).with_ports(&[8080]),
                    node("w2", 2.0, 4096, 1000).with_ports(&[8080, 9090]),
                ],
                task("t", 0.0, 0, 0).with_ports(&[8080]),
                "host port 8080 is taken on every ready node",
            ),
            (
                "different host ports on different nodes",
                vec![
                    node("w1", 2.0, 4096, 1000).with_ports(&[8080]),
                    node("w2", 2.0, 4096, 1000).with_ports(&[9090]),
                ],
                task("t", 0.0, 0, 0).with_ports(&[9090, 8080]),
                "one of host ports 8080, 9090 is taken on every ready node",
            ),
            (
                "memory blocks every node, cpu only one: memory is named",
                vec![node("w1", 1.0, 1024, 1000), node("w2", 8.0, 512, 1000)],
                task("t", 2.0, 2048, 0),
                "no node has 2048 MB memory free (the most free is 1024 MB on w1)",
            ),
            (
                "mixed: each constraint blocks some nodes, the commonest first",
                vec![
                    node("w1", 1.0, 4096, 1000),
                    node("w2", 8.0, 1024, 1000),
                    node("w3", 8.0, 512, 1000),
                ],
                task("t", 2.0, 2048, 0),
                "none of the 3 ready workers fits: \
                 2 have less than 2048 MB memory free (the most is 1024 MB on w2); \
                 1 has less than 2 cpus free (the most is 1 on w1)",
            ),
            (
                "not-ready workers are mentioned",
                vec![
                    node("w1", 4.0, 1024, 1000),
                    node("w2", 4.0, 8192, 1000).not_ready(),
                ],
                task("t", 0.0, 2048, 0),
                "no node has 2048 MB memory free (the most free is 1024 MB on w1); \
                 1 of the 2 workers is not ready",
            ),
        ];
        for (case, nodes, task, expected) in cases {
            assert_eq!(
                candidates(&task, &nodes),
                Err(NoFit(expected.to_string())),
                "{case}"
            );
        }
    }

    #[test]
    fn cpu_amounts_print_plainly() {
        assert_eq!(cores(4.0), "4");
        assert_eq!(cores(1.5), "1.5");
        assert_eq!(cores(0.1 + 0.2), "0.3");
        assert_eq!(cores(-0.0), "0");
        let shortfall = Shortfall::Cpu {
            requested: 1.0,
            free: 0.5,
        };
        assert_eq!(shortfall.to_string(), "needs 1 cpu, 0.5 free");
    }
}
