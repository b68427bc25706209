//! The Manager actor: the desired state of the cluster.
//!
//! It accepts tasks (answering only once they are committed to LMDB), asks
//! the Scheduler where to put them, persists each placement before sending it
//! to the worker, and applies the state reports workers push. It takes the
//! workers' heartbeats, marks a silent worker down and moves its tasks (see
//! `liveness`), and places Pending tasks whenever capacity may have appeared
//! (a task submitted, a node registered, a task ended or moved): no retry
//! timer. Its records live in memory and in the Store; memory is only ever
//! changed here.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use futures_util::future::{Either, LocalBoxFuture};
use uuid::Uuid;

use super::drain::drain_node;
use super::events::{Event, EventLog};
use super::liveness::{Life, NodeState, Watch};
use super::nodes::{self, NodeRecord, NodeView};
use super::reconcile::{Reconciled, reconcile_node};
use crate::client::Client;
use crate::scheduler::{NodeSnapshot, PlaceBatch, Scheduler};
use crate::store::{Put, Store, StoreError};
use crate::task::{DesiredState, TaskRecord, TaskSpec, TaskState};
use crate::wire::{
    Assignment, Heartbeat, HeartbeatReply, Registration, RegistrationReply, TaskStatus,
};

/// How long the manager waits for a worker that may be a live namesake of
/// one registering.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no task with id {0}")]
    NotFound(Uuid),
    #[error("{0}")]
    Conflict(String),
    #[error("could not store the change: {0}")]
    Store(#[from] StoreError),
}

/// A queued write to the Store; resolves once committed.
type Write = LocalBoxFuture<'static, Result<(), StoreError>>;

/// Queues a record's write (in call order) and returns its completion.
fn write<T: crate::store::Stored>(store: &Addr<Store>, record: T) -> Write {
    let request = store.send(Put(record));
    Box::pin(async move { request.await? })
}

pub struct Manager {
    store: Addr<Store>,
    scheduler: Addr<Scheduler>,
    tasks: HashMap<Uuid, TaskRecord>,
    nodes: BTreeMap<String, NodeRecord>,
    /// Liveness of every known node (memory only).
    lives: BTreeMap<String, Life>,
    watch: Watch,
    /// What users watch: task state changes, restarts, health.
    events: EventLog,
}

impl Manager {
    /// A manager over what the Store holds (loaded by the caller).
    pub fn new(
        store: Addr<Store>,
        scheduler: Addr<Scheduler>,
        tasks: Vec<TaskRecord>,
        nodes: Vec<NodeRecord>,
        down_after: Duration,
    ) -> Self {
        // Every known node gets a full `down_after` to be heard from.
        let now = Instant::now();
        Manager {
            store,
            scheduler,
            events: EventLog::new(tasks.iter()),
            tasks: tasks.into_iter().map(|t| (t.id, t)).collect(),
            lives: nodes
                .iter()
                .map(|n| (n.name.clone(), Life::new(now)))
                .collect(),
            nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
            watch: Watch::new(down_after),
        }
    }

    fn persist<T: crate::store::Stored>(&self, record: T) -> Write {
        write(&self.store, record)
    }

    /// Stores a task's record, and logs the events its change makes.
    fn save(&mut self, record: TaskRecord) -> Write {
        self.events.observe(&record, Utc::now());
        write(&self.store, record)
    }

    fn client_for(&self, node: &str) -> Option<Client> {
        self.nodes.get(node).map(|n| Client::new(&n.address))
    }

    /// Applies a worker's report to the record; returns the write to await
    /// when the record changed. A task that ended frees its node's
    /// capacity: Pending tasks get another try.
    fn apply_report(
        &mut self,
        status: &TaskStatus,
        ctx: &mut Context<Self>,
    ) -> Result<Option<Write>, ManagerError> {
        let record = self
            .tasks
            .get_mut(&status.task_id)
            .ok_or(ManagerError::NotFound(status.task_id))?;
        let before = record.state;
        match record.apply_status(status, Utc::now()) {
            Ok(true) => {
                log_change(record, before);
                if record.state.is_terminal() && !before.is_terminal() {
                    ctx.notify(PlacePending);
                }
                let record = record.clone();
                Ok(Some(self.save(record)))
            }
            Ok(false) => Ok(None),
            Err(e) => {
                log::warn!("manager: task {} ignores a report: {e}", status.task_id);
                Ok(None)
            }
        }
    }

