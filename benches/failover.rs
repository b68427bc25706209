//! Time from a worker's death to its tasks Running elsewhere.
//!
//! `cargo bench --bench failover` builds the workload image if needed and
//! starts a release `cube` manager and two surviving workers on loopback
//! ports (defaults: heartbeat every 1 s, down after 3 s). Each run starts a
//! fresh victim worker, submits six serving tasks (round-robin puts two on
//! the victim), waits until all run, then kills the victim's machine:
//! `kill -9` of its process and `docker rm -f` of its containers. The clock
//! runs from the kill until GET /tasks (polled every 10 ms) shows each of
//! the victim's tasks Running on another worker. Prints the median and the
//! spread, beside the figures other orchestrators document for node loss
//! (not measured here: one engine cannot host a multi-node Swarm).
//! Not a test: it asserts nothing about the numbers.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use futures_util::future::join_all;
use serde_json::Value;

const IMAGE: &str = "cube-demo/echo:latest";
const RUNS: usize = 5;
const TASKS: usize = 6;

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn start(dir: &Path, name: &str, toml: String) -> Node {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml).expect("config");
    Node(
        Command::new(env!("CARGO_BIN_EXE_cube"))
            .args(["node", "--config"])
            .arg(&config)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cube"),
    )
}

fn worker(dir: &Path, name: &str, manager: &str) -> Node {
    let toml = format!(
        "role = \"worker\"\ndata_dir = \"{}\"\n[worker]\nname = \"{name}\"\n\
         listen = \"127.0.0.1:{}\"\nmanager = \"{manager}\"\n",
        dir.join(name).display(),
        free_port()
    );
    start(dir, name, toml)
}

async fn get(http: &reqwest::Client, url: &str) -> Vec<Value> {
    match http.get(url).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Vec::new(),
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

async fn remove_labelled(docker: &Docker, label: &str) {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".into(), vec![label.to_string()])])),
        ..Default::default()
    };
    let list = docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default();
    let removals = list.into_iter().filter_map(|c| c.id).map(|id| async move {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        let _ = docker.remove_container(&id, Some(options)).await;
    });
    join_all(removals).await;
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    let built = Command::new("bash")
        .arg(format!("{root}/images/build.sh"))
        .status()
        .expect("run images/build.sh");
    assert!(
        built.success(),
        "cannot build the workload image (is Docker running?)"
    );
    let docker = Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("the Docker engine is not reachable");

    let dir = tempfile::tempdir().expect("tempdir");
    let tag = std::process::id();
    let mport = free_port();
    let base = format!("http://127.0.0.1:{mport}");
    let _manager = start(
        dir.path(),
        "manager",
        format!(
            "role = \"manager\"\ndata_dir = \"{}\"\n[manager]\nlisten = \"127.0.0.1:{mport}\"\n\
             scheduler = \"round-robin\"\n",
            dir.path().join("manager").display()
        ),
    );
    let mut names: Vec<String> = (0..2).map(|i| format!("bench-s{i}-{tag}")).collect();
    let _survivors: Vec<Node> = names.iter().map(|n| worker(dir.path(), n, &base)).collect();
    let http = reqwest::Client::new();
    let spec = serde_json::json!({
        "name": "failover", "image": IMAGE, "cmd": ["/echo", "serve", "7777"], "ports": [7777]
    });

    let mut times = Vec::new();
    for run in 0..RUNS {
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
        let _ = node.0.kill();
        let _ = node.0.wait();
        remove_labelled(&docker, &format!("cube.node={victim}")).await;
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
            "run {}: {} tasks of the dead worker Running elsewhere after {secs:.2} s",
            run + 1,
            doomed.len()
        );
        times.push(secs);
        let stops = ids
            .iter()
            .map(|id| http.delete(format!("{base}/tasks/{id}")).send());
        join_all(stops).await;
    }

    let (lo, hi) = (
        times.iter().cloned().fold(f64::MAX, f64::min),
        times.iter().cloned().fold(0.0, f64::max),
    );
    println!("\nA worker's machine dies: time until its tasks run elsewhere\n");
    println!("| orchestrator | how | runs | median (s) | min-max (s) |");
    println!("|---|---|---:|---:|---:|");
    println!(
        "| Cube (heartbeat 1 s, down after 3 s) | measured here | {RUNS} | {:.2} | {lo:.2}-{hi:.2} |",
        median(times)
    );
    println!("| Docker Swarm | documented default (node loss detected) | - | ~15 | - |");
    println!("| Nomad | documented default (heartbeat TTL) | - | ~20-30 | - |");
    println!("| Kubernetes | documented default (node grace + eviction) | - | ~350 | - |");
    for name in &names {
        remove_labelled(&docker, &format!("cube.node={name}")).await;
    }
}
