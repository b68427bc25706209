//! Restart policies, enforced by the worker's TaskSupervisor with the real
//! engine: on-failure with a limit, exit 0 under on-failure, always.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use cube::task::TaskRecord;

const T: Duration = Duration::from_secs(60);

/// A worker whose back-off starts at 300 ms, so the growing gaps stand out.
const SLOW_BACKOFF: &str = "[worker.restart_backoff]\nfirst_ms = 300";

async fn submit(cluster: &Cluster, spec: &serde_json::Value) -> String {
    let r = cluster.post(spec).await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn exits(name: &str, code: u8, after_ms: u32, restart: serde_json::Value) -> serde_json::Value {
    let mut spec = echo_spec(
        name,
        &["/echo", "exit", &code.to_string(), &after_ms.to_string()],
    );
    spec["restart"] = restart;
    spec
}

#[tokio::test]
async fn on_failure_restarts_with_growing_gaps_then_fails_at_max_retries() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &[SLOW_BACKOFF]);
    cluster.ready().await;
    let spec = exits(
        "crash",
        3,
        300,
        serde_json::json!({"policy": "on-failure", "max_retries": 3}),
    );
    let id = submit(&cluster, &spec).await;
    // Follow the record: each run's start, by restart count; never more
    // than one container of the task at a time.
    let client = cluster.client();
    let mut starts: BTreeMap<u32, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    // The back-off the supervisor announced for each restart (from the
    // record while it waits: "...; restart N in X ms").
    let mut delays: BTreeMap<u32, i64> = BTreeMap::new();
    let deadline = Instant::now() + T;
    let last: TaskRecord = loop {
        let containers = containers_of_task(&id).len();
        assert!(containers <= 1, "{containers} containers of one task");
        let t = client.task(&id).await.unwrap();
        if let Some(at) = t.started_at {
            starts.insert(t.restart_count, at);
        }
        if t.state.as_str() == "Scheduled"
            && let Some(ms) = t
                .error
                .as_deref()
                .and_then(|e| e.rsplit_once(" in "))
                .and_then(|(_, rest)| rest.strip_suffix(" ms"))
                .and_then(|ms| ms.parse::<i64>().ok())
        {
            delays.insert(t.restart_count, ms);
        }
        if t.state.as_str() == "Failed" {
            break t;
        }
        assert!(Instant::now() < deadline, "timed out; last record {t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(last.restart_count, 3);
    assert_eq!(last.exit_code, Some(3));
    assert_eq!(last.next_restart_at, None);
    assert_eq!(
        starts.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3],
        "{starts:?}"
    );
    let at: Vec<_> = starts.values().collect();
    let gaps: Vec<i64> = at
        .windows(2)
        .map(|w| (*w[1] - *w[0]).num_milliseconds())
        .collect();
    eprintln!("back-off {delays:?} ms; gaps between the starts of runs: {gaps:?} ms");
    // The back-off doubles from the configured 300 ms...
    assert_eq!(
        delays.into_iter().collect::<Vec<_>>(),
        vec![(1, 300), (2, 600), (3, 1200)]
    );
    // ...and each run really started no sooner than its back-off after the
    // previous one (which ran first, then exited, then waited).
    for (gap, delay) in gaps.iter().zip([300, 600, 1200]) {
        assert!(*gap >= delay, "gaps {gaps:?} ms");
    }
    assert!(
        containers_of_task(&id).is_empty(),
        "a dead container was left"
    );
}

#[tokio::test]
async fn exit_0_under_on_failure_completes_without_a_restart() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &[""]);
    cluster.ready().await;
    let spec = exits(
        "done",
        0,
        200,
        serde_json::json!({"policy": "on-failure", "max_retries": 5}),
    );
    let id = submit(&cluster, &spec).await;
    let t = cluster.wait_state(&id, "Completed", T).await;
    assert_eq!(t.restart_count, 0);
    assert_eq!(t.exit_code, Some(0));
    assert!(containers_of_task(&id).is_empty());
}

#[tokio::test]
async fn always_keeps_restarting_until_the_task_is_stopped() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &[""]);
    cluster.ready().await;
    let spec = exits("loop", 0, 200, serde_json::json!({"policy": "always"}));
    let id = submit(&cluster, &spec).await;
    let client = cluster.client();
    let t = wait_for("three restarts", T, || {
        let client = client.clone();
        let id = id.clone();
        let containers = containers_of_task(&id).len();
        assert!(containers <= 1, "{containers} containers of one task");
        async move {
            let t = client.task(&id).await.ok()?;
            assert!(!t.state.is_terminal(), "{t:?}");
            (t.restart_count >= 3).then_some(t)
        }
    })
    .await;
    assert_eq!(t.exit_code, Some(0));
    assert_eq!(t.attempt, 1, "restarts stay on the node, in one attempt");
    let stopped = client.stop(&id).await.unwrap();
    assert_eq!(stopped.state.as_str(), "Completed");
    wait_for("its last container to go", T, || {
        let gone = containers_of_task(&id).is_empty();
        async move { gone.then_some(()) }
    })
    .await;
    let after = client.task(&id).await.unwrap();
    assert_eq!(after.state.as_str(), "Completed");
}

