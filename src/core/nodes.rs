//! What the manager knows of each worker node: its stored record, what its
//! tasks take of it (allocation), and the views built from both: the
//! scheduler's snapshots and `GET /nodes`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::liveness::{Life, NodeState};
use crate::scheduler::{NodeSnapshot, Resources, TaskRequest, Usage};
use crate::store::Stored;
use crate::task::{TaskRecord, TaskState};
use crate::wire::{Capacity, MachineStats};

/// A registered worker, as stored in LMDB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// Base URL of the worker's API.
    pub address: String,
    /// The worker process that registered last.
    #[serde(default)]
    pub instance: Uuid,
    pub capacity: Capacity,
    pub registered_at: DateTime<Utc>,
    /// The generation of the name whose certificates are accepted; one
    /// more after every removal.
    #[serde(default)]
    pub generation: u64,
    /// Set while the name is removed from the cluster: not a member, its
    /// older certificates refused.
    #[serde(default)]
    pub removed: Option<Removal>,
}

/// When and by whom a node was removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    pub at: DateTime<Utc>,
    /// The token that removed it.
    pub by: Option<String>,
}

impl NodeRecord {
    /// A member of the cluster (not removed).
    pub fn is_member(&self) -> bool {
        self.removed.is_none()
    }
}

impl Stored for NodeRecord {
    const TABLE: &'static str = "nodes";
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// The oldest generation of each once-removed name whose certificates are
/// accepted: what the manager checks a worker's certificate against (the
/// Manager publishes it after every committed change of a node).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generations(pub HashMap<String, u64>);

impl Generations {
    /// Whether a certificate of `name`'s `generation` is still good.
    pub fn accepts(&self, name: &str, generation: u64) -> bool {
        self.0.get(name).is_none_or(|oldest| generation >= *oldest)
    }
}

/// What the tasks placed on one node take of it; kept up to date as tasks
/// come and go ([`Load::add`], [`Load::remove`]), exactly: CPU is summed
/// in micro-cores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    cpu_micro: i64,
    /// The sum of their requests.
    pub allocated: Resources,
    pub tasks: usize,
    pub names: BTreeMap<String, usize>,
    /// Host ports held, with how many tasks hold each (one, but a count
    /// keeps removal exact).
    pub host_ports: BTreeMap<u16, usize>,
    /// Replicas per service.
    pub groups: BTreeMap<String, usize>,
}

/// What one task holding its node's resources adds to the node's load.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub node: String,
    cpu_micro: i64,
    memory_mb: u64,
    disk_mb: u64,
    name: String,
    host_ports: Vec<u16>,
    group: Option<String>,
}

impl Share {
    /// The share of a task that holds its node's resources.
    pub fn of(task: &TaskRecord) -> Option<Share> {
        let node = task.node.as_ref().filter(|_| holds_resources(task))?;
        Some(Share {
            node: node.clone(),
            cpu_micro: micro(task.spec.cpu),
            memory_mb: task.spec.memory_mb,
            disk_mb: task.spec.disk_mb,
            name: task.name.clone(),
            host_ports: task.spec.host_ports(),
            group: task.service.clone(),
        })
    }
}

/// Cores in micro-cores (a spec's CPU is at least 0.01 and at most 1024).
fn micro(cpu: f64) -> i64 {
    if cpu.is_finite() && cpu > 0.0 {
        (cpu * 1e6).round() as i64
    } else {
        0
    }
}

fn count_up<K: Ord + Clone>(map: &mut BTreeMap<K, usize>, key: &K) {
    *map.entry(key.clone()).or_default() += 1;
}

