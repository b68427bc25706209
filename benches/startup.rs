//! POST-to-Running, Cube beside the engine driven directly, in one run.
//!
//! `cargo bench --bench startup` builds the workload image if needed, starts
//! a release `cube` dev node on loopback ports with its own data dir, and
//! measures, for 1 task and for 50 tasks posted concurrently:
//! - engine: create + start through bollard, concurrently, until every
//!   start call has returned;
//! - cube: POST /tasks, concurrently, until the manager records every task
//!   Running: the latest `updated_at` of the Running records minus the
//!   wall-clock time of the first POST (same machine, same clock). GET /tasks
//!   is polled every 50 ms only to learn when that is; the poll's own cost
//!   (serializing every record) is kept out of the manager's way.
//!
//! Prints a table of medians and the ratio. Not a test: it asserts nothing.

mod common;

use std::time::{Duration, Instant};

use bollard::Docker;
use common::{BENCH_LABEL, IMAGE, engine_start, median, remove_labelled};
use futures_util::future::join_all;

async fn engine_run(docker: &Docker, n: usize) -> f64 {
    let start = Instant::now();
    let runs = (0..n).map(|_| engine_start(docker, &["/echo", "sleep", "600"], &[], "engine"));
    join_all(runs).await;
    let secs = start.elapsed().as_secs_f64();
    remove_labelled(docker, &format!("{BENCH_LABEL}=engine")).await;
    secs
}

async fn cube_run(http: &reqwest::Client, base: &str, n: usize) -> f64 {
    let spec = serde_json::json!({
        "name": "bench", "image": IMAGE, "cmd": ["/echo", "sleep", "600"]
    });
    let start = Instant::now();
    let start_wall = chrono::Utc::now();
    let posts = (0..n).map(|_| async {
        let r = http
            .post(format!("{base}/tasks"))
            .json(&spec)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
        r.json::<serde_json::Value>().await.expect("record")["id"]
            .as_str()
            .expect("id")
            .to_string()
    });
    let ids: Vec<String> = join_all(posts).await;
    let last_running = loop {
        let page: serde_json::Value = http
            .get(format!("{base}/tasks"))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("tasks");
        let tasks = page["tasks"].as_array().cloned().unwrap_or_default();
        let running: Vec<&serde_json::Value> = tasks
            .iter()
            .filter(|t| ids.iter().any(|id| t["id"] == id.as_str()) && t["state"] == "Running")
            .collect();
        if running.len() == n {
            break running
                .iter()
                .filter_map(|t| t["updated_at"].as_str())
                .filter_map(|at| at.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .max();
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "cube never got there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last = last_running.expect("Running records carry updated_at");
    let secs = (last - start_wall)
        .num_microseconds()
        .expect("a sane duration") as f64
        / 1e6;
    let stops = ids
        .iter()
        .map(|id| http.delete(format!("{base}/tasks/{id}")).send());
    join_all(stops).await;
    secs
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let docker = common::image_and_engine().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let node_name = format!("bench-{}", std::process::id());
    let (_node, base, http) = common::start_dev_node(dir.path(), &node_name).await;
    // Let the worker's engine connection come up, and warm both paths.
    tokio::time::sleep(Duration::from_millis(500)).await;
    engine_run(&docker, 1).await;
    cube_run(&http, &base, 1).await;

    println!("\nPOST-to-Running, median of runs (same machine, same run)\n");
    println!("| tasks | runs | engine direct (s) | cube (s) | cube - engine | cube / engine |");
    println!("|------:|-----:|------------------:|---------:|--------------:|--------------:|");
    for (n, runs) in [(1usize, 7usize), (50, 3)] {
        let mut engine = Vec::new();
        let mut cube = Vec::new();
        for _ in 0..runs {
            engine.push(engine_run(&docker, n).await);
            cube.push(cube_run(&http, &base, n).await);
        }
        let (e, c) = (median(engine), median(cube));
        println!(
            "| {n:>5} | {runs:>4} | {e:>17.3} | {c:>8.3} | {:>+10.0} ms | {:>12.2}x |",
            (c - e) * 1000.0,
            c / e
        );
    }
    remove_labelled(&docker, &format!("{BENCH_LABEL}=engine")).await;
    remove_labelled(&docker, &format!("cube.node={node_name}")).await;
}