#[tokio::test]
async fn a_container_removed_behind_cubes_back_is_replaced() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &[""]);
    cluster.ready().await;
    let mut spec = echo_spec("kept", &["/echo", "serve", "7777"]);
    spec["restart"] = serde_json::json!({"policy": "always"});
    let id = submit(&cluster, &spec).await;
    let first = cluster.wait_state(&id, "Running", T).await;
    let old = first.container_id.clone().unwrap();
    let out = std::process::Command::new("docker")
        .args(["rm", "-f", &old])
        .output()
        .unwrap();
    assert!(out.status.success());
    let client = cluster.client();
    let again = wait_for("a new container to run", T, || {
        let client = client.clone();
        let id = id.clone();
        let old = old.clone();
        async move {
            let t = client.task(&id).await.ok()?;
            (t.state.as_str() == "Running" && t.container_id.as_deref() != Some(old.as_str()))
                .then_some(t)
        }
    })
    .await;
    assert_eq!(again.restart_count, 1);
    assert_eq!(
        containers_of_task(&id),
        vec![again.container_id.clone().unwrap()]
    );
    client.stop(&id).await.unwrap();
}

#[tokio::test]
async fn kill9_of_the_worker_again_and_again_re_adopts_the_same_container() {
    ensure_image();
    let mut cluster = Cluster::split_with("round-robin", &[""]);
    cluster.ready().await;
    let mut spec = echo_spec("adopted", &["/echo", "serve", "7777"]);
    spec["restart"] = serde_json::json!({"policy": "always"});
    spec["health"] = serde_json::json!({"http": "/health", "port": 7777, "interval_s": 0.2});
    let id = submit(&cluster, &spec).await;
    let before = cluster.wait_state(&id, "Running", T).await;
    let container = before.container_id.clone().unwrap();
    let started = inspect(&container).unwrap()["State"]["StartedAt"].clone();
    let worker = cluster.worker_names[0].clone();
    let mut restarted_at = chrono::Utc::now();
    for round in 1..=3 {
        restarted_at = chrono::Utc::now();
        cluster.nodes[1].restart(); // kill -9, then start again
        let marker = format!("worker {worker}: started with 1 tasks");
        wait_for("the worker to come back", T, || {
            let seen = cluster.nodes[1].log_text().matches(&marker).count();
            async move { (seen >= round).then_some(()) }
        })
        .await;
    }
    // The same container runs, never restarted, and its health is checked
    // again by the new worker process.
    let client = cluster.client();
    let after = wait_for("the re-adopted task to be healthy", T, || {
        let client = client.clone();
        let id = id.clone();
        async move {
            let t = client.task(&id).await.ok()?;
            let checked = t.health.as_ref()?.checked_at?;
            (t.health.as_ref()?.state == cube::wire::HealthState::Healthy && checked > restarted_at)
                .then_some(t)
        }
    })
    .await;
    assert_eq!(after.state.as_str(), "Running");
    assert_eq!(after.container_id.as_deref(), Some(container.as_str()));
    assert_eq!(after.restart_count, 0);
    assert_eq!(containers_of_task(&id), vec![container.clone()]);
    let info = inspect(&container).unwrap();
    assert_eq!(info["RestartCount"], 0);
    assert_eq!(
        info["State"]["StartedAt"], started,
        "the container was restarted"
    );
    client.stop(&id).await.unwrap();
}

#[tokio::test]
async fn containers_no_task_wants_are_removed_after_the_grace_period() {
    ensure_image();
    let mut cluster = Cluster::split_with("round-robin", &["orphan_grace_ms = 500"]);
    cluster.ready().await;
    let id = submit(&cluster, &echo_spec("wanted", &["/echo", "serve", "7777"])).await;
    let running = cluster.wait_state(&id, "Running", T).await;
    // A container labelled as this worker's that no task wants (as if its
    // task had ended while the worker was down).
    let node = cluster.worker_names[0].clone();
    let stray_task = uuid::Uuid::new_v4().to_string();
    let out = std::process::Command::new("docker")
        .args(["run", "-d", "--label", "cube.managed=true"])
        .args(["--label", &format!("cube.node={node}")])
        .args(["--label", &format!("cube.task={stray_task}")])
        .args(["--label", "cube.attempt=1", IMAGE, "/echo", "sleep", "600"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(containers_of_task(&stray_task).len(), 1);
    // The worker looks when its engine connection comes up: restart it.
    cluster.nodes[1].restart();
    wait_for("the stray container to be removed", T, || {
        let left = containers_of_task(&stray_task);
        async move { left.is_empty().then_some(()) }
    })
    .await;
    assert!(
        cluster.logs().contains("no task wants"),
        "{}",
        cluster.logs()
    );
    // The task's own container is untouched.
    assert_eq!(
        containers_of_task(&id),
        vec![running.container_id.clone().unwrap()]
    );
    cluster.client().stop(&id).await.unwrap();
}

#[tokio::test]
async fn a_container_killed_for_its_memory_limit_fails_saying_so() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &[""]);
    cluster.ready().await;
    let mut spec = echo_spec("hungry", &["/echo", "eat", "256"]);
    spec["memory_mb"] = 32.into();
    let id = submit(&cluster, &spec).await;
    let failed = cluster.wait_state(&id, "Failed", T).await;
    let error = failed.error.clone().unwrap_or_default();
    assert!(error.starts_with("out of memory"), "{failed:?}");
    assert_eq!(failed.exit_code, Some(137));
    assert!(containers_of_task(&id).is_empty());
}
