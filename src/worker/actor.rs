//! The Worker actor: owns the node. It accepts assignments (answering once
//! they are committed to its LMDB), spawns one TaskSupervisor per task,
//! routes engine events to them, keeps its records current, and pushes every
//! state change to the manager (the newest status per task, one request in
//! flight per task, retried until the manager takes it). It heartbeats to
//! the manager with its stats, and registers again when the manager says it
//! had lost it (then the manager's answer stops the tasks that moved away).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;
use uuid::Uuid;

use super::endpoints::{Running, RunningView, running};
use super::events::DockerEvents;
use super::orphans::orphans;
use super::record::WorkerTaskRecord;
use super::restart::Backoff;
use super::stats::{ReadStats, Stats};
use super::supervisor::{
    ContainerDied, EngineBack, Origin, OutOfMemory, Stop, StopError, TaskSupervisor,
};
use crate::client::{Client, ClientError};
use crate::config::{CapacityOverride, WorkerConfig};
use crate::runtime::{ContainerEvent, ContainerEventKind, ContainerNetwork, SharedEngine};
use crate::store::{Put, Store, StoreError};
use crate::wire::{Assignment, EngineStatus, Heartbeat, NodeStats, Registration, TaskStatus};

/// Back-stop for reports and registration the manager did not take.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Between tries to make the container network.
const NETWORK_RETRY: Duration = Duration::from_secs(2);
/// A heartbeat the manager has not answered by then is lost.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a worker cannot go on; `node::run` ends the process with it.
pub type Fatal = tokio::sync::mpsc::UnboundedSender<String>;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("no task with id {0} on this worker")]
    NotFound(Uuid),
    #[error("this worker holds attempt {held} of task {task}, not attempt {asked}")]
    OtherAttempt { task: Uuid, held: u32, asked: u32 },
    #[error(
        "task {0} has no container on this worker now (not started yet, waiting to restart, or ended and removed)"
    )]
    NoContainer(Uuid),
    #[error("the container engine is unreachable")]
    EngineDown,
    #[error("task {0}: {1}")]
    Stop(Uuid, StopError),
    #[error("could not store the change: {0}")]
    Store(#[from] StoreError),
    #[error("the task's supervisor is gone: {0}")]
    Supervisor(#[from] MailboxError),
}

struct Held {
    record: WorkerTaskRecord,
    supervisor: Option<Addr<TaskSupervisor>>,
}

pub struct Worker {
    name: String,
    address: String,
    /// This process; a new one on every start.
    instance: Uuid,
    capacity: CapacityOverride,
    heartbeat: Duration,
    /// Between restarts of a task by its restart policy.
    backoff: Backoff,
    /// Before a container no task wants is removed.
    orphan_grace: Duration,
    /// The host address containers publish their ports on.
    publish_addr: IpAddr,
    /// The network containers join (`[worker] network`), once the engine
    /// has made it; said on `network_tx` for the node's DNS and balancer.
    network_name: String,
    network: Option<ContainerNetwork>,
    network_tx: watch::Sender<Option<ContainerNetwork>>,
    /// The tasks that run here, said for the node's balancer.
    running_tx: watch::Sender<Arc<Running>>,
    /// Making the network is under way.
    network_pending: bool,
    manager: Client,
    /// The manager, with a short timeout for heartbeats.
    beat_client: Client,
    /// Registered and not told otherwise since: heartbeats go out.
    registered: bool,
    registering: bool,
    beat_in_flight: bool,
    /// Said once when the manager stops answering heartbeats.
    beat_failing: bool,
    /// The manager refuses this worker's certificate (`cube node rm`):
    /// its tasks are stopped and it no longer registers.
    removed: bool,
    /// This worker's certificate and key, forgotten when it is removed
    /// (so that a restart joins again, with a join token).
    certificate_files: Vec<std::path::PathBuf>,
    /// Where the managers' list it learns is kept (none: not kept).
    managers_file: Option<std::path::PathBuf>,
    fatal: Fatal,
    store: Addr<Store>,
    stats: Addr<Stats>,
    engine: SharedEngine,
    /// The engine connection is up (DockerEvents said so).
    engine_up: bool,
    engine_status: EngineStatus,
    tasks: HashMap<Uuid, Held>,
    /// The newest attempt of a task whose assignment is being written.
    writing: HashMap<Uuid, u32>,
    /// Supervisors of superseded attempts, kept until their stop is done
    /// (it may wait for the engine).
    retired: HashMap<(Uuid, u32), Addr<TaskSupervisor>>,
    /// Newest status per task not yet taken by the manager.
    outbox: HashMap<Uuid, TaskStatus>,
    in_flight: HashSet<Uuid>,
    report_retry: Duration,
    retry_scheduled: bool,
    register_retry: Duration,
}

impl Worker {
    /// `manager` and `beat` are clients of the manager (TLS, presenting
    /// this worker's certificate); `beat` gives up within a heartbeat
    /// timeout ([`HEARTBEAT_TIMEOUT`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &WorkerConfig,
        manager: Client,
        beat: Client,
        store: Addr<Store>,
        stats: Addr<Stats>,
        records: Vec<WorkerTaskRecord>,
        fatal: Fatal,
        engine: SharedEngine,
    ) -> Self {
        let tasks = records
            .into_iter()
            .map(|record| {
                let held = Held {
                    record,
                    supervisor: None,
                };
                (held.record.assignment.task_id, held)
            })
            .collect();
        Worker {
            name: config.name.clone(),
            address: config.advertise_url(),
            instance: Uuid::new_v4(),
            capacity: config.capacity.clone(),
            heartbeat: config.heartbeat(),
            backoff: config.restart_backoff.backoff(),
            orphan_grace: Duration::from_millis(config.orphan_grace_ms),
            publish_addr: config.publish_addr,
            network_name: config.network.clone(),
            network: None,
            network_tx: watch::Sender::new(None),
            running_tx: watch::Sender::new(Arc::default()),
            network_pending: false,
            manager,
            beat_client: beat,
            registered: false,
            registering: false,
            beat_in_flight: false,
            beat_failing: false,
            removed: false,
            certificate_files: Vec::new(),
            managers_file: None,
            fatal,
            store,
            stats,
            engine,
            engine_up: false,
            engine_status: EngineStatus {
                up: false,
                version: None,
                error: Some("not connected yet".into()),
            },
            tasks,
            writing: HashMap::new(),
            retired: HashMap::new(),
            outbox: HashMap::new(),
            in_flight: HashSet::new(),
            report_retry: RETRY_FIRST,
            retry_scheduled: false,
            register_retry: RETRY_FIRST,
        }
    }

    /// Where the container network will be said once the engine has made
    /// it (see `runtime::ContainerNetwork`).
    pub fn network_view(&self) -> watch::Receiver<Option<ContainerNetwork>> {
        self.network_tx.subscribe()
    }

    /// Where the tasks that run here are said, as their statuses change.
    pub fn running_view(&self) -> RunningView {
        self.running_tx.subscribe()
    }

    /// Says the tasks that run here now, when that changed.
    fn publish_running(&self) {
        let now = running(self.tasks.values().map(|held| &held.record.status));
        self.running_tx.send_if_modified(|said| {
            let changed = **said != now;
            if changed {
                *said = Arc::new(now);
            }
            changed
        });
    }

    /// The files of this worker's certificate, deleted if the cluster
    /// removes the worker.
    pub fn with_certificate_files(mut self, files: Vec<std::path::PathBuf>) -> Self {
        self.certificate_files = files;
        self
    }

    /// Keeps the managers' list it learns in `path` (read at the next
    /// start: `worker::managers`).
    pub fn with_managers_file(mut self, path: std::path::PathBuf) -> Self {
        self.managers_file = Some(path);
        self
    }

    /// Takes the managers' list a manager told (the managers of a cluster
    /// of several), and keeps it when it changed.
    fn learn_managers(&mut self, urls: &[String], ctx: &mut Context<Self>) {
        if !self.manager.learn(urls) {
            return;
        }
        log::info!("worker {}: the managers are {}", self.name, urls.join(", "));
        let Some(path) = self.managers_file.clone() else {
            return;
        };
        let (urls, name) = (urls.to_vec(), self.name.clone());
        // Off the arbiter: the write waits on the disk.
        let write = tokio::task::spawn_blocking(move || super::managers::save(&path, &urls));
        ctx.spawn(
            async move {
                match write.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::warn!("worker {name}: cannot keep the managers' list: {e}"),
                    Err(e) => log::warn!("worker {name}: the managers' list writer failed: {e}"),
                }
            }
            .into_actor(self),
        );
    }

    /// The engine, while the connection to it is up.
    fn connected(&self) -> Option<SharedEngine> {
        self.engine_up.then(|| self.engine.clone())
    }

    fn supervise(&mut self, id: Uuid, origin: Origin, ctx: &mut Context<Self>) {
        let engine = self.connected();
        let Some(held) = self.tasks.get_mut(&id) else {
            return;
        };
        let supervisor = TaskSupervisor::new(
            self.name.clone(),
            held.record.assignment.clone(),
            held.record.status.clone(),
            ctx.address().recipient(),
            engine,
            origin,
            self.backoff,
        )
        .publishing_on(self.publish_addr)
        .on_network(self.network.clone());
        held.supervisor = Some(supervisor.start());
    }

    /// Queues a status for the manager and sends it unless one is in flight.
    fn report(&mut self, status: TaskStatus, ctx: &mut Context<Self>) {
        let id = status.task_id;
        self.outbox.insert(id, status);
        self.flush(id, ctx);
    }

    fn flush(&mut self, id: Uuid, ctx: &mut Context<Self>) {
        if self.in_flight.contains(&id) {
            return;
        }
        let Some(status) = self.outbox.remove(&id) else {
            return;
        };
        self.in_flight.insert(id);
        let manager = self.manager.clone();
        let send = async move {
            let result = manager.report(&status).await;
            (status, result)
        };
        ctx.spawn(
            send.into_actor(self)
                .map(move |(status, result), act, ctx| {
                    act.in_flight.remove(&id);
                    match result {
                        Ok(reply) => {
                            act.report_retry = RETRY_FIRST;
                            if reply.stop {
                                act.stop_disowned(&status, ctx);
                            }
                            act.flush(id, ctx);
                        }
                        Err(e) if e.is_unreachable() => {
                            // Keep it unless a newer status replaced it meanwhile.
                            act.outbox.entry(id).or_insert(status);
                            act.schedule_retry(&e.to_string(), ctx);
                        }
                        Err(e) => {
                            log::warn!("worker: manager refused the report of task {id}: {e}");
                            act.flush(id, ctx);
                        }
                    }
                }),
        );
    }

    fn schedule_retry(&mut self, why: &str, ctx: &mut Context<Self>) {
        if self.retry_scheduled {
            return;
        }
        self.retry_scheduled = true;
        log::warn!(
            "worker: {} reports wait for the manager ({why}); retrying in {:?}",
            self.outbox.len(),
            self.report_retry
        );
        ctx.run_later(self.report_retry, |act, ctx| {
            act.retry_scheduled = false;
            let ids: Vec<Uuid> = act.outbox.keys().copied().collect();
            for id in ids {
                act.flush(id, ctx);
            }
        });
        self.report_retry = (self.report_retry * 2).min(RETRY_MAX);
    }

    fn register(&mut self, ctx: &mut Context<Self>) {
        if self.registering || self.removed {
            return;
        }
        self.registering = true;
        self.registered = false;
        let statuses: Vec<TaskStatus> = self
            .tasks
            .values()
            .map(|h| h.record.status.clone())
            .collect();
        let manager = self.manager.clone();
        let stats = self.stats.clone();
        let name = self.name.clone();
        let address = self.address.clone();
        let instance = self.instance;
        let capacity = self.capacity.clone();
        let work = async move {
            let machine = stats.send(ReadStats).await.unwrap_or_default();
            let registration = Registration {
                name,
                instance,
                address,
                capacity: capacity.apply(&machine.capacity),
                tasks: statuses,
                stats: machine,
            };
            manager.register(&registration).await
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| match result {
            Ok(reply) => {
                act.registering = false;
                act.registered = true;
                log::info!(
                    "worker: registered with the manager at {} ({} assignments to hold, {} tasks to stop)",
                    act.manager.base(),
                    reply.assignments.len(),
                    reply.stop.len()
                );
                act.register_retry = RETRY_FIRST;
                for assignment in reply.assignments {
                    ctx.notify(Assign(assignment));
                }
                for id in reply.stop {
                    ctx.notify(StopTask(id));
                }
                let ids: Vec<Uuid> = act.outbox.keys().copied().collect();
                for id in ids {
                    act.flush(id, ctx);
                }
            }
            Err(ClientError::Api { status: 409, error, .. }) => {
                let why = format!(
                    "worker {}: the manager refuses it: {} (two live workers cannot share a name)",
                    act.name, error.error
                );
                log::error!("{why}");
                let _ = act.fatal.send(why);
            }
            Err(ClientError::Api {
                status: 403, error, ..
            }) => {
                act.registering = false;
                act.removed_from_cluster(&error.error, ctx);
            }
            Err(e) => {
                act.registering = false;
                log::warn!(
                    "worker: cannot register with the manager ({e}); retrying in {:?}",
                    act.register_retry
                );
                ctx.run_later(act.register_retry, |act, ctx| {
                    if !act.registered {
                        act.register(ctx)
                    }
                });
                act.register_retry = (act.register_retry * 2).min(RETRY_MAX);
            }
        }));
    }
}

