//! The TaskSupervisor actor: one per task attempt, the only code that touches
//! its container. It brings the container up (adopting one that exists
//! already: a restarted worker never starts a second copy), learns of its
//! death from the worker's event stream, restarts it as the task's restart
//! policy says (after a back-off, each old container removed), and stops and
//! removes it on request.
//! Every change goes to its parent (the Worker) as a `StatusChanged`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::actor::StatusChanged;
use super::health::{HealthChecker, StopChecking, Tally, Target};
use super::restart::{self, AfterExit, Backoff};
use crate::runtime::{
    self, ContainerNetwork, ContainerSpec, ContainerView, Engine, RuntimeError, SharedEngine,
    create_or_adopt,
};
use crate::task::TaskState;
use crate::wire::{Assignment, Health, HealthState, TaskStatus};

/// How long the engine may be out of reach before a task not yet running
/// says it waits for it (a worker that just started connects meanwhile).
pub const ENGINE_GRACE: Duration = Duration::from_secs(2);
/// A stop is answered within the task's stop timeout and this margin, or
/// with an error (it finishes later, once the engine can do it).
pub const STOP_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Bringing the container up.
    Starting,
    /// The engine is unreachable; start again on `EngineBack`.
    WaitingForEngine,
    Running,
    /// The container exited; a restart is due after the back-off.
    Backoff,
    /// Stopping on request: engine events are the stop's own doing.
    Stopping,
    /// Ended (and its container removed); the actor stops.
    Done,
}

/// Why a stop was not answered with the task's final status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StopError {
    #[error(
        "the container is not stopped yet after {0:?} (the container engine is out of reach); it will be once the engine is back"
    )]
    TimedOut(Duration),
    #[error("the container engine could not stop the container: {0}")]
    Engine(String),
    #[error("the task's supervisor ended before the stop was done")]
    Gone,
}

type StopAnswer = Result<TaskStatus, StopError>;

/// Where a supervisor's task comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Assigned to this worker process: no container of it exists yet.
    Assigned,
    /// Loaded from the worker's store when the process started: an earlier
    /// process may have made its container (even if the record does not
    /// say so), and may have been asked to stop it.
    Stored { stop_requested: bool },
}

pub struct TaskSupervisor {
    node: String,
    /// The host address the container's ports are published on.
    publish_addr: IpAddr,
    /// The network the container joins (the engine's default when `None`).
    network: Option<ContainerNetwork>,
    assignment: Assignment,
    parent: Recipient<StatusChanged>,
    /// The engine, once the worker's connection to it is up.
    engine: Option<SharedEngine>,
    status: TaskStatus,
    phase: Phase,
    /// Stop instead of starting: a stop was asked (maybe before this worker
    /// restarted).
    stop_on_start: bool,
    /// A container of the task's current run may exist that
    /// `status.container_id` does not name (made by an earlier process, or
    /// by a start the engine's failure cut short): a stop must ask the
    /// engine.
    unsure: bool,
    /// Answers owed to `Stop` requests: given once the container is
    /// stopped and removed (or known absent).
    stop_waiters: Vec<oneshot::Sender<StopAnswer>>,
    backoff: Backoff,
    /// Quick restarts in a row (the back-off's exponent).
    step: u32,
    /// Checks the running container's health, for tasks with a check.
    checker: Option<Addr<HealthChecker>>,
    /// When the running container started.
    started: Option<Instant>,
    /// The engine said the running container ran out of memory.
    oom: bool,
    /// Counts waits for the engine, so only the latest one reports.
    engine_waits: u64,
}

impl TaskSupervisor {
    /// `status` is what the worker last recorded (Scheduled for a new task).
    pub fn new(
        node: String,
        assignment: Assignment,
        status: TaskStatus,
        parent: Recipient<StatusChanged>,
        engine: Option<SharedEngine>,
        origin: Origin,
        backoff: Backoff,
    ) -> Self {
        TaskSupervisor {
            node,
            publish_addr: Ipv4Addr::UNSPECIFIED.into(),
            network: None,
            assignment,
            parent,
            engine,
            status,
            phase: Phase::Starting,
            stop_on_start: origin
                == Origin::Stored {
                    stop_requested: true,
                },
            unsure: origin != Origin::Assigned,
            stop_waiters: Vec::new(),
            backoff,
            step: 0,
            checker: None,
            started: None,
            oom: false,
            engine_waits: 0,
        }
    }

