//! A cluster of one manager and several worker processes on loopback, the
//! real engine: placement over all workers, a worker's machine dying, a
//! worker frozen past the down threshold and thawed, a task too big for any
//! node, two workers under one name.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use cube::task::TaskRecord;

const T: Duration = Duration::from_secs(60);

async fn submit(cluster: &Cluster, spec: &serde_json::Value) -> String {
    let r = cluster.post(spec).await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn serve(name: &str) -> serde_json::Value {
    echo_spec(name, &["/echo", "serve", "7777"])
}

/// Submits `n` serving tasks and waits until all run; their records.
async fn run_tasks(cluster: &Cluster, name: &str, n: usize) -> Vec<TaskRecord> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(submit(cluster, &serve(name)).await);
    }
    let mut records = Vec::new();
    for id in &ids {
        records.push(cluster.wait_state(id, "Running", T).await);
    }
    records
}

fn per_node(records: &[TaskRecord]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        *out.entry(r.node.clone().unwrap()).or_default() += 1;
    }
    out
}

/// Waits until every task runs on a node other than `gone`, each with
/// exactly one container; their records.
async fn wait_moved(cluster: &Cluster, ids: &[String], gone: &str) -> Vec<TaskRecord> {
    let client = cluster.client();
    let mut out = Vec::new();
    for id in ids {
        let deadline = Instant::now() + T;
        let record = loop {
            if let Ok(t) = client.task(id).await
                && t.state.as_str() == "Running"
                && t.node.as_deref() != Some(gone)
            {
                break t;
            }
            if Instant::now() > deadline {
                let last = client.task(id).await;
                panic!(
                    "timed out after {T:?} waiting for task {id} to run off {gone}; last {last:?}\n{}",
                    cluster.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        out.push(record);
    }
    out
}

async fn node_state(cluster: &Cluster, name: &str) -> Option<String> {
    let nodes = cluster.client().nodes().await.ok()?;
    let node = nodes.into_iter().find(|n| n.name == name)?;
    Some(node.state.as_str().to_string())
}

#[tokio::test]
async fn tasks_spread_over_three_workers_and_leave_a_dead_machine() {
    ensure_image();
    let mut cluster = Cluster::split_with("spread", &["", "", ""]);
    cluster.ready().await;

    // GET /nodes: every node ready, heartbeating, with capacity and usage.
    let client = cluster.client();
    let nodes = wait_for("every node to have heartbeated", T, || {
        let client = client.clone();
        async move {
            let nodes = client.nodes().await.ok()?;
            nodes
                .iter()
                .all(|n| n.last_heartbeat.is_some() && n.usage.is_some())
                .then_some(nodes)
        }
    })
    .await;
    assert_eq!(nodes.len(), 3);
    for n in &nodes {
        assert_eq!(n.state.as_str(), "ready", "{n:?}");
        assert!(n.capacity.memory_mb > 0 && n.capacity.cpus >= 1.0, "{n:?}");
        let usage = n.usage.as_ref().unwrap();
        assert!(usage.memory_available_mb > 0, "{n:?}");
    }

    let records = run_tasks(&cluster, "web", 6).await;
    let spread = per_node(&records);
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(spread.values().all(|&n| n == 2), "{spread:?}");
    let nodes = cluster.client().nodes().await.unwrap();
    for n in &nodes {
        assert_eq!(n.tasks, 2, "{n:?}");
        assert_eq!(n.allocated.memory_mb, 2 * 64, "{n:?}");
    }

    // The machine of the first worker dies: its process and its containers.
    let dead = cluster.worker_names[0].clone();
    let doomed: Vec<String> = records
        .iter()
        .filter(|r| r.node.as_deref() == Some(dead.as_str()))
        .map(|r| r.id.to_string())
        .collect();
    let died = Instant::now();
    cluster.nodes[1].kill9();
    for id in containers_of_node(&dead) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &id])
            .output();
    }
    let moved = wait_moved(&cluster, &doomed, &dead).await;
    println!(
        "tasks of a dead worker running elsewhere after {:.2} s",
        died.elapsed().as_secs_f64()
    );
    for r in &moved {
        assert_eq!(r.attempt, 2, "{r:?}");
        assert_eq!(
            containers_of_task(&r.id.to_string()),
            vec![r.container_id.clone().unwrap()]
        );
    }
    assert_eq!(node_state(&cluster, &dead).await.as_deref(), Some("down"));
    // Every task runs, once, on the two live workers.
    let tasks = cluster.client().tasks().await.unwrap();
    assert!(tasks.iter().all(|t| t.state.as_str() == "Running"));
    let spread = per_node(&tasks);
    assert_eq!(spread.len(), 2, "{spread:?}");
    assert!(!spread.contains_key(&dead));
}