impl Worker {
    /// Forgets the held attempt of a task, stopping and removing its
    /// container if it still runs (its supervisor finishes the stop; its
    /// reports are ignored from now on, being of another attempt).
    fn retire(&mut self, id: Uuid, ctx: &mut Context<Self>) -> Option<WorkerTaskRecord> {
        let held = self.tasks.remove(&id)?;
        self.publish_running();
        self.outbox.remove(&id);
        if let Some(supervisor) = held.supervisor {
            let attempt = held.record.status.attempt;
            log::info!(
                "worker {}: task {id} attempt {attempt} is superseded; stopping it",
                self.name
            );
            self.retired.insert((id, attempt), supervisor.clone());
            let name = self.name.clone();
            ctx.spawn(
                async move {
                    match supervisor.send(Stop).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => log::warn!(
                            "worker {name}: task {id} attempt {attempt} not stopped yet: {e}"
                        ),
                        Err(e) => log::warn!(
                            "worker {name}: task {id} attempt {attempt}: supervisor gone: {e}"
                        ),
                    }
                }
                .into_actor(self),
            );
        }
        Some(held.record)
    }

    /// The manager answered a report of `status` with `stop`: the attempt
    /// runs elsewhere now (this worker was cut off meanwhile). If this
    /// worker still holds that attempt, it stops it, removes its container
    /// and forgets it. Its record is kept with the stop requested, so a
    /// restart of the worker finishes the stop instead of reviving it.
    fn stop_disowned(&mut self, status: &TaskStatus, ctx: &mut Context<Self>) {
        let id = status.task_id;
        let holds = self
            .tasks
            .get(&id)
            .is_some_and(|h| h.record.status.attempt == status.attempt && !h.record.is_done());
        if !holds {
            return;
        }
        log::warn!(
            "worker {}: the manager says task {id} attempt {} is no longer this worker's; stopping it",
            self.name,
            status.attempt
        );
        self.give_up(id, ctx);
    }

    /// Stops a held task for good: retired, and its record kept with the
    /// stop requested, so that a restart finishes the stop instead of
    /// reviving it.
    fn give_up(&mut self, id: Uuid, ctx: &mut Context<Self>) {
        let Some(mut record) = self.retire(id, ctx) else {
            return;
        };
        record.stop_requested = true;
        record.version += 1;
        let write = self.store.send(Put(record));
        ctx.spawn(
            async move {
                if let Err(e) = async { write.await? }.await {
                    log::error!("worker: stop of task {id} not stored: {e}");
                }
            }
            .into_actor(self),
        );
    }

    /// The manager refuses this worker's certificate: an admin removed it
    /// from the cluster, and its tasks run elsewhere now. It stops them all,
    /// stops registering and heartbeating, and forgets its certificate, so
    /// that a restart joins the cluster again (given a join token).
    fn removed_from_cluster(&mut self, why: &str, ctx: &mut Context<Self>) {
        if self.removed {
            return;
        }
        self.removed = true;
        self.registered = false;
        log::error!(
            "worker {}: the manager refuses this worker: {why}; stopping its {} tasks. Restart it with a join token to join again.",
            self.name,
            self.tasks.len()
        );
        self.outbox.clear();
        let ids: Vec<Uuid> = self.tasks.keys().copied().collect();
        for id in ids {
            self.give_up(id, ctx);
        }
        for file in &self.certificate_files {
            if let Err(e) = std::fs::remove_file(file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                log::warn!(
                    "worker {}: cannot remove {}: {e}",
                    self.name,
                    file.display()
                );
            }
        }
    }

    /// Tells the manager this worker is alive, with its latest stats; one
    /// heartbeat in flight at a time.
    fn beat(&mut self, ctx: &mut Context<Self>) {
        if !self.registered || self.beat_in_flight {
            return;
        }
        self.beat_in_flight = true;
        let stats = self.stats.clone();
        let client = self.beat_client.clone();
        let name = self.name.clone();
        let instance = self.instance;
        let work = async move {
            let stats = stats.send(ReadStats).await.unwrap_or_default();
            client
                .heartbeat(&Heartbeat {
                    name,
                    instance,
                    stats,
                })
                .await
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.beat_in_flight = false;
            match result {
                Ok(reply) => {
                    if act.beat_failing {
                        log::info!("worker {}: the manager answers heartbeats again", act.name);
                        act.beat_failing = false;
                    }
                    act.learn_managers(&reply.managers, ctx);
                    if reply.reregister && act.registered {
                        log::warn!(
                            "worker {}: the manager had lost this worker (marked down, or restarted without it); registering again",
                            act.name
                        );
                        act.register(ctx);
                    }
                }
                Err(ClientError::Api {
                    status: 403, error, ..
                }) => act.removed_from_cluster(&error.error, ctx),
                Err(e) => {
                    if !act.beat_failing {
                        log::warn!("worker {}: heartbeat not taken: {e}", act.name);
                        act.beat_failing = true;
                    }
                }
            }
        }));
    }
}

