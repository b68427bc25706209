//! Services on a real cluster (one manager, three worker processes, the
//! real engine): replicas spread one per node, replaced when their
//! container is removed behind Cube's back or their worker dies, scaled up
//! and down, and removed without leaving a container.

mod common;

use std::time::{Duration, Instant};

use common::*;
use cube::service::ServiceView;
use cube::task::TaskRecord;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn web(replicas: u32, greeting: &str) -> Value {
    json!({
        "name": "web",
        "replicas": replicas,
        "task": {
            "image": IMAGE,
            "cmd": ["/echo", "serve", "7777"],
            "env": {"GREETING": greeting},
            "memory_mb": 64,
            "ports": [7777]
        },
        "update": {"monitor_s": 2}
    })
}

/// The live replicas (desired running, not ended) of the service.
async fn replicas(cluster: &Cluster) -> Vec<TaskRecord> {
    let mut tasks: Vec<TaskRecord> = cluster
        .client()
        .tasks_where("service=web")
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.desired_state == cube::task::DesiredState::Running && !t.state.is_terminal())
        .collect();
    tasks.sort_by_key(|t| t.slot);
    tasks
}

/// Waits until `n` replicas run, one per slot `1..=n`; returns them and
/// how long it took.
async fn running(cluster: &Cluster, n: usize, what: &str) -> (Vec<TaskRecord>, Duration) {
    let start = Instant::now();
    let tasks = wait_for(what, T, || async move {
        let tasks = replicas(cluster).await;
        let slots: Vec<u32> = tasks.iter().filter_map(|t| t.slot).collect();
        let all_running = tasks.iter().all(|t| t.state.as_str() == "Running");
        (all_running && slots == (1..=n as u32).collect::<Vec<_>>()).then_some(tasks)
    })
    .await;
    (tasks, start.elapsed())
}

