//! The TaskSupervisor against the fake engine, in tokio's paused time: the
//! clock moves only when every actor waits, straight to the next timer, so
//! back-offs and health intervals are measured exactly and the tests run in
//! milliseconds without Docker.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use cube::runtime::fake::{FakeEngine, FakeState};
use cube::runtime::{ContainerEventKind, ContainerSpec, Engine, SharedEngine};
use cube::task::TaskState;
use cube::wire::{Assignment, HealthState, TaskStatus};
use cube::worker::actor::StatusChanged;
use cube::worker::record::WorkerTaskRecord;
use cube::worker::restart::Backoff;
use cube::worker::supervisor::{
    ContainerDied, ENGINE_GRACE, EngineBack, Origin, OutOfMemory, STOP_MARGIN, Stop, StopError,
    TaskSupervisor,
};

const NODE: &str = "fake-node";
/// Longer than anything a test waits for: reached only when nothing else is due.
const NEVER: Duration = Duration::from_secs(24 * 3600);

/// Stands for the Worker: collects every status, with the (paused) time.
struct Parent(mpsc::UnboundedSender<(Instant, TaskStatus)>);

impl Actor for Parent {
    type Context = Context<Self>;
}

impl Handler<StatusChanged> for Parent {
    type Result = ();

    fn handle(&mut self, msg: StatusChanged, _ctx: &mut Context<Self>) {
        let _ = self.0.send((Instant::now(), msg.0));
    }
}

struct Harness {
    engine: Arc<FakeEngine>,
    assignment: Assignment,
    supervisor: Addr<TaskSupervisor>,
    statuses: mpsc::UnboundedReceiver<(Instant, TaskStatus)>,
}

fn assignment(spec: serde_json::Value) -> Assignment {
    let mut spec = spec;
    spec["name"] = "t".into();
    spec["image"] = "img".into();
    Assignment {
        task_id: Uuid::new_v4(),
        attempt: 1,
        spec: serde_json::from_value(spec).expect("a valid spec"),
    }
}

/// Routes the engine's death and OOM events to the supervisor, as the
/// Worker does.
fn route_events(engine: &Arc<FakeEngine>, supervisor: Addr<TaskSupervisor>) {
    let mut events = engine.events(NODE, 0);
    actix_rt::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            match event.kind {
                ContainerEventKind::Died { exit_code } => supervisor.do_send(ContainerDied {
                    container_id: event.container_id,
                    exit_code,
                }),
                ContainerEventKind::OutOfMemory => supervisor.do_send(OutOfMemory {
                    container_id: event.container_id,
                }),
                ContainerEventKind::Started | ContainerEventKind::Destroyed => {}
            }
        }
    });
}

impl Harness {
    /// A supervisor of `assignment` whose last recorded status is `status`
    /// (from the store of an earlier worker process; a task assigned now
    /// when `None`); `connected`: the engine connection is up.
    fn start(
        engine: Arc<FakeEngine>,
        assignment: Assignment,
        status: Option<TaskStatus>,
        connected: bool,
    ) -> Harness {
        let origin = match status {
            Some(_) => Origin::Stored {
                stop_requested: false,
            },
            None => Origin::Assigned,
        };
        tokio::time::pause();
        let (tx, statuses) = mpsc::unbounded_channel();
        let parent = Parent(tx).start();
        let status =
            status.unwrap_or_else(|| WorkerTaskRecord::new(assignment.clone(), NODE).status);
        let shared: SharedEngine = engine.clone();
        let supervisor = TaskSupervisor::new(
            NODE.to_string(),
            assignment.clone(),
            status,
            parent.recipient(),
            connected.then_some(shared),
            origin,
            Backoff::default(),
        )
        .start();
        route_events(&engine, supervisor.clone());
        Harness {
            engine,
            assignment,
            supervisor,
            statuses,
        }
    }

    fn new_task(spec: serde_json::Value) -> Harness {
        Self::start(Arc::new(FakeEngine::new()), assignment(spec), None, true)
    }

    async fn next(&mut self) -> (Instant, TaskStatus) {
        tokio::time::timeout(NEVER, self.statuses.recv())
            .await
            .expect("no status came")
            .expect("the supervisor's parent is gone")
    }