#[tokio::test]
async fn a_frozen_worker_thaws_to_find_its_tasks_moved_and_stops_its_copies() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &["", ""]);
    cluster.ready().await;
    let records = run_tasks(&cluster, "frozen", 4).await;
    let frozen = cluster.worker_names[0].clone();
    let on_frozen: Vec<String> = records
        .iter()
        .filter(|r| r.node.as_deref() == Some(frozen.as_str()))
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(on_frozen.len(), 2);

    // SIGSTOP past the down threshold: its containers keep running.
    cluster.nodes[1].pause();
    let moved = wait_moved(&cluster, &on_frozen, &frozen).await;
    assert_eq!(node_state(&cluster, &frozen).await.as_deref(), Some("down"));
    // For now two copies run: the frozen worker's and the new one.
    for r in &moved {
        assert_eq!(containers_of_task(&r.id.to_string()).len(), 2);
    }

    // SIGCONT: the worker learns its tasks moved and stops its copies.
    cluster.nodes[1].resume();
    for r in &moved {
        let id = r.id.to_string();
        let keep = r.container_id.clone().unwrap();
        let what = format!("the thawed worker to remove its copy of {id}");
        wait_for(&what, T, || {
            let left = containers_of_task(&id);
            let keep = keep.clone();
            async move { (left == vec![keep]).then_some(()) }
        })
        .await;
    }
    wait_for("the thawed worker to be ready again", T, || {
        let state = node_state(&cluster, &frozen);
        async move { (state.await.as_deref() == Some("ready")).then_some(()) }
    })
    .await;
    // Its stale reports changed nothing: every task runs once, where it moved.
    for r in &moved {
        let now = cluster.client().task(&r.id.to_string()).await.unwrap();
        assert_eq!(now.state.as_str(), "Running");
        assert_eq!(now.node, r.node);
        assert_eq!(now.attempt, 2);
        assert_eq!(now.container_id, r.container_id);
    }
    let tasks = cluster.client().tasks().await.unwrap();
    for t in &tasks {
        assert_eq!(containers_of_task(&t.id.to_string()).len(), 1, "{t:?}");
    }
}

#[tokio::test]
async fn a_task_too_big_for_any_node_waits_with_a_reason_until_a_bigger_worker_joins() {
    ensure_image();
    let mut cluster = Cluster::split_with("bin-pack", &["[worker.capacity]\nmemory_mb = 512"]);
    cluster.ready().await;
    let mut spec = serve("big");
    spec["memory_mb"] = 2048.into();
    let id = submit(&cluster, &spec).await;
    let client = cluster.client();
    let pending = wait_for("the task to say why it waits", T, || {
        let client = client.clone();
        let id = id.clone();
        async move {
            let t = client.task(&id).await.ok()?;
            t.error.is_some().then_some(t)
        }
    })
    .await;
    assert_eq!(pending.state.as_str(), "Pending");
    let reason = pending.error.unwrap();
    assert!(reason.contains("no node has 2048 MB"), "{reason}");

    // A bigger worker joins: the task is placed at once, on it.
    cluster.add_worker("[worker.capacity]\nmemory_mb = 4096");
    let big = cluster.worker_names[1].clone();
    let running = cluster.wait_state(&id, "Running", T).await;
    assert_eq!(running.node.as_deref(), Some(big.as_str()));
    assert_eq!(running.error, None);
    let nodes = cluster.client().nodes().await.unwrap();
    let node = nodes.iter().find(|n| n.name == big).unwrap();
    assert_eq!(node.capacity.memory_mb, 4096);
    assert_eq!(node.allocated.memory_mb, 2048);
}

#[tokio::test]
async fn a_second_live_worker_under_a_taken_name_is_refused() {
    let mut cluster = Cluster::split(1);
    cluster.ready().await;
    let name = cluster.worker_names[0].clone();
    let twin = cluster.add_named_worker(&name, "");
    let status = cluster.nodes[twin]
        .wait_exit(T)
        .await
        .expect("the second worker should give up");
    assert!(!status.success());
    let log = cluster.nodes[twin].log_text();
    assert!(
        log.contains("two live workers cannot share a name"),
        "{log}"
    );
    // The first one is untouched.
    assert!(cluster.nodes[1].alive());
    assert_eq!(node_state(&cluster, &name).await.as_deref(), Some("ready"));
    // Once the first is gone for good, a new process takes the name over.
    cluster.nodes[1].kill9();
    let heir = cluster.add_named_worker(&name, "");
    wait_for("the heir to register", T, || {
        let log = cluster.nodes[heir].log_text();
        async move { log.contains("registered with the manager").then_some(()) }
    })
    .await;
    assert!(cluster.nodes[heir].alive());
}

