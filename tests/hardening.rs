//! Containers are hardened, checked against the real engine (`docker
//! inspect`): every container runs with `no-new-privileges` and a pids
//! limit (the spec's, else 1024), as the spec's user and with a read-only
//! root file system when asked, never privileged nor in a host namespace nor
//! with a host mount, and publishes its ports on the worker's
//! `publish_addr` only. A fork bomb stops at the pids limit.

mod common;

use std::time::Duration;

use common::*;
use cube::task::TaskRecord;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

async fn submit(cluster: &Cluster, spec: &Value) -> String {
    let r = cluster.post(spec).await;
    assert_eq!(r.status(), 201, "{spec}");
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().expect("an id").to_string()
}

/// The task once Running, and its container as the engine shows it.
async fn running(cluster: &Cluster, id: &str) -> (TaskRecord, Value) {
    let record = cluster.wait_state(id, "Running", T).await;
    let container = record.container_id.clone().expect("a container id");
    let info = inspect(&container).expect("the container exists");
    (record, info)
}

/// Stops the task; its container is gone once the stop is answered.
async fn stop(cluster: &Cluster, id: &str) {
    let stopped = cluster.client().stop(id).await.unwrap();
    assert_eq!(stopped.state.as_str(), "Completed", "{stopped:?}");
    assert!(containers_of_task(id).is_empty(), "container left behind");
}

/// What every Cube container has, whatever its spec.
fn assert_confined(what: &str, info: &Value) {
    let host = &info["HostConfig"];
    let security: Vec<&str> = host["SecurityOpt"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no SecurityOpt: {host}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        security.contains(&"no-new-privileges"),
        "{what}: {security:?}"
    );
    assert_eq!(host["Privileged"], false, "{what}");
    for (key, host_mode) in [
        ("NetworkMode", "host"),
        ("PidMode", "host"),
        ("IpcMode", "host"),
        ("UTSMode", "host"),
        ("UsernsMode", "host"),
    ] {
        assert_ne!(host[key], host_mode, "{what}: {key}");
    }
    for key in ["Binds", "CapAdd", "Devices", "Mounts"] {
        let empty = host[key].is_null() || host[key].as_array().is_some_and(Vec::is_empty);
        assert!(empty, "{what}: {key} = {}", host[key]);
    }
    let mounts = &info["Mounts"];
    assert!(
        mounts.as_array().is_none_or(Vec::is_empty),
        "{what}: mounts {mounts}"
    );
}

#[tokio::test]
async fn containers_run_hardened_and_publish_on_the_workers_address() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &["publish_addr = \"127.0.0.1\""]);
    cluster.ready().await;

    let plain = submit(&cluster, &echo_spec("plain", &["/echo", "serve", "7777"])).await;
    let mut spec = echo_spec("tight", &["/echo", "serve", "7777"]);
    spec["pids_limit"] = json!(64);
    spec["user"] = json!("1000:1000");
    spec["read_only"] = json!(true);
    let tight = submit(&cluster, &spec).await;

    for (id, pids_limit, user, read_only) in
        [(&plain, 1024, "", false), (&tight, 64, "1000:1000", true)]
    {
        let (record, info) = running(&cluster, id).await;
        let what = format!("task {id}");
        assert_confined(&what, &info);
        assert_eq!(info["HostConfig"]["PidsLimit"], pids_limit, "{what}");
        assert_eq!(info["HostConfig"]["ReadonlyRootfs"], read_only, "{what}");
        assert_eq!(info["Config"]["User"], user, "{what}");

        // Published on the worker's publish_addr, and nowhere else.
        let asked = &info["HostConfig"]["PortBindings"]["7777/tcp"];
        assert_eq!(asked[0]["HostIp"], "127.0.0.1", "{what}: {asked}");
        let bound = info["NetworkSettings"]["Ports"]["7777/tcp"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: 7777 is not published"))
            .clone();
        assert!(!bound.is_empty(), "{what}");
        for binding in &bound {
            assert_eq!(binding["HostIp"], "127.0.0.1", "{what}: {bound:?}");
        }
        // The workload serves there (as user 1000 too).
        let port = *record.host_ports.get(&7777).expect("the host port of 7777");
        let body = wait_for("the workload to answer", T, || async move {
            let r = plain_get(&format!("http://127.0.0.1:{port}/")).await.ok()?;
            r.text().await.ok()
        })
        .await;
        assert!(body.contains("hello-from-test"), "{what}: {body}");
    }

    stop(&cluster, &plain).await;
    stop(&cluster, &tight).await;
    assert!(containers_of_node(&cluster.worker_names[0]).is_empty());
}

/// The `spawned K of N` line of a task's output, once it is there.
async fn spawned(cluster: &Cluster, id: &str) -> (u32, u32, String) {
    let url = format!("{}/tasks/{id}/logs", cluster.manager_url);
    let http = cluster.http();
    let line = wait_for("the workload to say how many it spawned", T, || {
        let (url, http) = (url.clone(), http.clone());
        async move {
            let text = http.get(&url).send().await.ok()?.text().await.ok()?;
            text.lines()
                .find(|l| l.starts_with("spawned "))
                .map(str::to_string)
        }
    })
    .await;
    let mut words = line.split_whitespace().skip(1);
    let count = |word: Option<&str>| -> u32 {
        word.map(|w| w.trim_end_matches(':'))
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("not a count in {line:?}"))
    };
    let done = count(words.next());
    let of = count(words.nth(1));
    (done, of, line.clone())
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    ensure_image();
    let cluster = Cluster::dev();
    cluster.ready().await;
    let bomb = |name: &str| json!({"name": name, "image": IMAGE, "cmd": ["/echo", "spawn", "100"], "memory_mb": 64});
    let mut spec = bomb("bomb");
    spec["pids_limit"] = json!(32);
    let limited = submit(&cluster, &spec).await;
    let free = submit(&cluster, &bomb("free")).await;

    let (_, info) = running(&cluster, &limited).await;
    assert_eq!(info["HostConfig"]["PidsLimit"], 32);
    let (done, of, line) = spawned(&cluster, &limited).await;
    assert_eq!(of, 100, "{line}");
    // The workload itself is one of the 32.
    assert!((1..32).contains(&done), "{line}");

    // Under the default limit (1024) the same workload spawns all it asks:
    // the limit above is what stopped it.
    let (_, info) = running(&cluster, &free).await;
    assert_eq!(info["HostConfig"]["PidsLimit"], 1024);
    let (done, of, line) = spawned(&cluster, &free).await;
    assert_eq!((done, of), (100, 100), "{line}");

    // Stopping ends every process of the container with it.
    stop(&cluster, &limited).await;
    stop(&cluster, &free).await;
    assert!(containers_of_node(&cluster.worker_names[0]).is_empty());
}