    /// The next status in `state`, skipping others.
    async fn next_in(&mut self, state: TaskState) -> (Instant, TaskStatus) {
        loop {
            let (at, status) = self.next().await;
            if status.state == state {
                return (at, status);
            }
        }
    }

    /// No status came during `period`.
    async fn quiet_for(&mut self, period: Duration) -> bool {
        tokio::time::timeout(period, self.statuses.recv())
            .await
            .is_err()
    }

    fn running_container(&self) -> String {
        let running: Vec<_> = self
            .engine
            .containers_of(self.assignment.task_id)
            .into_iter()
            .filter(|c| c.state == FakeState::Running)
            .collect();
        assert_eq!(running.len(), 1, "{running:?}");
        running[0].id.clone()
    }
}

/// `elapsed` is `expected` (the timer wheel rounds up to the next millisecond).
fn assert_about(elapsed: Duration, expected: Duration) {
    assert!(
        elapsed >= expected && elapsed <= expected + Duration::from_millis(2),
        "{elapsed:?}, not {expected:?}"
    );
}

fn announced_delay_ms(status: &TaskStatus) -> u64 {
    let error = status.error.as_deref().unwrap_or_default();
    let (_, rest) = error.rsplit_once(" in ").expect("a delay is announced");
    rest.strip_suffix(" ms").unwrap().parse().unwrap()
}

#[actix_rt::test]
async fn on_failure_restarts_after_doubling_delays_then_fails_at_max_retries() {
    let mut h = Harness::new_task(serde_json::json!({
        "restart": {"policy": "on-failure", "max_retries": 3}
    }));
    let mut delays = Vec::new();
    let mut gaps = Vec::new();
    let (_, running) = h.next_in(TaskState::Running).await;
    assert_eq!(running.restart_count, 0);
    for restart in 1..=3u32 {
        h.engine.exit(&h.running_container(), 3);
        let (died, waiting) = h.next_in(TaskState::Scheduled).await;
        assert_eq!(waiting.restart_count, restart);
        assert_eq!(waiting.exit_code, Some(3));
        assert!(waiting.next_restart_at.is_some());
        // The dead container is removed before the back-off ends.
        assert!(
            h.engine
                .containers_of(h.assignment.task_id)
                .iter()
                .all(|c| c.state != FakeState::Exited),
            "a dead container is left"
        );
        delays.push(announced_delay_ms(&waiting));
        let (ran, running) = h.next_in(TaskState::Running).await;
        assert_eq!(running.restart_count, restart);
        gaps.push(ran - died);
    }
    assert_eq!(delays, vec![100, 200, 400]);
    for (gap, delay) in gaps.iter().zip(&delays) {
        assert_about(*gap, Duration::from_millis(*delay));
    }
    // Each run has its own container name; never two containers at once.
    let creates: Vec<String> = h
        .engine
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("create "))
        .collect();
    let id = h.assignment.task_id;
    assert_eq!(
        creates,
        vec![
            format!("create cube-{id}-1"),
            format!("create cube-{id}-1-r1"),
            format!("create cube-{id}-1-r2"),
            format!("create cube-{id}-1-r3"),
        ]
    );
    h.engine.exit(&h.running_container(), 3);
    let (_, failed) = h.next_in(TaskState::Failed).await;
    assert_eq!(failed.restart_count, 3);
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.error.as_deref(), Some("exited with code 3"));
    assert!(h.engine.containers().is_empty());
}

#[actix_rt::test]
async fn a_long_run_resets_the_back_off() {
    let mut h = Harness::new_task(serde_json::json!({"restart": {"policy": "always"}}));
    h.next_in(TaskState::Running).await;
    let mut delays = Vec::new();
    for _ in 0..2 {
        h.engine.exit(&h.running_container(), 0);
        delays.push(announced_delay_ms(&h.next_in(TaskState::Scheduled).await.1));
        h.next_in(TaskState::Running).await;
    }
    // Runs past `reset_after` (10 s).
    tokio::time::sleep(Duration::from_secs(11)).await;
    h.engine.exit(&h.running_container(), 0);
    delays.push(announced_delay_ms(&h.next_in(TaskState::Scheduled).await.1));
    assert_eq!(delays, vec![100, 200, 100]);
}

