//! `ClusterState`: everything the manager knows (tasks, nodes, their
//! liveness), the indexes that keep every decision proportional to what it
//! touches, and the staging of changes until the Store has committed them.
//!
//! Every change of a task or node record goes through [`ClusterState::put_task`]
//! / [`ClusterState::put_node`] / [`ClusterState::remove_task`]. Each one keeps
//! the indexes true, remembers the old value (undo), marks the record for the
//! next commit and derives the events users will see. After the Store has
//! committed, [`ClusterState::commit`] forgets the undo log; when it failed,
//! [`ClusterState::rollback`] puts every record back: memory never runs ahead
//! of the disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::command::CoreError;
use super::events::{self, EventDraft};
use super::join_tokens::{JoinRole, JoinTokenRecord, JoinTokenTable};
use super::liveness::{Life, NodeState, Watch};
use super::nodes::{self, Generations, Load, NodeRecord, NodeView, Scope, Share};
use super::tokens::{TokenRecord, TokenTable};
use crate::config::SchedulerKind;
use crate::scheduler::NodeSnapshot;
use crate::service::ServiceRecord;
use crate::task::{DesiredState, TaskRecord, TaskState};

/// How long ended tasks are kept, and how many at most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_tasks: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(24 * 3600),
            max_tasks: 10_000,
        }
    }
}

impl From<&crate::config::RetainEnded> for Retention {
    fn from(r: &crate::config::RetainEnded) -> Self {
        Retention {
            max_age: Duration::from_secs(r.max_age_s),
            max_tasks: r.max_tasks,
        }
    }
}

/// One change to undo if its commit fails.
#[derive(Debug)]
enum Undo {
    Task(Uuid, Option<Box<TaskRecord>>),
    Node(String, Option<NodeRecord>),
    Token(String, Option<TokenRecord>),
    JoinToken(JoinRole, Option<JoinTokenRecord>),
    Service(String, Option<Box<ServiceRecord>>),
}

/// What a batch of commands changed, to be committed in one transaction.
#[derive(Debug, Default)]
pub struct Staged {
    pub tasks: Vec<TaskRecord>,
    pub removed_tasks: Vec<Uuid>,
    pub nodes: Vec<NodeRecord>,
    pub tokens: Vec<TokenRecord>,
    pub removed_tokens: Vec<String>,
    pub join_tokens: Vec<JoinTokenRecord>,
    pub services: Vec<ServiceRecord>,
    pub removed_services: Vec<String>,
    pub events: Vec<EventDraft>,
}

impl Staged {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.removed_tasks.is_empty()
            && self.nodes.is_empty()
            && !self.tokens_changed()
            && self.join_tokens.is_empty()
            && self.services.is_empty()
            && self.removed_services.is_empty()
    }

    pub fn tokens_changed(&self) -> bool {
        !self.tokens.is_empty() || !self.removed_tokens.is_empty()
    }
}