impl Worker {
    /// Whether a held task (or a superseded attempt still being stopped)
    /// claims the container of `task`'s `attempt`.
    fn wants(&self, task: Uuid, attempt: u32) -> bool {
        let held = self
            .tasks
            .get(&task)
            .is_some_and(|h| h.record.assignment.attempt == attempt && !h.record.is_done());
        held || self.retired.contains_key(&(task, attempt))
    }

    /// Looks for containers of this node that no task wants; those still
    /// unwanted after the grace period are removed.
    fn sweep_orphans(&mut self, ctx: &mut Context<Self>) {
        let Some(engine) = self.connected() else {
            return;
        };
        let node = self.name.clone();
        let list = async move { engine.list(&node).await };
        ctx.spawn(list.into_actor(self).map(|found, act, ctx| {
            let found = match found {
                Ok(found) => found,
                Err(e) => {
                    log::warn!("worker: cannot list this node's containers: {e}");
                    return;
                }
            };
            let suspects = orphans(&found, |task, attempt| act.wants(task, attempt));
            if suspects.is_empty() {
                return;
            }
            log::info!(
                "worker {}: {} containers no task wants; removing them in {:?} unless claimed",
                act.name,
                suspects.len(),
                act.orphan_grace
            );
            ctx.run_later(act.orphan_grace, move |act, ctx| {
                act.remove_orphans(suspects, ctx)
            });
        }));
    }