#[actix_rt::test]
async fn a_container_that_turns_unhealthy_is_replaced() {
    let mut h = Harness::new_task(serde_json::json!({
        "restart": {"policy": "always"},
        "health": {"exec": ["/check"], "interval_s": 1, "timeout_s": 1, "retries": 2},
    }));
    let (_, running) = h.next_in(TaskState::Running).await;
    assert_eq!(running.health.unwrap().state, HealthState::Starting);
    let (_, healthy) = h.next().await;
    assert_eq!(healthy.health.unwrap().state, HealthState::Healthy);
    let first = h.running_container();
    h.engine.set_exec_exit_code(&first, 1);
    let (failing_at, _) = h.next().await;
    let (unhealthy_at, unhealthy) = h.next().await;
    let health = unhealthy.health.clone().unwrap();
    assert_eq!((health.state, health.failures), (HealthState::Unhealthy, 2));
    // Probes run every interval_s.
    assert_about(unhealthy_at - failing_at, Duration::from_secs(1));
    let (_, waiting) = h.next_in(TaskState::Scheduled).await;
    let error = waiting.error.unwrap();
    assert!(error.starts_with("unhealthy: exit code 1"), "{error}");
    assert!(error.ends_with("restart 1 in 100 ms"), "{error}");
    let (_, again) = h.next_in(TaskState::Running).await;
    assert_eq!(again.restart_count, 1);
    assert_ne!(again.container_id.as_deref(), Some(first.as_str()));
    assert!(
        h.engine.containers().iter().all(|c| c.id != first),
        "the unhealthy container was not removed"
    );
    let (_, healthy) = h.next().await;
    assert_eq!(healthy.health.unwrap().state, HealthState::Healthy);
}

#[actix_rt::test]
async fn a_stop_during_the_back_off_ends_the_task_and_nothing_restarts() {
    let mut h = Harness::new_task(serde_json::json!({"restart": {"policy": "always"}}));
    h.next_in(TaskState::Running).await;
    h.engine.exit(&h.running_container(), 1);
    let (_, waiting) = h.next_in(TaskState::Scheduled).await;
    assert_eq!(announced_delay_ms(&waiting), 100);
    let stopped = h.supervisor.send(Stop).await.unwrap().unwrap();
    assert_eq!(stopped.state, TaskState::Completed);
    assert_eq!(stopped.next_restart_at, None);
    assert_eq!(h.next().await.1.state, TaskState::Completed);
    // Well past the back-off: no restart, no container.
    assert!(h.quiet_for(Duration::from_secs(5)).await);
    assert!(h.engine.containers().is_empty());
    let creates = h
        .engine
        .calls()
        .iter()
        .filter(|c| c.starts_with("create "))
        .count();
    assert_eq!(creates, 1);
    // A second stop answers the same final status.
    let again = h.supervisor.send(Stop).await.unwrap().unwrap();
    assert_eq!(again.state, TaskState::Completed);
}

/// A task that ran before the worker restarted: its container runs (named
/// for its restart count), started an hour ago.
fn adopted(restarts: u32) -> (Arc<FakeEngine>, Assignment, TaskStatus, String) {
    let engine = Arc::new(FakeEngine::new());
    let assignment = assignment(serde_json::json!({"restart": {"policy": "always"}}));
    let spec = ContainerSpec::for_task(
        assignment.task_id,
        assignment.attempt,
        restarts,
        NODE,
        std::net::Ipv4Addr::UNSPECIFIED.into(),
        &assignment.spec,
    );
    let started_at = Utc::now() - chrono::Duration::hours(1);
    let container = engine.add_running(spec, started_at);
    let mut status = WorkerTaskRecord::new(assignment.clone(), NODE).status;
    status.state = TaskState::Running;
    status.container_id = Some(container.clone());
    status.restart_count = restarts;
    status.started_at = Some(Utc::now());
    (engine, assignment, status, container)
}