    /// Publishes the container's ports on `addr` (the worker's
    /// `publish_addr`) instead of every IPv4 address of the host.
    pub fn publishing_on(mut self, addr: IpAddr) -> Self {
        self.publish_addr = addr;
        self
    }

    /// Puts the container on `network`, asking its gateway for names.
    pub fn on_network(mut self, network: Option<ContainerNetwork>) -> Self {
        self.network = network;
        self
    }

    fn id(&self) -> uuid::Uuid {
        self.assignment.task_id
    }

    fn stop_timeout_s(&self) -> u32 {
        self.assignment.spec.stop_timeout_s
    }

    /// Records a new status and tells the parent. A final status answers
    /// the stops that wait.
    fn set(
        &mut self,
        state: TaskState,
        ctx: &mut Context<Self>,
        change: impl FnOnce(&mut TaskStatus),
    ) {
        self.status.state = state;
        change(&mut self.status);
        self.status.at = Utc::now();
        self.status.seq += 1;
        if state.is_terminal() {
            self.phase = Phase::Done;
            self.status.host_ports.clear();
            self.status.container_ip = None;
            self.answer_stops(Ok(self.status.clone()));
        }
        let notify = self.parent.send(StatusChanged(self.status.clone()));
        ctx.spawn(
            async move {
                if let Err(e) = notify.await {
                    log::error!("supervisor: the worker is gone: {e}");
                }
            }
            .into_actor(self),
        );
    }

    fn answer_stops(&mut self, answer: StopAnswer) {
        for waiter in self.stop_waiters.drain(..) {
            // The asker may have given up (timed out) already.
            let _ = waiter.send(answer.clone());
        }
    }

    fn bring_up(&mut self, ctx: &mut Context<Self>) {
        let Some(engine) = self.engine.clone() else {
            self.wait_for_engine("the container engine is not connected".into(), ctx);
            return;
        };
        self.phase = Phase::Starting;
        // Until the outcome is known, a container may be made.
        self.unsure = true;
        let id = self.id();
        let spec = ContainerSpec::for_task(
            id,
            self.assignment.attempt,
            self.status.restart_count,
            &self.node,
            self.publish_addr,
            &self.assignment.spec,
        )
        .on_network(self.network.as_ref());
        let was_running = self.status.state == TaskState::Running;
        let create = !self.stop_on_start;
        let work = async move { start_container(&*engine, id, &spec, was_running, create).await };
        // Wait: a Stop or an event for this task is handled after the start.
        ctx.wait(
            work.into_actor(self)
                .map(|result, act, ctx| act.started_outcome(result, ctx)),
        );
    }

    fn started_outcome(&mut self, result: Result<Outcome, RuntimeError>, ctx: &mut Context<Self>) {
        let id = self.id();
        // What exists is known now, except when the engine failed mid-way.
        self.unsure = matches!(result, Err(RuntimeError::EngineDown(_)));
        match result {
            Ok(Outcome::Running(view)) if self.stop_on_start => {
                // An adopted container of a task being stopped: stop it.
                self.phase = Phase::Running;
                self.status.container_id = Some(view.id);
                self.stop(ctx);
            }
            Ok(Outcome::Running(view)) => {
                log::info!(
                    "supervisor: task {id} container {} running (ports {:?})",
                    short(&view.id),
                    view.host_ports
                );
                self.phase = Phase::Running;
                let now = Utc::now();
                // An adopted container keeps its real start time.
                let started_at = view.started_at.unwrap_or(now);
                let age = (now - started_at).to_std().unwrap_or_default();
                self.started = Some(Instant::now().checked_sub(age).unwrap_or_else(Instant::now));
                self.oom = false;
                let health = self
                    .assignment
                    .spec
                    .health
                    .as_ref()
                    .map(|h| Tally::new(h.retries).health);
                self.set(TaskState::Running, ctx, |s| {
                    s.container_id = Some(view.id.clone());
                    s.host_ports = view.host_ports.clone();
                    s.container_ip = view.ip;
                    s.error = None;
                    s.next_restart_at = None;
                    s.started_at = Some(started_at);
                    s.health = health;
                });
                self.start_checker(ctx);
            }
            Ok(Outcome::Exited(view)) => {
                let code = view.exit_code.unwrap_or(-1);
                self.phase = Phase::Running;
                self.status.container_id = Some(view.id.clone());
                self.exited(view.id, code, ctx);
            }
            Ok(Outcome::Lost) if self.stop_on_start => {
                log::info!("supervisor: task {id} stopped; its container was gone already");
                self.set(TaskState::Completed, ctx, |s| s.error = None);
            }
            Ok(Outcome::Lost) => {
                log::warn!(
                    "supervisor: task {id}: its container disappeared while the worker was down"
                );
                self.set(TaskState::Failed, ctx, |s| {
                    s.error = Some("the container disappeared while the worker was down".into());
                });
            }
            Err(RuntimeError::EngineDown(e)) => self.wait_for_engine(e, ctx),
            Err(e) => {
                log::warn!("supervisor: task {id} failed to start: {e}");
                self.set(TaskState::Failed, ctx, |s| s.error = Some(e.to_string()));
            }
        }
    }

