//! The Manager actor: a thin shell around the core state machine.
//!
//! Every message that changes the cluster becomes a `core::Command` and
//! joins the queue. The queue is applied in batches: every command that
//! arrived while the previous change was being replicated is applied (in
//! arrival order) to the `ClusterState`, their staged records are proposed
//! to the managers' Raft as one `Change`, and only once a majority has it
//! and it is applied to this manager's Store are their senders answered,
//! their events published and their effects (assignments, stops) carried
//! out. While a change is in flight the actor takes no message
//! (`ctx.wait`), so every read sees committed state only; a change that
//! fails rolls the state back and every command of the batch gets the
//! error.
//!
//! Only the leader takes commands. The others follow the log: the changes
//! their state machine applies are applied to their state too
//! (`replica::follow`), so they answer reads. When this manager starts or
//! stops leading, its state is rebuilt from its Store (`settle`); a new
//! leader gives every node a fresh liveness period and catches up with the
//! workers as a restarted manager does.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use uuid::Uuid;

mod leadership;

pub use leadership::Settled;
use leadership::leadership;

use super::events::{Event, EventLog};
use std::sync::Arc;

use tokio::sync::watch;

use super::client_file::manager_urls;
use super::consensus::Consensus;
use super::replica::{Altered, Shape, change_of};
use crate::client::Client;
use crate::core::apply::namesake;
use crate::core::join_tokens::JoinTokenTable;
use crate::core::nodes::{Generations, NodeRecord, NodeView};
use crate::core::services::refresh;
use crate::core::tokens::{TokenTable, TokenView};
use crate::core::{
    ClusterState, Command, CoreError, Effect, Now, Reply, Staged, TaskPage, TaskQuery, apply,
};
use crate::raft::{NodeId, Raft, Replicated};
use crate::security::tls::{Expect, NodeTls};
use crate::service::{EndpointTable, ServiceView};
use crate::store::{CheckRoom, Store, StoreError};
use crate::task::{DesiredState, TaskRecord, TaskSpec, TaskState};
use crate::wire::{
    Heartbeat, HeartbeatReply, Registration, RegistrationReply, ReportReply, TaskStatus,
};

/// How long the manager waits for a worker that may be a live namesake of
/// one registering.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The wait before an assignment that could not be delivered is sent again.
const DISPATCH_RETRY: Duration = Duration::from_secs(1);

/// How long a change may wait for a majority of the managers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a new leader may take to confirm it leads, and the wait
/// before it tries again.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);
const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// How long cutting back the log may wait for its snapshot.
const COMPACT_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("could not store the change: {reason}")]
    NotStored { full: bool, reason: String },
    #[error("the manager is not available: {0}")]
    Gone(String),
    #[error("this manager does not lead the cluster{}", leader_hint(.leader))]
    NotLeader { leader: Option<String> },
    #[error(
        "the change was not confirmed by a majority of the managers ({0}); it may still take effect"
    )]
    Unconfirmed(String),
}

fn leader_hint(leader: &Option<String>) -> String {
    match leader {
        Some(url) => format!(": the leader is at {url}"),
        None => ": no leader is known now".to_string(),
    }
}

/// Why a batch's change was not applied.
#[derive(Debug)]
enum WriteError {
    /// Refused before it was proposed (the store is full) or not encoded.
    Store(StoreError),
    /// This manager lost the lead, or no majority answered in time: the
    /// change may still be committed.
    Unconfirmed(String),
}

impl WriteError {
    fn answer(&self) -> ManagerError {
        match self {
            WriteError::Store(e) => ManagerError::not_stored(e),
            WriteError::Unconfirmed(why) => ManagerError::Unconfirmed(why.clone()),
        }
    }
}

impl ManagerError {
    fn not_stored(e: &StoreError) -> Self {
        ManagerError::NotStored {
            full: matches!(e, StoreError::Full { .. }),
            reason: e.to_string(),
        }
    }
}

type Answer = Result<Reply, ManagerError>;

/// A command's outcome, and who waits for it.
type Outcome = (
    Option<oneshot::Sender<Answer>>,
    Result<(Reply, Vec<Effect>), CoreError>,
);