#[actix_rt::test]
async fn a_readopted_container_keeps_its_start_time_and_restart_count() {
    let (engine, assignment, status, container) = adopted(2);
    let started_at = engine.containers()[0].started_at;
    let mut h = Harness::start(engine, assignment, Some(status), true);
    let (_, running) = h.next_in(TaskState::Running).await;
    assert_eq!(running.container_id.as_deref(), Some(container.as_str()));
    assert_eq!(running.restart_count, 2);
    assert_eq!(running.started_at, started_at);
    assert!(
        !h.engine.calls().iter().any(|c| c.starts_with("create ")),
        "{:?}",
        h.engine.calls()
    );
}

#[actix_rt::test]
async fn a_running_task_waits_for_the_engine_connection_silently() {
    let (engine, assignment, status, container) = adopted(0);
    let mut h = Harness::start(engine, assignment, Some(status), false);
    // The worker's engine connection is slow to come up: nothing to say.
    assert!(h.quiet_for(Duration::from_secs(60)).await);
    h.supervisor.do_send(EngineBack(h.engine.clone(), None));
    let (_, running) = h.next().await;
    assert_eq!(running.state, TaskState::Running);
    assert_eq!(running.error, None);
    assert_eq!(running.container_id, Some(container));
}

#[actix_rt::test]
async fn a_new_task_says_it_waits_for_the_engine_only_after_a_grace() {
    let engine = Arc::new(FakeEngine::new());
    let mut h = Harness::start(engine, assignment(serde_json::json!({})), None, false);
    let begun = Instant::now();
    let (at, waiting) = h.next().await;
    assert_about(at - begun, ENGINE_GRACE);
    assert_eq!(waiting.state, TaskState::Scheduled);
    let error = waiting.error.unwrap();
    assert!(
        error.contains("waiting for the container engine"),
        "{error}"
    );
    h.supervisor.do_send(EngineBack(h.engine.clone(), None));
    let (_, running) = h.next_in(TaskState::Running).await;
    assert_eq!(running.error, None);
}

#[actix_rt::test]
async fn a_stop_before_the_engine_is_back_waits_for_the_container_to_go() {
    let (engine, assignment, status, container) = adopted(0);
    let h = Harness::start(engine, assignment, Some(status), false);
    let stop = actix_rt::spawn(h.supervisor.send(Stop));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !stop.is_finished(),
        "answered while the container still runs"
    );
    assert_eq!(h.engine.containers()[0].id, container);
    h.supervisor.do_send(EngineBack(h.engine.clone(), None));
    let stopped = stop.await.unwrap().unwrap().unwrap();
    assert_eq!(stopped.state, TaskState::Completed);
    assert!(h.engine.containers().is_empty());
}

#[actix_rt::test]
async fn a_stop_that_cannot_be_done_in_time_is_an_error_and_finishes_later() {
    let (engine, assignment, status, _) = adopted(0);
    let limit = Duration::from_secs(u64::from(assignment.spec.stop_timeout_s)) + STOP_MARGIN;
    let mut h = Harness::start(engine, assignment, Some(status), false);
    let begun = Instant::now();
    let answer = h.supervisor.send(Stop).await.unwrap();
    assert_eq!(answer, Err(StopError::TimedOut(limit)));
    assert_about(Instant::now() - begun, limit);
    assert_eq!(h.engine.containers().len(), 1);
    // The engine comes back: the stop is finished and reported.
    h.supervisor.do_send(EngineBack(h.engine.clone(), None));
    let (_, done) = h.next_in(TaskState::Completed).await;
    assert_eq!(done.error, None);
    assert!(h.engine.containers().is_empty());
}

#[actix_rt::test]
async fn a_container_whose_start_fails_is_removed_at_once() {
    let engine = Arc::new(FakeEngine::new());
    engine.fail_next_start("exec: \"/nope\": no such file or directory");
    let mut h = Harness::start(engine, assignment(serde_json::json!({})), None, true);
    let (_, failed) = h.next_in(TaskState::Failed).await;
    assert!(failed.error.unwrap().contains("/nope"));
    assert!(
        h.engine.containers().is_empty(),
        "a Created container is left"
    );
}

