//! Cube's load balancer beside HAProxy and beside no balancer at all, over
//! the same three replicas of a real HTTP server (nginx, Debian's package),
//! in one run.
//!
//! `cargo bench --bench balancer` runs `benches/setup.sh` (installs wrk and
//! haproxy from Debian's packages when missing, builds the nginx image with
//! debootstrap, cached), starts a release `cube` dev node whose balancer
//! listens on 127.0.0.7, creates a service of 3 nginx replicas published as
//! `http` and as `tcp`, and starts HAProxy twice (`balance roundrobin`,
//! keep-alive to the replicas, `http-reuse always`, `option forwardfor`
//! (it adds `X-Forwarded-For` as Cube does), `option splice-request` and
//! `splice-response` for TCP): with one thread on 127.0.0.8 and with one per core (its
//! default) on 127.0.0.9. HAProxy reaches the replicas where Cube's
//! balancer reaches those of its own node: at their containers' addresses
//! on the node's network. Then, per path:
//! - HTTP: `wrk` (2 threads, 64 connections, 8 s, `--latency`), 5 rounds
//!   of every path, every other round in reverse order: requests/s, p50,
//!   p99 and the balancer process's CPU time per request (user and
//!   system, from `/proc`); direct is one replica, once at its published host port
//!   (through the engine's port proxy) and once at its container address.
//!   First both direct paths, HAProxy and Cube at one thread (Cube's
//!   default `ingress_threads`); then Cube is restarted with one thread per
//!   core (its replicas adopted, untouched) and measured beside HAProxy
//!   with as many;
//! - TCP: 64 MiB fetched over a fresh connection, 5 times in a row, for
//!   each of 6 rounds; MiB/s. Cube's
//!   port is forwarded by the kernel (its default); the restarted Cube has
//!   `ingress_kernel_tcp = false`, and its balancer's process carries the
//!   bytes (`splice`).
//!
//! Prints tables of medians over the rounds. Not a test: it asserts
//! nothing but that each path answered.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const NGINX: &str = "cube-bench/nginx:latest";
const CUBE_IP: &str = "127.0.0.7";
const HAPROXY_IP: &str = "127.0.0.8";
const HAPROXY_MANY_IP: &str = "127.0.0.9";
const REPLICAS: usize = 3;
const ROUNDS: usize = 5;
const WRK_SECONDS: u32 = 8;
const TRANSFERS: usize = 6;
const FETCHES: usize = 5;

/// One wrk run's figures.
#[derive(Debug, Clone, Copy)]
struct Http {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The balancer's CPU time per request, user and system, in µs (its
    /// whole process, over the run).
    cpu_us: Option<(f64, f64)>,
}

/// The CPU time a process has used, user and system, in seconds.
fn cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's name (in parentheses, perhaps with spaces):
    // utime and stime are the 12th and 13th fields.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = clock_ticks();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user / ticks, system / ticks))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A latency as wrk prints it (`812.00us`, `1.20ms`, `2.01s`), in ms.
fn millis(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

/// One wrk run at `url`; with `balancer`, its process's CPU time per
/// request.
fn wrk(url: &str, balancer: Option<u32>) -> Http {
    let before = balancer.and_then(cpu_seconds);
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c64",
            &format!("-d{WRK_SECONDS}s"),
            "--latency",
            url,
        ])
        .output()
        .expect("run wrk (benches/setup.sh installs it)");
    let after = balancer.and_then(cpu_seconds);
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.trim().to_string())
            .unwrap_or_else(|| panic!("wrk printed no {prefix:?} for {url}:\n{text}"))
    };
    assert!(
        !text.contains("Non-2xx"),
        "{url} answered errors under load:\n{text}"
    );
    let requests: Option<f64> = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    let cpu_us = match (before, after, requests) {
        (Some((u0, s0)), Some((u1, s1)), Some(n)) if n > 0.0 => {
            Some(((u1 - u0) * 1e6 / n, (s1 - s0) * 1e6 / n))
        }
        _ => None,
    };
    Http {
        rps: field("Requests/sec:").parse().expect("a rate"),
        p50_ms: millis(&field("50%")).expect("p50"),
        p99_ms: millis(&field("99%")).expect("p99"),
        cpu_us,
    }
}