    /// Sends a placed task to its worker and applies the worker's answer.
    fn dispatch(&mut self, id: Uuid, ctx: &mut Context<Self>) {
        let Some(record) = self.tasks.get(&id) else {
            return;
        };
        if record.state != TaskState::Scheduled || record.desired_state != DesiredState::Running {
            return;
        }
        let Some(node) = record.node.clone() else {
            return;
        };
        let Some(client) = self.client_for(&node) else {
            log::error!("manager: task {id} is placed on unknown node {node}");
            return;
        };
        let assignment = Assignment {
            task_id: id,
            attempt: record.attempt,
            spec: record.spec.clone(),
        };
        log::info!(
            "manager: sending task {id} attempt {} to {node}",
            assignment.attempt
        );
        let send = async move { client.assign(&assignment).await };
        ctx.spawn(send.into_actor(self).then(move |result, act, ctx| {
            let write = match result {
                Ok(status) => act.apply_report(&status, ctx).ok().flatten(),
                Err(e) if e.is_unreachable() => {
                    log::warn!(
                        "manager: task {id} stays Scheduled on {node} until it registers again: {e}"
                    );
                    None
                }
                Err(e) => act.fail_task(id, format!("worker {node} refused the task: {e}"), ctx),
            };
            async move {
                if let Some(write) = write
                    && let Err(e) = write.await
                {
                    log::error!("manager: task {id}: {e}");
                }
            }
            .into_actor(act)
        }));
    }

    fn fail_task(&mut self, id: Uuid, error: String, ctx: &mut Context<Self>) -> Option<Write> {
        let record = self.tasks.get(&id)?;
        let status = TaskStatus {
            task_id: id,
            attempt: record.attempt,
            node: record.node.clone().unwrap_or_default(),
            state: TaskState::Failed,
            container_id: record.container_id.clone(),
            host_ports: Default::default(),
            exit_code: None,
            error: Some(error),
            at: Utc::now(),
            seq: record.status_seq,
            restart_count: record.restart_count,
            started_at: None,
            next_restart_at: None,
            health: None,
        };
        self.apply_report(&status, ctx).ok().flatten()
    }

    fn snapshots(&self) -> Vec<NodeSnapshot> {
        let loads = nodes::loads(self.tasks.values());
        self.nodes
            .values()
            .map(|n| nodes::snapshot(n, self.lives.get(&n.name), loads.get(&n.name)))
            .collect()
    }

    fn is_down(&self, node: &str) -> bool {
        self.lives
            .get(node)
            .is_none_or(|life| life.state == NodeState::Down)
    }

    /// The liveness clock ticks: mark silent nodes down, move the tasks of
    /// the nodes `Watch` says to drain.
    fn check_liveness(&mut self, ctx: &mut Context<Self>) {
        let tick = self.watch.tick(&mut self.lives, Instant::now());
        let after = self.watch.down_after().as_secs_f64();
        if tick.paused {
            log::warn!(
                "manager: its own clock ran late by more than {after:.1} s (was the process stopped?); every worker gets a fresh {after:.1} s"
            );
        }
        for name in &tick.went_down {
            log::warn!("manager: worker {name} is down (no heartbeat for {after:.1} s)");
        }
        if tick.all_silent && !tick.went_down.is_empty() {
            log::warn!(
                "manager: every worker went silent at once: suspecting the manager's own network; no task is moved until a worker is heard again"
            );
        }
        for name in tick.drain {
            self.drain(&name, ctx);
        }
    }

    /// Moves the tasks of a down node: each gets a new attempt on a live
    /// node that fits (or stays Pending, saying why). A task the user was
    /// stopping ends: its container goes when the node comes back.
    fn drain(&mut self, node: &str, ctx: &mut Context<Self>) {
        let changed = drain_node(&mut self.tasks, node, self.watch.down_after(), Utc::now());
        log::warn!(
            "manager: moving {} tasks off down worker {node}",
            changed.len()
        );
        let mut writes = Vec::new();
        for (id, before) in changed {
            if let Some(record) = self.tasks.get(&id) {
                log_change(record, before);
                let record = record.clone();
                writes.push(self.save(record));
            }
        }
        ctx.spawn(
            async move {
                for write in writes {
                    if let Err(e) = write.await {
                        log::error!("manager: a moved task was not stored: {e}");
                    }
                }
            }
            .into_actor(self),
        );
        ctx.notify(PlacePending);
    }

