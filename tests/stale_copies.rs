//! Stale copies: a worker that was cut off (frozen, or killed and started
//! again) must not keep running an attempt the manager no longer counts.
//! Real `cube` processes, the real engine, loopback ports.
//!
//! The invariant every test checks: within a bounded time, each task has
//! at most one running container, it is the manager's current attempt (its
//! `cube.attempt` and `cube.node` labels match the record), and the manager
//! sees the task Running exactly once; it then stays so for a few more
//! heartbeats.

mod common;

use std::time::{Duration, Instant};

use common::*;
use cube::client::Client;
use cube::task::TaskRecord;
use cube::task::TaskState;
use uuid::Uuid;

/// For steps that only set the scene (an image pull, a first start).
const SETUP: Duration = Duration::from_secs(60);
/// For the cluster to converge after a fault ends.
const DEADLINE: Duration = Duration::from_secs(15);
/// How long a converged cluster is watched for a copy coming back.
const STEADY: Duration = Duration::from_secs(3);
const HEARTBEAT: &str = "heartbeat_ms = 250";

fn serve(name: &str) -> serde_json::Value {
    echo_spec(name, &["/echo", "serve", "7777"])
}

async fn submit(cluster: &Cluster, spec: &serde_json::Value) -> String {
    let r = cluster.post(spec).await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// One container of a task, as the engine lists it.
#[derive(Debug, Clone, PartialEq)]
struct Copy {
    id: String,
    state: String,
    task: String,
    attempt: String,
    node: String,
}

/// Every container (any state) labelled with one of these tasks.
fn copies(tasks: &[String]) -> Vec<Copy> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            "label=cube.task",
            "--format",
            "{{.ID}}\t{{.State}}\t{{.Label \"cube.task\"}}\t{{.Label \"cube.attempt\"}}\t{{.Label \"cube.node\"}}",
        ])
        .output()
        .expect("docker CLI missing");
    assert!(out.status.success(), "docker ps failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let [id, state, task, attempt, node] = f[..] else {
                return None;
            };
            tasks.iter().any(|t| t == task).then(|| Copy {
                id: id.into(),
                state: state.into(),
                task: task.into(),
                attempt: attempt.into(),
                node: node.into(),
            })
        })
        .collect()
}

/// Why the invariant does not hold for these tasks now, if it does not:
/// each is Running in the manager's records, and its only container (in any
/// state) runs and is the record's attempt on the record's node.
async fn violation(client: &Client, tasks: &[String]) -> Option<String> {
    let all = copies(tasks);
    let records = match client.tasks().await {
        Ok(records) => records,
        Err(e) => return Some(format!("the manager does not answer: {e}")),
    };
    for id in tasks {
        let matching: Vec<&TaskRecord> =
            records.iter().filter(|r| r.id.to_string() == *id).collect();
        let [record] = matching[..] else {
            return Some(format!(
                "the manager lists task {id} {} times",
                matching.len()
            ));
        };
        if record.state != TaskState::Running {
            return Some(format!(
                "task {id} is {} ({:?})",
                record.state, record.error
            ));
        }
        let mine: Vec<&Copy> = all.iter().filter(|c| c.task == *id).collect();
        let running = mine.iter().filter(|c| c.state == "running").count();
        if running > 1 {
            return Some(format!(
                "task {id} has {running} running containers: {mine:?}"
            ));
        }
        let [only] = mine[..] else {
            return Some(format!("task {id} has {} containers: {mine:?}", mine.len()));
        };
        let current = only.state == "running"
            && Some(&only.id) == record.container_id.as_ref()
            && only.attempt == record.attempt.to_string()
            && Some(&only.node) == record.node.as_ref();
        if !current {
            return Some(format!(
                "task {id}: its container {only:?} is not the record's attempt {} on {:?} ({:?})",
                record.attempt, record.node, record.container_id
            ));
        }
    }
    None
}

/// What the engine and the processes say, for a failure message.
fn diagnose(cluster: &Cluster, tasks: &[String]) -> String {
    format!("containers: {:#?}\n{}", copies(tasks), cluster.logs())
}