/// MiB/s of `/big` fetched [`FETCHES`] times, each over a fresh TCP
/// connection to `addr` (one fetch, 64 MiB, lasts some 50 ms: alone it
/// would measure the machine's noise more than the path).
async fn transfer(addr: &str) -> f64 {
    transfer_from(&[addr.to_string()]).await
}

/// As [`transfer`], fetch `k` from `addrs[k % addrs.len()]`.
async fn transfer_from(addrs: &[String]) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    for k in 0..FETCHES {
        let addr = &addrs[k % addrs.len()];
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /big HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await
            .expect("request");
        let mut fetched = 0usize;
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            fetched += n;
        }
        assert!(fetched > 64 << 20, "{addr}: only {fetched} bytes");
        total += fetched;
    }
    total as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

/// HAProxy with `threads` threads on `ip`: HTTP on `http`, TCP (spliced
/// by the kernel, `option splice-request` and `splice-response`) on `tcp`.
fn haproxy(
    dir: &std::path::Path,
    ip: &str,
    (http, tcp): (u16, u16),
    threads: usize,
    replicas: &[Replica],
) -> Child {
    let servers = |prefix: &str| {
        replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("    server {prefix}{i} {}:8080\n", r.ip))
            .collect::<String>()
    };
    let config = format!(
        "global\n    maxconn 4096\n    nbthread {threads}\n\
         defaults\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
         frontend web\n    mode http\n    bind {ip}:{http}\n    default_backend web\n\
         backend web\n    mode http\n    balance roundrobin\n    option http-keep-alive\n    \
         option forwardfor\n    http-reuse always\n{}\
         frontend raw\n    mode tcp\n    bind {ip}:{tcp}\n    default_backend raw\n\
         backend raw\n    mode tcp\n    balance roundrobin\n    option splice-request\n    option splice-response\n{}",
        servers("h"),
        servers("t"),
    );
    let path = dir.join(format!("haproxy-{threads}.cfg"));
    std::fs::write(&path, config).expect("haproxy config");
    Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start haproxy (benches/setup.sh installs it)")
}