    /// Carries out orders for a worker itself: after a restart of the manager
    /// (workers that did not register anew), or a stop that must be repeated.
    fn execute(&mut self, node: &str, reply: RegistrationReply, ctx: &mut Context<Self>) {
        for assignment in reply.assignments {
            self.dispatch(assignment.task_id, ctx);
        }
        if let Some(client) = self.client_for(node) {
            for id in reply.stop {
                let client = client.clone();
                ctx.spawn(
                    async move { client.stop_on_worker(id).await }
                        .into_actor(self)
                        .then(move |result, act, ctx| {
                            let write = match result {
                                Ok(status) => act.apply_report(&status, ctx).ok().flatten(),
                                Err(e) => {
                                    log::warn!("manager: could not stop task {id}: {e}");
                                    None
                                }
                            };
                            async move {
                                if let Some(write) = write {
                                    let _ = write.await;
                                }
                            }
                            .into_actor(act)
                        }),
                );
            }
        }
    }

    /// Applies a reconciliation's record changes; resolves once committed.
    fn persist_changed(
        &mut self,
        reconciled: &Reconciled,
    ) -> impl Future<Output = Result<(), StoreError>> + use<> {
        let records: Vec<TaskRecord> = reconciled
            .changed
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .cloned()
            .collect();
        let writes: Vec<_> = records.into_iter().map(|r| self.save(r)).collect();
        async move {
            for write in writes {
                write.await?;
            }
            Ok(())
        }
    }
}

fn log_change(record: &TaskRecord, before: TaskState) {
    let node = record.node.as_deref().unwrap_or("-");
    if before == record.state {
        log::info!(
            "manager: task {} on {node} updated (container {:?}, ports {:?})",
            record.id,
            record.container_id,
            record.host_ports
        );
        return;
    }
    let detail = match (record.exit_code, &record.error) {
        (Some(code), Some(e)) => format!(" (exit code {code}, {e})"),
        (Some(code), None) => format!(" (exit code {code})"),
        (None, Some(e)) => format!(" ({e})"),
        (None, None) => String::new(),
    };
    log::info!(
        "manager: task {} {before} -> {} on {node}{detail}",
        record.id,
        record.state
    );
}

impl Actor for Manager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        log::info!(
            "manager: started with {} tasks and {} nodes from the store",
            self.tasks.len(),
            self.nodes.len()
        );
        // Catch up with workers that may have changed while we were down.
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            ctx.notify(SyncNode(name));
        }
        ctx.notify(PlacePending);
        ctx.run_interval(self.watch.tick_every(), |act, ctx| act.check_liveness(ctx));
    }
}

/// A user submits a task. Answers after the record is committed.
pub struct Submit(pub TaskSpec);

impl Message for Submit {
    type Result = Result<TaskRecord, ManagerError>;
}

impl Handler<Submit> for Manager {
    type Result = ResponseActFuture<Self, Result<TaskRecord, ManagerError>>;

    fn handle(&mut self, msg: Submit, _ctx: &mut Context<Self>) -> Self::Result {
        let record = TaskRecord::new(msg.0, Utc::now());
        log::info!(
            "manager: task {} ({}) accepted, image {}",
            record.id,
            record.name,
            record.spec.image
        );
        let write = self.save(record.clone());
        Box::pin(write.into_actor(self).map(move |result, act, ctx| {
            result?;
            log::info!("manager: task {} stored (Pending)", record.id);
            act.tasks.insert(record.id, record.clone());
            ctx.notify(PlacePending);
            Ok(record)
        }))
    }
}

/// Places every Pending task that should run.
struct PlacePending;

impl Message for PlacePending {
    type Result = ();
}

impl Handler<PlacePending> for Manager {
    type Result = ();

