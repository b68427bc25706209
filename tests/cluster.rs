//! Manager and worker as separate processes, real HTTP between them, the
//! real engine, and kill -9 of each.

mod common;

use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(60);

fn serve_spec(name: &str) -> serde_json::Value {
    echo_spec(name, &["/echo", "serve", "7777"])
}

async fn submit(cluster: &Cluster, spec: &serde_json::Value) -> String {
    let r = cluster.post(spec).await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_worker_process_registers_with_its_capacity_and_runs_a_task() {
    ensure_image();
    let cluster = Cluster::split(1);
    cluster.ready().await;
    let nodes = cluster.client().nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    let node = &nodes[0];
    assert_eq!(node.name, cluster.worker_names[0]);
    assert!(node.capacity.cpus >= 1.0, "{node:?}");
    assert!(node.capacity.memory_mb > 100, "{node:?}");
    assert!(node.capacity.disk_mb > 100, "{node:?}");

    let id = submit(&cluster, &echo_spec("echo", &["/echo", "serve", "7777"])).await;
    let record = cluster.wait_state(&id, "Running", T).await;
    assert_eq!(record.node.as_deref(), Some(node.name.as_str()));
    let info = inspect(record.container_id.as_deref().unwrap()).unwrap();
    assert_eq!(info["State"]["Running"], true);
    assert_eq!(cluster.client().nodes().await.unwrap()[0].tasks, 1);

    let stopped = cluster.client().stop(&id).await.unwrap();
    assert_eq!(stopped.state.as_str(), "Completed");
    assert!(containers_of_task(&id).is_empty());
}

#[tokio::test]
async fn kill9_of_the_worker_keeps_its_container_and_starts_no_copy() {
    ensure_image();
    let mut cluster = Cluster::split(1);
    cluster.ready().await;
    let id = submit(&cluster, &echo_spec("keep", &["/echo", "serve", "7777"])).await;
    let before = cluster.wait_state(&id, "Running", T).await;
    let container = before.container_id.clone().unwrap();

    let mut last_restart = chrono::Utc::now();
    for round in 1..=3 {
        last_restart = chrono::Utc::now();
        cluster.nodes[1].restart(); // kill -9, then start again
        let worker = cluster.worker_names[0].clone();
        let log_marker = format!("worker {worker}: started with 1 tasks");
        wait_for("the worker to come back and re-adopt", T, || {
            let seen = cluster.nodes[1].log_text().matches(&log_marker).count();
            async move { (seen >= round).then_some(()) }
        })
        .await;
    }
    // It re-registers and the task is still the same container.
    let client = cluster.client();
    let node = cluster.client().nodes().await.unwrap().remove(0);
    let worker = cluster.worker_client(&node.address, &node.name);
    let readopted = wait_for("the restarted worker to re-adopt", T, || {
        let worker = worker.clone();
        async move {
            let tasks = worker.worker_tasks().await.ok()?;
            tasks.into_iter().find(|t| t.at > last_restart)
        }
    })
    .await;
    assert_eq!(readopted.state.as_str(), "Running");
    assert_eq!(readopted.restart_count, 0);
    // The container's real start time, not the re-adoption's.
    assert_eq!(readopted.started_at, before.started_at);
    let after = client.task(&id).await.unwrap();
    assert_eq!(after.state.as_str(), "Running");
    assert_eq!(after.container_id.as_deref(), Some(container.as_str()));
    assert_eq!(containers_of_task(&id), vec![container.clone()]);
    assert_eq!(inspect(&container).unwrap()["State"]["Running"], true);

    // The restarted worker can still stop it.
    let stopped = client.stop(&id).await.unwrap();
    assert_eq!(stopped.state.as_str(), "Completed");
    assert!(containers_of_task(&id).is_empty());
}

#[tokio::test]
async fn kill9_of_the_manager_loses_no_task_and_duplicates_none() {
    ensure_image();
    let mut cluster = Cluster::split(3);
    cluster.ready().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            submit(
                &cluster,
                &echo_spec(&format!("m{i}"), &["/echo", "serve", "7777"]),
            )
            .await,
        );
    }
    // A task that ends while the manager is down is reported when it is back.
    let short = submit(
        &cluster,
        &echo_spec("short", &["/echo", "exit", "3", "1500"]),
    )
    .await;
    for id in &ids {
        cluster.wait_state(id, "Running", T).await;
    }
    cluster.nodes[0].kill9();
    // While the manager is down the CLI says so, at once, and a task
    // submitted then is refused, not taken.
    let spec_path = cluster.dir.path().join("late.json");
    std::fs::write(&spec_path, serve_spec("late").to_string()).unwrap();
    let asked = Instant::now();
    for args in [vec!["status"], vec!["run", spec_path.to_str().unwrap()]] {
        let out = cluster
            .cli()
            .args(["--manager", &cluster.manager_url])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot reach the manager"), "{stderr}");
    }
    assert!(asked.elapsed() < Duration::from_secs(10), "the CLI hung");
    wait_for("the short task's container to exit", T, || {
        let gone = containers_of_task(&short).is_empty();
        async move { gone.then_some(()) }
    })
    .await;
    cluster.nodes[0].restart();
    let failed = cluster.wait_state(&short, "Failed", T).await;
    assert_eq!(failed.exit_code, Some(3));
    let tasks = cluster.client().tasks().await.unwrap();
    assert_eq!(tasks.len(), 7);
    // The nodes are known again, with the tasks placed on them; all ready.
    let nodes = cluster.client().nodes().await.unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(
        nodes.iter().all(|n| n.state.as_str() == "ready"),
        "{nodes:?}"
    );
    assert_eq!(nodes.iter().map(|n| n.tasks).sum::<usize>(), 6);
    // Past the down threshold nothing was moved: the workers kept beating.
    let stable = Instant::now() + Duration::from_secs(4);
    while Instant::now() < stable {
        for id in &ids {
            let t = cluster.client().task(id).await.unwrap();
            assert_eq!(t.state.as_str(), "Running", "{t:?}");
            assert_eq!(t.attempt, 1, "{t:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in &ids {
        let t = cluster.wait_state(id, "Running", T).await;
        assert_eq!(
            containers_of_task(id),
            vec![t.container_id.clone().unwrap()]
        );
        cluster.client().stop(id).await.unwrap();
        assert!(containers_of_task(id).is_empty());
    }
}