/// A command waiting for the next batch, and who waits for its answer.
struct Queued {
    command: Command,
    answer: Option<oneshot::Sender<Answer>>,
}

/// What the Manager publishes for the routes (watch channels: the routes
/// read the newest snapshot, the Manager alone writes it).
pub struct Published {
    /// Users' tokens.
    pub tokens: watch::Sender<Arc<TokenTable>>,
    /// The certificate generations of removed names.
    pub generations: watch::Sender<Arc<Generations>>,
    /// Every service's endpoints.
    pub endpoints: watch::Sender<Arc<EndpointTable>>,
    /// The rotated join tokens.
    pub join_tokens: watch::Sender<Arc<JoinTokenTable>>,
    /// The leader's URL while another manager leads (where writes go).
    pub leader: watch::Sender<Option<String>>,
}

pub struct Manager {
    store: Addr<Store>,
    raft: Raft,
    /// This manager's id among the managers.
    id: NodeId,
    /// How its state is built (after a change of leader).
    shape: Shape,
    /// The changes its state machine applies, until `started` takes them.
    feed: Option<tokio::sync::mpsc::UnboundedReceiver<Replicated>>,
    /// It leads and its state was rebuilt for it: it takes commands.
    leading: bool,
    /// Who leads as Raft last said, and where.
    leader: Option<(NodeId, Option<String>)>,
    /// The index of the last log entry `state` holds.
    applied: u64,
    /// A rebuild is in flight.
    settling: bool,
    /// The next try to take up its role, if one is planned.
    retry: Option<SpawnHandle>,
    /// How long after a majority last answered it may still act as leader.
    lease: Duration,
    /// The log is being cut back.
    compacting: bool,
    /// Who waits for the first role taken up.
    settled: Vec<oneshot::Sender<()>>,
    state: ClusterState,
    /// What users watch: task state changes, restarts, health.
    events: EventLog,
    queue: Vec<Queued>,
    flush_scheduled: bool,
    /// One HTTP client per worker (address and name), reused.
    clients: HashMap<(String, String), Client>,
    /// The manager's certificate: it calls workers with it.
    tls: NodeTls,
    /// What the routes check requests against, renewed after every
    /// committed change of tokens or nodes.
    published: Published,
    /// The batch in flight is a relief from a full store.
    relieving: bool,
}

impl Manager {
    /// `state` was built from the Store's records as applied up to log
    /// index `applied`.
    pub fn new(
        store: Addr<Store>,
        consensus: Consensus,
        shape: Shape,
        (state, applied): (ClusterState, u64),
        tls: NodeTls,
        published: Published,
    ) -> Self {
        Manager {
            store,
            raft: consensus.raft,
            id: consensus.id,
            lease: consensus.lease,
            shape,
            feed: Some(consensus.feed),
            leading: false,
            leader: None,
            applied,
            settling: false,
            retry: None,
            settled: Vec::new(),
            compacting: false,
            state,
            events: EventLog::default(),
            queue: Vec::new(),
            flush_scheduled: false,
            clients: HashMap::new(),
            tls,
            published,
            relieving: false,
        }
    }