    fn handle(&mut self, _msg: PlacePending, ctx: &mut Context<Self>) {
        let mut pending: Vec<&TaskRecord> = self
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Pending && t.desired_state == DesiredState::Running)
            .collect();
        if pending.is_empty() {
            return;
        }
        pending.sort_by_key(|t| t.created_at);
        let batch = PlaceBatch {
            tasks: pending.iter().map(|t| nodes::request(t)).collect(),
            nodes: self.snapshots(),
        };
        // Wait: no other message sees a task half-placed.
        ctx.wait(
            self.scheduler
                .send(batch)
                .into_actor(self)
                .map(|result, act, ctx| {
                    let placed = match result {
                        Ok(placed) => placed,
                        Err(e) => {
                            log::error!("manager: the scheduler is gone: {e}");
                            return;
                        }
                    };
                    for (id, choice) in placed {
                        let Some(record) = act.tasks.get_mut(&id) else {
                            continue;
                        };
                        if record.state != TaskState::Pending {
                            continue;
                        }
                        let now = Utc::now();
                        match choice {
                            Ok(node) => {
                                if let Err(e) = record.place(&node, now) {
                                    log::error!("manager: task {id}: {e}");
                                    continue;
                                }
                                log::info!(
                                    "manager: task {id} placed on {node} (attempt {})",
                                    record.attempt
                                );
                                let record = record.clone();
                                let write = act.save(record);
                                ctx.spawn(write.into_actor(act).map(move |result, act, ctx| {
                                    match result {
                                        Ok(()) => act.dispatch(id, ctx),
                                        Err(e) => log::error!(
                                            "manager: placement of task {id} not stored: {e}"
                                        ),
                                    }
                                }));
                            }
                            Err(no_fit) => {
                                log::info!("manager: task {id} stays Pending: {no_fit}");
                                if record.note_unplaceable(&no_fit.0, now) {
                                    let record = record.clone();
                                    let write = act.save(record);
                                    ctx.spawn(write.into_actor(act).map(move |result, _, _| {
                                        if let Err(e) = result {
                                            log::error!("manager: task {id}: {e}");
                                        }
                                    }));
                                }
                            }
                        }
                    }
                }),
        );
    }
}

/// Reads one task.
pub struct GetTask(pub Uuid);

impl Message for GetTask {
    type Result = Option<TaskRecord>;
}

impl Handler<GetTask> for Manager {
    type Result = Option<TaskRecord>;

    fn handle(&mut self, msg: GetTask, _ctx: &mut Context<Self>) -> Self::Result {
        self.tasks.get(&msg.0).cloned()
    }
}

/// Lists every task, oldest first.
pub struct ListTasks;

impl Message for ListTasks {
    type Result = Vec<TaskRecord>;
}

impl Handler<ListTasks> for Manager {
    type Result = MessageResult<ListTasks>;

    fn handle(&mut self, _msg: ListTasks, _ctx: &mut Context<Self>) -> Self::Result {
        let mut tasks: Vec<TaskRecord> = self.tasks.values().cloned().collect();
        tasks.sort_by_key(|t| (t.created_at, t.id));
        MessageResult(tasks)
    }
}

/// Lists the worker nodes.
pub struct ListNodes;

impl Message for ListNodes {
    type Result = Vec<NodeView>;
}

impl Handler<ListNodes> for Manager {
    type Result = MessageResult<ListNodes>;

    fn handle(&mut self, _msg: ListNodes, _ctx: &mut Context<Self>) -> Self::Result {
        let loads = nodes::loads(self.tasks.values());
        MessageResult(
            self.nodes
                .values()
                .map(|n| NodeView::new(n, self.lives.get(&n.name), loads.get(&n.name)))
                .collect(),
        )
    }
}

/// A user stops a task. The answer is the record once the worker has stopped
/// and removed the container, and whether that happened (`false`: the worker
/// could not be reached; it will be told when it registers).
pub struct StopTask(pub Uuid);

impl Message for StopTask {
    type Result = Result<(TaskRecord, bool), ManagerError>;
}

impl Handler<StopTask> for Manager {
    type Result = ResponseActFuture<Self, Result<(TaskRecord, bool), ManagerError>>;