#[tokio::test]
async fn replicas_spread_are_replaced_scaled_and_removed() {
    ensure_image();
    let mut cluster = Cluster::split(3);
    cluster.ready().await;
    let r = cluster.post_to("/services", &web(3, "v1")).await;
    assert_eq!(r.status(), 201);
    let view: ServiceView = r.json().await.unwrap();
    assert_eq!((view.name.as_str(), view.desired), ("web", 3));

    // One replica per node, named after their slots, told who they are.
    let (tasks, _) = running(&cluster, 3, "three replicas running").await;
    let mut nodes: Vec<String> = tasks.iter().filter_map(|t| t.node.clone()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "{tasks:?}");
    for t in &tasks {
        let slot = t.slot.unwrap();
        assert_eq!(t.name, format!("web.{slot}"));
        assert_eq!(t.service_version, Some(1));
        let container = inspect(t.container_id.as_deref().unwrap()).unwrap();
        let env = container["Config"]["Env"].to_string();
        assert!(env.contains(&format!("CUBE_SLOT={slot}")), "{env}");
        assert!(env.contains(&format!("CUBE_TASK_ID={}", t.id)), "{env}");
        assert!(env.contains("CUBE_SERVICE=web"), "{env}");
    }

    // A replica's container removed behind Cube's back: replaced.
    let victim = tasks[1].clone();
    let out = std::process::Command::new("docker")
        .args(["rm", "-f", victim.container_id.as_deref().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_for("the removed replica to be noticed", T, || {
        let (client, id) = (cluster.client(), victim.id.to_string());
        async move { (client.task(&id).await.ok()?.state.is_terminal()).then_some(()) }
    })
    .await;
    let (tasks, took) = running(&cluster, 3, "slot 2 replaced").await;
    println!("a removed container's slot ran again {took:?} after its end was seen");
    assert_ne!(tasks[1].id, victim.id, "a new replica in slot 2");

    // A worker killed (its containers removed too): its replica runs elsewhere.
    let dead = tasks[0].node.clone().unwrap();
    let index = 1 + cluster
        .worker_names
        .iter()
        .position(|n| *n == dead)
        .unwrap();
    cluster.nodes[index].kill9();
    for id in containers_of_node(&dead) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &id])
            .output();
    }
    let started = Instant::now();
    let (tasks, _) = wait_for("three replicas, none on the dead worker", T, || async {
        let tasks = replicas(&cluster).await;
        let ok = tasks.len() == 3
            && tasks
                .iter()
                .all(|t| t.state.as_str() == "Running" && t.node.as_deref() != Some(&dead));
        ok.then_some((tasks, ()))
    })
    .await;
    println!(
        "a dead worker's replica ran elsewhere after {:?}",
        started.elapsed()
    );
    assert_eq!(tasks.len(), 3);

    // Scale 3 -> 5 -> 2: the highest slots go.
    let client = cluster.client();
    assert_eq!(client.scale_service("web", 5).await.unwrap().desired, 5);
    running(&cluster, 5, "five replicas").await;
    assert_eq!(client.scale_service("web", 2).await.unwrap().desired, 2);
    let (tasks, _) = running(&cluster, 2, "two replicas").await;
    assert_eq!(
        tasks.iter().filter_map(|t| t.slot).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let view = client.service("web").await.unwrap();
    assert_eq!((view.desired, view.healthy), (2, 2));

    // Removed: no container of it is left.
    cluster.cli_ok(&["service", "rm", "web"]);
    let ids: Vec<String> = client
        .tasks_where("service=web")
        .await
        .unwrap()
        .iter()
        .map(|t| t.id.to_string())
        .collect();
    wait_for("no container of the service left", T, || {
        let ids = ids.clone();
        async move {
            ids.iter()
                .all(|id| containers_of_task(id).is_empty())
                .then_some(())
        }
    })
    .await;
    let r = cluster.get("/services/web").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn bad_service_specs_are_refused_naming_the_field() {
    let cluster = Cluster::split(0);
    cluster.ready().await;
    let http = cluster.http();
    let url = format!("{}/services", cluster.manager_url);
    let mut bad_task = web(1, "x");
    bad_task["task"]["memory_mb"] = json!("lots");
    let mut too_many = web(1, "x");
    too_many["replicas"] = json!(1001);
    let mut named = web(1, "x");
    named["task"]["name"] = json!("web.1");
    for (spec, field) in [
        (bad_task, "task.memory_mb"),
        (too_many, "replicas"),
        (named, "task.name"),
    ] {
        let r = http.post(&url).json(&spec).send().await.unwrap();
        assert_eq!(r.status(), 400, "{spec}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["field"], field, "{body}");
    }
    // The README's example is a good spec, and a name is taken once.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/services/web.json"
    ))
    .unwrap();
    let mut example: Value = serde_json::from_str(&example).unwrap();
    let v2 = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/services/web-v2.json"
    ))
    .unwrap();
    let v2 = cube::service::spec::parse_json(&v2).unwrap();
    assert_eq!(v2.task.env["GREETING"], "v2");
    example["replicas"] = json!(0);
    for status in [201, 409] {
        let r = http.post(&url).json(&example).send().await.unwrap();
        assert_eq!(r.status(), status);
    }
    // Scaling past the bound, or a service that is not there.
    let r = http
        .patch(format!("{url}/web"))
        .json(&json!({"replicas": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .patch(format!("{url}/nope"))
        .json(&json!({"replicas": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A read token may look, not change.
    let r = http
        .post(format!("{}/tokens", cluster.manager_url))
        .json(&json!({"name": "ro", "role": "read"}))
        .send()
        .await
        .unwrap();
    let secret = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let ro = cluster.files().anonymous();
    let r = ro.get(&url).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = ro
        .delete(format!("{url}/web"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// The service as `GET /services/web` shows it.
async fn service(cluster: &Cluster) -> ServiceView {
    cluster.client().service("web").await.unwrap()
}

/// The manager's event log, as text.
async fn events(cluster: &Cluster) -> String {
    cluster.get("/events").await.text().await.unwrap()
}

/// Waits until the service's last update is in `state`.
async fn update_state(cluster: &Cluster, state: &str) -> ServiceView {
    wait_for(
        &format!("the update to be {state}"),
        Duration::from_secs(90),
        || async {
            let view = service(cluster).await;
            let now = view.update.as_ref().map(|u| u.state.as_str());
            (now == Some(state)).then_some(view)
        },
    )
    .await
}

#[tokio::test]
async fn updates_roll_out_without_losing_a_replica_roll_back_by_themselves_and_resume_after_a_manager_restart()
 {
    ensure_image();
    let mut cluster = Cluster::split(3);
    cluster.ready().await;
    let client = cluster.client();
    client.create_service(&web(3, "v1")).await.unwrap();
    running(&cluster, 3, "three replicas of v1").await;

    // start-first: sampled every 100 ms, never fewer than three healthy.
    let view = client.update_service("web", &web(3, "v2")).await.unwrap();
    assert_eq!(view.version, 2);
    let mut least = u32::MAX;
    let mut samples = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let view = service(&cluster).await;
        least = least.min(view.healthy);
        samples += 1;
        assert!(view.healthy >= 3, "{view:?}");
        if view
            .update
            .as_ref()
            .is_some_and(|u| u.state.as_str() == "completed")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the update never completed: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("start-first update: {samples} samples, never fewer than {least} healthy");
    let (tasks, _) = running(&cluster, 3, "three replicas of v2").await;
    assert!(
        tasks.iter().all(|t| t.service_version == Some(2)),
        "{tasks:?}"
    );

    // v3's containers exit after a second: the update rolls back by itself.
    let mut broken = web(3, "v3");
    broken["task"]["cmd"] = json!(["/echo", "exit", "1", "1000"]);
    client.update_service("web", &broken).await.unwrap();
    let view = update_state(&cluster, "rolled_back").await;
    assert_eq!(view.version, 2);
    let message = view.update.unwrap().message.unwrap();
    assert!(message.contains("slot"), "{message}");
    let (tasks, _) = running(&cluster, 3, "three replicas of v2 again").await;
    assert!(
        tasks.iter().all(|t| t.service_version == Some(2)),
        "{tasks:?}"
    );

    // The event stream told each step.
    let steps = events(&cluster).await;
    for step in [
        "update from version 1 to 2",
        "update completed",
        "update failed",
        "rolling back from version 3 to 2",
        "update rolled_back",
    ] {
        assert!(steps.contains(step), "no {step:?} in the events: {steps}");
    }

    // kill -9 of the manager in the middle of an update: it resumes.
    let view = client.update_service("web", &web(3, "v4")).await.unwrap();
    let target = view.version;
    wait_for("the first new replica to start", T, || async {
        let tasks = replicas(&cluster).await;
        tasks
            .iter()
            .any(|t| t.service_version == Some(target))
            .then_some(())
    })
    .await;
    cluster.nodes[0].kill9();
    cluster.nodes[0].restart();
    cluster.ready().await;
    update_state(&cluster, "completed").await;
    let (tasks, _) = running(&cluster, 3, "three replicas of v4").await;
    assert!(
        tasks.iter().all(|t| t.service_version == Some(target)),
        "{tasks:?}"
    );

    // The event stream (of the manager since its restart) told the end.
    let steps = events(&cluster).await;
    assert!(steps.contains("update completed"), "{steps}");
    client.remove_service("web").await.unwrap();
}

/// How many endpoints of `web` a worker holds now.
async fn worker_endpoints(cluster: &Cluster, address: &str, name: &str) -> usize {
    let table: Value = cluster
        .files()
        .worker_http(name)
        .get(format!("{address}/endpoints"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    table
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["service"] == "web")
        .map_or(0, |e| e["endpoints"].as_array().unwrap().len())
}

/// Every worker's (address, name).
async fn worker_addresses(cluster: &Cluster) -> Vec<(String, String)> {
    let nodes = cluster.client().nodes().await.unwrap();
    nodes.into_iter().map(|n| (n.address, n.name)).collect()
}

/// Waits until every worker (address, name) holds `n` endpoints of `web`.
async fn every_worker_sees(cluster: &Cluster, workers: &[(String, String)], n: usize) {
    wait_for(
        &format!("every worker to hold {n} endpoints"),
        T,
        || async move {
            for (address, name) in workers {
                if worker_endpoints(cluster, address, name).await != n {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// The next NDJSON line of a stream of lines (waits for it, with a deadline).
async fn next_line<S>(lines: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Vec<u8>, cube::client::ClientError>> + Unpin,
{
    use futures_util::StreamExt;
    let line = tokio::time::timeout(T, lines.next())
        .await
        .expect("a line in time")
        .expect("the stream goes on")
        .expect("a line");
    serde_json::from_slice(&line).expect("a JSON line")
}

#[tokio::test]
async fn endpoints_follow_the_healthy_replicas_and_a_stopped_one_leaves_before_its_sigterm() {
    ensure_image();
    let mut cluster = Cluster::split(2);
    cluster.ready().await;
    let client = cluster.client();
    let mut spec = web(2, "e");
    spec["task"]["health"] = json!({"tcp": true, "port": 7777, "interval_s": 0.2, "retries": 1});
    spec["expose"] = json!([{"port": 7777, "publish": 18080}]);
    spec["update"]["drain_s"] = json!(3);
    client.create_service(&spec).await.unwrap();
    // Another service cannot publish the same port.
    let mut other = web(1, "o");
    other["name"] = json!("other");
    other["expose"] = json!([{"port": 7777, "publish": 18080}]);
    let r = cluster.post_to("/services", &other).await;
    assert_eq!(r.status(), 409);

    let mut stream = Box::pin(
        client
            .stream_lines("/services/web/endpoints?watch=true")
            .await
            .unwrap(),
    );
    let both = loop {
        let line = next_line(&mut stream).await;
        if line["endpoints"].as_array().unwrap().len() == 2 {
            break line;
        }
    };
    // Each endpoint answers where it says.
    for e in both["endpoints"].as_array().unwrap() {
        let url = format!(
            "http://{}:{}/",
            e["address"].as_str().unwrap(),
            e["ports"]["7777"]
        );
        let body = plain_get(&url).await.unwrap().text().await.unwrap();
        assert!(body.contains("e from"), "{body}");
    }
    // Scaled down: slot 2 leaves the endpoints at once, and its container
    // still runs then (drain_s = 3), to be stopped after.
    let leaving = both["endpoints"][1]["task"].as_str().unwrap().to_string();
    let container = client.task(&leaving).await.unwrap().container_id.unwrap();
    let asked = Instant::now();
    client.scale_service("web", 1).await.unwrap();
    let one = next_line(&mut stream).await;
    let took = asked.elapsed();
    println!("a replica left the endpoints {took:?} after the scale-down");
    assert_eq!(one["endpoints"].as_array().unwrap().len(), 1, "{one}");
    assert_ne!(one["endpoints"][0]["task"], leaving.as_str());
    assert_eq!(
        inspect(&container).unwrap()["State"]["Running"],
        true,
        "stopped before it drained"
    );
    wait_for("the drained replica to stop", T, || {
        let container = container.clone();
        async move { inspect(&container).is_none().then_some(()) }
    })
    .await;
    assert!(
        asked.elapsed() >= Duration::from_secs(3),
        "stopped before drain_s"
    );
    // Every worker follows the endpoints from the manager's feed.
    let workers = worker_addresses(&cluster).await;
    assert_eq!(workers.len(), 2);
    every_worker_sees(&cluster, &workers, 1).await;
    // With the manager gone, the workers keep what they knew; once it is
    // back, they follow again.
    cluster.nodes[0].kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (address, name) in &workers {
        assert_eq!(worker_endpoints(&cluster, address, name).await, 1);
    }
    cluster.nodes[0].restart();
    cluster.ready().await;
    let asked = Instant::now();
    cluster.client().scale_service("web", 2).await.unwrap();
    every_worker_sees(&cluster, &workers, 2).await;
    println!(
        "after a manager restart, every worker held the new replica {:?} after the scale-up",
        asked.elapsed()
    );
    // Plain GET, and a service that is not there.
    let now: Value = cluster
        .get("/services/web/endpoints")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(now["endpoints"].as_array().unwrap().len(), 2);
    let r = cluster.get("/services/nope/endpoints").await;
    assert_eq!(r.status(), 404);
    client.remove_service("web").await.unwrap();
}

/// The containers of `tasks`, as the example image names itself (the
/// first 12 characters of the id).
fn short_container_ids(tasks: &[TaskRecord]) -> Vec<String> {
    tasks
        .iter()
        .map(|t| t.container_id.clone().unwrap()[..12].to_string())
        .collect()
}

/// A manager and two workers whose balancers listen on 127.0.0.2 and
/// 127.0.0.3 (`behind_n_balancers`: n workers from 127.0.0.2 on), running `spec` with
/// its port 7777 published (as `protocol`) on a free port; the cluster,
/// that port and the spec as created.
async fn behind_balancers(spec: Value, protocol: &str) -> (Cluster, u16, Value) {
    behind_n_balancers(spec, protocol, 2).await
}

async fn behind_n_balancers(mut spec: Value, protocol: &str, n: usize) -> (Cluster, u16, Value) {
    let workers: Vec<String> = (2..2 + n)
        .map(|i| format!("ingress_addr = \"127.0.0.{i}\""))
        .collect();
    let workers: Vec<&str> = workers.iter().map(String::as_str).collect();
    let cluster = Cluster::split_with("round-robin", &workers);
    cluster.ready().await;
    let publish = free_port();
    spec["expose"] = json!([{"port": 7777, "publish": publish, "protocol": protocol}]);
    cluster.client().create_service(&spec).await.unwrap();
    (cluster, publish, spec)
}

/// One HTTP/1.0 request over a plain TCP connection to `addr`; the answer.
async fn tcp_get(addr: &str) -> std::io::Result<String> {
    tcp_get_path(addr, "/").await
}

/// Waits until a request through `addr` gets an answer holding `text`.
async fn tcp_forwards(addr: &str, text: &str) {
    wait_for(&format!("{addr} to forward"), T, || async move {
        tcp_get(addr).await.ok().filter(|a| a.contains(text))
    })
    .await;
}

/// As `tcp_get`, for `path`.
async fn tcp_get_path(addr: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(T, tokio::net::TcpStream::connect(addr)).await??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: web\r\n\r\n").as_bytes())
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(T, stream.read_to_string(&mut answer)).await??;
    Ok(answer)
}

#[tokio::test]
async fn every_node_balances_a_tcp_port_over_the_replicas_anywhere() {
    ensure_image();
    let (cluster, publish, _) = behind_balancers(web(2, "tcp"), "tcp").await;
    let client = cluster.client();
    let (tasks, _) = running(&cluster, 2, "two replicas").await;
    let containers = short_container_ids(&tasks);
    for ingress in ["127.0.0.2", "127.0.0.3"] {
        let addr = format!("{ingress}:{publish}");
        // The node's listener opens once its copy of the endpoints has
        // them, and the kernel forwards to both once its table has both
        // (each node learns of the other's replica in its own time).
        wait_for(&format!("{addr} to forward to both"), T, || {
            let addr = addr.clone();
            let containers = containers.clone();
            async move {
                let mut seen = std::collections::BTreeSet::new();
                for _ in 0..4 {
                    let answer = tcp_get(&addr).await.ok()?;
                    seen.extend(containers.iter().filter(|c| answer.contains(c.as_str())));
                }
                (seen.len() == 2).then_some(())
            }
        })
        .await;
        let mut reached = std::collections::BTreeMap::new();
        for _ in 0..20 {
            let answer = tcp_get(&addr).await.unwrap();
            let from = containers
                .iter()
                .find(|c| answer.contains(c.as_str()))
                .unwrap_or_else(|| panic!("{answer}"));
            *reached.entry(from.clone()).or_insert(0) += 1;
        }
        println!("through {addr}: {reached:?}");
        assert_eq!(
            reached.len(),
            2,
            "both replicas, from either node: {reached:?}"
        );
        assert!(reached.values().all(|n| *n >= 5), "{reached:?}");
    }
    // The service gone, every node closes its port.
    client.remove_service("web").await.unwrap();
    for ingress in ["127.0.0.2", "127.0.0.3"] {
        let addr = format!("{ingress}:{publish}");
        wait_for(&format!("{addr} to close"), T, || {
            let addr = addr.clone();
            async move {
                tokio::net::TcpStream::connect(&addr)
                    .await
                    .is_err()
                    .then_some(())
            }
        })
        .await;
    }
}

/// Packets the kernel forwarded to `publish` by the table of the node
/// process `pid`, waited for (a connection to `addr` each try) until there
/// are some.
async fn kernel_forwarded(pid: u32, addr: &str, publish: u16) -> u64 {
    wait_for(
        &format!("the kernel of node {pid} forwarding port {publish}"),
        T,
        || async move {
            let _ = tcp_get(addr).await;
            let listing = forwarding_table(pid)?;
            let packets = *cube::ingress::kernel::rules::counted(&listing).get(&publish)?;
            (packets > 0).then_some(packets)
        },
    )
    .await
}

#[tokio::test]
async fn the_kernel_forwards_a_tcp_port_and_its_table_dies_with_the_worker() {
    ensure_image();
    let (mut cluster, publish, _) = behind_balancers(web(2, "kernel"), "tcp").await;
    let (tasks, _) = running(&cluster, 2, "two replicas").await;
    let containers = short_container_ids(&tasks);
    let addr = format!("127.0.0.2:{publish}");
    let worker = cluster.nodes[1]
        .pid()
        .expect("the worker on 127.0.0.2 runs");
    // Both replicas (one on this node, at its container; one on the
    // other, at its host port) are reached through the kernel's table,
    // not the balancer's process.
    tcp_forwards(&addr, "kernel from").await;
    wait_for("the table to forward to both replicas", T, || async {
        let listing = forwarding_table(worker)?;
        listing.contains("numgen inc mod 2").then_some(())
    })
    .await;
    let before = kernel_forwarded(worker, &addr, publish).await;
    let mut reached = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let answer = tcp_get(&addr).await.unwrap();
        let from = containers
            .iter()
            .find(|c| answer.contains(c.as_str()))
            .unwrap_or_else(|| panic!("{answer}"));
        *reached.entry(from.clone()).or_insert(0) += 1;
    }
    let after = kernel_forwarded(worker, &addr, publish).await;
    println!(
        "through {addr}: {reached:?}; the kernel forwarded {} packets",
        after - before
    );
    assert_eq!(
        reached.values().copied().collect::<Vec<_>>(),
        [10, 10],
        "in turn"
    );
    assert!(
        after >= before + 20,
        "20 connections, {} packets",
        after - before
    );
    // From inside each replica's container, on either node, through its
    // node's gateway: the kernel forwards there too (a replica may reach
    // itself). Of the two, one is on this node: one more connection at
    // least beside `kernel_forwarded`'s own.
    answers_inside_each(&tasks, publish, "kernel from").await;
    let inside = kernel_forwarded(worker, &addr, publish).await;
    assert!(
        inside >= after + 2,
        "the container's connection was not forwarded"
    );
    // One replica less: the table follows, and every connection reaches
    // the one left.
    cluster.client().scale_service("web", 1).await.unwrap();
    wait_for("the table to forward to one replica", T, || async {
        let listing = forwarding_table(worker)?;
        let port = format!("dport {publish} ");
        let rules: Vec<&str> = listing.lines().filter(|l| l.contains(&port)).collect();
        let one = !rules.is_empty()
            && rules
                .iter()
                .all(|l| l.contains("dnat to") && !l.contains("numgen"));
        one.then_some(())
    })
    .await;
    let (left, _) = running(&cluster, 1, "one replica").await;
    let left = short_container_ids(&left).remove(0);
    for _ in 0..10 {
        let answer = tcp_get(&addr).await.unwrap();
        assert!(answer.contains(&left), "not the replica left: {answer}");
    }
    // While the table sends loopback clients to the bridge, the bridge
    // lets loopback packets out, and the guard table guards it.
    let listing = guard_table(worker).expect("a guard table");
    let bridge = listing
        .lines()
        .find(|l| l.contains("ip saddr 127.0.0.0/8 drop"))
        .and_then(|l| l.split('"').nth(1))
        .unwrap_or_else(|| panic!("no guard: {listing}"))
        .to_string();
    let localnet = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    let read = |path: &str| std::fs::read_to_string(path).unwrap().trim().to_string();
    assert_eq!(read(&localnet), "1");
    // Killed, the worker's forwarding table goes with it (its nft
    // session ends); its guard stays until the restarted worker sweeps
    // it, and makes its own.
    cluster.nodes[1].kill9();
    wait_for("the killed worker's forwarding table to go", T, || async {
        forwarding_table(worker).is_none().then_some(())
    })
    .await;
    assert!(
        guard_table(worker).is_some(),
        "the guard went before the sweep"
    );
    assert_eq!(read(&localnet), "1");
    cluster.nodes[1].restart();
    let again = cluster.nodes[1].pid().unwrap();
    wait_for(
        "the restarted worker to sweep the dead one's guard",
        T,
        || async { guard_table(worker).is_none().then_some(()) },
    )
    .await;
    tcp_forwards(&addr, "kernel from").await;
    kernel_forwarded(again, &addr, publish).await;
    // Its guard removed behind its back (as `nft flush ruleset` would,
    // which leaves the session's own table): the worker's next look sees
    // it, shuts the bridge and guards it again.
    remove_guard_table(again);
    // The guard comes back first, then the bridge is let open again.
    wait_for(
        "the worker to guard its bridge and open it again",
        T,
        || async { (guard_table(again).is_some() && read(&localnet) == "1").then_some(()) },
    )
    .await;
    tcp_forwards(&addr, "kernel from").await;
    // The service gone: no forwarding, and the port is closed.
    cluster.client().remove_service("web").await.unwrap();
    wait_for(&format!("{addr} to close"), T, || async {
        tokio::net::TcpStream::connect(&addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let listing = forwarding_table(again).unwrap_or_default();
    assert!(!listing.contains(&format!("dport {publish} ")), "{listing}");
    // Stopped (SIGTERM), the worker removes its table and gives its
    // bridge back its route_localnet.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &again.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(
        cluster.nodes[1].wait_exit(T).await.is_some(),
        "did not stop"
    );
    assert!(forwarding_table(again).is_none(), "its table outlived it");
    assert!(guard_table(again).is_none(), "its guard outlived it");
    assert_eq!(read(&localnet), "0", "route_localnet left on");
}

#[tokio::test]
async fn every_node_balances_http_per_request_over_the_replicas() {
    ensure_image();
    let (cluster, publish, _) = behind_n_balancers(web(3, "http"), "http", 3).await;
    let client = cluster.client();
    let (tasks, _) = running(&cluster, 3, "three replicas").await;
    let containers = short_container_ids(&tasks);
    for ingress in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let url = format!("http://{ingress}:{publish}/");
        wait_for(&format!("{url} to forward"), T, || {
            let url = url.clone();
            async move {
                let r = plain_get(&url).await.ok()?;
                r.text().await.ok().filter(|b| b.contains("http from"))
            }
        })
        .await;
        // One client, its connection kept alive: balanced per request.
        let mut reached = std::collections::BTreeMap::new();
        for _ in 0..300 {
            let body = plain_get(&url).await.unwrap().text().await.unwrap();
            let from = containers
                .iter()
                .find(|c| body.contains(c.as_str()))
                .unwrap_or_else(|| panic!("{body}"));
            *reached.entry(from.clone()).or_insert(0) += 1;
        }
        println!("through {url}: {reached:?}");
        // Every replica, none with less than a fifth.
        assert_eq!(reached.len(), 3, "{reached:?}");
        assert!(reached.values().all(|n| *n >= 60), "{reached:?}");
        // Unknown paths come back as the replica answered them.
        let r = plain_get(&format!("{url}nope")).await.unwrap();
        assert_eq!(r.status(), 404);
        // A redirect goes back to the client, not followed by the balancer.
        let answer = tcp_get_path(&format!("{ingress}:{publish}"), "/redirect")
            .await
            .unwrap()
            .to_lowercase();
        assert!(answer.starts_with("http/1.0 302"), "{answer}");
        assert!(answer.contains("\r\nlocation: /\r\n"), "{answer}");
        // The replica learns who the client was, and how it came.
        let seen = plain_get(&format!("{url}headers"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .to_lowercase();
        assert!(seen.contains("x-forwarded-for: 127.0.0."), "{seen}");
        assert!(seen.contains("x-forwarded-proto: http"), "{seen}");
    }
    client.remove_service("web").await.unwrap();
}

/// Requests `url` until `stop` is set; (answered 200, failed).
async fn request_loop(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicU32>,
) -> (u32, Vec<String>) {
    let (mut ok, mut failed) = (0, Vec::new());
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match plain_get(&url).await {
            Ok(r) if r.status() == 200 => {
                ok += 1;
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(r) => failed.push(format!("{}", r.status())),
            Err(e) => failed.push(e.to_string()),
        }
    }
    (ok, failed)
}

#[tokio::test]
async fn no_request_fails_when_a_replica_dies_the_service_updates_or_scales_down() {
    ensure_image();
    let mut spec = web(3, "steady");
    spec["update"]["drain_s"] = json!(1);
    let (cluster, publish, spec) = behind_balancers(spec, "http").await;
    let client = cluster.client();
    let (tasks, _) = running(&cluster, 3, "three replicas").await;
    let url = format!("http://127.0.0.2:{publish}/");
    wait_for("the balancer to forward", T, || {
        let url = url.clone();
        async move { plain_get(&url).await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let loops: Vec<_> = (0..2)
        .map(|_| tokio::spawn(request_loop(url.clone(), stop.clone(), answered.clone())))
        .collect();
    wait_for("the client loops to be answered", T, || {
        let answered = answered.clone();
        async move { (answered.load(std::sync::atomic::Ordering::Relaxed) >= 20).then_some(()) }
    })
    .await;
    // A replica's container removed behind Cube's back.
    let out = std::process::Command::new("docker")
        .args(["rm", "-f", tasks[0].container_id.as_deref().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    running(&cluster, 3, "slot 1 replaced").await;
    // A start-first rolling update.
    let mut v2 = spec.clone();
    v2["task"]["env"]["GREETING"] = json!("steady-v2");
    client.update_service("web", &v2).await.unwrap();
    update_state(&cluster, "completed").await;
    // A scale-down (its replica drains first).
    client.scale_service("web", 2).await.unwrap();
    running(&cluster, 2, "two replicas").await;
    wait_for("slot 3 drained and stopped", T, || async {
        let tasks = client.tasks_where("service=web").await.ok()?;
        tasks
            .iter()
            .filter(|t| t.slot == Some(3))
            .all(|t| t.state.is_terminal())
            .then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for l in loops {
        let (o, f) = l.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    println!("{ok} requests answered, {} failed", failed.len());
    assert!(ok > 100, "{ok}");
    assert!(failed.is_empty(), "{failed:?}");
    client.remove_service("web").await.unwrap();
}

/// A recursive question for `name` `rtype`.
fn dns_question(
    name: &str,
    rtype: hickory_server::proto::rr::RecordType,
) -> hickory_server::proto::op::Message {
    use hickory_server::proto::op::{Message, Query};
    use hickory_server::proto::rr::Name;
    let mut question = Message::query();
    question.metadata.recursion_desired = true;
    question.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    question
}

/// Waits until every server's SRV records for `web` list exactly `want`.
async fn every_srv_lists(dns: &[std::net::SocketAddr], want: &std::collections::BTreeSet<u16>) {
    for server in dns {
        wait_for("SRV to list the replicas", T, || async move {
            (srv_ports(*server).await == *want).then_some(())
        })
        .await;
    }
}

/// Waits until no server's SRV records for `web` list `port`; how long it
/// took.
async fn every_srv_drops(dns: &[std::net::SocketAddr], port: u16, what: &str) -> Duration {
    let start = Instant::now();
    for server in dns {
        wait_for(what, T, || async move {
            (!srv_ports(*server).await.contains(&port)).then_some(())
        })
        .await;
    }
    start.elapsed()
}

/// One DNS question over UDP to `server`; the answer.
async fn ask_dns(
    server: std::net::SocketAddr,
    name: &str,
    rtype: hickory_server::proto::rr::RecordType,
) -> hickory_server::proto::op::Message {
    use hickory_server::proto::op::Message;
    let question = dns_question(name, rtype);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&question.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .expect("the DNS server did not answer within 2 s")
        .unwrap();
    let answer = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(answer.metadata.id, question.metadata.id);
    answer
}

/// One DNS question over TCP (length-prefixed) to `server`; the answer.
async fn ask_dns_tcp(
    server: std::net::SocketAddr,
    name: &str,
    rtype: hickory_server::proto::rr::RecordType,
) -> hickory_server::proto::op::Message {
    use hickory_server::proto::op::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bytes = dns_question(name, rtype).to_vec().unwrap();
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    stream
        .write_all(&u16::try_from(bytes.len()).unwrap().to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut len))
        .await
        .expect("no answer over TCP within 2 s")
        .unwrap();
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).await.unwrap();
    Message::from_vec(&answer).unwrap()
}

/// The host ports of the SRV records for `web` at `server`.
async fn srv_ports(server: std::net::SocketAddr) -> std::collections::BTreeSet<u16> {
    use hickory_server::proto::rr::{RData, RecordType};
    let answer = ask_dns(server, "_web._tcp.cube.", RecordType::SRV).await;
    answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.port),
            _ => None,
        })
        .collect()
}

/// The host ports of `tasks`' port 7777.
fn ports_of(tasks: &[TaskRecord]) -> std::collections::BTreeSet<u16> {
    tasks.iter().map(|t| t.host_ports[&7777]).collect()
}

/// Waits until `web.cube:<publish>` answers with `text` from inside each
/// of `tasks`' containers.
async fn answers_inside_each(tasks: &[TaskRecord], publish: u16, text: &str) {
    for task in tasks {
        let container = task.container_id.as_deref().unwrap();
        let answer = wait_for("web.cube to answer inside a container", T, || {
            let answer = get_from_inside(container, publish);
            async move { answer.contains(text).then_some(answer) }
        })
        .await;
        println!(
            "inside {} on {:?}: {}",
            &container[..12],
            task.node,
            answer.lines().find(|l| l.contains("from")).unwrap_or("")
        );
    }
}

/// Runs `/echo get web.cube:<publish> /` inside container `id`; its output.
fn get_from_inside(id: &str, publish: u16) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            id,
            "/echo",
            "get",
            &format!("web.cube:{publish}"),
            "/",
        ])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn dns_follows_the_healthy_replicas_and_containers_reach_services_by_name() {
    use hickory_server::proto::op::ResponseCode;
    use hickory_server::proto::rr::RecordType;
    ensure_image();
    let dns: Vec<std::net::SocketAddr> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| format!("{ip}:{}", free_port()).parse().unwrap())
        .collect();
    let cluster = Cluster::split_with(
        "round-robin",
        &[
            &format!("ingress_addr = \"127.0.0.2\"\ndns_listen = \"{}\"", dns[0]),
            &format!("ingress_addr = \"127.0.0.3\"\ndns_listen = \"{}\"", dns[1]),
        ],
    );
    cluster.ready().await;
    let client = cluster.client();
    let publish = free_port();
    let mut spec = web(3, "dns");
    spec["task"]["health"] =
        json!({"http": "/health", "port": 7777, "interval_s": 0.25, "retries": 1});
    spec["update"]["drain_s"] = json!(3);
    spec["expose"] = json!([{"port": 7777, "publish": publish, "protocol": "http"}]);
    client.create_service(&spec).await.unwrap();
    let (tasks, _) = running(&cluster, 3, "three replicas").await;

    // SRV: exactly the healthy replicas, at their nodes' host ports, on
    // every node.
    every_srv_lists(&dns, &ports_of(&tasks)).await;
    for server in &dns {
        // A: where this node's balancer serves the service.
        let a = ask_dns(*server, "web.cube.", RecordType::A).await;
        assert!(a.metadata.authoritative);
        let ips: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(ips, vec![server.ip().to_string()]);
        assert!(a.answers.iter().all(|r| r.ttl <= 5));
        let none = ask_dns(*server, "nope.cube.", RecordType::A).await;
        assert_eq!(none.metadata.response_code, ResponseCode::NXDomain);
        // Over TCP as over UDP.
        let over_tcp = ask_dns_tcp(*server, "web.cube.", RecordType::A).await;
        assert_eq!(over_tcp.answers, a.answers);
        // Other names go to the host's resolvers (here: its hosts file).
        let forwarded = ask_dns(*server, "localhost.", RecordType::A).await;
        let ips: Vec<String> = forwarded
            .answers
            .iter()
            .map(|r| r.data.to_string())
            .collect();
        assert_eq!(ips, vec!["127.0.0.1"], "{forwarded:?}");
    }

    // From inside each replica's container, on either node: the service by
    // name, through the node's balancer.
    answers_inside_each(&tasks, publish, "dns from").await;

    // A container on one node's network is answered by that node's DNS,
    // and refused by the other's (not its subnet): no open resolver.
    let networks = &cluster.worker_names;
    let gateways: Vec<String> = networks.iter().map(|n| gateway_of(n).unwrap()).collect();
    let ask_from = |network: &str, dns: &str| {
        std::process::Command::new("docker")
            .args(["run", "--rm", "--label", &format!("cube.node={network}")])
            .args(["--network", network, "--dns", dns, IMAGE])
            .args(["/echo", "get", &format!("web.cube:{publish}"), "/"])
            .output()
            .unwrap()
    };
    let own = ask_from(&networks[0], &gateways[0]);
    assert!(
        String::from_utf8_lossy(&own.stdout).contains("dns from"),
        "{own:?}"
    );
    let other = ask_from(&networks[0], &gateways[1]);
    assert!(
        !other.status.success(),
        "another subnet was answered: {other:?}"
    );
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("lookup"),
        "{other:?}"
    );

    // A replica's container removed behind Cube's back leaves every node's
    // answers.
    let gone = tasks[0].host_ports[&7777];
    let out = std::process::Command::new("docker")
        .args(["rm", "-f", tasks[0].container_id.as_deref().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let took = every_srv_drops(&dns, gone, "the removed replica to leave SRV").await;
    println!("removed replica out of both nodes' SRV {took:?} after `docker rm -f` returned");
    let (tasks, _) = running(&cluster, 3, "slot 1 replaced").await;
    every_srv_lists(&dns, &ports_of(&tasks)).await;

    // A replica that turns unhealthy leaves every node's answers.
    let sick = tasks.iter().find(|t| t.slot == Some(2)).unwrap();
    let sick_port = sick.host_ports[&7777];
    let out = std::process::Command::new("docker")
        .args(["exec", sick.container_id.as_deref().unwrap()])
        .args(["/echo", "touch", "/tmp/unhealthy"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let took = every_srv_drops(&dns, sick_port, "the unhealthy replica to leave SRV").await;
    println!(
        "unhealthy replica out of both nodes' SRV {took:?} after /tmp/unhealthy was made (checked every 0.25 s)"
    );
    // A scale-down: the replica leaves DNS while its container still runs
    // (it drains 3 s before its SIGTERM).
    let leaving = tasks.iter().find(|t| t.slot == Some(3)).unwrap();
    let (port, container) = (
        leaving.host_ports[&7777],
        leaving.container_id.clone().unwrap(),
    );
    client.scale_service("web", 2).await.unwrap();
    let took = every_srv_drops(&dns, port, "the drained replica to leave SRV").await;
    println!("scaled-down replica out of both nodes' SRV {took:?} after the PATCH returned");
    let state = inspect(&container).unwrap();
    assert_eq!(
        state["State"]["Running"],
        json!(true),
        "the replica was stopped before it left DNS"
    );
    client.remove_service("web").await.unwrap();
    for server in &dns {
        wait_for("web to leave DNS", T, || async move {
            let a = ask_dns(*server, "web.cube.", RecordType::A).await;
            (a.metadata.response_code == ResponseCode::NXDomain).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_port_held_by_another_process_opens_once_freed_and_idle_tcp_connections_close() {
    use tokio::io::AsyncReadExt;
    ensure_image();
    let cluster = Cluster::split_with(
        "round-robin",
        &[
            "ingress_addr = \"127.0.0.2\"",
            "ingress_addr = \"127.0.0.3\"",
        ],
    );
    cluster.ready().await;
    let publish = free_port();
    // Another process holds the port on one node's address.
    let squatter = std::net::TcpListener::bind(("127.0.0.2", publish)).unwrap();
    let mut spec = web(2, "held");
    spec["expose"] =
        json!([{"port": 7777, "publish": publish, "protocol": "tcp", "idle_timeout_s": 1}]);
    cluster.client().create_service(&spec).await.unwrap();
    running(&cluster, 2, "two replicas").await;
    let other = format!("127.0.0.3:{publish}");
    tcp_forwards(&other, "held from").await;
    // Freed: the node that could not listen does so now.
    drop(squatter);
    let freed = Instant::now();
    let held = format!("127.0.0.2:{publish}");
    tcp_forwards(&held, "held from").await;
    println!("port forwarding {:?} after it was freed", freed.elapsed());

    // A client that sends nothing is cut off after idle_timeout_s (1 s),
    // well before the replica's own 5 s read timeout would close it.
    let mut idle = tokio::net::TcpStream::connect(&other).await.unwrap();
    let connected = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(T, idle.read(&mut buf))
        .await
        .expect("the idle connection was never closed")
        .expect("closed cleanly, not reset");
    let after = connected.elapsed();
    println!("idle connection closed after {after:?}");
    assert_eq!(n, 0, "the idle connection got bytes");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(4500),
        "closed after {after:?}: not the balancer's 1 s idle timeout"
    );
    cluster.client().remove_service("web").await.unwrap();
}

#[tokio::test]
async fn replicas_and_clients_that_go_quiet_are_given_up_on_after_the_ports_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &["ingress_addr = \"127.0.0.2\""]);
    cluster.ready().await;
    let publish = free_port();
    let mut spec = web(2, "stalling");
    spec["expose"] =
        json!([{"port": 7777, "publish": publish, "protocol": "http", "idle_timeout_s": 1}]);
    cluster.client().create_service(&spec).await.unwrap();
    running(&cluster, 2, "two replicas").await;
    let base = format!("http://127.0.0.2:{publish}");
    let root = format!("{base}/");
    forwards_to_both(&root).await;
    // Each replica takes the request and sends nothing (for two minutes):
    // the balancer answers 504 once the port's 1 s has passed, not after
    // the default 60 s, and does not try the other replica (1 s more).
    let asked = Instant::now();
    let r = plain_get(&format!("{base}/stall")).await.unwrap();
    let after = asked.elapsed();
    println!("a stalled request answered after {after:?}");
    assert_eq!(r.status(), 504);
    let body: Value = r.json().await.expect("a JSON error");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("did not answer within"), "{body}");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(1900),
        "answered after {after:?}: not one try of the port's 1 s"
    );
    // The replicas are still served to the next request.
    let r = plain_get(&root).await.unwrap();
    assert_eq!(r.status(), 200);

    // A client that asks for 64 MiB and reads none of it: cut off once
    // the balancer has had no room to write for 1 s (it would otherwise
    // hold the client's and the replica's connections for good).
    const LEN: usize = 64 << 20;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.2:{publish}").parse().unwrap();
    let mut quiet = socket.connect(addr).await.unwrap();
    quiet
        .write_all(format!("GET /bytes/{LEN} HTTP/1.1\r\nHost: web\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Reading nothing, past the port's idle timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let read = tokio::time::timeout(T, async {
        loop {
            match quiet.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was not closed");
    println!("a client that did not read got {got} of {LEN} bytes before it was cut off");
    assert!(
        got < LEN,
        "the whole answer passed: the client was not cut off"
    );
    let r = plain_get(&root).await.unwrap();
    assert_eq!(r.status(), 200);
    cluster.client().remove_service("web").await.unwrap();
}

#[tokio::test]
async fn a_worker_whose_manager_freezes_keeps_balancing_and_follows_again_after() {
    ensure_image();
    let (cluster, publish, _) = behind_balancers(web(2, "frozen"), "http").await;
    // The manager frozen (SIGSTOP): its connections stay open, silent.
    keeps_balancing_apart_from_the_manager(
        &cluster,
        publish,
        || cluster.nodes[0].pause(),
        || cluster.nodes[0].resume(),
    )
    .await;
}

#[tokio::test]
async fn a_worker_cut_off_from_its_manager_keeps_balancing_and_follows_again_after() {
    ensure_image();
    // The manager in a network namespace of its own, the two workers on
    // the host; the link between them cut (every packet dropped, both
    // ways) and healed.
    let cluster = Cluster::split_apart(
        "round-robin",
        &[
            "ingress_addr = \"127.0.0.2\"",
            "ingress_addr = \"127.0.0.3\"",
        ],
    );
    cluster.ready().await;
    let publish = free_port();
    let mut spec = web(2, "cut off");
    spec["expose"] = json!([{"port": 7777, "publish": publish, "protocol": "http"}]);
    cluster.client().create_service(&spec).await.unwrap();
    let link = cluster.netns.as_ref().expect("the manager's namespace");
    keeps_balancing_apart_from_the_manager(&cluster, publish, || link.cut(), || link.heal()).await;
}

/// With two replicas of `web` behind the balancers of 127.0.0.2 and
/// 127.0.0.3 on `publish`: while `apart` keeps the manager from the
/// workers past the endpoint feed's 10 s of silence, the workers keep
/// their table and every request is answered; once `together`, they follow
/// the manager's endpoints again (a scale-up reaches both).
async fn keeps_balancing_apart_from_the_manager(
    cluster: &Cluster,
    publish: u16,
    apart: impl FnOnce(),
    together: impl FnOnce(),
) {
    let client = cluster.client();
    running(cluster, 2, "two replicas").await;
    let workers = worker_addresses(cluster).await;
    every_worker_sees(cluster, &workers, 2).await;
    let urls: Vec<String> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| format!("http://{ip}:{publish}/"))
        .collect();
    for url in &urls {
        wait_for("the balancer to forward", T, || async move {
            plain_get(url).await.ok().filter(|r| r.status() == 200)
        })
        .await;
    }
    let logged: Vec<usize> = cluster.nodes[1..]
        .iter()
        .map(|n| n.log_text().len())
        .collect();
    apart();
    let since = Instant::now();
    let mut answered = 0;
    while since.elapsed() < cube::worker::endpoints::SILENCE + Duration::from_secs(4) {
        for url in &urls {
            let r = plain_get(url).await.expect("a balancer stopped answering");
            assert_eq!(r.status(), 200);
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{answered} requests answered while apart from the manager");
    together();
    // Together again: the workers follow the feed again.
    client.scale_service("web", 3).await.unwrap();
    let scaled = Instant::now();
    every_worker_sees(cluster, &workers, 3).await;
    println!(
        "both workers hold the third replica {:?} after the scale-up",
        scaled.elapsed()
    );
    // Each worker noticed the silence and followed a new feed.
    for (node, before) in cluster.nodes[1..].iter().zip(logged) {
        let log = node.log_text()[before..].to_string();
        let silent = log
            .find("the endpoint feed ended or fell silent")
            .unwrap_or_else(|| panic!("no silence noticed:\n{log}"));
        assert!(
            log[silent..].contains("following the manager's endpoints again"),
            "{log}"
        );
    }
    client.remove_service("web").await.unwrap();
}

#[tokio::test]
async fn a_tcp_port_with_proxy_protocol_tells_the_replica_the_clients_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &["ingress_addr = \"127.0.0.2\""]);
    cluster.ready().await;
    let publish = free_port();
    let mut spec = web(1, "proxied");
    spec["task"]["env"]["PROXY_PROTOCOL"] = json!("1");
    spec["expose"] = json!([{"port": 7777, "publish": publish, "protocol": "tcp",
                             "proxy_protocol": true}]);
    cluster.client().create_service(&spec).await.unwrap();
    running(&cluster, 1, "the replica").await;
    let at: std::net::SocketAddr = format!("127.0.0.2:{publish}").parse().unwrap();
    let seen = wait_for("the replica to answer through the port", T, || async move {
        // The client's own address, known before it connects.
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind("127.0.0.1:0".parse().unwrap()).ok()?;
        let local = socket.local_addr().ok()?;
        let mut stream = socket.connect(at).await.ok()?;
        stream
            .write_all(b"GET /headers HTTP/1.0\r\nHost: web\r\n\r\n")
            .await
            .ok()?;
        let mut answer = String::new();
        tokio::time::timeout(T, stream.read_to_string(&mut answer))
            .await
            .ok()?
            .ok()?;
        answer.contains(" 200 ").then_some((local, answer))
    })
    .await;
    let (local, answer) = seen;
    assert!(
        answer.contains(&format!("proxy-source: {local}\n")),
        "the replica did not learn the client {local}: {answer}"
    );
    cluster.client().remove_service("web").await.unwrap();
}

/// The gateway of network `name`, if it exists.
fn gateway_of(name: &str) -> Option<String> {
    let out = std::process::Command::new("docker")
        .args(["network", "inspect", name, "--format"])
        .arg("{{range .IPAM.Config}}{{.Gateway}}{{end}}")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test]
async fn a_network_removed_behind_the_workers_back_is_made_again_and_served() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &["ingress_addr = \"127.0.0.2\""]);
    cluster.ready().await;
    // The harness names each worker's network after the worker.
    let network = cluster.worker_names[0].clone();
    let first = wait_for("the worker to make its network", T, || async {
        gateway_of(&network)
    })
    .await;
    // Removed while no container is on it, as `docker network prune` does.
    let out = std::process::Command::new("docker")
        .args(["network", "rm", &network])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let again = wait_for("the worker to make its network again", T, || async {
        gateway_of(&network)
    })
    .await;
    println!("network {network}: gateway {first}, made again with gateway {again}");
    // Replicas started after it run on it, and find services by name there.
    let publish = free_port();
    let mut spec = web(1, "again");
    spec["expose"] = json!([{"port": 7777, "publish": publish, "protocol": "http"}]);
    cluster.client().create_service(&spec).await.unwrap();
    let (tasks, _) = running(&cluster, 1, "the replica").await;
    let container = tasks[0].container_id.clone().unwrap();
    let seen = inspect(&container).unwrap();
    assert_eq!(seen["HostConfig"]["NetworkMode"], json!(network));
    assert_eq!(seen["HostConfig"]["Dns"], json!([again]));
    wait_for("web.cube to answer inside the container", T, || {
        let answer = get_from_inside(&container, publish);
        async move { answer.contains("again from").then_some(()) }
    })
    .await;
    cluster.client().remove_service("web").await.unwrap();
}

/// Waits until requests to `root` reach two different replicas.
async fn forwards_to_both(root: &str) {
    wait_for(
        "the balancer to forward to both replicas",
        T,
        || async move {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..4 {
                seen.insert(plain_get(root).await.ok()?.text().await.ok()?);
            }
            (seen.len() == 2).then_some(())
        },
    )
    .await;
}

/// A bridge network made by the test with a subnet (and gateway) of its
/// own, so that a container can be given an address on it; removed when
/// dropped.
struct OwnSubnet {
    name: String,
}

impl OwnSubnet {
    fn new() -> Self {
        let name = format!("subnet-{}", std::process::id());
        for third in (0..250u8).map(|i| (std::process::id() as u8).wrapping_add(i)) {
            let made = std::process::Command::new("docker")
                .args(["network", "create", "--driver", "bridge"])
                .arg(format!("--subnet=10.251.{third}.0/24"))
                .arg(format!("--gateway=10.251.{third}.1"))
                .arg(&name)
                .output()
                .unwrap();
            if made.status.success() {
                return OwnSubnet { name };
            }
        }
        panic!("no free 10.251.x.0/24 for a test network");
    }
}

impl Drop for OwnSubnet {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

#[tokio::test]
async fn a_local_replicas_address_is_not_reached_once_its_container_is_gone() {
    ensure_image();
    // Dropped last: after the cluster's guard has removed its containers.
    let subnet = OwnSubnet::new();
    let worker = format!(
        "ingress_addr = \"127.0.0.2\"\nnetwork = \"{}\"",
        subnet.name
    );
    let cluster = Cluster::split_with("round-robin", &[&worker]);
    cluster.ready().await;
    let publish = free_port();
    let mut spec = web(2, "real");
    spec["expose"] = json!([{"port": 7777, "publish": publish, "protocol": "http"}]);
    cluster.client().create_service(&spec).await.unwrap();
    let (tasks, _) = running(&cluster, 2, "two replicas").await;
    let root = format!("http://127.0.0.2:{publish}/");
    forwards_to_both(&root).await;
    // The manager frozen: its endpoints go on listing the replica whose
    // container is removed behind Cube's back, and the address it had is
    // taken by a container that is no replica at all.
    let victim = &tasks[0];
    let ip = victim.container_ip.expect("a container address");
    cluster.nodes[0].pause();
    let out = std::process::Command::new("docker")
        .args(["rm", "-f", victim.container_id.as_deref().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let label = format!("cube.node={}", cluster.worker_names[0]);
    let out = std::process::Command::new("docker")
        .args(["run", "-d", "--network", &subnet.name])
        .arg(format!("--ip={ip}"))
        .args(["--label", &label, "-e", "GREETING=impostor", IMAGE])
        .args(["/echo", "serve", "7777"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let impostor = format!("http://{ip}:7777/");
    wait_for(
        "the impostor to answer at the replica's old address",
        T,
        || {
            let impostor = impostor.clone();
            async move {
                let text = plain_get(&impostor).await.ok()?.text().await.ok()?;
                text.starts_with("impostor").then_some(())
            }
        },
    )
    .await;
    // Only the live replica answers through the balancer.
    for i in 0..40 {
        let r = plain_get(&root).await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let text = r.text().await.unwrap();
        assert!(text.starts_with("real"), "request {i} reached {text:?}");
    }
    cluster.nodes[0].resume();
    cluster.client().remove_service("web").await.unwrap();
}