    /// Waits for `EngineBack`. A task not running says so in its status
    /// once the engine has been out of reach for `ENGINE_GRACE` (a worker
    /// that just started is still connecting); a running one says nothing,
    /// its container runs on meanwhile.
    fn wait_for_engine(&mut self, error: String, ctx: &mut Context<Self>) {
        log::info!(
            "supervisor: task {} waits for the engine: {error}",
            self.id()
        );
        self.phase = Phase::WaitingForEngine;
        self.engine_waits += 1;
        if self.status.state == TaskState::Running {
            return;
        }
        let wait = self.engine_waits;
        ctx.run_later(ENGINE_GRACE, move |act, ctx| {
            if act.phase != Phase::WaitingForEngine || act.engine_waits != wait {
                return;
            }
            log::warn!(
                "supervisor: task {} still waits for the engine: {error}",
                act.id()
            );
            let state = act.status.state;
            act.set(state, ctx, |s| {
                s.error = Some(format!("waiting for the container engine: {error}"))
            });
        });
    }

    /// The container ended by itself: remove it, then end the task or
    /// restart it, as its restart policy says.
    fn exited(&mut self, container_id: String, exit_code: i64, ctx: &mut Context<Self>) {
        let id = self.id();
        self.stop_checker();
        log::info!(
            "supervisor: task {id} container {} exited with code {exit_code}",
            short(&container_id)
        );
        let decision = if self.stop_on_start {
            AfterExit::End(TaskState::Completed)
        } else {
            restart::after_exit(
                &self.assignment.spec.restart,
                exit_code,
                self.status.restart_count,
            )
        };
        // The engine's `oom` event may come after its `die`: the
        // container's own record says it too, read before it is removed.
        let oom_event = std::mem::take(&mut self.oom);
        let memory_mb = self.assignment.spec.memory_mb;
        let reason = move |oom: bool| {
            if oom {
                format!("out of memory: killed at its {memory_mb} MB limit (exit code {exit_code})")
            } else {
                format!("exited with code {exit_code}")
            }
        };
        let Some(engine) = self.engine.clone() else {
            self.follow(decision, Some(exit_code), reason(oom_event), ctx);
            return;
        };
        let remove = async move {
            let oom = oom_event
                || matches!(engine.inspect(&container_id).await, Ok(Some(view)) if view.oom_killed);
            (oom, engine.remove(&container_id).await)
        };
        match decision {
            // An ended task is reported once its container is gone.
            AfterExit::End(_) => {
                ctx.wait(remove.into_actor(self).map(move |(oom, result), act, ctx| {
                    if let Err(e) = result {
                        log::warn!("supervisor: task {id}: could not remove its container: {e}");
                    }
                    act.follow(decision, Some(exit_code), reason(oom), ctx)
                }));
            }
            // A restart's back-off runs while the container is removed; the
            // restart itself cannot begin before the removal is done
            // (`ctx.wait` holds the actor's other work back).
            AfterExit::Restart => {
                self.follow(decision, Some(exit_code), reason(oom_event), ctx);
                ctx.wait(remove.into_actor(self).map(move |(_, result), _act, _ctx| {
                    if let Err(e) = result {
                        log::warn!("supervisor: task {id}: could not remove its container: {e}");
                    }
                }));
            }
        }
    }