    fn handle(&mut self, msg: StopTask, _ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let Some(record) = self.tasks.get_mut(&id) else {
            return Box::pin(fut::ready(Err(ManagerError::NotFound(id))));
        };
        let changed = record.request_stop(Utc::now());
        if changed {
            log::info!("manager: task {id} stop requested (state {})", record.state);
        }
        let record = record.clone();
        let write = changed.then(|| self.save(record.clone()));
        // A down worker may accept the connection and never answer: it is
        // told to stop the task when it registers again.
        let worker = match (&record.node, record.state.is_terminal()) {
            (Some(node), false) if !self.is_down(node) => self.client_for(node),
            _ => None,
        };
        let done = worker.is_some() || record.state.is_terminal();
        let work = async move {
            if let Some(write) = write {
                write.await?;
            }
            Ok::<_, ManagerError>(match worker {
                Some(client) => Some(client.stop_on_worker(id).await),
                None => None,
            })
        };
        Box::pin(work.into_actor(self).then(move |result, act, ctx| {
            let (write, done) = match result {
                Err(e) => return Either::Left(fut::ready(Err(e))),
                Ok(None) => (None, done),
                Ok(Some(Ok(status))) => (act.apply_report(&status, ctx).ok().flatten(), true),
                Ok(Some(Err(e))) => {
                    log::warn!("manager: task {id} will be stopped when its worker is back: {e}");
                    (None, false)
                }
            };
            Either::Right(
                async move {
                    if let Some(write) = write {
                        write.await?;
                    }
                    Ok::<_, ManagerError>(())
                }
                .into_actor(act)
                .map(move |result, act, _| {
                    result?;
                    let record = act
                        .tasks
                        .get(&id)
                        .cloned()
                        .ok_or(ManagerError::NotFound(id))?;
                    Ok((record, done))
                }),
            )
        }))
    }
}

/// A worker (re)registers: store the node, reconcile, and tell it what to run
/// and what to stop. A second live worker under a taken name is refused.
pub struct Register(pub Registration);

impl Message for Register {
    type Result = Result<RegistrationReply, ManagerError>;
}

impl Handler<Register> for Manager {
    type Result = ResponseActFuture<Self, Result<RegistrationReply, ManagerError>>;

    fn handle(&mut self, msg: Register, _ctx: &mut Context<Self>) -> Self::Result {
        let reg = msg.0;
        // Another process registered under this name and is heard from:
        // ask it who it is. A restarted worker's old process is gone (or
        // is the new process itself, at the same address).
        let namesake = self.nodes.get(&reg.name).filter(|node| {
            node.instance != reg.instance
                && self
                    .lives
                    .get(&node.name)
                    .is_some_and(|l| l.state == NodeState::Ready)
        });
        let Some(namesake) = namesake.cloned() else {
            return Box::pin(
                fut::ready(()).then(move |(), act: &mut Self, ctx| act.accept(reg, ctx)),
            );
        };
        let probe = Client::with_timeout(&namesake.address, PROBE_TIMEOUT);
        Box::pin(
            async move { probe.stats().await }
                .into_actor(self)
                .then(move |answer, act, ctx| match answer {
                    Ok(stats) if stats.instance == namesake.instance => {
                        log::warn!(
                            "manager: refusing worker {} from {}: a live worker of that name runs at {}",
                            reg.name,
                            reg.address,
                            namesake.address
                        );
                        Box::pin(fut::ready(Err(ManagerError::Conflict(format!(
                            "a live worker named {:?} is registered from {}",
                            reg.name, namesake.address
                        )))))
                    }
                    _ => act.accept(reg, ctx),
                }),
        )
    }
}

impl Manager {
    fn accept(
        &mut self,
        reg: Registration,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<RegistrationReply, ManagerError>> {
        let node = NodeRecord {
            name: reg.name.clone(),
            address: reg.address.clone(),
            instance: reg.instance,
            capacity: reg.capacity.clone(),
            registered_at: Utc::now(),
        };
        log::info!(
            "manager: worker {} registered from {} ({} cpus, {} MB memory, {} MB disk) holding {} tasks",
            node.name,
            node.address,
            node.capacity.cpus,
            node.capacity.memory_mb,
            node.capacity.disk_mb,
            reg.tasks.len()
        );
        let node_write = self.persist(node.clone());
        self.nodes.insert(node.name.clone(), node);
        self.lives
            .entry(reg.name.clone())
            .or_insert_with(|| Life::new(Instant::now()))
            .seen(Instant::now(), Utc::now(), reg.stats.clone());
        let reconciled = reconcile_node(&mut self.tasks, &reg.name, &reg.tasks, Utc::now());
        let task_writes = self.persist_changed(&reconciled);
        ctx.notify(PlacePending);
        let reply = reconciled.reply;
        Box::pin(
            async move {
                node_write.await?;
                task_writes.await?;
                Ok(reply)
            }
            .into_actor(self),
        )
    }
}

/// A worker's heartbeat. The answer tells it to register again when the
/// manager does not hold it as a live node of this process.
pub struct Beat(pub Heartbeat);

impl Message for Beat {
    type Result = HeartbeatReply;
}

impl Handler<Beat> for Manager {
    type Result = MessageResult<Beat>;

