//! Time from a container's death to its replacement running: Cube's
//! TaskSupervisor (policy `always`, back-off at its first step, 100 ms)
//! beside the engine's own `--restart=always` (whose first delay is also
//! 100 ms), in one run.
//!
//! `cargo bench --bench restart` builds the workload image if needed and
//! starts a release `cube` dev node on loopback ports. Each run starts a
//! container that exits with code 1 after 300 ms:
//! - engine: created with restart policy `always` through bollard; the time
//!   from its `die` event to its next `start` event (the engine's clock);
//! - cube: a task with `"restart": {"policy": "always"}`; the time from its
//!   container's `die` event to the `started_at` Cube records for the
//!   replacement (Cube's "Running": the engine started it and the worker
//!   inspected it; same machine, same clock).
//!
//! Prints the medians. Not a test: it asserts nothing about the numbers.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{CreateContainerOptions, EventsOptions};
use chrono::{DateTime, TimeZone, Utc};
use common::{IMAGE, median, remove_labelled};
use futures_util::StreamExt;

const RUNS: usize = 5;
const LABEL: &str = "cube.bench";

/// The times of the `die` then the next `start` events of containers with
/// this label, as the engine stamps them.
async fn die_then_start(
    docker: &Docker,
    label: &str,
    want_start: bool,
) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
    // Replayed from a second ago: a death before the stream opened is not missed.
    let since = Utc::now().timestamp() - 1;
    let options = EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![label.to_string()]),
            (
                "event".to_string(),
                vec!["die".to_string(), "start".to_string()],
            ),
        ])),
    };
    let mut events = Box::pin(docker.events(Some(options)));
    let mut died = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok(Some(Ok(event))) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        events.next(),
    )
    .await
    {
        let at = Utc.timestamp_nanos(event.time_nano.unwrap_or_default());
        match (event.action.as_deref(), died) {
            (Some("die"), None) => {
                died = Some(at);
                if !want_start {
                    return (at, None);
                }
            }
            (Some("start"), Some(d)) => return (d, Some(at)),
            _ => {}
        }
    }
    panic!("no die/start events for {label} within a minute");
}

async fn engine_run(docker: &Docker, run: usize) -> f64 {
    let label = format!("{LABEL}=restart-engine-{run}");
    let watch = die_then_start(docker, &label, true);
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(vec![
            "/echo".into(),
            "exit".into(),
            "1".into(),
            "300".into(),
        ]),
        labels: Some(HashMap::from([(
            LABEL.to_string(),
            format!("restart-engine-{run}"),
        )])),
        host_config: Some(HostConfig {
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::ALWAYS),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .expect("create");
    let start = async {
        docker
            .start_container(&created.id, None)
            .await
            .expect("start")
    };
    let ((died, started), ()) = tokio::join!(watch, start);
    remove_labelled(docker, &label).await;
    (started.expect("a start") - died)
        .num_microseconds()
        .unwrap_or_default() as f64
        / 1e3
}

async fn cube_run(docker: &Docker, http: &reqwest::Client, base: &str) -> f64 {
    let spec = serde_json::json!({
        "name": "restart-bench", "image": IMAGE, "cmd": ["/echo", "exit", "1", "300"],
        "restart": {"policy": "always"}
    });
    let r = http
        .post(format!("{base}/tasks"))
        .json(&spec)
        .send()
        .await
        .expect("post");
    let id = r.json::<serde_json::Value>().await.expect("record")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (died, _) = die_then_start(docker, &format!("cube.task={id}"), false).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = loop {
        let t: serde_json::Value = http
            .get(format!("{base}/tasks/{id}"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("record");
        if t["restart_count"] == 1 && t["state"] == "Running" {
            let at = t["started_at"].as_str().expect("started_at");
            break at.parse::<DateTime<Utc>>().expect("a time");
        }
        assert!(Instant::now() < deadline, "cube never restarted it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = http.delete(format!("{base}/tasks/{id}")).send().await;
    (started - died).num_microseconds().unwrap_or_default() as f64 / 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let docker = common::image_and_engine().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node_name = format!("bench-restart-{}", std::process::id());
    let (_node, base, http) = common::start_dev_node(dir.path(), &node_name).await;

    let mut engine = Vec::new();
    let mut cube = Vec::new();
    for run in 0..RUNS {
        engine.push(engine_run(&docker, run).await);
        cube.push(cube_run(&docker, &http, &base).await);
    }
    eprintln!("engine: {engine:?} ms\ncube:   {cube:?} ms");
    let (e, c) = (median(engine), median(cube));
    println!("\nA container dies: time until its replacement runs (median of {RUNS})\n");
    println!("| restarted by | first back-off | death to running (ms) |");
    println!("|---|---:|---:|");
    println!("| engine (`--restart=always`) | 100 ms | {e:.0} |");
    println!("| Cube (policy `always`) | 100 ms | {c:.0} |");
    remove_labelled(&docker, &format!("cube.node={node_name}")).await;
}