    /// Queues a command; the receiver gets its answer once committed.
    fn enqueue(&mut self, command: Command, ctx: &mut Context<Self>) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.push(command, Some(tx), ctx);
        rx
    }

    fn push(
        &mut self,
        command: Command,
        answer: Option<oneshot::Sender<Answer>>,
        ctx: &mut Context<Self>,
    ) {
        if self.leading && !self.lease_held() {
            self.stop_leading("no majority of the managers answered within its lease", ctx);
        }
        if !self.leading {
            if let Some(answer) = answer {
                let _ = answer.send(Err(self.not_leader()));
            }
            return;
        }
        self.queue.push(Queued { command, answer });
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }

    /// Applies every queued command, commits what they changed in one
    /// transaction, then answers, publishes and carries out their effects.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        // Relief from a full store is committed alone: mixed with writes
        // it would be refused with them.
        let batch = match self.queue.first() {
            Some(q) if matches!(q.command, Command::Relieve) => vec![self.queue.remove(0)],
            _ => std::mem::take(&mut self.queue),
        };
        self.relieving = batch
            .first()
            .is_some_and(|q| matches!(q.command, Command::Relieve));
        if batch.is_empty() {
            return;
        }
        let now = Now::read();
        let mut outcomes = Vec::with_capacity(batch.len());
        for queued in batch {
            let outcome = apply(&mut self.state, queued.command, now);
            outcomes.push((queued.answer, outcome));
        }
        let mut staged = self.state.take_staged();
        if staged.is_empty() {
            self.state.commit();
            self.finish(outcomes, Ok(()), std::mem::take(&mut staged.events), ctx);
            return;
        }
        let events = std::mem::take(&mut staged.events);
        // The services whose endpoints may have changed: their replicas,
        // their spec, or a node of theirs (its address) did.
        let on_nodes: Vec<String> = staged
            .nodes
            .iter()
            .flat_map(|n| self.state.active_on(&n.name))
            .filter_map(|id| self.state.task(&id).and_then(|t| t.service.clone()))
            .collect();
        let services: BTreeSet<String> = staged
            .tasks
            .iter()
            .filter_map(|t| t.service.clone())
            .chain(staged.services.iter().map(|s| s.spec.name.clone()))
            .chain(staged.removed_services.iter().cloned())
            .chain(on_nodes)
            .collect();
        let altered = Altered {
            tokens_changed: staged.tokens_changed(),
            join_tokens_changed: !staged.join_tokens.is_empty(),
            nodes_changed: !staged.nodes.is_empty(),
            services,
            events: Vec::new(),
        };
        let write = self.replicate(staged);
        ctx.wait(write.into_actor(self).map(move |result, act, ctx| {
            if let Ok(index) = result {
                // Committed: requests see the change from now on.
                act.applied = act.applied.max(index);
                act.publish(&altered);
            }
            act.finish(outcomes, result.map(|_| ()), events, ctx);
        }));
    }

    /// Proposes a batch's records as one change; its log index once a
    /// majority has it and it is applied here.
    fn replicate(
        &self,
        staged: Staged,
    ) -> impl std::future::Future<Output = Result<u64, WriteError>> + 'static {
        let (raft, store) = (self.raft.clone(), self.store.clone());
        let change = change_of(staged);
        async move {
            let change = change.map_err(|source| {
                WriteError::Store(StoreError::Codec {
                    table: "change",
                    source,
                })
            })?;
            let puts = change
                .records
                .iter()
                .filter(|r| r.value.is_some())
                .map(|r| (r.table.clone(), r.key.clone()))
                .collect();
            store
                .send(CheckRoom(puts))
                .await
                .map_err(StoreError::from)
                .and_then(|r| r)
                .map_err(WriteError::Store)?;
            match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(change)).await {
                Ok(Ok(written)) => Ok(written.log_id.index),
                Ok(Err(e)) => Err(WriteError::Unconfirmed(e.to_string())),
                Err(_) => Err(WriteError::Unconfirmed(format!(
                    "no majority within {WRITE_TIMEOUT:?}"
                ))),
            }
        }
    }

    /// After a committed change: what requests check (tokens, join
    /// tokens, removed names) and the endpoints of the services it
    /// touched.
    fn publish(&mut self, altered: &Altered) {
        if altered.tokens_changed {
            let table = Arc::new(self.state.token_table());
            self.published.tokens.send_replace(table);
        }
        if altered.join_tokens_changed {
            let table = Arc::new(self.state.join_token_table());
            self.published.join_tokens.send_replace(table);
        }
        if altered.nodes_changed {
            let generations = Arc::new(self.state.generations());
            self.published.generations.send_replace(generations);
        }
        if !altered.services.is_empty() {
            let table = self.published.endpoints.borrow().clone();
            if let Some(fresh) = refresh(&self.state, &table, &altered.services) {
                self.published.endpoints.send_replace(Arc::new(fresh));
            }
        }
    }

    /// After a rebuild: everything published anew.
    fn publish_all(&mut self) {
        self.published
            .tokens
            .send_replace(Arc::new(self.state.token_table()));
        self.published
            .join_tokens
            .send_replace(Arc::new(self.state.join_token_table()));
        self.published
            .generations
            .send_replace(Arc::new(self.state.generations()));
        self.published
            .endpoints
            .send_replace(Arc::new(crate::core::services::endpoint_table(&self.state)));
    }

    /// A full store first gives back the log's room: the log is cut
    /// back to what is in a snapshot (once at a time).
    fn compact_log(&mut self, ctx: &mut Context<Self>) {
        if self.compacting {
            return;
        }
        self.compacting = true;
        let raft = self.raft.clone();
        let work = async move { crate::raft::compact(&raft, COMPACT_WITHIN).await };
        ctx.spawn(work.into_actor(self).map(|result, act, _ctx| {
            act.compacting = false;
            match result {
                Ok(upto) => log::info!("manager: the store is full: the log is cut back to {upto}"),
                Err(e) => {
                    log::warn!("manager: the store is full and the log was not cut back: {e}")
                }
            }
        }));
    }

    /// The managers' URLs as workers learn them (this one first), when
    /// there are several.
    fn managers_for_workers(&self) -> Vec<String> {
        let metrics = self.raft.server_metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        match membership.get_node(&self.id) {
            Some(own) if membership.voter_ids().count() > 1 => manager_urls(&own.url, membership),
            _ => Vec::new(),
        }
    }

    fn not_leader(&self) -> ManagerError {
        ManagerError::NotLeader {
            leader: self
                .leader
                .as_ref()
                .filter(|(id, _)| *id != self.id)
                .and_then(|(_, url)| url.clone()),
        }
    }

    fn finish(
        &mut self,
        outcomes: Vec<Outcome>,
        committed: Result<(), WriteError>,
        events: Vec<crate::core::events::EventDraft>,
        ctx: &mut Context<Self>,
    ) {
        match committed {
            Ok(()) => {
                self.state.commit();
                self.events.publish(events);
                let mut effects = Vec::new();
                for (answer, outcome) in outcomes {
                    let reply = match outcome {
                        Ok((reply, mut more)) => {
                            if let Reply::Task(record) = &reply {
                                log::info!(
                                    "manager: task {} ({}) accepted and stored, image {}",
                                    record.id,
                                    record.name,
                                    record.spec.image
                                );
                            }
                            effects.append(&mut more);
                            Ok(reply)
                        }
                        Err(e) => Err(ManagerError::Core(e)),
                    };
                    if let Some(answer) = answer {
                        let _ = answer.send(reply);
                    }
                }
                for effect in effects {
                    self.execute(effect, ctx);
                }
            }
            Err(e) => {
                log::error!(
                    "manager: a batch of {} commands was not committed and is undone: {}",
                    outcomes.len(),
                    e.answer()
                );
                self.state.rollback();
                let full = matches!(e, WriteError::Store(StoreError::Full { .. }));
                if full {
                    self.compact_log(ctx);
                }
                if full && !self.relieving && self.state.ended_count() > 0 {
                    self.queue.insert(
                        0,
                        Queued {
                            command: Command::Relieve,
                            answer: None,
                        },
                    );
                }
                for (answer, outcome) in outcomes {
                    let reply = match outcome {
                        Ok(_) => Err(e.answer()),
                        Err(core) => Err(ManagerError::Core(core)),
                    };
                    if let Some(answer) = answer {
                        let _ = answer.send(reply);
                    }
                }
                if let WriteError::Unconfirmed(why) = &e {
                    // What this manager holds may no longer be the log:
                    // it stops taking commands until it has confirmed
                    // that it leads and rebuilt its state from the Store.
                    self.stop_leading(why, ctx);
                    return;
                }
            }
        }
        if !self.queue.is_empty() && !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }

    /// The client of a node's worker (one per address and name, reused):
    /// it presents the manager's certificate and accepts only that
    /// worker's.
    fn client_for(&mut self, node: &str) -> Option<Client> {
        let key = (self.state.node(node)?.address.clone(), node.to_string());
        if let Some(client) = self.clients.get(&key) {
            return Some(client.clone());
        }
        let client = self
            .tls
            .client(Expect::Worker(node.to_string()))
            .map_err(|e| e.to_string())
            .and_then(|tls| Client::new(&key.0, &tls).map_err(|e| e.to_string()));
        match client {
            Ok(client) => {
                self.clients.insert(key, client.clone());
                Some(client)
            }
            Err(e) => {
                log::error!("manager: no client for worker {node}: {e}");
                None
            }
        }
    }

    /// Carries out one effect of a committed batch.
    fn execute(&mut self, effect: Effect, ctx: &mut Context<Self>) {
        match effect {
            Effect::Dispatch { node, assignment } => {
                // Later commands of the batch may have changed the task.
                let current = self.state.task(&assignment.task_id).is_some_and(|t| {
                    t.state == TaskState::Scheduled
                        && t.desired_state == DesiredState::Running
                        && t.attempt == assignment.attempt
                        && t.node.as_deref() == Some(node.as_str())
                });
                if !current {
                    return;
                }
                let Some(client) = self.client_for(&node) else {
                    log::error!(
                        "manager: task {} is placed on unknown node {node}",
                        assignment.task_id
                    );
                    return;
                };
                log::info!(
                    "manager: sending task {} attempt {} to {node}",
                    assignment.task_id,
                    assignment.attempt
                );
                let send = async move {
                    let result = client.assign(assignment.as_ref()).await;
                    (assignment, result)
                };
                ctx.spawn(send.into_actor(self).map(move |(assignment, result), act, ctx| {
                    let id = assignment.task_id;
                    match result {
                        Ok(status) => act.push(Command::Report { status }, None, ctx),
                        Err(e) if e.is_unreachable() => {
                            // Sent again while it is still this attempt on a
                            // node not held down (a down node's tasks move).
                            log::warn!(
                                "manager: task {id} could not be sent to {node} ({e}); trying again in {DISPATCH_RETRY:?}"
                            );
                            ctx.run_later(DISPATCH_RETRY, move |act, ctx| {
                                if act.acting() && !act.state.is_down(&node) {
                                    act.execute(Effect::Dispatch { node, assignment }, ctx);
                                }
                            });
                        }
                        Err(e) => act.push(
                            Command::Refused {
                                id,
                                attempt: assignment.attempt,
                                node: node.clone(),
                                error: format!("worker {node} refused the task: {e}"),
                            },
                            None,
                            ctx,
                        ),
                    }
                }));
            }
            Effect::StopAfter { node, task, after } => {
                ctx.run_later(after, move |act, ctx| {
                    if act.acting() {
                        act.execute(Effect::StopOn { node, task }, ctx);
                    }
                });
            }
            Effect::StopOn { node, task } => {
                let Some(client) = self.client_for(&node) else {
                    return;
                };
                ctx.spawn(
                    async move { client.stop_on_worker(task).await }
                        .into_actor(self)
                        .map(move |result, act, ctx| match result {
                            Ok(status) => act.push(Command::Report { status }, None, ctx),
                            Err(e) => log::warn!("manager: could not stop task {task}: {e}"),
                        }),
                );
            }
        }
    }
}