#[actix_rt::test]
async fn a_container_whose_create_fails_is_removed_at_once() {
    let engine = Arc::new(FakeEngine::new());
    engine.fail_next_create("invalid environment");
    let mut h = Harness::start(engine, assignment(serde_json::json!({})), None, true);
    let (_, failed) = h.next_in(TaskState::Failed).await;
    assert!(failed.error.unwrap().contains("invalid environment"));
    assert!(
        h.engine.containers().is_empty(),
        "a Created container is left"
    );
}

#[actix_rt::test]
async fn out_of_memory_is_the_reason_of_the_exit() {
    let mut h = Harness::new_task(serde_json::json!({"memory_mb": 64}));
    h.next_in(TaskState::Running).await;
    h.engine.out_of_memory(&h.running_container());
    let (_, failed) = h.next_in(TaskState::Failed).await;
    assert_eq!(
        failed.error.as_deref(),
        Some("out of memory: killed at its 64 MB limit (exit code 137)")
    );
}

#[actix_rt::test]
async fn out_of_memory_is_read_from_the_container_when_the_event_is_late() {
    let mut h = Harness::new_task(serde_json::json!({"memory_mb": 64}));
    h.next_in(TaskState::Running).await;
    h.engine.out_of_memory_without_event(&h.running_container());
    let (_, failed) = h.next_in(TaskState::Failed).await;
    assert_eq!(
        failed.error.as_deref(),
        Some("out of memory: killed at its 64 MB limit (exit code 137)")
    );
}

#[actix_rt::test]
async fn a_container_removed_behind_the_workers_back_is_replaced() {
    let mut h = Harness::new_task(serde_json::json!({"restart": {"policy": "always"}}));
    let (_, first) = h.next_in(TaskState::Running).await;
    h.engine.kill(&h.running_container());
    let (_, waiting) = h.next_in(TaskState::Scheduled).await;
    assert_eq!(waiting.exit_code, Some(137));
    let (_, again) = h.next_in(TaskState::Running).await;
    assert_ne!(again.container_id, first.container_id);
    assert_eq!(h.engine.containers().len(), 1);
}

#[actix_rt::test]
async fn a_stop_of_a_task_assigned_while_the_engine_is_down_needs_no_engine() {
    let engine = Arc::new(FakeEngine::new());
    let h = Harness::start(engine, assignment(serde_json::json!({})), None, false);
    let stopped = h.supervisor.send(Stop).await.unwrap().unwrap();
    assert_eq!(stopped.state, TaskState::Completed);
    assert!(h.engine.calls().is_empty());
}

#[actix_rt::test]
async fn a_stop_after_a_restart_finds_a_container_its_record_does_not_name() {
    // The earlier process created and started the container, and was
    // killed before it recorded so: its record says Scheduled.
    let (engine, assignment, mut status, _) = adopted(0);
    status.state = TaskState::Scheduled;
    status.container_id = None;
    let h = Harness::start(engine, assignment, Some(status), false);
    let stop = actix_rt::spawn(h.supervisor.send(Stop));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !stop.is_finished(),
        "answered while the container still runs"
    );
    h.supervisor.do_send(EngineBack(h.engine.clone(), None));
    let stopped = stop.await.unwrap().unwrap().unwrap();
    assert_eq!(stopped.state, TaskState::Completed);
    assert!(h.engine.containers().is_empty());
    assert!(
        !h.engine.calls().iter().any(|c| c.starts_with("create ")),
        "{:?}",
        h.engine.calls()
    );
}

#[actix_rt::test]
async fn a_stop_asked_before_the_worker_restarted_is_finished() {
    let (engine, assignment, status, _) = adopted(0);
    tokio::time::pause();
    let (tx, mut statuses) = mpsc::unbounded_channel();
    let parent = Parent(tx).start();
    let shared: SharedEngine = engine.clone();
    TaskSupervisor::new(
        NODE.to_string(),
        assignment,
        status,
        parent.recipient(),
        Some(shared),
        Origin::Stored {
            stop_requested: true,
        },
        Backoff::default(),
    )
    .start();
    let (_, done) = statuses.recv().await.unwrap();
    assert_eq!(done.state, TaskState::Completed);
    assert!(engine.containers().is_empty());
}