pub struct ClusterState {
    /// Every task, by id (the order and cursor of `GET /tasks`).
    tasks: BTreeMap<Uuid, TaskRecord>,
    nodes: BTreeMap<String, NodeRecord>,
    /// Users' tokens, by name.
    tokens: BTreeMap<String, TokenRecord>,
    /// The join tokens rotated since the cluster was made, by role.
    join_tokens: BTreeMap<JoinRole, JoinTokenRecord>,
    services: BTreeMap<String, ServiceRecord>,
    /// Index: the tasks of each service (by the task's `service`).
    service_tasks: HashMap<String, BTreeSet<Uuid>>,
    /// Services whose tasks changed since they were last converged (memory
    /// only: a restart converges every service).
    pub(super) touched: BTreeSet<String>,
    /// When each service wants another look (memory only).
    wakes: BTreeMap<String, DateTime<Utc>>,
    wake_order: BTreeSet<(DateTime<Utc>, String)>,
    /// Liveness of every known node (memory only, never persisted).
    pub(super) lives: BTreeMap<String, Life>,
    pub(super) watch: Watch,
    pub(super) scheduler: SchedulerKind,
    pub(super) cursor: usize,
    pub(super) retention: Retention,
    /// Index: the tasks holding each node's resources (Scheduled or Running there).
    active: HashMap<String, BTreeSet<Uuid>>,
    /// What those tasks take of each node, kept with the index.
    loads: HashMap<String, Load>,
    /// Index: Pending tasks that should run, oldest first.
    pending: BTreeSet<(DateTime<Utc>, Uuid)>,
    /// Index: ended tasks by when they ended (for retention).
    ended: BTreeSet<(DateTime<Utc>, Uuid)>,
    undo: Vec<Undo>,
    dirty_tasks: BTreeSet<Uuid>,
    removed_tasks: BTreeSet<Uuid>,
    dirty_nodes: BTreeSet<String>,
    dirty_tokens: BTreeSet<String>,
    removed_tokens: BTreeSet<String>,
    dirty_join_tokens: BTreeSet<JoinRole>,
    dirty_services: BTreeSet<String>,
    removed_services: BTreeSet<String>,
    events: Vec<EventDraft>,
}

impl ClusterState {
    /// The state over what the Store holds. Every known node gets a full
    /// `down_after` to be heard from.
    pub fn new(
        tasks: Vec<TaskRecord>,
        nodes: Vec<NodeRecord>,
        scheduler: SchedulerKind,
        down_after: Duration,
        retention: Retention,
        now: std::time::Instant,
    ) -> Self {
        let mut state = ClusterState {
            tasks: BTreeMap::new(),
            nodes: BTreeMap::new(),
            tokens: BTreeMap::new(),
            join_tokens: BTreeMap::new(),
            services: BTreeMap::new(),
            service_tasks: HashMap::new(),
            touched: BTreeSet::new(),
            wakes: BTreeMap::new(),
            wake_order: BTreeSet::new(),
            lives: nodes
                .iter()
                .filter(|n| n.is_member())
                .map(|n| (n.name.clone(), Life::new(now)))
                .collect(),
            watch: Watch::new(down_after),
            scheduler,
            cursor: 0,
            retention,
            active: HashMap::new(),
            loads: HashMap::new(),
            pending: BTreeSet::new(),
            ended: BTreeSet::new(),
            undo: Vec::new(),
            dirty_tasks: BTreeSet::new(),
            removed_tasks: BTreeSet::new(),
            dirty_nodes: BTreeSet::new(),
            dirty_tokens: BTreeSet::new(),
            removed_tokens: BTreeSet::new(),
            dirty_join_tokens: BTreeSet::new(),
            dirty_services: BTreeSet::new(),
            removed_services: BTreeSet::new(),
            events: Vec::new(),
        };
        for task in tasks {
            state.set_task(task.id, Some(task));
        }
        state.nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        state
    }

    /// With these tokens (as the Store holds them).
    pub fn with_tokens(mut self, tokens: Vec<TokenRecord>) -> Self {
        self.tokens = tokens.into_iter().map(|t| (t.name.clone(), t)).collect();
        self
    }

    /// With these rotated join tokens (as the Store holds them).
    pub fn with_join_tokens(mut self, records: Vec<JoinTokenRecord>) -> Self {
        self.join_tokens = records.into_iter().map(|r| (r.role, r)).collect();
        self
    }

    /// With these services (as the Store holds them); each gets a look at
    /// the first command.
    pub fn with_services(mut self, services: Vec<ServiceRecord>) -> Self {
        self.services = services
            .into_iter()
            .map(|s| (s.spec.name.clone(), s))
            .collect();
        self.touched = self.services.keys().cloned().collect();
        self
    }

