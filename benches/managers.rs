//! Three managers beside one, in the same run (release processes on
//! loopback, real TLS, real LMDB files):
//!
//! - durable submissions per second (`CUBE_BENCH_CLIENTS` concurrent
//!   clients, default 32, for `CUBE_BENCH_SECS`, default 5) to the leader;
//! - POST-to-Running of a task on one worker, sequentially (median of
//!   `CUBE_BENCH_RUNS`, default 20);
//! - with three managers, the leader killed with SIGKILL
//!   (`CUBE_BENCH_KILLS` times, default 20, restarted each time): the
//!   time until another manager accepts a write (`CUBE_BENCH_ONLY=failover`:
//!   this alone).
//!
//! The nodes' logs (`CUBE_BENCH_LOG`, default `warn`) are kept when the
//! bench fails. Not a test: it prints a table. Needs Docker (the worker runs the tasks).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    BenchDir, IMAGE, Node, admin_http, free_port, image_and_engine, median, remove_labelled,
};
use futures_util::future::join_all;
use serde_json::{Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A cluster of `n` managers (and maybe one worker) in `dir`.
struct Setup {
    dir: PathBuf,
    urls: Vec<String>,
    configs: Vec<String>,
    managers: Vec<Node>,
    _worker: Option<Node>,
    http: reqwest::Client,
}

fn manager_toml(dir: &Path, i: usize, port: u16, join: &str) -> String {
    format!(
        "role = \"manager\"\ndata_dir = \"{}\"\n[manager]\nlisten = \"127.0.0.1:{port}\"\n\
         client_file = \"{}\"\n{join}\n",
        dir.join(format!("m{i}")).display(),
        dir.join(format!("client-{i}.toml")).display()
    )
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Setup {
    async fn start(dir: &Path, n: usize, worker: bool) -> Setup {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect();
        let mut configs = vec![manager_toml(dir, 0, ports[0], "")];
        let mut managers = vec![Node::start(dir, "m0", &configs[0])];
        let http = admin_http(&dir.join("client-0.toml"), 64).await;
        let token = until("the manager join token", || async {
            std::fs::read_to_string(dir.join("m0/manager.token")).ok()
        })
        .await;
        for i in 1..n {
            let join = format!("join = \"{}\"\njoin_token = \"{}\"", urls[0], token.trim());
            configs.push(manager_toml(dir, i, ports[i], &join));
            managers.push(Node::start(dir, &format!("m{i}"), &configs[i]));
        }
        until("every manager a voter", || async {
            let view = get_json(&http, &format!("{}/cluster?consistent=true", urls[0])).await?;
            let voters = view["members"]
                .as_array()?
                .iter()
                .filter(|m| m["voter"] == true)
                .count();
            (voters == n).then_some(())
        })
        .await;
        let worker = if worker {
            let token = std::fs::read_to_string(dir.join("m0/worker.token")).expect("token");
            let node = Node::start(
                dir,
                "w1",
                &format!(
                    "role = \"worker\"\ndata_dir = \"{}\"\n[worker]\nname = \"bench-m{n}\"\n\
                     listen = \"127.0.0.1:{}\"\nmanager = \"{}\"\njoin_token = \"{}\"\n",
                    dir.join("w1").display(),
                    free_port(),
                    urls.join(","),
                    token.trim()
                ),
            );
            until("the worker registered", || async {
                let nodes = get_json(&http, &format!("{}/nodes", urls[0])).await?;
                (nodes.as_array()?.len() == 1).then_some(())
            })
            .await;
            Some(node)
        } else {
            None
        };
        Setup {
            dir: dir.to_path_buf(),
            urls,
            configs,
            managers,
            _worker: worker,
            http,
        }
    }

    /// The index of the leader, as manager `ask` says.
    async fn leader(&self, ask: usize) -> Option<usize> {
        let view = get_json(&self.http, &format!("{}/cluster", self.urls[ask])).await?;
        let id = view["leader"].as_u64()?;
        let url = view["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"].as_u64() == Some(id))?["url"]
            .as_str()?
            .to_string();
        self.urls.iter().position(|u| *u == url)
    }
}

fn spec(label: &str) -> Value {
    json!({
        "name": "bench",
        "image": IMAGE,
        "cmd": ["/echo", "sleep", "600"],
        "env": {"BENCH": label},
    })
}

/// Requests per second and p50/p99 (ms) of `clients` loops posting specs
/// to `base` for `secs`.
async fn throughput(
    http: &reqwest::Client,
    base: &str,
    clients: usize,
    secs: f64,
) -> (f64, f64, f64) {
    let start = Instant::now();
    let loops = (0..clients).map(|_| {
        let (http, url) = (http.clone(), format!("{base}/tasks"));
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed().as_secs_f64() < secs {
                let t = Instant::now();
                if let Ok(r) = http.post(&url).json(&spec("submit")).send().await
                    && r.status().as_u16() == 201
                {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            lat
        })
    });
    let mut lat: Vec<f64> = join_all(loops)
        .await
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    let secs = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (lat.len() as f64 / secs, pct(0.5), pct(0.99))
}

/// POST-to-Running (ms) of `runs` tasks one after another, each stopped
/// after.
async fn to_running(http: &reqwest::Client, base: &str, runs: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let r = http
            .post(format!("{base}/tasks"))
            .json(&spec("running"))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 201, "submission refused");
        let id = r.json::<Value>().await.expect("record")["id"]
            .as_str()
            .expect("id")
            .to_string();
        until("the task running", || async {
            let task = get_json(http, &format!("{base}/tasks/{id}")).await?;
            (task["state"] == "Running").then_some(())
        })
        .await;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = http.delete(format!("{base}/tasks/{id}")).send().await;
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let clients = env_usize("CUBE_BENCH_CLIENTS", 32);
    let secs = env_usize("CUBE_BENCH_SECS", 5) as f64;
    let runs = env_usize("CUBE_BENCH_RUNS", 20);
    let kills = env_usize("CUBE_BENCH_KILLS", 20);
    let docker = image_and_engine().await;
    let mut rows: Vec<(String, String)> = Vec::new();

    // `CUBE_BENCH_ONLY=failover` runs the leader kills alone.
    let only_failover = std::env::var("CUBE_BENCH_ONLY").is_ok_and(|v| v == "failover");
    for n in [1usize, 3].into_iter().filter(|_| !only_failover) {
        let dir = BenchDir::new();
        let setup = Setup::start(dir.path(), n, false).await;
        let leader = setup.leader(0).await.expect("a leader");
        let (rate, p50, p99) = throughput(&setup.http, &setup.urls[leader], clients, secs).await;
        rows.push((
            format!("POST /tasks, {n} manager(s), {clients} clients"),
            format!("{rate:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms"),
        ));
        drop(setup);

        let dir = BenchDir::new();
        let setup = Setup::start(dir.path(), n, true).await;
        let leader = setup.leader(0).await.expect("a leader");
        let times = to_running(&setup.http, &setup.urls[leader], runs).await;
        let max = times.iter().copied().fold(0.0, f64::max);
        rows.push((
            format!("POST to Running, {n} manager(s), median of {runs}"),
            format!("{:.1} ms (max {max:.1})", median(times)),
        ));
        drop(setup);
        remove_labelled(&docker, &format!("cube.node=bench-m{n}")).await;
    }

    let dir = BenchDir::new();
    let mut setup = Setup::start(dir.path(), 3, false).await;
    let mut to_write = Vec::new();
    for round in 0..kills {
        let ask = (0..3)
            .find(|i| setup.managers[*i].0.try_wait().ok().flatten().is_none())
            .unwrap_or(0);
        let old = until("a leader", || setup.leader(ask)).await;
        let _ = round;
        setup.managers[old].kill9();
        let killed = Instant::now();
        let others: Vec<String> = (0..3)
            .filter(|i| *i != old)
            .map(|i| setup.urls[i].clone())
            .collect();
        let http = setup.http.clone();
        until("a write accepted after the leader's death", || {
            let (http, others) = (http.clone(), others.clone());
            async move {
                for url in &others {
                    if let Ok(r) = http
                        .post(format!("{url}/tasks"))
                        .json(&spec("failover"))
                        .timeout(Duration::from_millis(500))
                        .send()
                        .await
                        && r.status().as_u16() == 201
                    {
                        return Some(());
                    }
                }
                None
            }
        })
        .await;
        to_write.push(killed.elapsed().as_secs_f64() * 1000.0);
        setup.managers[old] = Node::start(&setup.dir, &format!("m{old}"), &setup.configs[old]);
        let back = setup.urls[old].clone();
        let http = setup.http.clone();
        until("the killed manager back and caught up", || {
            let (http, back) = (http.clone(), back.clone());
            async move {
                let mine = get_json(&http, &format!("{back}/cluster")).await?;
                let lead = get_json(&http, &format!("{back}/cluster?consistent=true")).await?;
                (mine["leader"].is_u64()
                    && mine["applied_index"].as_u64() >= lead["applied_index"].as_u64())
                .then_some(())
            }
        })
        .await;
    }
    let max = to_write.iter().copied().fold(0.0, f64::max);
    let each: Vec<String> = to_write.iter().map(|ms| format!("{ms:.0}")).collect();
    println!(
        "leader killed to a write accepted, each (ms): {}",
        each.join(", ")
    );
    rows.push((
        format!("leader killed to a write accepted, 3 managers, {kills} kills"),
        format!("median {:.0} ms, max {max:.0} ms", median(to_write)),
    ));

    println!("\n| what | result |\n|---|---|");
    for (what, result) in rows {
        println!("| {what} | {result} |");
    }
}