impl Actor for Manager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        log::info!(
            "manager: started with {} tasks and {} nodes from the store",
            self.state.task_count(),
            self.state.node_names().len()
        );
        if let Some(feed) = self.feed.take() {
            ctx.add_stream(futures_util::stream::unfold(feed, |mut feed| async move {
                feed.recv().await.map(|r| (r, feed))
            }));
        }
        ctx.add_stream(leadership(self.raft.metrics()));
        ctx.run_interval(self.state.tick_every(), |act, ctx| {
            // A tick that finds the previous one still queued adds nothing.
            if act.leading && !act.queue.iter().any(|q| matches!(q.command, Command::Tick)) {
                act.push(Command::Tick, None, ctx);
            }
        });
    }
}

struct Flush;

impl Message for Flush {
    type Result = ();
}

impl Handler<Flush> for Manager {
    type Result = ();

    fn handle(&mut self, _msg: Flush, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}

/// Applies a command; the answer comes once its changes are committed.
pub struct Apply(pub Command);

impl Message for Apply {
    type Result = Answer;
}

impl Handler<Apply> for Manager {
    type Result = ResponseFuture<Answer>;

    fn handle(&mut self, msg: Apply, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(msg.0, ctx);
        Box::pin(async move { answered(rx).await })
    }
}

async fn answered(rx: oneshot::Receiver<Answer>) -> Answer {
    rx.await
        .map_err(|_| ManagerError::Gone("the command was dropped".into()))?
}

/// A user submits a task. Answers after the record is committed.
pub struct Submit {
    pub spec: TaskSpec,
    /// The submitter's token.
    pub by: String,
}

impl Message for Submit {
    type Result = Result<TaskRecord, ManagerError>;
}

impl Handler<Submit> for Manager {
    type Result = ResponseFuture<Result<TaskRecord, ManagerError>>;

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        let id = Uuid::new_v4();
        let rx = self.enqueue(
            Command::Submit {
                id,
                spec: msg.spec,
                by: Some(msg.by),
            },
            ctx,
        );
        Box::pin(async move {
            match answered(rx).await? {
                Reply::Task(record) => Ok(record),
                other => Err(unexpected(other)),
            }
        })
    }
}