    fn remove_orphans(&mut self, suspects: Vec<String>, ctx: &mut Context<Self>) {
        let Some(engine) = self.connected() else {
            return;
        };
        let node = self.name.clone();
        let list = async move { engine.list(&node).await };
        ctx.spawn(list.into_actor(self).map(move |found, act, ctx| {
            let Ok(found) = found else { return };
            let still = orphans(&found, |task, attempt| act.wants(task, attempt));
            let Some(engine) = act.connected() else {
                return;
            };
            for id in still.into_iter().filter(|id| suspects.contains(id)) {
                log::warn!(
                    "worker {}: removing container {} that no task wants",
                    act.name,
                    &id[..id.len().min(12)]
                );
                let engine = engine.clone();
                ctx.spawn(
                    async move {
                        if let Err(e) = engine.remove(&id).await {
                            log::warn!("worker: could not remove orphan {id}: {e}");
                        }
                    }
                    .into_actor(act),
                );
            }
        }));
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        DockerEvents::new(
            self.name.clone(),
            self.network_name.clone(),
            ctx.address(),
            self.engine.clone(),
        )
        .start();
        let open: Vec<Uuid> = self
            .tasks
            .iter()
            .filter(|(_, h)| !h.record.is_done())
            .map(|(id, _)| *id)
            .collect();
        log::info!(
            "worker {}: started with {} tasks from the store, {} to re-adopt",
            self.name,
            self.tasks.len(),
            open.len()
        );
        for id in open {
            let stop_requested = self.tasks.get(&id).is_some_and(|h| h.record.stop_requested);
            self.supervise(id, Origin::Stored { stop_requested }, ctx);
        }
        // As stored, until their supervisors have looked at them.
        self.publish_running();
        self.register(ctx);
        ctx.run_interval(self.heartbeat, |act, ctx| act.beat(ctx));
    }
}