    pub fn service(&self, name: &str) -> Option<&ServiceRecord> {
        self.services.get(name)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceRecord> {
        self.services.values()
    }

    /// The tasks of a service (of this service: not of an earlier one of
    /// the same name).
    pub fn service_tasks(&self, service: &ServiceRecord) -> Vec<&TaskRecord> {
        self.service_tasks
            .get(&service.spec.name)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
            .filter(|t| t.service_id == Some(service.id))
            .collect()
    }

    /// Services whose wake-up time has come, and forgets those times.
    pub(super) fn take_due(&mut self, now: DateTime<Utc>) -> Vec<String> {
        let mut due = Vec::new();
        while let Some((at, name)) = self.wake_order.first().cloned() {
            if at > now {
                break;
            }
            self.wake_order.remove(&(at, name.clone()));
            self.wakes.remove(&name);
            due.push(name);
        }
        due
    }

    /// When a service wants another look (replacing the time it had).
    pub(super) fn set_wake(&mut self, name: &str, at: Option<DateTime<Utc>>) {
        if let Some(old) = self.wakes.remove(name) {
            self.wake_order.remove(&(old, name.to_string()));
        }
        if let Some(at) = at {
            self.wakes.insert(name.to_string(), at);
            self.wake_order.insert((at, name.to_string()));
        }
    }

    // ----- reads -----

    pub fn task(&self, id: &Uuid) -> Option<&TaskRecord> {
        self.tasks.get(id)
    }

    pub fn tasks(&self) -> impl Iterator<Item = &TaskRecord> {
        self.tasks.values()
    }

    /// Tasks after `after` (exclusive) in id order.
    pub fn tasks_after(&self, after: Option<Uuid>) -> impl Iterator<Item = &TaskRecord> {
        use std::ops::Bound;
        let start = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        self.tasks.range((start, Bound::Unbounded)).map(|(_, t)| t)
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// A node's record, also of a removed one.
    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(name)
    }

    /// A node that is a member of the cluster (not removed).
    pub fn member(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(name).filter(|n| n.is_member())
    }

    fn members(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values().filter(|n| n.is_member())
    }

    /// The names of the cluster's members.
    pub fn node_names(&self) -> Vec<String> {
        self.members().map(|n| n.name.clone()).collect()
    }

    /// The oldest generation of each name whose certificates are accepted
    /// (names never removed are left out: every generation is).
    pub fn generations(&self) -> Generations {
        Generations(
            self.nodes
                .values()
                .filter(|n| n.generation > 0)
                .map(|n| (n.name.clone(), n.generation))
                .collect(),
        )
    }

    /// The generation a worker joining as `name` gets its certificate for;
    /// refused while a live member holds the name.
    pub fn admission(&self, name: &str) -> Result<u64, CoreError> {
        if self.member(name).is_some() && !self.is_down(name) {
            return Err(CoreError::Conflict(format!(
                "a live worker is named {name:?}, and two live workers cannot share a name (remove it first with `cube node rm {name}`, or wait until it is down)"
            )));
        }
        Ok(self.node(name).map_or(0, |n| n.generation))
    }

    pub fn token(&self, name: &str) -> Option<&TokenRecord> {
        self.tokens.get(name)
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// What requests are checked against.
    pub fn token_table(&self) -> TokenTable {
        TokenTable::new(self.tokens.values())
    }

    pub fn life(&self, name: &str) -> Option<&Life> {
        self.lives.get(name)
    }

    pub fn is_down(&self, node: &str) -> bool {
        self.lives
            .get(node)
            .is_none_or(|life| life.state == NodeState::Down)
    }

    pub fn tick_every(&self) -> Duration {
        self.watch.tick_every()
    }

    /// Pending tasks that should run, oldest first.
    pub fn pending(&self) -> Vec<Uuid> {
        self.pending.iter().map(|(_, id)| *id).collect()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The ids of the tasks holding `node`'s resources.
    pub fn active_on(&self, node: &str) -> Vec<Uuid> {
        self.active
            .get(node)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Ended tasks, oldest end first.
    pub fn ended_oldest_first(&self) -> impl Iterator<Item = (DateTime<Utc>, Uuid)> + '_ {
        self.ended.iter().copied()
    }

    pub fn ended_count(&self) -> usize {
        self.ended.len()
    }

    /// What the tasks on `node` take of it.
    pub fn load(&self, node: &str) -> Load {
        self.loads.get(node).cloned().unwrap_or_default()
    }

    /// What the scheduler sees of every node, counting the task names and
    /// services in `scope` (all without one: a snapshot then costs as much
    /// as the node's tasks).
    pub fn snapshots(&self, scope: Option<&Scope>) -> Vec<NodeSnapshot> {
        self.members()
            .map(|n| nodes::snapshot(n, self.lives.get(&n.name), self.loads.get(&n.name), scope))
            .collect()
    }

    pub fn node_views(&self) -> Vec<NodeView> {
        self.members()
            .map(|n| NodeView::new(n, self.lives.get(&n.name), self.loads.get(&n.name)))
            .collect()
    }

    // ----- changes (staged until committed) -----

    /// Stores a task's new record: indexes, undo, the next commit, events.
    pub fn put_task(&mut self, record: TaskRecord, at: DateTime<Utc>) {
        let id = record.id;
        let old = self.set_task(id, Some(record));
        if let Some(new) = self.tasks.get(&id) {
            for kind in events::diff(old.as_ref().map(events::seen).as_ref(), new) {
                self.events.push(EventDraft::new(new, kind, at));
            }
        }
        self.undo.push(Undo::Task(id, old.map(Box::new)));
        self.removed_tasks.remove(&id);
        self.dirty_tasks.insert(id);
    }

    /// Removes a task's record (retention).
    pub fn remove_task(&mut self, id: Uuid) {
        let old = self.set_task(id, None);
        if old.is_some() {
            self.undo.push(Undo::Task(id, old.map(Box::new)));
            self.dirty_tasks.remove(&id);
            self.removed_tasks.insert(id);
        }
    }

    pub fn put_node(&mut self, record: NodeRecord) {
        let name = record.name.clone();
        let old = self.nodes.insert(name.clone(), record);
        self.undo.push(Undo::Node(name.clone(), old));
        self.dirty_nodes.insert(name);
    }

    pub fn put_token(&mut self, record: TokenRecord) {
        let name = record.name.clone();
        let old = self.tokens.insert(name.clone(), record);
        self.undo.push(Undo::Token(name.clone(), old));
        self.removed_tokens.remove(&name);
        self.dirty_tokens.insert(name);
    }

    pub fn remove_token(&mut self, name: &str) {
        if let Some(old) = self.tokens.remove(name) {
            self.undo.push(Undo::Token(name.to_string(), Some(old)));
            self.dirty_tokens.remove(name);
            self.removed_tokens.insert(name.to_string());
        }
    }

    pub fn join_token(&self, role: JoinRole) -> Option<&JoinTokenRecord> {
        self.join_tokens.get(&role)
    }

    /// The rotated join tokens, as the Manager publishes them.
    pub fn join_token_table(&self) -> JoinTokenTable {
        self.join_tokens
            .iter()
            .map(|(role, r)| (*role, r.token.clone()))
            .collect()
    }

    pub fn put_join_token(&mut self, record: JoinTokenRecord) {
        let role = record.role;
        let old = self.join_tokens.insert(role, record);
        self.undo.push(Undo::JoinToken(role, old));
        self.dirty_join_tokens.insert(role);
    }

    /// An event of a service as a whole, published with the next commit.
    pub fn service_event(&mut self, name: &str, message: String, at: DateTime<Utc>) {
        log::info!("manager: service {name}: {message}");
        self.events.push(EventDraft::service(name, message, at));
    }

    pub fn put_service(&mut self, record: ServiceRecord) {
        let name = record.spec.name.clone();
        let old = self.services.insert(name.clone(), record);
        self.undo
            .push(Undo::Service(name.clone(), old.map(Box::new)));
        self.removed_services.remove(&name);
        // A changed service gets its look at the end of the command.
        self.touched.insert(name.clone());
        self.dirty_services.insert(name);
    }

    pub fn remove_service(&mut self, name: &str) {
        if let Some(old) = self.services.remove(name) {
            self.undo
                .push(Undo::Service(name.to_string(), Some(Box::new(old))));
            self.dirty_services.remove(name);
            self.removed_services.insert(name.to_string());
            self.set_wake(name, None);
        }
    }

    /// Takes what the commands since the last commit changed.
    pub fn take_staged(&mut self) -> Staged {
        let tasks = std::mem::take(&mut self.dirty_tasks)
            .into_iter()
            .filter_map(|id| self.tasks.get(&id).cloned())
            .collect();
        let nodes = std::mem::take(&mut self.dirty_nodes)
            .into_iter()
            .filter_map(|name| self.nodes.get(&name).cloned())
            .collect();
        let tokens = std::mem::take(&mut self.dirty_tokens)
            .into_iter()
            .filter_map(|name| self.tokens.get(&name).cloned())
            .collect();
        let join_tokens = std::mem::take(&mut self.dirty_join_tokens)
            .into_iter()
            .filter_map(|role| self.join_tokens.get(&role).cloned())
            .collect();
        let services = std::mem::take(&mut self.dirty_services)
            .into_iter()
            .filter_map(|name| self.services.get(&name).cloned())
            .collect();
        Staged {
            services,
            removed_services: std::mem::take(&mut self.removed_services)
                .into_iter()
                .collect(),
            tasks,
            removed_tasks: std::mem::take(&mut self.removed_tasks)
                .into_iter()
                .collect(),
            nodes,
            tokens,
            removed_tokens: std::mem::take(&mut self.removed_tokens)
                .into_iter()
                .collect(),
            join_tokens,
            events: std::mem::take(&mut self.events),
        }
    }

    /// The staged changes are durable: they can no longer be undone.
    pub fn commit(&mut self) {
        self.undo.clear();
    }

    /// The staged changes could not be stored: every record goes back to
    /// what it was at the last commit.
    pub fn rollback(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Task(id, old) => {
                    self.set_task(id, old.map(|b| *b));
                }
                Undo::Node(name, old) => match old {
                    Some(node) => {
                        self.nodes.insert(name, node);
                    }
                    None => {
                        self.nodes.remove(&name);
                    }
                },
                Undo::Token(name, old) => match old {
                    Some(token) => {
                        self.tokens.insert(name, token);
                    }
                    None => {
                        self.tokens.remove(&name);
                    }
                },
                Undo::JoinToken(role, old) => match old {
                    Some(record) => {
                        self.join_tokens.insert(role, record);
                    }
                    None => {
                        self.join_tokens.remove(&role);
                    }
                },
                Undo::Service(name, old) => {
                    // Its next look sets things right again.
                    self.touched.insert(name.clone());
                    match old {
                        Some(service) => {
                            self.services.insert(name, *service);
                        }
                        None => {
                            self.services.remove(&name);
                        }
                    }
                }
            }
        }
        self.dirty_services.clear();
        self.removed_services.clear();
        self.dirty_tasks.clear();
        self.removed_tasks.clear();
        self.dirty_nodes.clear();
        self.dirty_tokens.clear();
        self.removed_tokens.clear();
        self.dirty_join_tokens.clear();
        self.events.clear();
    }

    /// Replaces (or removes) a task and keeps the indexes true; returns the
    /// old record.
    fn set_task(&mut self, id: Uuid, record: Option<TaskRecord>) -> Option<TaskRecord> {
        let old = match record {
            Some(record) => self.tasks.insert(id, record),
            None => self.tasks.remove(&id),
        };
        if let Some(old) = &old {
            self.unindex(old);
        }
        if let Some(new) = self.tasks.get(&id) {
            let keys = IndexKeys::of(new);
            let created_at = new.created_at;
            if let Some(service) = &new.service {
                self.touched.insert(service.clone());
            }
            self.index(id, created_at, keys);
        }
        old
    }

    fn unindex(&mut self, record: &TaskRecord) {
        let keys = IndexKeys::of(record);
        if let Some(share) = keys.share {
            if let Some(ids) = self.active.get_mut(&share.node) {
                ids.remove(&record.id);
                if ids.is_empty() {
                    self.active.remove(&share.node);
                }
            }
            if let Some(load) = self.loads.get_mut(&share.node) {
                load.remove(&share);
                if load.tasks == 0 {
                    self.loads.remove(&share.node);
                }
            }
        }
        if keys.pending {
            self.pending.remove(&(record.created_at, record.id));
        }
        if let Some(at) = keys.ended_at {
            self.ended.remove(&(at, record.id));
        }
        if let Some(service) = &keys.service
            && let Some(ids) = self.service_tasks.get_mut(service)
        {
            ids.remove(&record.id);
            self.touched.insert(service.clone());
            if ids.is_empty() {
                self.service_tasks.remove(service);
            }
        }
    }

    fn index(&mut self, id: Uuid, created_at: DateTime<Utc>, keys: IndexKeys) {
        if let Some(share) = keys.share {
            self.active
                .entry(share.node.clone())
                .or_default()
                .insert(id);
            self.loads
                .entry(share.node.clone())
                .or_default()
                .add(&share);
        }
        if keys.pending {
            self.pending.insert((created_at, id));
        }
        if let Some(at) = keys.ended_at {
            self.ended.insert((at, id));
        }
        if let Some(service) = keys.service {
            self.service_tasks.entry(service).or_default().insert(id);
        }
    }
}

/// Where a record belongs in the indexes.
struct IndexKeys {
    /// What it takes of its node, while it holds the node's resources.
    share: Option<Share>,
    pending: bool,
    ended_at: Option<DateTime<Utc>>,
    service: Option<String>,
}

impl IndexKeys {
    fn of(record: &TaskRecord) -> Self {
        IndexKeys {
            share: Share::of(record),
            pending: record.state == TaskState::Pending
                && record.desired_state == DesiredState::Running,
            ended_at: record.state.is_terminal().then_some(record.updated_at),
            service: record.service.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ClusterState {
        ClusterState::new(
            vec![],
            vec![],
            SchedulerKind::RoundRobin,
            Duration::from_secs(3),
            Retention::default(),
            std::time::Instant::now(),
        )
    }

    fn record() -> TaskRecord {
        let spec =
            crate::task::spec::from_value(serde_json::json!({"name": "t", "image": "i"})).unwrap();
        TaskRecord::new(spec, Utc::now())
    }

    #[test]
    fn a_rollback_puts_every_record_and_index_back() {
        let mut s = state();
        let mut a = record();
        s.put_task(a.clone(), Utc::now());
        let staged = s.take_staged();
        assert_eq!(staged.tasks.len(), 1);
        assert_eq!(staged.events.len(), 1, "Pending is an event");
        s.commit();
        assert_eq!(s.pending(), vec![a.id]);

        a.place("w1", Utc::now()).unwrap();
        s.put_task(a.clone(), Utc::now());
        assert_eq!(s.active_on("w1"), vec![a.id]);
        assert!(s.pending().is_empty());
        let b = record();
        s.put_task(b.clone(), Utc::now());
        s.rollback();
        assert_eq!(s.task(&a.id).unwrap().state, TaskState::Pending);
        assert!(s.task(&b.id).is_none());
        assert_eq!(s.pending(), vec![a.id]);
        assert!(s.active_on("w1").is_empty());
        assert!(s.take_staged().is_empty());
    }

    #[test]
    fn removed_tasks_leave_every_index() {
        let mut s = state();
        let mut a = record();
        a.request_stop(Utc::now());
        s.put_task(a.clone(), Utc::now());
        assert_eq!(s.ended_count(), 1);
        s.take_staged();
        s.commit();
        s.remove_task(a.id);
        let staged = s.take_staged();
        assert_eq!(staged.removed_tasks, vec![a.id]);
        assert!(staged.tasks.is_empty());
        assert_eq!(s.ended_count(), 0);
        assert_eq!(s.task_count(), 0);
    }
}