fn unexpected(reply: Reply) -> ManagerError {
    ManagerError::Gone(format!("unexpected answer {reply:?}"))
}

/// Reads one task.
pub struct GetTask(pub Uuid);

impl Message for GetTask {
    type Result = Option<TaskRecord>;
}

impl Handler<GetTask> for Manager {
    type Result = Option<TaskRecord>;

    fn handle(&mut self, msg: GetTask, _ctx: &mut Context<Self>) -> Self::Result {
        self.state.task(&msg.0).cloned()
    }
}

/// Lists one page of tasks, in id order.
pub struct ListTasks(pub TaskQuery);

impl Message for ListTasks {
    type Result = TaskPage;
}

impl Handler<ListTasks> for Manager {
    type Result = MessageResult<ListTasks>;

    fn handle(&mut self, msg: ListTasks, _ctx: &mut Context<Self>) -> Self::Result {
        let query = msg.0;
        let mut matching = self.state.tasks_after(query.after).filter(|t| {
            query.state.is_none_or(|s| t.state == s)
                && query
                    .node
                    .as_deref()
                    .is_none_or(|n| t.node.as_deref() == Some(n))
                && query
                    .service
                    .as_deref()
                    .is_none_or(|s| t.service.as_deref() == Some(s))
        });
        let tasks: Vec<TaskRecord> = matching.by_ref().take(query.limit).cloned().collect();
        let next = if matching.next().is_some() {
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        MessageResult(TaskPage { tasks, next })
    }
}

/// The certificate generation a worker joining as this name gets, or the
/// conflict with a live member of that name.
pub struct Admission(pub String);

impl Message for Admission {
    type Result = Result<u64, CoreError>;
}

impl Handler<Admission> for Manager {
    type Result = ResponseFuture<Result<u64, CoreError>>;