/// The manager assigns a task. Answers once the assignment is committed.
pub struct Assign(pub Assignment);

impl Message for Assign {
    type Result = Result<TaskStatus, WorkerError>;
}

impl Handler<Assign> for Worker {
    type Result = ResponseActFuture<Self, Result<TaskStatus, WorkerError>>;

    fn handle(&mut self, msg: Assign, ctx: &mut Context<Self>) -> Self::Result {
        let assignment = msg.0;
        let id = assignment.task_id;
        if let Some(&writing) = self.writing.get(&id)
            && writing > assignment.attempt
        {
            return Box::pin(fut::ready(Err(WorkerError::OtherAttempt {
                task: id,
                held: writing,
                asked: assignment.attempt,
            })));
        }
        if let Some(held) = self.tasks.get(&id) {
            let status = held.record.status.clone();
            if status.attempt > assignment.attempt {
                return Box::pin(fut::ready(Err(WorkerError::OtherAttempt {
                    task: id,
                    held: status.attempt,
                    asked: assignment.attempt,
                })));
            }
            if status.attempt == assignment.attempt {
                return Box::pin(fut::ready(Ok(status)));
            }
            // The task comes back to this node as a newer attempt: the old
            // one (moved away while this worker was out of reach) goes.
            self.retire(id, ctx);
        }
        log::info!(
            "worker {}: task {id} attempt {} assigned ({})",
            self.name,
            assignment.attempt,
            assignment.spec.image
        );
        let attempt = assignment.attempt;
        let record = WorkerTaskRecord::new(assignment, &self.name);
        // A newer attempt's record supersedes any older one in the store
        // (`WorkerTaskRecord::supersedes`), so this write replaces what is
        // stored; no newer attempt is stored or being written (checked above).
        self.writing.insert(id, attempt);
        let write = self.store.send(Put(record.clone()));
        Box::pin(
            async move { write.await? }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    if act.writing.get(&id) == Some(&attempt) {
                        act.writing.remove(&id);
                    }
                    result?;
                    match act.tasks.get(&id).map(|h| h.record.status.clone()) {
                        // A duplicate of this assignment won the race.
                        Some(held) if held.attempt == attempt => Ok(held),
                        // A newer attempt did: the store kept it, so this
                        // one was not written and must not be acknowledged.
                        Some(held) if held.attempt > attempt => Err(WorkerError::OtherAttempt {
                            task: id,
                            held: held.attempt,
                            asked: attempt,
                        }),
                        _ => {
                            let status = record.status.clone();
                            act.retire(id, ctx);
                            act.tasks.insert(
                                id,
                                Held {
                                    record,
                                    supervisor: None,
                                },
                            );
                            act.supervise(id, Origin::Assigned, ctx);
                            act.publish_running();
                            Ok(status)
                        }
                    }
                }),
        )
    }
}