    /// Ends the task, or restarts it after the back-off; `reason` says why
    /// its container is gone.
    fn follow(
        &mut self,
        decision: AfterExit,
        exit_code: Option<i64>,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        let id = self.id();
        if let AfterExit::End(state) = decision {
            log::info!("supervisor: task {id} ends {state} ({reason})");
            self.set(state, ctx, |s| {
                s.exit_code = exit_code;
                s.next_restart_at = None;
                if state == TaskState::Failed {
                    s.error = Some(reason.clone());
                }
            });
            return;
        }
        let ran_for = self.started.map(|t| t.elapsed()).unwrap_or_default();
        self.step = self.backoff.next_step(self.step, ran_for);
        let delay = self.backoff.delay(self.step);
        self.step = self.step.saturating_add(1);
        let restart = self.status.restart_count.saturating_add(1);
        log::info!(
            "supervisor: task {id} restarts (restart {restart}, policy {:?}, {reason}) in {delay:?}",
            self.assignment.spec.restart.policy
        );
        self.phase = Phase::Backoff;
        self.started = None;
        let due = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        self.set(TaskState::Scheduled, ctx, |s| {
            s.restart_count = restart;
            s.exit_code = exit_code;
            s.container_id = None;
            s.host_ports.clear();
            s.container_ip = None;
            s.started_at = None;
            s.next_restart_at = Some(due);
            s.error = Some(format!(
                "{reason}; restart {restart} in {} ms",
                delay.as_millis()
            ));
        });
        ctx.run_later(delay, |act, ctx| {
            if act.phase == Phase::Backoff {
                act.bring_up(ctx);
            }
        });
    }

    /// Starts checking the health of the container that now runs.
    fn start_checker(&mut self, ctx: &mut Context<Self>) {
        let (Some(spec), Some(engine), Some(container)) = (
            self.assignment.spec.health.clone(),
            self.engine.clone(),
            self.status.container_id.clone(),
        ) else {
            return;
        };
        self.stop_checker();
        let target = Target::of(
            &spec,
            &self.status.host_ports,
            self.publish_addr,
            engine,
            container,
        );
        let checker = HealthChecker::new(self.id(), &spec, target, ctx.address());
        self.checker = Some(checker.start());
    }

    fn stop_checker(&mut self) {
        if let Some(checker) = self.checker.take() {
            checker.do_send(StopChecking);
        }
    }

    /// The container failed its health check `retries` times in a row: it
    /// is stopped, and the restart policy decides as for a failed exit.
    fn unhealthy(&mut self, ctx: &mut Context<Self>) {
        let id = self.id();
        self.stop_checker();
        let last = self
            .status
            .health
            .as_ref()
            .and_then(|h| h.last_probe.clone())
            .unwrap_or_default();
        let reason = format!("unhealthy: {last}");
        log::warn!("supervisor: task {id} is {reason}; stopping its container");
        let (Some(engine), Some(container_id)) =
            (self.engine.clone(), self.status.container_id.clone())
        else {
            return;
        };
        self.phase = Phase::Stopping;
        let timeout_s = self.stop_timeout_s();
        let work =
            async move { runtime::stop_and_remove(&*engine, &container_id, timeout_s).await };
        ctx.wait(work.into_actor(self).map(move |result, act, ctx| {
            if let Err(e) = result {
                log::warn!("supervisor: task {id}: could not stop its unhealthy container: {e}");
            }
            let decision = if act.stop_on_start {
                AfterExit::End(TaskState::Completed)
            } else {
                restart::after_unhealthy(&act.assignment.spec.restart, act.status.restart_count)
            };
            let exit_code = act.status.exit_code;
            act.follow(decision, exit_code, reason, ctx);
        }));
    }