    fn handle(&mut self, msg: Admission, _ctx: &mut Context<Self>) -> Self::Result {
        let name = msg.0;
        let generation = self.state.admission(&name);
        // Held as live: is it? (A restart under a new data dir comes
        // before the old process is found down.)
        let namesake = self
            .state
            .member(&name)
            .filter(|_| generation.is_err())
            .cloned();
        let tls = self.tls.clone();
        Box::pin(async move {
            match namesake {
                Some(node) if !still_runs(&node, &tls).await.unwrap_or(true) => Ok(node.generation),
                _ => generation,
            }
        })
    }
}

/// The services, as users see them.
pub struct ListServices;

impl Message for ListServices {
    type Result = Vec<ServiceView>;
}

impl Handler<ListServices> for Manager {
    type Result = MessageResult<ListServices>;

    fn handle(&mut self, _msg: ListServices, _ctx: &mut Context<Self>) -> Self::Result {
        let now = chrono::Utc::now();
        MessageResult(
            self.state
                .services()
                .map(|s| crate::core::services::view(&self.state, s, now))
                .collect(),
        )
    }
}

/// One service, as users see it.
pub struct GetService(pub String);

impl Message for GetService {
    type Result = Option<ServiceView>;
}

impl Handler<GetService> for Manager {
    type Result = Option<ServiceView>;

