//! Durable submissions per second: a release manager with no worker, N
//! concurrent HTTP clients posting task specs, beside the two ceilings
//! measured in the same run: this disk's fdatasync rate and a trivial
//! route's rate (`GET /nodes`, through the same HTTP server and actor).
//!
//! `cargo bench --bench submit` measures at 0 stored tasks, fills the store
//! to 100,000 (`CUBE_BENCH_FILL`), measures again, then kills the manager
//! with SIGKILL, starts it again and checks that every acknowledged task is
//! there. Clients: `CUBE_BENCH_CLIENTS` (default 32); seconds per
//! measurement: `CUBE_BENCH_SECS` (default 5). Not a test: it prints a table.

mod common;

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Node, free_port};
use futures_util::future::join_all;
use tokio::sync::Mutex;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// fdatasync calls per second on a 4 KiB file in `dir`, for `secs`.
fn fsync_rate(dir: &Path, secs: f64) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("probe file");
    let block = vec![7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        n += 1;
    }
    let _ = std::fs::remove_file(path);
    n as f64 / start.elapsed().as_secs_f64()
}

fn start_manager(dir: &Path, port: u16) -> Node {
    Node::start(
        dir,
        "manager",
        &format!(
            "role = \"manager\"\ndata_dir = \"{}\"\nstore_map_mb = 8192\n\
             [manager]\nlisten = \"127.0.0.1:{port}\"\nclient_file = \"{}\"\n\
             [manager.retain_ended]\nmax_tasks = 1000000\n",
            dir.join("data").display(),
            dir.join("client.toml").display()
        ),
    )
}

async fn wait_up(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while http.get(format!("{base}/nodes")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the manager did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Run {
    requests: usize,
    errors: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }
}

/// `clients` loops sending `request` until `secs` pass (or `stop_at`
/// successful requests); latencies of the successful ones.
async fn load<F, Fut>(clients: usize, secs: f64, stop_at: usize, request: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let loops = (0..clients).map(|_| {
        let request = request.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while start.elapsed().as_secs_f64() < secs
                && done.load(std::sync::atomic::Ordering::Relaxed) < stop_at
            {
                let t = Instant::now();
                if request().await {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        })
    });
    let results = join_all(loops).await;
    let secs = start.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    let mut errors = 0;
    for (l, e) in results.into_iter().flatten() {
        lat.extend(l);
        errors += e;
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)]
        }
    };
    Run {
        requests: lat.len(),
        errors,
        secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

/// Posts specs; acknowledged ids go into `acked`.
fn submitter(
    http: reqwest::Client,
    base: String,
    acked: Arc<Mutex<Vec<String>>>,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Clone {
    let spec = serde_json::json!({
        "name": "bench",
        "image": "cube-demo/echo:latest",
        "cmd": ["/echo", "sleep", "600"],
        "env": {"BENCH": "submit"},
    });
    move || {
        let (http, base, acked, spec) = (http.clone(), base.clone(), acked.clone(), spec.clone());
        Box::pin(async move {
            let Ok(r) = http.post(format!("{base}/tasks")).json(&spec).send().await else {
                return false;
            };
            if r.status().as_u16() != 201 {
                return false;
            }
            let Ok(v) = r.json::<serde_json::Value>().await else {
                return false;
            };
            match v["id"].as_str() {
                Some(id) => {
                    acked.lock().await.push(id.to_string());
                    true
                }
                None => false,
            }
        })
    }
}

/// Every task id the manager holds, paging through `GET /tasks`.
async fn stored_ids(http: &reqwest::Client, base: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut after = String::new();
    loop {
        let url = if after.is_empty() {
            format!("{base}/tasks?limit=10000")
        } else {
            format!("{base}/tasks?limit=10000&after={after}")
        };
        let page: serde_json::Value = http
            .get(url)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("page");
        for t in page["tasks"].as_array().into_iter().flatten() {
            if let Some(id) = t["id"].as_str() {
                out.insert(id.to_string());
            }
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => return out,
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let clients = env_usize("CUBE_BENCH_CLIENTS", 32);
    let secs = env_usize("CUBE_BENCH_SECS", 5) as f64;
    let fill = env_usize("CUBE_BENCH_FILL", 100_000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");

    let fsync = fsync_rate(dir.path(), 2.0);
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    let mut node = start_manager(dir.path(), port);
    let http = common::admin_http(&dir.path().join("client.toml"), clients).await;
    wait_up(&http, &base).await;

    let trivial = {
        let (http, base) = (http.clone(), base.clone());
        load(clients, secs, usize::MAX, move || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                matches!(http.get(format!("{base}/nodes")).send().await, Ok(r) if r.status().is_success())
            }
        })
        .await
    };

    let acked = Arc::new(Mutex::new(Vec::new()));
    let submit = submitter(http.clone(), base.clone(), acked.clone());
    let at_zero = load(clients, secs, usize::MAX, submit.clone()).await;
    let fill_start = Instant::now();
    let stored_now = acked.lock().await.len();
    let filling = load(
        clients,
        3600.0,
        fill.saturating_sub(stored_now),
        submit.clone(),
    )
    .await;
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let stored_before = acked.lock().await.len();
    let at_fill = load(clients, secs, usize::MAX, submit.clone()).await;

    // kill -9, start again, and look for every acknowledged task.
    node.kill9();
    let restart = Instant::now();
    let _node = start_manager(dir.path(), port);
    wait_up(&http, &base).await;
    let restart_secs = restart.elapsed().as_secs_f64();
    let stored = stored_ids(&http, &base).await;
    let acked = acked.lock().await;
    let missing = acked.iter().filter(|id| !stored.contains(*id)).count();

    println!(
        "\nDurable submissions: a release manager, no worker, {clients} concurrent HTTP clients (keep-alive), {secs} s per row\n"
    );
    println!("| what | stored before | requests | errors | per second | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| disk: fdatasync of 4 KiB (ceiling for one commit per record) | - | - | - | {fsync:.0} | - | - |"
    );
    let row = |what: &str, before: usize, r: &Run| {
        println!(
            "| {what} | {before} | {} | {} | {:.0} | {:.2} | {:.2} |",
            r.requests,
            r.errors,
            r.rate(),
            r.p50_ms,
            r.p99_ms
        );
    };
    row("trivial route (GET /nodes)", 0, &trivial);
    row("POST /tasks (durable)", 0, &at_zero);
    row("POST /tasks while filling", stored_now, &filling);
    row("POST /tasks (durable)", stored_before, &at_fill);
    println!(
        "\nFilled to {stored_before} tasks in {fill_secs:.1} s. After kill -9 the manager answered again in {restart_secs:.2} s with {} tasks; acknowledged: {}, missing: {missing}.",
        stored.len(),
        acked.len()
    );
    let flat = at_fill.rate() / at_zero.rate();
    println!(
        "Rate at {stored_before} stored / rate at 0: {:.2} ({})",
        flat,
        if (0.8..=1.25).contains(&flat) {
            "flat within 20%"
        } else {
            "not flat"
        }
    );
    assert_eq!(missing, 0, "acknowledged tasks were lost");
}
