//! Time from a worker's death to its tasks Running elsewhere.
//!
//! `cargo bench --bench failover` builds the workload image if needed and
//! starts a release `cube` manager and two surviving workers on loopback
//! ports (defaults: heartbeat every 1 s, down after 3 s). Each run starts a
//! fresh victim worker, submits six serving tasks (round-robin puts two on
//! the victim), waits until all run, then kills the victim's machine:
//! `kill -9` of its process and `docker rm -f` of its containers. The clock
//! runs from the kill until GET /tasks (polled every 10 ms) shows each of
//! the victim's tasks Running on another worker. Then as many runs freeze
//! the victim instead (SIGSTOP: its containers keep running and its
//! sockets stay open), timed the same way. Prints the median and the
//! spread, beside the figures other orchestrators document for node loss
//! (not measured here: one engine cannot host a multi-node Swarm).
//! Not a test: it asserts nothing about the numbers.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use common::{IMAGE, Node, free_port, median, remove_labelled};
use futures_util::future::join_all;
use serde_json::Value;

const RUNS: usize = 5;
const TASKS: usize = 6;

fn worker(dir: &Path, name: &str, manager: &str) -> Node {
    let token = std::fs::read_to_string(dir.join("manager").join("worker.token"))
        .expect("the manager's worker token");
    let toml = format!(
        "role = \"worker\"\ndata_dir = \"{}\"\n[worker]\nname = \"{name}\"\n\
         listen = \"127.0.0.1:{}\"\nmanager = \"{manager}\"\njoin_token = \"{}\"\n\
         network = \"{name}\"\n",
        dir.join(name).display(),
        free_port(),
        token.trim()
    );
    Node::start(dir, name, &toml)
}

/// A list from `url`: a JSON array, or the `tasks` of a page of `GET /tasks`
/// (the first page: the bench's tasks are far fewer than a page).
async fn get(http: &reqwest::Client, url: &str) -> Vec<Value> {
    let value: Value = match http.get(url).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    };
    match value {
        Value::Array(items) => items,
        Value::Object(mut page) => match page.remove("tasks") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Polls `url` until `done` holds of its list, or panics after a minute.
async fn until(http: &reqwest::Client, url: &str, done: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if done(&get(http, url).await) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out polling {url}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let docker: Docker = common::image_and_engine().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let tag = std::process::id();
    let mport = free_port();
    let base = format!("https://127.0.0.1:{mport}");
    let _manager = Node::start(
        dir.path(),
        "manager",
        &format!(
            "role = \"manager\"\ndata_dir = \"{}\"\n[manager]\nlisten = \"127.0.0.1:{mport}\"\n\
             scheduler = \"round-robin\"\nclient_file = \"{}\"\n",
            dir.path().join("manager").display(),
            dir.path().join("client.toml").display()
        ),
    );
    // The client file comes after the tokens: the workers can join.
    let http = common::admin_http(&dir.path().join("client.toml"), 8).await;
    let mut names: Vec<String> = (0..2).map(|i| format!("bench-s{i}-{tag}")).collect();
    let _survivors: Vec<Node> = names.iter().map(|n| worker(dir.path(), n, &base)).collect();
    let spec = serde_json::json!({
        "name": "failover", "image": IMAGE, "cmd": ["/echo", "serve", "7777"], "ports": [7777]
    });

    let mut times = Vec::new();
    let mut frozen_times = Vec::new();
    for run in 0..2 * RUNS {
        // The first RUNS kill the machine; the next RUNS freeze the worker
        // (SIGSTOP: its containers keep running, its sockets stay open).
        let freeze = run >= RUNS;
        let victim = format!("bench-v{run}-{tag}");
        names.push(victim.clone());
        let mut node = worker(dir.path(), &victim, &base);
        let want = victim.clone();
        until(&http, &format!("{base}/nodes"), |nodes| {
            nodes
                .iter()
                .any(|n| n["name"] == want.as_str() && n["state"] == "ready")
        })
        .await;
        let mut ids = Vec::new();
        for _ in 0..TASKS {
            let r = http
                .post(format!("{base}/tasks"))
                .json(&spec)
                .send()
                .await
                .expect("post");
            let v: Value = r.json().await.expect("record");
            ids.push(v["id"].as_str().expect("id").to_string());
        }
        let all = ids.clone();
        until(&http, &format!("{base}/tasks"), |tasks| {
            all.iter().all(|id| {
                tasks
                    .iter()
                    .any(|t| t["id"] == id.as_str() && t["state"] == "Running")
            })
        })
        .await;
        let tasks = get(&http, &format!("{base}/tasks")).await;
        let doomed: Vec<String> = tasks
            .iter()
            .filter(|t| t["node"] == victim.as_str() && t["state"] == "Running")
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect();
        assert!(!doomed.is_empty(), "no task landed on the victim");

        let killed = Instant::now();
        let pid = node.0.id().to_string();
        if freeze {
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &pid])
                .status();
        } else {
            node.kill9();
            remove_labelled(&docker, &format!("cube.node={victim}")).await;
        }
        let gone = victim.clone();
        until(&http, &format!("{base}/tasks"), |tasks| {
            doomed.iter().all(|id| {
                tasks.iter().any(|t| {
                    t["id"] == id.as_str() && t["state"] == "Running" && t["node"] != gone.as_str()
                })
            })
        })
        .await;
        let secs = killed.elapsed().as_secs_f64();
        eprintln!(
            "run {} ({}): {} tasks of the lost worker Running elsewhere after {secs:.2} s",
            run + 1,
            if freeze { "frozen" } else { "killed" },
            doomed.len()
        );
        if freeze {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid])
                .status();
            node.kill9();
            remove_labelled(&docker, &format!("cube.node={victim}")).await;
            frozen_times.push(secs);
        } else {
            times.push(secs);
        }
        let stops = ids
            .iter()
            .map(|id| http.delete(format!("{base}/tasks/{id}")).send());
        join_all(stops).await;
    }

    let range = |xs: &[f64]| {
        (
            xs.iter().cloned().fold(f64::MAX, f64::min),
            xs.iter().cloned().fold(0.0, f64::max),
        )
    };
    let (lo, hi) = range(&times);
    let (flo, fhi) = range(&frozen_times);
    println!(
        "\nA worker's machine dies, or the worker freezes: time until its tasks run elsewhere\n"
    );
    println!("| orchestrator | how | runs | median (s) | min-max (s) |");
    println!("|---|---|---:|---:|---:|");
    println!(
        "| Cube (heartbeat 1 s, down after 3 s) | measured here | {RUNS} | {:.2} | {lo:.2}-{hi:.2} |",
        median(times)
    );
    println!(
        "| Cube, the worker frozen (SIGSTOP) | measured here | {RUNS} | {:.2} | {flo:.2}-{fhi:.2} |",
        median(frozen_times)
    );
    println!("| Docker Swarm | documented default (node loss detected) | - | ~15 | - |");
    println!("| Nomad | documented default (heartbeat TTL) | - | ~20-30 | - |");
    println!("| Kubernetes | documented default (node grace + eviction) | - | ~350 | - |");
    for name in &names {
        remove_labelled(&docker, &format!("cube.node={name}")).await;
    }
}