    /// Stops and removes the container; the task ends Completed, which
    /// answers the stops that wait. Without the engine, the stop finishes
    /// when it is back (`stop_on_start`).
    fn stop(&mut self, ctx: &mut Context<Self>) {
        let id = self.id();
        self.stop_checker();
        let Some(container_id) = self.status.container_id.clone() else {
            if self.unsure {
                // Ask the engine what there is: bringing the task up with
                // `stop_on_start` finds, stops and removes it.
                match self.engine {
                    Some(_) => self.bring_up(ctx),
                    None => {
                        log::info!("supervisor: task {id} stops when the container engine is back");
                        self.phase = Phase::WaitingForEngine;
                    }
                }
                return;
            }
            // Not started yet, or between restarts (the old container is
            // removed before the back-off ends).
            log::info!("supervisor: task {id} stopped before its container ran");
            self.set(TaskState::Completed, ctx, |s| {
                s.error = None;
                s.next_restart_at = None;
            });
            return;
        };
        let Some(engine) = self.engine.clone() else {
            // Its container exists but the engine is out of reach (a worker
            // restarted before its engine connection came up).
            log::info!("supervisor: task {id} stops when the container engine is back");
            self.phase = Phase::WaitingForEngine;
            return;
        };
        self.phase = Phase::Stopping;
        log::info!(
            "supervisor: task {id} stopping container {}",
            short(&container_id)
        );
        let timeout_s = self.stop_timeout_s();
        let work =
            async move { runtime::stop_and_remove(&*engine, &container_id, timeout_s).await };
        ctx.wait(
            work.into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(exit_code) => {
                        log::info!("supervisor: task {id} container stopped and removed");
                        act.set(TaskState::Completed, ctx, |s| {
                            s.exit_code = exit_code;
                            s.error = None;
                        });
                    }
                    Err(RuntimeError::EngineDown(e)) => {
                        log::warn!("supervisor: task {id}: stop waits for the engine: {e}");
                        act.phase = Phase::WaitingForEngine;
                    }
                    Err(e) => {
                        log::warn!("supervisor: task {id}: stop failed: {e}");
                        act.phase = Phase::Running;
                        act.answer_stops(Err(StopError::Engine(e.to_string())));
                        let state = act.status.state;
                        act.set(state, ctx, |s| s.error = Some(format!("stop failed: {e}")));
                    }
                }),
        );
    }
}

/// What bringing a container up found.
enum Outcome {
    Running(ContainerView),
    /// The container exists and has exited (while the worker was down).
    Exited(ContainerView),
    /// It ran before, and its container is gone (or, for a task being
    /// stopped, it was never started).
    Lost,
}

async fn start_container(
    engine: &dyn Engine,
    id: uuid::Uuid,
    spec: &ContainerSpec,
    was_running: bool,
    create: bool,
) -> Result<Outcome, RuntimeError> {
    match engine.inspect(&spec.name).await? {
        Some(view) if view.running => return Ok(Outcome::Running(view)),
        Some(view) if view.started => return Ok(Outcome::Exited(view)),
        // Created, never started, and the task is being stopped.
        Some(view) if !create => {
            engine.remove(&view.id).await?;
            return Ok(Outcome::Lost);
        }
        Some(_) => {} // created, never started: start it below
        None if was_running || !create => return Ok(Outcome::Lost),
        None => {}
    }
    engine.ensure_image(&spec.image).await?;
    let container = match create_or_adopt(engine, spec).await {
        Ok(container) => container,
        Err(e) => {
            discard(engine, id, &spec.name, &e).await;
            return Err(e);
        }
    };
    log::info!(
        "supervisor: task {id} container {} created",
        short(&container)
    );
    if let Err(e) = engine.start(&container).await {
        discard(engine, id, &container, &e).await;
        return Err(e);
    }
    let view = engine
        .inspect(&container)
        .await?
        .ok_or_else(|| RuntimeError::NotFound(format!("container {container}")))?;
    Ok(if view.running {
        Outcome::Running(view)
    } else {
        Outcome::Exited(view)
    })
}