/// The manager asks to stop a task: the answer is its final status, once
/// the container is stopped and removed (or known absent); an error when
/// that cannot be done in time (the stop finishes later, and is reported).
pub struct StopTask(pub Uuid);

impl Message for StopTask {
    type Result = Result<TaskStatus, WorkerError>;
}

impl Handler<StopTask> for Worker {
    type Result = ResponseActFuture<Self, Result<TaskStatus, WorkerError>>;

    fn handle(&mut self, msg: StopTask, _ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let Some(held) = self.tasks.get_mut(&id) else {
            return Box::pin(fut::ready(Err(WorkerError::NotFound(id))));
        };
        let Some(supervisor) = held.supervisor.clone() else {
            return Box::pin(fut::ready(Ok(held.record.status.clone())));
        };
        log::info!("worker {}: stop of task {id} requested", self.name);
        let write = (!held.record.stop_requested).then(|| {
            held.record.stop_requested = true;
            held.record.version += 1;
            held.record.clone()
        });
        let write = write.map(|r| self.store.send(Put(r)));
        Box::pin(
            async move {
                if let Some(write) = write {
                    write.await??;
                }
                supervisor
                    .send(Stop)
                    .await?
                    .map_err(|e| WorkerError::Stop(id, e))
            }
            .into_actor(self),
        )
    }
}

/// A supervisor's task changed.
pub struct StatusChanged(pub TaskStatus);