fn count_down<K: Ord>(map: &mut BTreeMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Load {
    pub fn add(&mut self, share: &Share) {
        self.cpu_micro += share.cpu_micro;
        self.allocated.memory_mb = self.allocated.memory_mb.saturating_add(share.memory_mb);
        self.allocated.disk_mb = self.allocated.disk_mb.saturating_add(share.disk_mb);
        self.allocated.cpu = self.cpu_micro as f64 / 1e6;
        self.tasks += 1;
        count_up(&mut self.names, &share.name);
        for port in &share.host_ports {
            count_up(&mut self.host_ports, port);
        }
        if let Some(group) = &share.group {
            count_up(&mut self.groups, group);
        }
    }

    pub fn remove(&mut self, share: &Share) {
        self.cpu_micro -= share.cpu_micro;
        self.allocated.memory_mb = self.allocated.memory_mb.saturating_sub(share.memory_mb);
        self.allocated.disk_mb = self.allocated.disk_mb.saturating_sub(share.disk_mb);
        self.allocated.cpu = self.cpu_micro as f64 / 1e6;
        self.tasks = self.tasks.saturating_sub(1);
        count_down(&mut self.names, &share.name);
        for port in &share.host_ports {
            count_down(&mut self.host_ports, port);
        }
        if let Some(group) = &share.group {
            count_down(&mut self.groups, group);
        }
    }
}

/// Which task names and services a snapshot counts: those of the tasks
/// being placed (a strategy asks only about them); `None`: all.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub names: BTreeSet<String>,
    pub groups: BTreeSet<String>,
}

impl Scope {
    /// The names and services of the tasks of a batch.
    pub fn of(requests: &[TaskRequest]) -> Self {
        Scope {
            names: requests.iter().map(|r| r.name.clone()).collect(),
            groups: requests.iter().filter_map(|r| r.group.clone()).collect(),
        }
    }
}

fn counts_in(
    map: &BTreeMap<String, usize>,
    keys: Option<&BTreeSet<String>>,
) -> BTreeMap<String, usize> {
    match keys {
        None => map.clone(),
        Some(keys) if keys.len() < map.len() => keys
            .iter()
            .filter_map(|k| map.get(k).map(|n| (k.clone(), *n)))
            .collect(),
        Some(keys) => map
            .iter()
            .filter(|(k, _)| keys.contains(*k))
            .map(|(k, n)| (k.clone(), *n))
            .collect(),
    }
}

/// Whether a task holds its node's resources: placed, and not ended.
pub fn holds_resources(task: &TaskRecord) -> bool {
    matches!(task.state, TaskState::Scheduled | TaskState::Running) && task.node.is_some()
}

/// What a task asks of a node.
pub fn request(task: &TaskRecord) -> TaskRequest {
    TaskRequest {
        id: task.id,
        name: task.name.clone(),
        resources: demand(task),
        host_ports: task.spec.host_ports(),
        group: task.service.clone(),
    }
}

/// What a task asks of its node's CPU, memory and disk.
pub fn demand(task: &TaskRecord) -> Resources {
    Resources {
        cpu: task.spec.cpu,
        memory_mb: task.spec.memory_mb,
        disk_mb: task.spec.disk_mb,
    }
}

/// The load of every node counted from scratch, in one pass over the
/// tasks: what the loads kept as tasks change are checked against.
#[cfg(test)]
pub fn loads<'a>(tasks: impl Iterator<Item = &'a TaskRecord>) -> HashMap<String, Load> {
    let mut out: HashMap<String, Load> = HashMap::new();
    for share in tasks.filter_map(Share::of) {
        out.entry(share.node.clone()).or_default().add(&share);
    }
    out
}

/// Live use of the machine from a worker's stats.
pub fn usage(stats: &MachineStats) -> Usage {
    Usage {
        cpu: stats.capacity.cpus * stats.cpu_usage_percent / 100.0,
        memory_mb: stats
            .capacity
            .memory_mb
            .saturating_sub(stats.memory_available_mb),
    }
}

/// What the scheduler sees of a node, counting the task names and services
/// in `scope` (all of them without one).
pub fn snapshot(
    node: &NodeRecord,
    life: Option<&Life>,
    load: Option<&Load>,
    scope: Option<&Scope>,
) -> NodeSnapshot {
    let empty = Load::default();
    let load = load.unwrap_or(&empty);
    NodeSnapshot {
        name: node.name.clone(),
        ready: life.is_some_and(|l| l.state == NodeState::Ready),
        capacity: node.capacity.clone(),
        allocated: load.allocated,
        usage: life
            .and_then(|l| l.stats.as_ref())
            .map(usage)
            .unwrap_or_default(),
        tasks: load.tasks,
        names: counts_in(&load.names, scope.map(|s| &s.names)),
        host_ports: load.host_ports.keys().copied().collect(),
        groups: counts_in(&load.groups, scope.map(|s| &s.groups)),
    }
}