    fn handle(&mut self, msg: GetService, _ctx: &mut Context<Self>) -> Self::Result {
        let service = self.state.service(&msg.0)?;
        Some(crate::core::services::view(
            &self.state,
            service,
            chrono::Utc::now(),
        ))
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
        MessageResult(self.state.node_views())
    }
}

/// The client of a node's worker.
struct ClientFor(String);

impl Message for ClientFor {
    type Result = Option<Client>;
}

impl Handler<ClientFor> for Manager {
    type Result = Option<Client>;

    fn handle(&mut self, msg: ClientFor, _ctx: &mut Context<Self>) -> Self::Result {
        self.client_for(&msg.0)
    }
}

/// A user stops a task. The answer is the record once the worker has stopped
/// and removed the container, and whether that happened (`false`: the worker
/// could not be reached, or has not finished; it will be told again).
pub struct StopTask {
    pub id: Uuid,
    /// The stopper's token.
    pub by: String,
}

impl Message for StopTask {
    type Result = Result<(TaskRecord, bool), ManagerError>;
}

impl Handler<StopTask> for Manager {
    type Result = ResponseFuture<Result<(TaskRecord, bool), ManagerError>>;

    fn handle(&mut self, msg: StopTask, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.id;
        let rx = self.enqueue(
            Command::Stop {
                id,
                by: Some(msg.by),
            },
            ctx,
        );
        let me = ctx.address();
        Box::pin(async move {
            let (record, worker, unconfirmed) = match answered(rx).await? {
                Reply::Stopping {
                    record,
                    worker,
                    unconfirmed,
                } => (record, worker, unconfirmed),
                other => return Err(unexpected(other)),
            };
            let Some(node) = worker else {
                let done = record.state.is_terminal() && !unconfirmed;
                return Ok((record, done));
            };
            let gone = |e: MailboxError| ManagerError::Gone(e.to_string());
            let Some(client) = me.send(ClientFor(node)).await.map_err(gone)? else {
                return Ok((record, false));
            };
            let status = match client.stop_on_worker(id).await {
                Ok(status) => status,
                Err(e) => {
                    log::warn!("manager: task {id} will be stopped when its worker is back: {e}");
                    return Ok((record, false));
                }
            };
            // Only a container stopped and removed is a done stop.
            let done = status.state.is_terminal();
            me.send(Apply(Command::Report { status }))
                .await
                .map_err(gone)??;
            let record = me
                .send(GetTask(id))
                .await
                .map_err(gone)?
                .ok_or(CoreError::NotFound(id))?;
            Ok((record, done))
        })
    }
}

/// A worker (re)registers with a certificate of its name's `generation`:
/// store the node, reconcile, and tell it what to run and what to stop. A
/// second live worker under a taken name is refused, and so is a
/// certificate from before the name was removed.
pub struct Register {
    pub registration: Registration,
    pub generation: u64,
}

impl Message for Register {
    type Result = Result<RegistrationReply, ManagerError>;
}

impl Handler<Register> for Manager {
    type Result = ResponseFuture<Result<RegistrationReply, ManagerError>>;