    fn handle(&mut self, msg: Beat, _ctx: &mut Context<Self>) -> Self::Result {
        let beat = msg.0;
        let known = self
            .nodes
            .get(&beat.name)
            .is_some_and(|n| n.instance == beat.instance);
        match self.lives.get_mut(&beat.name) {
            Some(life) if known && life.state == NodeState::Ready => {
                life.seen(Instant::now(), Utc::now(), beat.stats);
                MessageResult(HeartbeatReply { reregister: false })
            }
            _ => MessageResult(HeartbeatReply { reregister: true }),
        }
    }
}

/// A worker reports a change of one of its tasks.
pub struct Report(pub TaskStatus);

impl Message for Report {
    type Result = Result<(), ManagerError>;
}

impl Handler<Report> for Manager {
    type Result = ResponseActFuture<Self, Result<(), ManagerError>>;

    fn handle(&mut self, msg: Report, ctx: &mut Context<Self>) -> Self::Result {
        let write = self.apply_report(&msg.0, ctx);
        // A stop that reached the worker before the task did: stop it now.
        if let Some(record) = self.tasks.get(&msg.0.task_id)
            && record.desired_state == DesiredState::Stopped
            && !record.state.is_terminal()
            && let Some(node) = record.node.clone()
        {
            let orders = RegistrationReply {
                assignments: vec![],
                stop: vec![record.id],
            };
            self.execute(&node, orders, ctx);
        }
        Box::pin(
            async move {
                if let Some(write) = write? {
                    write.await?;
                }
                Ok(())
            }
            .into_actor(self),
        )
    }
}

/// After a restart of the manager: ask a known worker what it holds and
/// reconcile, as if it had registered.
struct SyncNode(String);

impl Message for SyncNode {
    type Result = ();
}

impl Handler<SyncNode> for Manager {
    type Result = ();

    fn handle(&mut self, msg: SyncNode, ctx: &mut Context<Self>) {
        let name = msg.0;
        let Some(client) = self.client_for(&name) else {
            return;
        };
        ctx.spawn(
            async move { client.worker_tasks().await }
                .into_actor(self)
                .then(move |result, act, ctx| {
                    let statuses = match result {
                        Ok(statuses) => statuses,
                        Err(e) => {
                            log::info!(
                                "manager: worker {name} not reachable yet ({e}); it reconciles when it registers"
                            );
                            return Either::Left(fut::ready(()));
                        }
                    };
                    let reconciled =
                        reconcile_node(&mut act.tasks, &name, &statuses, Utc::now());
                    log::info!(
                        "manager: synced with {name}: {} tasks changed, {} to resend, {} to stop",
                        reconciled.changed.len(),
                        reconciled.reply.assignments.len(),
                        reconciled.reply.stop.len()
                    );
                    let writes = act.persist_changed(&reconciled);
                    act.execute(&name, reconciled.reply, ctx);
                    ctx.notify(PlacePending);
                    Either::Right(
                        async move {
                            if let Err(e) = writes.await {
                                log::error!("manager: sync not stored: {e}");
                            }
                        }
                        .into_actor(act),
                    )
                }),
        );
    }
}

/// The events kept, and with `follow` a receiver of every later one.
pub struct Events {
    pub follow: bool,
}

impl Message for Events {
    type Result = (Vec<Event>, Option<tokio::sync::mpsc::Receiver<Event>>);
}

impl Handler<Events> for Manager {
    type Result = MessageResult<Events>;

    fn handle(&mut self, msg: Events, _ctx: &mut Context<Self>) -> Self::Result {
        let recent = self.events.recent();
        let follower = msg.follow.then(|| self.events.follow());
        MessageResult((recent, follower))
    }
}

/// Where a task's logs are: the address of the worker holding it.
pub struct LogsAt(pub Uuid);

impl Message for LogsAt {
    type Result = Result<String, ManagerError>;
}

impl Handler<LogsAt> for Manager {
    type Result = Result<String, ManagerError>;

    fn handle(&mut self, msg: LogsAt, _ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let record = self.tasks.get(&id).ok_or(ManagerError::NotFound(id))?;
        let node = record.node.as_deref().ok_or_else(|| {
            ManagerError::Conflict(format!(
                "task {id} is {} on no node: it has no logs",
                record.state
            ))
        })?;
        self.nodes
            .get(node)
            .map(|n| n.address.clone())
            .ok_or_else(|| ManagerError::Conflict(format!("task {id} is on unknown node {node}")))
    }
}
