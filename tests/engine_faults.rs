//! Faults between the worker and the real engine: containers whose start
//! fails, a stop while the engine is out of reach, a task that comes back to
//! a worker as a newer attempt and then loses its worker process.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use common::*;
use cube::client::ClientError;
use cube::runtime::Engine;
use cube::runtime::docker::DockerEngine;
use cube::task::TaskState;
use cube::wire::{Assignment, TaskStatus};
use cube::worker::actor::StatusChanged;
use cube::worker::record::WorkerTaskRecord;
use cube::worker::restart::Backoff;
use cube::worker::supervisor::{Origin, TaskSupervisor};

const T: Duration = Duration::from_secs(60);

async fn submit(cluster: &Cluster, spec: &serde_json::Value) -> String {
    let r = cluster.post(spec).await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_task_whose_command_cannot_start_fails_and_leaves_no_container() {
    ensure_image();
    let cluster = Cluster::dev();
    cluster.ready().await;
    let id = submit(&cluster, &echo_spec("nope", &["/does-not-exist"])).await;
    let failed = cluster.wait_state(&id, "Failed", T).await;
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("/does-not-exist"), "{error}");
    // Removed before the failure was reported.
    assert!(containers_of_task(&id).is_empty());
}

/// Collects a supervisor's statuses.
struct Parent(tokio::sync::mpsc::UnboundedSender<TaskStatus>);

impl Actor for Parent {
    type Context = Context<Self>;
}

impl Handler<StatusChanged> for Parent {
    type Result = ();

    fn handle(&mut self, msg: StatusChanged, _ctx: &mut Context<Self>) {
        let _ = self.0.send(msg.0);
    }
}

#[actix_rt::test]
async fn a_container_whose_environment_cannot_be_set_is_removed() {
    ensure_image();
    let node = unique("nul");
    let _guard = ContainerGuard(vec![node.clone()]);
    let engine = Arc::new(DockerEngine::local());
    engine.connect().await.expect("the engine is up");
    let mut spec = echo_spec("nul", &["/echo"]);
    spec["env"]["BAD"] = "a\u{0}b".into();
    let assignment = Assignment {
        task_id: uuid::Uuid::new_v4(),
        attempt: 1,
        spec: serde_json::from_value(spec).unwrap(),
    };
    let (tx, mut statuses) = tokio::sync::mpsc::unbounded_channel();
    let status = WorkerTaskRecord::new(assignment.clone(), &node).status;
    let _supervisor = TaskSupervisor::new(
        node.clone(),
        assignment,
        status,
        Parent(tx).start().recipient(),
        Some(engine),
        Origin::Assigned,
        Backoff::default(),
    )
    .start();
    let failed = tokio::time::timeout(T, async {
        loop {
            let status = statuses.recv().await.expect("the supervisor went");
            if status.state.is_terminal() {
                return status;
            }
        }
    })
    .await
    .expect("the task did not end");
    assert_eq!(failed.state, TaskState::Failed);
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("null"), "{error}");
    assert!(
        containers_of_node(&node).is_empty(),
        "a Created container is left"
    );
}