    fn handle(&mut self, msg: Register, ctx: &mut Context<Self>) -> Self::Result {
        let (reg, generation) = (msg.registration, msg.generation);
        // Another process registered under this name and is heard from:
        // ask it who it is. A restarted worker's old process is gone (or
        // is the new process itself, at the same address).
        let namesake: Option<NodeRecord> = namesake(&self.state, &reg).cloned();
        let probe_tls = self.tls.clone();
        let me = ctx.address();
        Box::pin(async move {
            if let Some(namesake) = namesake
                && still_runs(&namesake, &probe_tls).await?
            {
                log::warn!(
                    "manager: refusing worker {} from {}: a live worker of that name runs at {}",
                    reg.name,
                    reg.address,
                    namesake.address
                );
                return Err(CoreError::Conflict(format!(
                    "a live worker named {:?} is registered from {}",
                    reg.name, namesake.address
                ))
                .into());
            }
            let command = Command::Register {
                registration: reg,
                generation,
            };
            match me
                .send(Apply(command))
                .await
                .map_err(|e| ManagerError::Gone(e.to_string()))??
            {
                Reply::Registered(reply) => Ok(reply),
                other => Err(unexpected(other)),
            }
        })
    }
}

/// Whether the process a node record names still runs: asked directly
/// (with a short timeout), not taken from the liveness view, which lags.
async fn still_runs(node: &NodeRecord, tls: &NodeTls) -> Result<bool, ManagerError> {
    let probe = tls
        .client(Expect::Worker(node.name.clone()))
        .map_err(|e| e.to_string())
        .and_then(|tls| {
            Client::with_timeout(&node.address, &tls, PROBE_TIMEOUT).map_err(|e| e.to_string())
        })
        .map_err(ManagerError::Gone)?;
    Ok(probe
        .stats()
        .await
        .is_ok_and(|stats| stats.instance == node.instance))
}

/// A worker's heartbeat. The answer tells it to register again when the
/// manager does not hold it as a live node of this process.
pub struct Beat(pub Heartbeat);

impl Message for Beat {
    type Result = Result<HeartbeatReply, ManagerError>;
}

impl Handler<Beat> for Manager {
    type Result = ResponseFuture<Result<HeartbeatReply, ManagerError>>;

    fn handle(&mut self, msg: Beat, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(Command::Heartbeat { beat: msg.0 }, ctx);
        let managers = self.managers_for_workers();
        Box::pin(async move {
            match answered(rx).await? {
                Reply::Beat(mut reply) => {
                    reply.managers = managers;
                    Ok(reply)
                }
                other => Err(unexpected(other)),
            }
        })
    }
}

/// A worker reports a change of one of its tasks.
pub struct Report(pub TaskStatus);

impl Message for Report {
    type Result = Result<ReportReply, ManagerError>;
}

impl Handler<Report> for Manager {
    type Result = ResponseFuture<Result<ReportReply, ManagerError>>;

    fn handle(&mut self, msg: Report, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.enqueue(Command::Report { status: msg.0 }, ctx);
        Box::pin(async move {
            match answered(rx).await? {
                Reply::Reported(reply) => Ok(reply),
                other => Err(unexpected(other)),
            }
        })
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
                .map(move |result, act, ctx| match result {
                    Ok(statuses) => act.push(
                        Command::Sync {
                            node: name,
                            statuses,
                        },
                        None,
                        ctx,
                    ),
                    Err(e) => log::info!(
                        "manager: worker {name} not reachable yet ({e}); it reconciles when it registers"
                    ),
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
    type Result = Result<Client, ManagerError>;
}

impl Handler<LogsAt> for Manager {
    type Result = Result<Client, ManagerError>;

    fn handle(&mut self, msg: LogsAt, _ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        let record = self.state.task(&id).ok_or(CoreError::NotFound(id))?;
        let node = record.node.as_deref().ok_or_else(|| {
            CoreError::Conflict(format!(
                "task {id} is {} on no node: it has no logs",
                record.state
            ))
        })?;
        let node = node.to_string();
        Ok(self
            .client_for(&node)
            .ok_or_else(|| CoreError::Conflict(format!("task {id} is on unknown node {node}")))?)
    }
}

/// The tokens, as users may see them (no hashes).
pub struct ListTokens;

impl Message for ListTokens {
    type Result = Vec<TokenView>;
}

impl Handler<ListTokens> for Manager {
    type Result = MessageResult<ListTokens>;

    fn handle(&mut self, _msg: ListTokens, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.tokens().map(TokenView::from).collect())
    }
}