impl Message for StatusChanged {
    type Result = ();
}

impl Handler<StatusChanged> for Worker {
    type Result = ();

    fn handle(&mut self, msg: StatusChanged, ctx: &mut Context<Self>) {
        let status = msg.0;
        let id = status.task_id;
        if status.state.is_terminal() {
            // A superseded attempt is done: its supervisor may go.
            self.retired.remove(&(id, status.attempt));
        }
        let Some(held) = self.tasks.get_mut(&id) else {
            return;
        };
        if held.record.status.attempt != status.attempt {
            return;
        }
        held.record.status = status.clone();
        held.record.version += 1;
        if held.record.is_done() {
            // The supervisor has finished; dropping its address stops it.
            held.supervisor = None;
        }
        let write = self.store.send(Put(held.record.clone()));
        // Before the report: this node's balancer leaves a container that
        // is gone before the manager has heard of it.
        self.publish_running();
        ctx.spawn(
            async move {
                if let Err(e) = async { write.await? }.await {
                    log::error!("worker: status of task {id} not stored: {e}");
                }
            }
            .into_actor(self),
        );
        self.report(status, ctx);
    }
}

/// Every status this worker holds (worker `GET /tasks`).
pub struct ListStatuses;

impl Message for ListStatuses {
    type Result = Vec<TaskStatus>;
}

impl Handler<ListStatuses> for Worker {
    type Result = MessageResult<ListStatuses>;

    fn handle(&mut self, _msg: ListStatuses, _ctx: &mut Context<Self>) -> Self::Result {
        let mut statuses: Vec<TaskStatus> = self
            .tasks
            .values()
            .map(|h| h.record.status.clone())
            .collect();
        statuses.sort_by_key(|s| (s.at, s.task_id));
        MessageResult(statuses)
    }
}

/// The worker's view of itself (worker `GET /stats`).
pub struct GetNodeStats;

impl Message for GetNodeStats {
    type Result = Result<NodeStats, MailboxError>;
}

impl Handler<GetNodeStats> for Worker {
    type Result = ResponseFuture<Result<NodeStats, MailboxError>>;

    fn handle(&mut self, _msg: GetNodeStats, _ctx: &mut Context<Self>) -> Self::Result {
        let read = self.stats.send(ReadStats);
        let node = self.name.clone();
        let engine = self.engine_status.clone();
        let active_tasks = self.tasks.values().filter(|h| !h.record.is_done()).count();
        let instance = self.instance;
        let capacity = self.capacity.clone();
        Box::pin(async move {
            let machine = read.await?;
            Ok(NodeStats {
                node,
                instance,
                capacity: capacity.apply(&machine.capacity),
                machine,
                engine,
                active_tasks,
            })
        })
    }
}

/// The engine connection is up (first time, or again).
pub struct EngineUp {
    pub version: String,
}

impl Message for EngineUp {
    type Result = ();
}

impl Handler<EngineUp> for Worker {
    type Result = ();

    fn handle(&mut self, msg: EngineUp, ctx: &mut Context<Self>) {
        self.engine_status = EngineStatus {
            up: true,
            version: Some(msg.version),
            error: None,
        };
        // Made again if it went away with the engine (or was pruned).
        if !self.network_pending {
            self.make_network(ctx);
        }
    }
}

impl Worker {
    /// Has the engine make (or find) the container network, then treats
    /// the engine as up; tries again while it fails, saying why in the
    /// engine status.
    fn make_network(&mut self, ctx: &mut Context<Self>) {
        self.network_pending = true;
        let (engine, name, node) = (
            self.engine.clone(),
            self.network_name.clone(),
            self.name.clone(),
        );
        let work = async move { engine.network(&name, &node).await };
        ctx.spawn(work.into_actor(self).map(|made, act, ctx| {
            // The engine went away meanwhile: the next EngineUp tries again.
            if !act.engine_status.up {
                act.network_pending = false;
                return;
            }
            match made {
                Ok(network) => {
                    act.network_pending = false;
                    if act.network.as_ref() != Some(&network) {
                        log::info!(
                            "worker {}: containers join network {} (gateway {})",
                            act.name,
                            network.name,
                            network.gateway
                        );
                        act.network = Some(network.clone());
                        act.network_tx.send_replace(Some(network));
                    }
                    act.engine_status.error = None;
                    act.engine_ready(ctx);
                }
                Err(e) => {
                    let why = format!(
                        "cannot make the container network {}: {e}",
                        act.network_name
                    );
                    if act.engine_status.error.as_deref() != Some(why.as_str()) {
                        log::error!("worker {}: {why}; trying again", act.name);
                    }
                    act.engine_status.error = Some(why);
                    ctx.run_later(NETWORK_RETRY, |act, ctx| act.make_network(ctx));
                }
            }
        }));
    }