#[tokio::test]
async fn a_stop_to_a_worker_whose_engine_is_out_of_reach_is_an_error_until_it_is_done() {
    ensure_image();
    let mut cluster = Cluster::split(1);
    cluster.ready().await;
    let mut spec = echo_spec("held", &["/echo", "serve", "7777"]);
    spec["stop_timeout_s"] = 1.into();
    let id = submit(&cluster, &spec).await;
    let running = cluster.wait_state(&id, "Running", T).await;
    let container = running.container_id.clone().unwrap();
    let node = cluster.client().nodes().await.unwrap().remove(0);
    let worker = cluster.worker_client(&node.address, &node.name);
    let task: uuid::Uuid = id.parse().unwrap();

    // kill -9 of the worker; it comes back, but its engine does not.
    cluster.nodes[1].kill9();
    let log = cluster.dir.path().join("engineless.log");
    let engineless = NodeProc::start(
        cluster.nodes[1].config.clone(),
        log,
        vec![(
            "DOCKER_HOST".into(),
            "unix:///nonexistent/docker.sock".into(),
        )],
    );
    let mut original = std::mem::replace(&mut cluster.nodes[1], engineless);
    wait_for("the worker to answer again", T, || {
        let worker = worker.clone();
        async move { worker.worker_tasks().await.ok().filter(|t| !t.is_empty()) }
    })
    .await;
    let asked = Instant::now();
    let answer = worker.stop_on_worker(task).await;
    match answer {
        Err(ClientError::Api { status: 503, .. }) => {}
        other => panic!("a stop the worker could not do was answered {other:?}"),
    }
    // It waited for the engine: the stop timeout and the margin.
    assert!(
        asked.elapsed() >= Duration::from_secs(11),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(inspect(&container).unwrap()["State"]["Running"], true);

    // The worker comes back with its engine: it finishes the stop it took.
    cluster.nodes[1].kill9();
    original.restart();
    cluster.nodes[1] = original;
    wait_for("the stop to be finished", T, || {
        let worker = worker.clone();
        let gone = containers_of_task(&id).is_empty();
        async move {
            let tasks = worker.worker_tasks().await.ok()?;
            let done = tasks
                .iter()
                .any(|t| t.task_id == task && t.state == TaskState::Completed);
            (gone && done).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_task_back_on_a_worker_as_a_newer_attempt_survives_a_kill_of_that_worker() {
    ensure_image();
    let mut cluster = Cluster::split_with("round-robin", &["", ""]);
    cluster.ready().await;
    let id = submit(&cluster, &echo_spec("back", &["/echo", "serve", "7777"])).await;
    let task: uuid::Uuid = id.parse().unwrap();
    let first = cluster.wait_state(&id, "Running", T).await;
    let home = first.node.clone().unwrap();
    let (a, b) = if home == cluster.worker_names[0] {
        (1, 2)
    } else {
        (2, 1)
    };
    let client = cluster.client();
    let address = |name: String| {
        let client = client.clone();
        async move {
            let nodes = client.nodes().await.unwrap();
            nodes.into_iter().find(|n| n.name == name).unwrap().address
        }
    };
    let worker_a = cluster.worker_client(&address(home.clone()).await, &home);

    // Attempt 1 on A; A dies; attempt 2 runs on B.
    cluster.nodes[a].kill9();
    let client = cluster.client();
    let id2 = id.clone();
    let second = wait_for("the task to move to B", T, || {
        let client = client.clone();
        let id = id2.clone();
        async move {
            let t = client.task(&id).await.ok()?;
            (t.state.as_str() == "Running" && t.attempt == 2).then_some(t)
        }
    })
    .await;
    assert_ne!(second.node.as_deref(), Some(home.as_str()));
    // A comes back and stops its copy of attempt 1 (its record of attempt 1
    // goes through several versions).
    cluster.nodes[a].restart();
    let keep = second.container_id.clone().unwrap();
    wait_for("A to remove its copy of attempt 1", T, || {
        let left = containers_of_task(&id);
        let keep = keep.clone();
        async move { (left == vec![keep]).then_some(()) }
    })
    .await;
    // B dies: attempt 3 runs on A.
    cluster.nodes[b].kill9();
    let third = wait_for("the task to come back to A", T, || {
        let client = client.clone();
        let id = id2.clone();
        async move {
            let t = client.task(&id).await.ok()?;
            (t.state.as_str() == "Running" && t.attempt == 3).then_some(t)
        }
    })
    .await;
    assert_eq!(third.node.as_deref(), Some(home.as_str()));

    // The manager freezes (so it cannot tell A anything); A is killed and
    // starts again from its own records.
    cluster.nodes[0].pause();
    cluster.nodes[a].restart();
    let held = wait_for("A to hold the task again", T, || {
        let worker = worker_a.clone();
        async move {
            let tasks = worker.worker_tasks().await.ok()?;
            tasks
                .into_iter()
                .find(|t| t.task_id == task && t.state == TaskState::Running)
        }
    })
    .await;
    cluster.nodes[0].resume();
    assert_eq!(held.attempt, 3, "A reloaded {held:?}");
    assert_eq!(held.container_id, third.container_id);
}