/// Waits until `url` answers 200.
async fn answers(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = cube::client::plain_http().expect("an HTTP client");
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the node's containers and network when dropped, also when the
/// bench panics.
struct CleanUp(String);

impl Drop for CleanUp {
    fn drop(&mut self) {
        let label = format!("label=cube.node={}", self.0);
        let steps: [(&[&str], &[&str]); 2] = [
            (&["ps", "-aq", "--filter"], &["rm", "-f"]),
            (&["network", "ls", "-q", "--filter"], &["network", "rm"]),
        ];
        for (list, remove) in steps {
            let listed = Command::new("docker").args(list).arg(&label).output();
            let ids = listed.map(|o| String::from_utf8_lossy(&o.stdout).to_string());
            for id in ids.unwrap_or_default().split_whitespace() {
                let _ = Command::new("docker")
                    .args(remove)
                    .arg(id)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A replica as the endpoints API shows it.
struct Replica {
    host_port: u16,
    ip: String,
}

/// The order of `n` paths in round `round`: forwards, then backwards.
fn in_turn(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

fn median_of<T: Copy>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    common::median(runs.iter().map(f).collect())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    let setup = Command::new("bash")
        .arg(format!("{root}/benches/setup.sh"))
        .status()
        .expect("run benches/setup.sh");
    assert!(setup.success(), "benches/setup.sh failed");
    let docker = common::image_and_engine().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node_name = format!("bench-{}", std::process::id());
    let _clean_up = CleanUp(node_name.clone());
    let (node, base, admin) = common::start_dev_node_with(
        dir.path(),
        &node_name,
        &format!("ingress_addr = \"{CUBE_IP}\"\nnetwork = \"{node_name}\"\ningress_threads = 1\n"),
    )
    .await;
    let (http_port, tcp_port) = (common::free_port(), common::free_port());
    let spec = json!({
        "name": "nginx",
        "replicas": REPLICAS,
        "task": {
            "image": NGINX,
            "ports": [8080],
            "memory_mb": 256,
            "health": {"tcp": true, "port": 8080, "interval_s": 0.5}
        },
        "expose": [
            {"port": 8080, "publish": http_port, "protocol": "http"},
            {"port": 8080, "publish": tcp_port, "protocol": "tcp"}
        ]
    });
    let r = admin
        .post(format!("{base}/services"))
        .json(&spec)
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let deadline = Instant::now() + Duration::from_secs(120);
    let replicas: Vec<Replica> = loop {
        let view: Value = admin
            .get(format!("{base}/services/nginx/endpoints"))
            .send()
            .await
            .expect("endpoints")
            .json()
            .await
            .expect("a list");
        let replicas: Vec<Replica> = view["endpoints"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| {
                        Some(Replica {
                            host_port: u16::try_from(e["ports"]["8080"].as_u64()?).ok()?,
                            ip: e["container_ip"].as_str()?.to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        if replicas.len() == REPLICAS {
            break replicas;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let one = (common::free_port(), common::free_port());
    let many = (common::free_port(), common::free_port());
    let mut proxies = [
        haproxy(dir.path(), HAPROXY_IP, one, 1, &replicas),
        haproxy(dir.path(), HAPROXY_MANY_IP, many, cores, &replicas),
    ];
    let cube_http = format!("http://{CUBE_IP}:{http_port}/");
    let haproxy_many = format!("http://{HAPROXY_MANY_IP}:{}/", many.0);
    // Block 1: everything at one balancer thread (Cube's default).
    let paths = [
        (
            "direct (one replica, published port)".to_string(),
            format!("http://127.0.0.1:{}/", replicas[0].host_port),
            format!("127.0.0.1:{}", replicas[0].host_port),
        ),
        (
            "direct (one replica, container address)".to_string(),
            format!("http://{}:8080/", replicas[0].ip),
            format!("{}:8080", replicas[0].ip),
        ),
        (
            "HAProxy, 1 thread".to_string(),
            format!("http://{HAPROXY_IP}:{}/", one.0),
            format!("{HAPROXY_IP}:{}", one.1),
        ),
        (
            "cube, 1 thread (its default)".to_string(),
            cube_http.clone(),
            format!("{CUBE_IP}:{tcp_port}"),
        ),
    ];
    for (_, url, _) in &paths {
        answers(url).await;
    }
    answers(&haproxy_many).await;
    let mut http: Vec<Vec<Http>> = vec![Vec::new(); paths.len()];
    let mut tcp: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    // The replicas the balancers share, each in turn at its container.
    let at_containers: Vec<String> = replicas.iter().map(|r| format!("{}:8080", r.ip)).collect();
    let mut every_replica = Vec::new();
    // Whose CPU time is counted on each path: the balancer's process.
    let pids = [None, None, Some(proxies[0].id()), Some(node.0.id())];
    for round in 0..ROUNDS {
        // Every other round backwards, so that no path always runs
        // after the same one (the machine drifts within a run).
        for i in in_turn(paths.len(), round) {
            http[i].push(wrk(&paths[i].1, pids[i]));
        }
    }
    for _ in 0..TRANSFERS {
        for (i, (_, _, addr)) in paths.iter().enumerate() {
            tcp[i].push(transfer(addr).await);
        }
        every_replica.push(transfer_from(&at_containers).await);
    }
    // Block 2: Cube restarted with one thread per core (its replicas
    // adopted as they are), beside HAProxy with as many.
    drop(node);
    let (node, base, admin) = common::start_dev_node_with(
        dir.path(),
        &node_name,
        &format!(
            "ingress_addr = \"{CUBE_IP}\"\nnetwork = \"{node_name}\"\ningress_threads = {cores}\n\
             ingress_kernel_tcp = false\n"
        ),
    )
    .await;
    answers(&cube_http).await;
    // TCP carried by the balancer's process (`splice`), not the kernel.
    let user_space = format!("{CUBE_IP}:{tcp_port}");
    let mut user_tcp = Vec::new();
    for _ in 0..TRANSFERS {
        user_tcp.push(transfer(&user_space).await);
    }
    let many_paths = [
        (
            format!("HAProxy, {cores} threads (its default)"),
            haproxy_many,
        ),
        (format!("cube, {cores} threads"), cube_http),
    ];
    let many_pids = [Some(proxies[1].id()), Some(node.0.id())];
    let mut many_http: Vec<Vec<Http>> = vec![Vec::new(); many_paths.len()];
    for round in 0..ROUNDS {
        for i in in_turn(many_paths.len(), round) {
            many_http[i].push(wrk(&many_paths[i].1, many_pids[i]));
        }
    }
    for proxy in &mut proxies {
        let _ = proxy.kill();
        let _ = proxy.wait();
    }
    let _ = admin.delete(format!("{base}/services/nginx")).send().await;

    println!(
        "\nHTTP through each path to {REPLICAS} nginx replicas: wrk -t2 -c64 -d{WRK_SECONDS}s, \
         median of {ROUNDS} runs\n"
    );
    println!(
        "| path | requests/s | p50 (ms) | p99 (ms) | balancer CPU per request, user + system (µs) |"
    );
    println!("|---|---:|---:|---:|---:|");
    let rows: Vec<(&str, &Vec<Http>)> = paths
        .iter()
        .map(|(name, _, _)| name.as_str())
        .zip(&http)
        .chain(
            many_paths
                .iter()
                .map(|(name, _)| name.as_str())
                .zip(&many_http),
        )
        .collect();
    for (name, runs) in &rows {
        let cpu = if runs.iter().all(|h| h.cpu_us.is_some()) {
            let part =
                |f: fn((f64, f64)) -> f64| median_of(runs, |h| h.cpu_us.map(f).unwrap_or_default());
            format!("{:.1} + {:.1}", part(|c| c.0), part(|c| c.1))
        } else {
            "-".to_string()
        };
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {cpu} |",
            median_of(runs, |h| h.rps),
            median_of(runs, |h| h.p50_ms),
            median_of(runs, |h| h.p99_ms),
        );
    }
    for (name, runs) in &rows {
        let each: Vec<String> = runs
            .iter()
            .map(|h| format!("{:.0} ({:.2} ms)", h.rps, h.p99_ms))
            .collect();
        println!("{name}: requests/s (p99) per run {}", each.join(", "));
    }
    println!("\nTCP: 64 MiB over a fresh connection, {FETCHES} in a row, median of {TRANSFERS}\n");
    println!("| path | MiB/s | of direct (published port) | of direct (container) |");
    println!("|---|---:|---:|---:|");
    let published = common::median(tcp[0].clone());
    let container = common::median(tcp[1].clone());
    for (i, (name, _, _)) in paths.iter().enumerate() {
        let name = name
            .replace(", 1 thread (its default)", "")
            .replace(", 1 thread", "");
        let m = common::median(tcp[i].clone());
        println!(
            "| {name} | {m:.0} | {:.0}% | {:.0}% |",
            m / published * 100.0,
            m / container * 100.0
        );
    }
    let m = common::median(every_replica.clone());
    println!(
        "| direct (the {REPLICAS} replicas in turn, container addresses) | {m:.0} | {:.0}% | {:.0}% |",
        m / published * 100.0,
        m / container * 100.0
    );
    let m = common::median(user_tcp.clone());
    println!(
        "| cube, in user space (`ingress_kernel_tcp = false`) | {m:.0} | {:.0}% | {:.0}% |",
        m / published * 100.0,
        m / container * 100.0
    );
    for (name, runs) in paths.iter().map(|(n, _, _)| n).zip(&tcp) {
        let each: Vec<String> = runs.iter().map(|m| format!("{m:.0}")).collect();
        println!("{name}: MiB/s per transfer {}", each.join(", "));
    }
    drop(node);
    common::remove_labelled(&docker, &format!("cube.node={node_name}")).await;
}