/// A node as `GET /nodes` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub address: String,
    pub state: NodeState,
    /// When its last heartbeat (or registration) came in; `None` since the
    /// manager started.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// What it offers for placement.
    pub capacity: Capacity,
    /// The sum of the requests of its tasks that have not ended.
    pub allocated: Capacity,
    /// The machine's live use, from its last heartbeat.
    pub usage: Option<MachineStats>,
    /// Tasks placed on the node that have not ended.
    pub tasks: usize,
    pub registered_at: DateTime<Utc>,
}

impl NodeView {
    pub fn new(node: &NodeRecord, life: Option<&Life>, load: Option<&Load>) -> Self {
        let load = load.cloned().unwrap_or_default();
        NodeView {
            name: node.name.clone(),
            address: node.address.clone(),
            state: life.map(|l| l.state).unwrap_or(NodeState::Down),
            last_heartbeat: life.and_then(|l| l.last_heartbeat),
            capacity: node.capacity.clone(),
            allocated: Capacity {
                cpus: load.allocated.cpu,
                memory_mb: load.allocated.memory_mb,
                disk_mb: load.allocated.disk_mb,
            },
            usage: life.and_then(|l| l.stats.clone()),
            tasks: load.tasks,
            registered_at: node.registered_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, spec: serde_json::Value, node: &str, state: TaskState) -> TaskRecord {
        let mut value = spec;
        value["name"] = name.into();
        value["image"] = "i".into();
        let spec = crate::task::spec::from_value(value).unwrap();
        let mut t = TaskRecord::new(spec, Utc::now());
        t.place(node, Utc::now()).unwrap();
        t.state = state;
        t
    }

    #[test]
    fn loads_count_only_placed_tasks_that_have_not_ended() {
        let spec = serde_json::json!({"cpu": 0.5, "memory_mb": 100, "disk_mb": 10, "ports": ["8080:80", 81]});
        let tasks = [
            task("a", spec.clone(), "w1", TaskState::Running),
            task("a", spec.clone(), "w1", TaskState::Scheduled),
            task("b", spec.clone(), "w1", TaskState::Failed),
            task("b", spec.clone(), "w2", TaskState::Running),
        ];
        let loads = loads(tasks.iter());
        let w1 = &loads["w1"];
        assert_eq!(w1.tasks, 2);
        assert_eq!(w1.allocated.cpu, 1.0);
        assert_eq!(w1.allocated.memory_mb, 200);
        assert_eq!(w1.allocated.disk_mb, 20);
        assert_eq!(w1.names["a"], 2);
        assert_eq!(w1.host_ports, BTreeMap::from([(8080, 2)]));
        assert_eq!(loads["w2"].names.get("a"), None);
    }

    #[test]
    fn usage_and_views_come_from_the_last_heartbeat() {
        let node = NodeRecord {
            name: "w1".into(),
            address: "http://127.0.0.1:1".into(),
            instance: Uuid::new_v4(),
            capacity: Capacity {
                cpus: 4.0,
                memory_mb: 1000,
                disk_mb: 10,
            },
            registered_at: Utc::now(),
            generation: 0,
            removed: None,
        };
        let stats = MachineStats {
            capacity: node.capacity.clone(),
            cpu_usage_percent: 25.0,
            memory_available_mb: 600,
            ..Default::default()
        };
        let mut life = Life::new(std::time::Instant::now());
        life.seen(std::time::Instant::now(), Utc::now(), stats);
        let snap = snapshot(&node, Some(&life), None, None);
        assert!(snap.ready);
        assert_eq!(snap.usage.cpu, 1.0);
        assert_eq!(snap.usage.memory_mb, 400);
        let view = NodeView::new(&node, Some(&life), None);
        assert_eq!(view.state, NodeState::Ready);
        assert!(view.last_heartbeat.is_some());
        life.state = NodeState::Down;
        assert!(!snapshot(&node, Some(&life), None, None).ready);
        assert_eq!(NodeView::new(&node, None, None).state, NodeState::Down);
    }
}