#[tokio::test]
async fn a_worker_restarted_after_its_tasks_moved_stops_its_old_copies() {
    ensure_image();
    let mut cluster = Cluster::split_with("round-robin", &["", ""]);
    cluster.ready().await;
    let records = run_tasks(&cluster, "restarted", 4).await;
    let gone = cluster.worker_names[0].clone();
    let on_gone: Vec<String> = records
        .iter()
        .filter(|r| r.node.as_deref() == Some(gone.as_str()))
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(on_gone.len(), 2);
    // kill -9 of the worker process only: its containers go on running.
    cluster.nodes[1].kill9();
    let moved = wait_moved(&cluster, &on_gone, &gone).await;
    // It starts again (its engine connection comes up after it registered
    // and was told to stop its moved tasks): the old copies go.
    cluster.nodes[1].restart();
    for r in &moved {
        let id = r.id.to_string();
        let keep = r.container_id.clone().unwrap();
        let what = format!("the restarted worker to remove its copy of {id}");
        wait_for(&what, T, || {
            let left = containers_of_task(&id);
            let keep = keep.clone();
            async move { (left == vec![keep]).then_some(()) }
        })
        .await;
        let now = cluster.client().task(&id).await.unwrap();
        assert_eq!(now.state.as_str(), "Running");
        assert_eq!(now.attempt, 2);
    }
    wait_for("the restarted worker to be ready", T, || {
        let state = node_state(&cluster, &gone);
        async move { (state.await.as_deref() == Some("ready")).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn when_every_worker_goes_silent_at_once_nothing_moves() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &["", ""]);
    cluster.ready().await;
    let records = run_tasks(&cluster, "silent", 4).await;
    // Both workers freeze together (as if the manager's network failed).
    cluster.nodes[1].pause();
    cluster.nodes[2].pause();
    let client = cluster.client();
    wait_for("both workers to be marked down", T, || {
        let client = client.clone();
        async move {
            let nodes = client.nodes().await.ok()?;
            nodes
                .iter()
                .all(|n| n.state.as_str() == "down")
                .then_some(())
        }
    })
    .await;
    // A drain happens in the tick that marks a node down: by now it would
    // have. Nothing moved.
    for r in &records {
        let t = client.task(&r.id.to_string()).await.unwrap();
        assert_eq!((t.state.as_str(), t.attempt), ("Running", 1), "{t:?}");
    }
    assert!(
        cluster.logs().contains("every worker went silent at once"),
        "{}",
        cluster.logs()
    );
    cluster.nodes[1].resume();
    cluster.nodes[2].resume();
    wait_for("both workers to be ready again", T, || {
        let client = client.clone();
        async move {
            let nodes = client.nodes().await.ok()?;
            nodes
                .iter()
                .all(|n| n.state.as_str() == "ready")
                .then_some(())
        }
    })
    .await;
    for r in &records {
        let id = r.id.to_string();
        let t = client.task(&id).await.unwrap();
        assert_eq!((t.state.as_str(), t.attempt), ("Running", 1), "{t:?}");
        assert_eq!(t.container_id, r.container_id);
        assert_eq!(containers_of_task(&id), vec![t.container_id.unwrap()]);
    }
}

#[tokio::test]
async fn a_pending_task_is_placed_as_soon_as_a_task_ends() {
    ensure_image();
    let cluster = Cluster::split_with("epvm", &["[worker.capacity]\nmemory_mb = 512"]);
    cluster.ready().await;
    let mut spec = serve("half");
    spec["memory_mb"] = 400.into();
    let first = submit(&cluster, &spec).await;
    cluster.wait_state(&first, "Running", T).await;
    let second = submit(&cluster, &spec).await;
    let client = cluster.client();
    let pending = wait_for("the second task to say why it waits", T, || {
        let client = client.clone();
        let id = second.clone();
        async move {
            let t = client.task(&id).await.ok()?;
            t.error.is_some().then_some(t)
        }
    })
    .await;
    assert_eq!(pending.state.as_str(), "Pending");
    assert!(
        pending
            .error
            .as_deref()
            .unwrap()
            .contains("no node has 400 MB"),
        "{pending:?}"
    );
    // The user stops the first: its memory is free, the second runs.
    client.stop(&first).await.unwrap();
    let running = cluster.wait_state(&second, "Running", T).await;
    assert_eq!(
        running.node.as_deref(),
        Some(cluster.worker_names[0].as_str())
    );
}
