//! A dev node (manager + worker in one process) against the real engine.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_task_runs_with_its_env_command_and_ports_and_stop_removes_it() {
    ensure_image();
    let cluster = Cluster::dev();
    cluster.ready().await;
    let spec = echo_spec("echo", &["/echo", "serve", "7777"]);
    let response = cluster.post(&spec).await;
    assert_eq!(response.status(), 201);
    let created: serde_json::Value = response.json().await.unwrap();
    assert_eq!(created["state"], "Pending");
    let id = created["id"].as_str().unwrap().to_string();

    let record = cluster.wait_state(&id, "Running", T).await;
    assert_eq!(
        record.node.as_deref(),
        Some(cluster.worker_names[0].as_str())
    );
    let container = record.container_id.clone().expect("container id");
    let host_port = *record.host_ports.get(&7777).expect("host port of 7777");

    // What the engine itself says.
    let info = inspect(&container).expect("container exists");
    assert_eq!(info["State"]["Running"], true);
    let env: Vec<&str> = info["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(env.contains(&"GREETING=hello-from-test"), "{env:?}");
    assert_eq!(info["Config"]["Cmd"], json!(["/echo", "serve", "7777"]));
    assert_eq!(info["Config"]["Labels"]["cube.task"], id.as_str());
    assert_eq!(info["Config"]["Labels"]["cube.attempt"], "1");
    assert_eq!(
        info["Config"]["Labels"]["cube.node"],
        cluster.worker_names[0].as_str()
    );
    assert_eq!(info["Name"], format!("/cube-{id}-1"));
    assert_eq!(info["HostConfig"]["Memory"], 64 * 1024 * 1024);
    assert_eq!(
        info["NetworkSettings"]["Ports"]["7777/tcp"][0]["HostPort"],
        host_port.to_string()
    );
    assert_eq!(containers_of_task(&id).len(), 1);

    // The workload answers on the published port with the spec's env.
    let body = wait_for("the workload to answer", T, || async move {
        let r = plain_get(&format!("http://127.0.0.1:{host_port}/"))
            .await
            .ok()?;
        r.text().await.ok()
    })
    .await;
    assert!(body.contains("hello-from-test"), "{body}");

    // Stop: the answer comes once the container is gone.
    let stopped = cluster.client().stop(&id).await.unwrap();
    assert_eq!(stopped.state.as_str(), "Completed");
    assert!(containers_of_task(&id).is_empty(), "container left behind");
    let log = cluster.logs();
    for needle in [
        "accepted",
        "stored",
        "placed on",
        "created",
        "running",
        "stopped and removed",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
}

#[tokio::test]
async fn exits_end_completed_or_failed_with_the_exit_code() {
    ensure_image();
    let cluster = Cluster::dev();
    cluster.ready().await;
    let mut ids = Vec::new();
    for code in ["0", "3"] {
        let spec = echo_spec(&format!("exit{code}"), &["/echo", "exit", code, "300"]);
        let r = cluster.post(&spec).await;
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let ok = cluster.wait_state(&ids[0], "Completed", T).await;
    assert_eq!(ok.exit_code, Some(0));
    let bad = cluster.wait_state(&ids[1], "Failed", T).await;
    assert_eq!(bad.exit_code, Some(3));
    assert!(bad.container_id.is_some());
    for id in &ids {
        wait_for("exited containers to be removed", T, || async move {
            containers_of_task(id).is_empty().then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn bad_specs_are_refused_naming_the_field() {
    let cluster = Cluster::dev();
    cluster.ready().await;
    let cases = [
        (json!({"image": "x"}), Some("name")),
        (json!({"name": "a"}), Some("image")),
        (json!({"name": "a", "image": 5}), Some("image")),
        (
            json!({"name": "a", "image": "x", "cpu": "many"}),
            Some("cpu"),
        ),
        (
            json!({"name": "a", "image": "x", "ports": [0]}),
            Some("ports"),
        ),
        (
            json!({"name": "a", "image": "x", "colour": "red"}),
            Some("colour"),
        ),
        (json!(["not", "an", "object"]), None),
    ];
    for (spec, field) in cases {
        let r = cluster.post(&spec).await;
        assert_eq!(r.status(), 400, "{spec}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
        assert_eq!(body["field"].as_str(), field, "{spec} -> {body}");
    }
    let r = cluster
        .http()
        .post(format!("{}/tasks", cluster.manager_url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Unknown ids are a JSON 404; what is no task id at all, a 400 naming it.
    let r = cluster
        .http()
        .get(format!(
            "{}/tasks/{}",
            cluster.manager_url,
            uuid::Uuid::new_v4()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("no task"),
        "{body}"
    );
    let r = cluster
        .http()
        .get(format!("{}/tasks/nope", cluster.manager_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["field"], "id", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not a task id"),
        "{body}"
    );
    // Nothing was stored by the refusals.
    assert!(cluster.client().tasks().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_image_neither_local_nor_pullable_fails_the_task_saying_so() {
    ensure_image();
    let cluster = Cluster::dev();
    cluster.ready().await;
    let spec = json!({"name": "ghost", "image": "cube-demo/does-not-exist:1"});
    let r = cluster.post(&spec).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let failed = cluster.wait_state(&id, "Failed", T).await;
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("cube-demo/does-not-exist:1"), "{error}");
    assert!(error.contains("not present locally"), "{error}");
}

#[tokio::test]
async fn with_the_engine_down_the_node_says_so_and_keeps_running() {
    let cluster = Cluster::dev_with_env(vec![(
        "DOCKER_HOST".into(),
        "unix:///nonexistent/docker.sock".into(),
    )]);
    cluster.ready().await;
    let nodes = cluster.client().nodes().await.unwrap();
    let worker = cluster.worker_client(&nodes[0].address, &nodes[0].name);
    let stats = wait_for("the worker to report the engine down", T, || {
        let worker = worker.clone();
        async move {
            let s = worker.stats().await.ok()?;
            (!s.engine.up && s.engine.error.is_some()).then_some(s)
        }
    })
    .await;
    assert!(stats.machine.capacity.cpus >= 1.0);
    let r = cluster.post(&echo_spec("waits", &["/echo"])).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let client = cluster.client();
    let record = wait_for("the task to say it waits for the engine", T, || {
        let client = client.clone();
        let id = id.clone();
        async move {
            let t = client.task(&id).await.ok()?;
            t.error
                .as_deref()?
                .contains("container engine")
                .then_some(t)
        }
    })
    .await;
    assert_eq!(record.state.as_str(), "Scheduled");
    let mut cluster = cluster;
    assert!(
        cluster.nodes[0].alive(),
        "the node died:\n{}",
        cluster.logs()
    );
    assert!(cluster.logs().contains("container engine down"));
    // Stopping a task that never started works too.
    let stopped = cluster.client().stop(&id).await.unwrap();
    assert_eq!(stopped.state.as_str(), "Completed");
}

#[test]
fn a_bad_config_file_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "role = \"worker\"\ndata_dir = \"d\"\n[worker]\nname = \"w\"\nlisten = \"127.0.0.1:1\"\nmanagr = \"http://x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cube"))
        .args(["node", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("managr"), "{err}");
}