    /// The engine is up and the network made: supervisors may use it.
    fn engine_ready(&mut self, ctx: &mut Context<Self>) {
        self.engine_up = true;
        let current = self
            .tasks
            .iter()
            .filter_map(|(id, held)| Some((*id, held.supervisor.as_ref()?)));
        let retired = self.retired.iter().map(|((id, _), s)| (*id, s));
        for (id, supervisor) in current.chain(retired) {
            if supervisor
                .try_send(EngineBack(self.engine.clone(), self.network.clone()))
                .is_err()
            {
                log::error!("worker: supervisor of task {id} is not taking messages");
            }
        }
        self.sweep_orphans(ctx);
    }
}

/// The engine removed the containers' network (a prune, or by hand); the
/// engine's events say only that one (`Engine::network_gone`).
pub struct NetworkGone;

impl Message for NetworkGone {
    type Result = ();
}

impl Handler<NetworkGone> for Worker {
    type Result = ();

    /// The containers' network is made again at once; supervisors and the
    /// node's DNS and balancer follow its new gateway.
    fn handle(&mut self, _msg: NetworkGone, ctx: &mut Context<Self>) {
        log::warn!(
            "worker {}: network {} was removed; making it again",
            self.name,
            self.network_name
        );
        // New tasks wait for the network made again (their supervisors get
        // it with the engine, from `engine_ready`), not start on the old one.
        self.engine_up = false;
        if self.engine_status.up && !self.network_pending {
            self.make_network(ctx);
        }
    }
}

/// The engine cannot be reached.
pub struct EngineDown {
    pub error: String,
}

impl Message for EngineDown {
    type Result = ();
}

impl Handler<EngineDown> for Worker {
    type Result = ();

    fn handle(&mut self, msg: EngineDown, _ctx: &mut Context<Self>) {
        self.engine_status = EngineStatus {
            up: false,
            version: None,
            error: Some(msg.error),
        };
        self.engine_up = false;
    }
}

/// An engine event about one of this node's containers.
pub struct EngineEvent(pub ContainerEvent);

impl Message for EngineEvent {
    type Result = ();
}

impl Handler<EngineEvent> for Worker {
    type Result = ();

    fn handle(&mut self, msg: EngineEvent, _ctx: &mut Context<Self>) {
        let event = msg.0;
        let current = self
            .tasks
            .get(&event.task_id)
            .filter(|held| held.record.assignment.attempt == event.attempt)
            .and_then(|held| held.supervisor.as_ref());
        let Some(supervisor) =
            current.or_else(|| self.retired.get(&(event.task_id, event.attempt)))
        else {
            return;
        };
        let refused = match event.kind {
            ContainerEventKind::Died { exit_code } => supervisor
                .try_send(ContainerDied {
                    container_id: event.container_id,
                    exit_code,
                })
                .is_err(),
            ContainerEventKind::OutOfMemory => supervisor
                .try_send(OutOfMemory {
                    container_id: event.container_id,
                })
                .is_err(),
            ContainerEventKind::Started | ContainerEventKind::Destroyed => return,
        };
        if refused {
            log::error!(
                "worker: supervisor of task {} is not taking messages",
                event.task_id
            );
        }
    }
}

/// Where a task's logs are: the engine connection and its container.
pub struct LogSource(pub Uuid);

impl Message for LogSource {
    type Result = Result<(SharedEngine, String), WorkerError>;
}

impl Handler<LogSource> for Worker {
    type Result = Result<(SharedEngine, String), WorkerError>;

    fn handle(&mut self, msg: LogSource, _ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let held = self.tasks.get(&id).ok_or(WorkerError::NotFound(id))?;
        let container = held
            .record
            .status
            .container_id
            .clone()
            .filter(|_| !held.record.is_done())
            .ok_or(WorkerError::NoContainer(id))?;
        let engine = self.connected().ok_or(WorkerError::EngineDown)?;
        Ok((engine, container))
    }
}
