//! A rolling update of a 10-replica service (parallelism 2, start-first,
//! each new replica counted once its TCP health check passes), beside the
//! engine's floor for the same container starts, in one run.
//!
//! `cargo bench --bench rollout` starts a release `cube` dev node and:
//! - cube: creates the service (10 replicas running and healthy), then
//!   times from the `PUT` of a new spec to the moment the manager records
//!   the update completed (`update.ended_at`, same machine, same clock);
//! - engine: 10 containers running, then times 5 waves of 2 new containers
//!   created and started concurrently through bollard, the old ones of
//!   each wave stopped and removed beside it (not awaited in the timing).
//!
//! Prints a table of medians. Not a test: it asserts nothing.

mod common;

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::RemoveContainerOptions;
use common::{BENCH_LABEL, IMAGE, engine_start, median, remove_labelled};
use futures_util::future::join_all;
use serde_json::{Value, json};

const REPLICAS: usize = 10;
const PARALLELISM: usize = 2;

async fn serving(docker: &Docker, greeting: &str) -> String {
    let env = [format!("GREETING={greeting}")];
    engine_start(docker, &["/echo", "serve", "7777"], &env, "rollout").await
}

async fn engine_rollout(docker: &Docker) -> f64 {
    let mut old: Vec<String> = join_all((0..REPLICAS).map(|_| serving(docker, "v1"))).await;
    let start = Instant::now();
    let mut stops = Vec::new();
    for _ in 0..REPLICAS / PARALLELISM {
        join_all((0..PARALLELISM).map(|_| serving(docker, "v2"))).await;
        for id in old.drain(..PARALLELISM) {
            let docker = docker.clone();
            stops.push(tokio::spawn(async move {
                let _ = docker.stop_container(&id, None).await;
                let _ = docker
                    .remove_container(&id, None::<RemoveContainerOptions>)
                    .await;
            }));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    join_all(stops).await;
    remove_labelled(docker, &format!("{BENCH_LABEL}=rollout")).await;
    secs
}

fn spec(greeting: &str) -> Value {
    json!({
        "name": "roll",
        "replicas": REPLICAS,
        "task": {
            "image": IMAGE,
            "cmd": ["/echo", "serve", "7777"],
            "env": {"GREETING": greeting},
            "ports": [7777],
            "health": {"tcp": true, "port": 7777, "interval_s": 0.1, "retries": 1}
        },
        "update": {"parallelism": PARALLELISM, "order": "start-first", "monitor_s": 60}
    })
}

async fn service(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}/services/roll"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("a service")
}

async fn cube_rollout(http: &reqwest::Client, base: &str, round: usize) -> f64 {
    let r = http
        .post(format!("{base}/services"))
        .json(&spec("v0"))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let deadline = Instant::now() + Duration::from_secs(120);
    while service(http, base).await["healthy"] != REPLICAS {
        assert!(Instant::now() < deadline, "the replicas never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start_wall = chrono::Utc::now();
    let r = http
        .put(format!("{base}/services/roll"))
        .json(&spec(&format!("v{}", round + 1)))
        .send()
        .await
        .expect("update");
    assert_eq!(r.status(), 200);
    let ended = loop {
        let view = service(http, base).await;
        if view["update"]["state"] == "completed" {
            break view["update"]["ended_at"]
                .as_str()
                .and_then(|at| at.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .expect("ended_at");
        }
        assert!(
            view["update"]["state"] == "updating",
            "the update went wrong: {view}"
        );
        assert!(Instant::now() < deadline, "the update never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    http.delete(format!("{base}/services/roll"))
        .send()
        .await
        .expect("remove");
    // Let the replicas go before the next round.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page: Value = http
            .get(format!("{base}/tasks?service=roll&state=Running"))
            .send()
            .await
            .expect("tasks")
            .json()
            .await
            .expect("a page");
        if page["tasks"].as_array().is_none_or(Vec::is_empty) {
            break;
        }
        assert!(Instant::now() < deadline, "the replicas never stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (ended - start_wall).num_microseconds().expect("a duration") as f64 / 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let docker = common::image_and_engine().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node_name = format!("bench-{}", std::process::id());
    let (_node, base, http) = common::start_dev_node(dir.path(), &node_name).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let runs = 3;
    let (mut engine, mut cube) = (Vec::new(), Vec::new());
    for round in 0..runs {
        engine.push(engine_rollout(&docker).await);
        cube.push(cube_rollout(&http, &base, round).await);
    }
    let (e, c) = (median(engine), median(cube));
    println!(
        "\nRolling update of {REPLICAS} replicas, parallelism {PARALLELISM}, start-first (median of {runs})\n"
    );
    println!("| engine floor (s) | cube (s) | cube - engine | cube / engine |");
    println!("|-----------------:|---------:|--------------:|--------------:|");
    println!(
        "| {e:>16.3} | {c:>8.3} | {:>+10.0} ms | {:>12.2}x |",
        (c - e) * 1000.0,
        c / e
    );
}