/// Removes what a failed create or start left (the engine keeps a container
/// whose start failed, Created, forever). Without the engine it stays, and
/// the next attempt to bring the task up finds and starts it.
async fn discard(engine: &dyn Engine, task: uuid::Uuid, container: &str, error: &RuntimeError) {
    if matches!(
        error,
        RuntimeError::EngineDown(_) | RuntimeError::Conflict(_)
    ) {
        return;
    }
    log::info!(
        "supervisor: task {task}: removing container {} after: {error}",
        short(container)
    );
    if let Err(e) = engine.remove(container).await {
        log::warn!("supervisor: task {task}: could not remove its failed container: {e}");
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl Actor for TaskSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        log::info!(
            "supervisor: task {} attempt {} ({}) supervised",
            self.id(),
            self.assignment.attempt,
            self.assignment.spec.image
        );
        self.bring_up(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.answer_stops(Err(StopError::Gone));
    }
}

/// The engine is (back) up, with the node's container network: start a
/// task that waited, and re-inspect a running one in case its death fell
/// into the gap.
pub struct EngineBack(pub SharedEngine, pub Option<ContainerNetwork>);

impl Message for EngineBack {
    type Result = ();
}

impl Handler<EngineBack> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, msg: EngineBack, ctx: &mut Context<Self>) {
        self.engine = Some(msg.0.clone());
        if msg.1.is_some() {
            self.network = msg.1;
        }
        match self.phase {
            Phase::WaitingForEngine => self.bring_up(ctx),
            Phase::Running => {
                let Some(container_id) = self.status.container_id.clone() else {
                    return;
                };
                let engine = msg.0;
                let check = async move { engine.inspect(&container_id).await };
                ctx.wait(check.into_actor(self).map(|result, act, ctx| {
                    let id = act.status.container_id.clone().unwrap_or_default();
                    match result {
                        Ok(Some(view)) if !view.running => {
                            act.exited(id, view.exit_code.unwrap_or(-1), ctx)
                        }
                        Ok(None) => act.set(TaskState::Failed, ctx, |s| {
                            s.error = Some("the container disappeared".into())
                        }),
                        _ => {}
                    }
                }));
            }
            Phase::Starting | Phase::Backoff | Phase::Stopping | Phase::Done => {}
        }
    }
}

/// The engine says the task's container died.
pub struct ContainerDied {
    pub container_id: String,
    pub exit_code: i64,
}

impl Message for ContainerDied {
    type Result = ();
}

impl Handler<ContainerDied> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ContainerDied, ctx: &mut Context<Self>) {
        let ours = self.status.container_id.as_deref() == Some(msg.container_id.as_str());
        if self.phase != Phase::Running || !ours {
            return;
        }
        self.exited(msg.container_id, msg.exit_code, ctx);
    }
}

/// Stop the task: the answer is its final status, once its container is
/// stopped and removed (or known absent); an error if that does not happen
/// within the task's stop timeout and `STOP_MARGIN`.
pub struct Stop;

impl Message for Stop {
    type Result = Result<TaskStatus, StopError>;
}

impl Handler<Stop> for TaskSupervisor {
    type Result = ResponseActFuture<Self, Result<TaskStatus, StopError>>;

    fn handle(&mut self, _msg: Stop, ctx: &mut Context<Self>) -> Self::Result {
        self.stop_on_start = true;
        if self.phase == Phase::Done {
            return Box::pin(fut::ready(Ok(self.status.clone())));
        }
        let (answer, answered) = oneshot::channel();
        self.stop_waiters.push(answer);
        match self.phase {
            // Under way; a start in progress stops once it is done.
            Phase::Stopping | Phase::Starting | Phase::Done => {}
            Phase::WaitingForEngine | Phase::Running | Phase::Backoff => self.stop(ctx),
        }
        let limit = Duration::from_secs(u64::from(self.stop_timeout_s())) + STOP_MARGIN;
        Box::pin(
            async move {
                match tokio::time::timeout(limit, answered).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(_)) => Err(StopError::Gone),
                    Err(_) => Err(StopError::TimedOut(limit)),
                }
            }
            .into_actor(self),
        )
    }
}

/// The HealthChecker's view of the running container changed.
pub struct HealthChanged(pub Health);

impl Message for HealthChanged {
    type Result = ();
}

impl Handler<HealthChanged> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, msg: HealthChanged, ctx: &mut Context<Self>) {
        if self.phase != Phase::Running {
            return;
        }
        let health = msg.0;
        let unhealthy = health.state == HealthState::Unhealthy;
        let state = self.status.state;
        self.set(state, ctx, |s| s.health = Some(health));
        if unhealthy {
            self.unhealthy(ctx);
        }
    }
}

/// The engine says the task's container ran out of memory; its `die`
/// follows.
pub struct OutOfMemory {
    pub container_id: String,
}

impl Message for OutOfMemory {
    type Result = ();
}

impl Handler<OutOfMemory> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, msg: OutOfMemory, _ctx: &mut Context<Self>) {
        if self.status.container_id.as_deref() == Some(msg.container_id.as_str()) {
            log::warn!("supervisor: task {} ran out of memory", self.id());
            self.oom = true;
        }
    }
}