/// Waits until the invariant holds (by `deadline`), then checks it keeps
/// holding for `STEADY`.
async fn converge_and_stay(cluster: &Cluster, tasks: &[String], deadline: Instant, after: &str) {
    let client = cluster.client();
    loop {
        let Some(why) = violation(&client, tasks).await else {
            break;
        };
        if Instant::now() >= deadline {
            panic!(
                "{after}: the cluster did not converge by its deadline: {why}\n{}",
                diagnose(cluster, tasks)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let steady = Instant::now() + STEADY;
    while Instant::now() < steady {
        if let Some(why) = violation(&client, tasks).await {
            panic!(
                "{after}: the cluster converged, then: {why}\n{}",
                diagnose(cluster, tasks)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `check` holds, panicking by `deadline` with the cluster's
/// state and logs.
async fn until<F, Fut>(
    cluster: &Cluster,
    tasks: &[String],
    what: &str,
    deadline: Instant,
    mut check: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while !check().await {
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}\n{}", diagnose(cluster, tasks));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn record(cluster: &Cluster, id: &str) -> Option<TaskRecord> {
    cluster.client().task(id).await.ok()
}

async fn node_state(cluster: &Cluster, name: &str) -> Option<String> {
    let nodes = cluster.client().nodes().await.ok()?;
    let node = nodes.into_iter().find(|n| n.name == name)?;
    Some(node.state.as_str().to_string())
}

async fn worker_address(cluster: &Cluster, name: &str) -> String {
    let nodes = cluster.client().nodes().await.unwrap();
    nodes.into_iter().find(|n| n.name == name).unwrap().address
}

/// How often the manager logged that `node` went down.
fn downs(cluster: &Cluster, node: &str) -> usize {
    cluster.nodes[0]
        .log_text()
        .matches(&format!("worker {node} is down"))
        .count()
}

/// The supervisor of a task on this worker ended it by stopping it (these
/// are the only ends a stop gives).
fn stopped_in(log: &str, id: &str) -> bool {
    [
        format!("supervisor: task {id} container stopped and removed"),
        format!("supervisor: task {id} stopped before its container ran"),
        format!("supervisor: task {id} stopped; its container was gone already"),
    ]
    .iter()
    .any(|line| log.contains(line.as_str()))
}

/// The bug this guards against: "Two copies forever after a frozen worker
/// resumes". Assignments sent to a frozen worker wait in its socket; the
/// manager moves those tasks; on SIGCONT the worker takes the stale
/// assignments and starts attempt 1 of tasks that run as attempt 2
/// elsewhere. The manager must tell it to stop them, and it must.
///
/// Over TLS a new connection to a frozen worker never finishes its
/// handshake, so an assignment waits in its socket only on a connection
/// the manager opened before the freeze: the scene starts with one task on
/// each worker, and the freeze follows at once.
#[tokio::test]
async fn stale_assignments_taken_by_a_thawed_worker_are_stopped() {
    ensure_image();
    let cluster = Cluster::split_tuned(
        "round-robin",
        "down_after_ms = 1500",
        &[HEARTBEAT, HEARTBEAT],
    );
    cluster.ready().await;
    let (frozen, other) = (
        cluster.worker_names[0].clone(),
        cluster.worker_names[1].clone(),
    );
    let worker = cluster.worker_client(&worker_address(&cluster, &frozen).await, &frozen);

    // One task on each worker: the manager's connections to both are open
    // (pooled) when one of them freezes.
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(submit(&cluster, &serve("warm")).await);
    }
    for id in &ids {
        cluster.wait_state(id, "Running", SETUP).await;
    }
    let mut moved = Vec::new();
    for id in &ids {
        if record(&cluster, id).await.unwrap().node.as_deref() == Some(frozen.as_str()) {
            moved.push(id.clone());
        }
    }
    assert_eq!(moved.len(), 1, "round-robin puts one on each");
    // Frozen: an assignment sent on the open connection waits in its
    // socket (the kernel takes it); new connections hang in the handshake.
    cluster.nodes[1].pause();
    let paused = Instant::now();
    let mut sent = Vec::new();
    for _ in 0..6 {
        let id = submit(&cluster, &serve("stale")).await;
        let r = record(&cluster, &id).await.unwrap();
        if r.node.as_deref() == Some(frozen.as_str()) {
            assert_eq!((r.state, r.attempt), (TaskState::Scheduled, 1), "{r:?}");
            sent.push(id.clone());
            moved.push(id.clone());
        }
        ids.push(id);
    }
    assert!(
        paused.elapsed() < Duration::from_millis(1500) && !sent.is_empty(),
        "no task was sent to the frozen worker before it went down ({:?}); the scene is not set",
        paused.elapsed()
    );

    // The manager moves them to the other worker as attempt 2. Thawed as
    // soon as they are sent there (not once they run): a longer freeze
    // lets the frozen worker's keep-alive (5 s) run out, and on waking it
    // would close the connection holding the stale assignments unread
    // (the manager then finds the task moved and sends nothing stale).
    let client = cluster.client();
    let deadline = Instant::now() + SETUP;
    until(
        &cluster,
        &ids,
        "every task to be sent to the live worker",
        deadline,
        || {
            let client = client.clone();
            let (ids, moved, other) = (&ids, &moved, &other);
            async move {
                let Ok(records) = client.tasks().await else {
                    return false;
                };
                ids.iter().all(|id| {
                    records.iter().any(|r| {
                        r.id.to_string() == *id
                            && matches!(r.state, TaskState::Scheduled | TaskState::Running)
                            && r.node.as_deref() == Some(other.as_str())
                            && r.attempt == if moved.contains(id) { 2 } else { 1 }
                    })
                })
            }
        },
    )
    .await;
    assert_eq!(node_state(&cluster, &frozen).await.as_deref(), Some("down"));
    // The frozen worker has started nothing of what was sent after the
    // freeze (the warm one's first copy runs on, frozen).
    let started: Vec<Copy> = copies(&ids[2..])
        .into_iter()
        .filter(|c| c.node == frozen)
        .collect();
    assert!(started.is_empty(), "{started:?}");

    // SIGCONT: it takes the stale assignments...
    cluster.nodes[1].resume();
    let thawed = Instant::now();
    let deadline = thawed + DEADLINE;
    let assigned = |id: &String| {
        cluster.nodes[1]
            .log_text()
            .contains(&format!("task {id} attempt 1 assigned"))
    };
    until(
        &cluster,
        &ids,
        "the thawed worker to take a stale assignment",
        deadline,
        || {
            let any = sent.iter().any(assigned);
            async move { any }
        },
    )
    .await;
    let stale: Vec<String> = sent.iter().filter(|id| assigned(id)).cloned().collect();
    // ... and is told to stop them, and does.
    until(
        &cluster,
        &ids,
        "the thawed worker to stop its stale attempts",
        deadline,
        || {
            let log = cluster.nodes[1].log_text();
            let all = stale.iter().all(|id| stopped_in(&log, id));
            async move { all }
        },
    )
    .await;
    // The moved tasks may still be starting on the live worker (it was
    // thawed as soon as they were sent there): converged within SETUP.
    converge_and_stay(&cluster, &ids, thawed + SETUP, "after SIGCONT").await;
    println!(
        "{} stale assignments taken and stopped; converged {:.2} s after SIGCONT",
        stale.len(),
        thawed.elapsed().as_secs_f64() - STEADY.as_secs_f64()
    );
    // The thawed worker holds no live attempt of any of them, and is ready.
    let held = worker.worker_tasks().await.unwrap();
    for s in &held {
        assert!(
            s.state.is_terminal() || !ids.contains(&s.task_id.to_string()),
            "the thawed worker still holds {s:?}"
        );
    }
    assert_eq!(
        node_state(&cluster, &frozen).await.as_deref(),
        Some("ready")
    );
}

/// A task moves away from a frozen worker and comes back to it as a newer
/// attempt; then that worker is killed and started again. Unlike
/// engine_faults.rs (where the worker is killed, not frozen), the first
/// copy here is stopped on the manager's word after a SIGCONT, and the
/// manager stays up through the restart.
#[tokio::test]
async fn a_task_back_on_a_thawed_worker_survives_a_kill_of_that_worker() {
    ensure_image();
    // A longer threshold here: the kill -9 and restart at the end must
    // come back before it (checked), or the task would rightly move again.
    let mut cluster = Cluster::split_tuned(
        "round-robin",
        "down_after_ms = 2500",
        &[HEARTBEAT, HEARTBEAT],
    );
    cluster.ready().await;
    let id = submit(&cluster, &serve("back")).await;
    let task: Uuid = id.parse().unwrap();
    let ids = vec![id.clone()];
    let first = cluster.wait_state(&id, "Running", SETUP).await;
    let home = first.node.clone().unwrap();
    let (a, b) = if home == cluster.worker_names[0] {
        (1, 2)
    } else {
        (2, 1)
    };
    let away = cluster.worker_names[b - 1].clone();
    let worker_a = cluster.worker_client(&worker_address(&cluster, &home).await, &home);

    // A freezes: attempt 2 runs on B; A thaws and its copy of attempt 1 goes.
    move_by_freezing(&cluster, &ids, &id, a, 2, "A").await;
    let deadline = Instant::now() + DEADLINE;
    until(&cluster, &ids, "A to be ready again", deadline, || {
        let state = node_state(&cluster, &home);
        async move { state.await.as_deref() == Some("ready") }
    })
    .await;
    let second = record(&cluster, &id).await.unwrap();
    assert_eq!(
        (second.attempt, second.node.as_deref()),
        (2, Some(away.as_str()))
    );

    // B freezes: attempt 3 runs on A; B thaws and its copy goes.
    move_by_freezing(&cluster, &ids, &id, b, 3, "B").await;
    let third = record(&cluster, &id).await.unwrap();
    assert_eq!(
        (third.attempt, third.node.as_deref()),
        (3, Some(home.as_str()))
    );

    // kill -9 of A, started again at once from its own records.
    let downs_before = downs(&cluster, &home);
    cluster.nodes[a].restart();
    let restarted = Instant::now();
    let deadline = restarted + DEADLINE;
    until(
        &cluster,
        &ids,
        "A to hold attempt 3 again",
        deadline,
        || {
            let worker = worker_a.clone();
            async move {
                worker.worker_tasks().await.is_ok_and(|held| {
                    held.iter().any(|t| {
                        t.task_id == task && t.attempt == 3 && t.state == TaskState::Running
                    })
                })
            }
        },
    )
    .await;
    converge_and_stay(&cluster, &ids, deadline, "after A's restart").await;
    assert_eq!(
        downs(&cluster, &home),
        downs_before,
        "A was marked down during its restart: the machine is too slow for this test's threshold"
    );
    let now = record(&cluster, &id).await.unwrap();
    assert_eq!(now.state, TaskState::Running, "{now:?}");
    assert_eq!((now.attempt, now.node.as_deref()), (3, Some(home.as_str())));
    assert_eq!(
        now.container_id, third.container_id,
        "A re-adopted another container"
    );
    println!(
        "attempt 3 re-adopted after kill -9; converged {:.2} s after the restart",
        restarted.elapsed().as_secs_f64() - STEADY.as_secs_f64()
    );
}

/// DELETE of a task: 200 (done) or 202 (its worker is out of reach).
async fn delete(cluster: &Cluster, id: &str) -> u16 {
    let r = cluster
        .http()
        .delete(format!("{}/tasks/{id}", cluster.manager_url))
        .send()
        .await
        .expect("manager unreachable");
    let status = r.status().as_u16();
    assert!(
        status == 200 || status == 202,
        "DELETE answered {status}: {:?}",
        r.text().await
    );
    status
}

/// A DELETE answered 200 means the container is gone: checked right after
/// each 200.
async fn delete_checked(cluster: &Cluster, id: &str) -> u16 {
    let status = delete(cluster, id).await;
    if status == 200 {
        let left = copies(&[id.to_string()]);
        assert!(
            left.is_empty(),
            "DELETE of {id} answered 200 while its container is left: {left:?}\n{}",
            cluster.logs()
        );
    }
    status
}

/// Stops the task with DELETEs until one is answered 200, checking each;
/// then the task must be Completed with no container.
async fn stop_until_done(cluster: &Cluster, id: &str, deadline: Instant, after: &str) {
    let ids = vec![id.to_string()];
    let mut answers = Vec::new();
    loop {
        let status = delete_checked(cluster, id).await;
        answers.push(status);
        if status == 200 {
            break;
        }
        if Instant::now() >= deadline {
            panic!(
                "{after}: no DELETE answered 200 within {DEADLINE:?} (answers {answers:?})\n{}",
                diagnose(cluster, &ids)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = record(cluster, id).await.unwrap();
    assert_eq!(done.state, TaskState::Completed, "{done:?}");
    assert!(copies(&ids).is_empty());
    println!("{after}: DELETE answers {answers:?}");
}

/// A DELETE lands while the task's worker is dead and is started again
/// before it is marked down: the stop is carried out when it registers.
#[tokio::test]
async fn a_stop_while_the_worker_restarts_ends_the_task_and_its_container() {
    ensure_image();
    let mut cluster = Cluster::split_tuned(
        "round-robin",
        "down_after_ms = 2500",
        &[HEARTBEAT, HEARTBEAT],
    );
    cluster.ready().await;
    let id = submit(&cluster, &serve("stopped")).await;
    let ids = vec![id.clone()];
    let running = cluster.wait_state(&id, "Running", SETUP).await;
    let home = running.node.clone().unwrap();
    let a = if home == cluster.worker_names[0] {
        1
    } else {
        2
    };

    cluster.nodes[a].kill9();
    // The container outlives its worker process.
    assert_eq!(copies(&ids).len(), 1);
    assert_eq!(
        delete_checked(&cluster, &id).await,
        202,
        "the worker is dead"
    );
    let asked = record(&cluster, &id).await.unwrap();
    assert_eq!(asked.state, TaskState::Running, "{asked:?}");

    let restarted = Instant::now();
    cluster.nodes[a].restart();
    let deadline = restarted + DEADLINE;
    // Without another DELETE: the worker is told to stop it when it
    // registers.
    until(
        &cluster,
        &ids,
        "the task to end and its container to go",
        deadline,
        || {
            let r = record(&cluster, &id);
            let gone = copies(&ids).is_empty();
            async move { gone && r.await.is_some_and(|r| r.state == TaskState::Completed) }
        },
    )
    .await;
    println!(
        "stop carried out {:.2} s after the worker restarted",
        restarted.elapsed().as_secs_f64()
    );
    stop_until_done(&cluster, &id, deadline, "after the stop").await;
}

/// DELETEs sent over and over while the worker restarts: every 200 comes
/// only once the container is gone.
#[tokio::test]
async fn stops_sent_during_a_worker_restart_answer_200_only_once_the_container_is_gone() {
    ensure_image();
    let mut cluster = Cluster::split_tuned(
        "round-robin",
        "down_after_ms = 2500",
        &[HEARTBEAT, HEARTBEAT],
    );
    cluster.ready().await;
    let id = submit(&cluster, &serve("hammered")).await;
    let running = cluster.wait_state(&id, "Running", SETUP).await;
    let home = running.node.clone().unwrap();
    let a = if home == cluster.worker_names[0] {
        1
    } else {
        2
    };

    cluster.nodes[a].kill9();
    assert_eq!(
        delete_checked(&cluster, &id).await,
        202,
        "the worker is dead"
    );
    let restarted = Instant::now();
    cluster.nodes[a].restart();
    stop_until_done(
        &cluster,
        &id,
        restarted + DEADLINE,
        "DELETEs during the restart",
    )
    .await;
}

/// Kills the worker of a Running task, asks for the stop (202: the worker
/// is dead) and waits until the manager has marked it down and drained it,
/// which ends the stopping task while its container still runs on the dead
/// worker's machine. The cluster, the worker's index, the task.
async fn stopped_and_drained(name: &str) -> (Cluster, usize, String) {
    ensure_image();
    let mut cluster = Cluster::split_tuned(
        "round-robin",
        "down_after_ms = 1500",
        &[HEARTBEAT, HEARTBEAT],
    );
    cluster.ready().await;
    let id = submit(&cluster, &serve(name)).await;
    let ids = vec![id.clone()];
    let running = cluster.wait_state(&id, "Running", SETUP).await;
    let home = running.node.clone().unwrap();
    let a = if home == cluster.worker_names[0] {
        1
    } else {
        2
    };
    cluster.nodes[a].kill9();
    assert_eq!(
        delete_checked(&cluster, &id).await,
        202,
        "the worker is dead"
    );
    let deadline = Instant::now() + DEADLINE;
    until(
        &cluster,
        &ids,
        "the worker to be marked down",
        deadline,
        || {
            let state = node_state(&cluster, &home);
            async move { state.await.as_deref() == Some("down") }
        },
    )
    .await;
    let drained = record(&cluster, &id).await.unwrap();
    assert_eq!(drained.state, TaskState::Completed, "{drained:?}");
    // Its container still runs on the dead worker's machine.
    let left = copies(&ids);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].state, "running", "{left:?}");
    (cluster, a, id)
}

/// The worker stays dead past the threshold: the manager ends the stopping
/// task when it drains the node; its container is removed when the worker
/// comes back.
#[tokio::test]
async fn a_stop_of_a_task_whose_worker_stays_down_ends_it_and_its_container_later() {
    let (mut cluster, a, id) = stopped_and_drained("drained").await;
    let ids = vec![id.clone()];
    let restarted = Instant::now();
    cluster.nodes[a].restart();
    let deadline = restarted + DEADLINE;
    until(
        &cluster,
        &ids,
        "the restarted worker to remove the container",
        deadline,
        || {
            let gone = copies(&ids).is_empty();
            async move { gone }
        },
    )
    .await;
    println!(
        "container of the drained task removed {:.2} s after the worker restarted",
        restarted.elapsed().as_secs_f64()
    );
    stop_until_done(&cluster, &id, deadline, "after the worker came back").await;
}

/// A DELETE of a task the manager ended by draining its down worker, while
/// that task's container still runs there, must not be answered 200 (the
/// API promises 200 "once the container is gone"; 202 "if its worker is
/// down"). FAILS today: the manager answers 200 because the record is
/// terminal (src/manager/actor.rs `StopTask`: `done =
/// record.state.is_terminal()` when core `stop` names no worker).
#[tokio::test]
async fn a_delete_of_a_drained_task_whose_container_still_runs_is_not_done() {
    let (cluster, _a, id) = stopped_and_drained("drained-delete").await;
    assert_eq!(delete_checked(&cluster, &id).await, 202);
}

/// Freezes node `frozen` (SIGSTOP) until task `id` runs as `attempt`
/// elsewhere, then thaws it and waits until one copy of each task is left,
/// and stays so.
async fn move_by_freezing(
    cluster: &Cluster,
    ids: &[String],
    id: &str,
    frozen: usize,
    attempt: u32,
    name: &str,
) {
    cluster.nodes[frozen].pause();
    let deadline = Instant::now() + SETUP;
    let what = format!("attempt {attempt} to run off {name}");
    until(cluster, ids, &what, deadline, || {
        let r = record(cluster, id);
        async move {
            r.await
                .is_some_and(|r| r.state == TaskState::Running && r.attempt == attempt)
        }
    })
    .await;
    cluster.nodes[frozen].resume();
    let deadline = Instant::now() + DEADLINE;
    let after = format!("after {name}'s SIGCONT");
    converge_and_stay(cluster, ids, deadline, &after).await;
}
