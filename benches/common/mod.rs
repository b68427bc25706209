//! What the engine-backed benchmarks share: the workload image, the engine
//! connection, `cube node` processes, loopback ports, clean-up, medians.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use futures_util::future::join_all;

pub const IMAGE: &str = "cube-demo/echo:latest";

/// Builds the workload image if needed and connects to the engine; panics
/// loudly without Docker.
pub async fn image_and_engine() -> Docker {
    let root = env!("CARGO_MANIFEST_DIR");
    let built = Command::new("bash")
        .arg(format!("{root}/images/build.sh"))
        .status()
        .expect("run images/build.sh");
    assert!(
        built.success(),
        "cannot build the workload image (is Docker running?)"
    );
    Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("the Docker engine is not reachable")
}

/// A temporary directory for nodes' files, kept (and named on stderr)
/// when the bench panics, so that their logs can be read.
pub struct BenchDir(Option<tempfile::TempDir>);

impl BenchDir {
    pub fn new() -> BenchDir {
        BenchDir(Some(
            tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir"),
        ))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().map_or(Path::new("."), |d| d.path())
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("the nodes' logs are kept in {}", dir.keep().display());
        }
    }
}

/// A `cube node` process, killed when dropped.
pub struct Node(pub Child);

impl Node {
    /// Writes `toml` as `<dir>/<name>.toml` and starts a node with it.
    /// Its log (`RUST_LOG` as `CUBE_BENCH_LOG` says, `warn` unless set)
    /// goes to `<dir>/<name>.log`, appended to across restarts.
    pub fn start(dir: &Path, name: &str, toml: &str) -> Node {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).expect("config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .expect("a log file");
        Node(
            Command::new(env!("CARGO_BIN_EXE_cube"))
                .args(["node", "--config"])
                .arg(&config)
                .env(
                    "RUST_LOG",
                    std::env::var("CUBE_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start cube"),
        )
    }

    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let pid = self.0.id();
        self.kill9();
        // Killed, it could not remove its guard table (its forwarding
        // table went with it).
        let table = cube::ingress::kernel::rules::guard_name(pid);
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &table])
            .stderr(Stdio::null())
            .status();
    }
}

/// Starts a release `dev` node (manager and worker `name`) in `dir` on free
/// loopback ports and waits until its worker has registered; the node, the
/// manager's base URL and an admin's HTTP client of it.
pub async fn start_dev_node(dir: &Path, name: &str) -> (Node, String, reqwest::Client) {
    start_dev_node_with(dir, name, "").await
}

/// As `start_dev_node`, with `worker` as extra TOML for its `[worker]`.
pub async fn start_dev_node_with(
    dir: &Path,
    name: &str,
    worker: &str,
) -> (Node, String, reqwest::Client) {
    let (mport, wport) = (free_port(), free_port());
    let node = Node::start(
        dir,
        "dev",
        &format!(
            "role = \"dev\"\ndata_dir = \"{}\"\n[manager]\nlisten = \"127.0.0.1:{mport}\"\n\
             client_file = \"{}\"\n\
             [worker]\nname = \"{name}\"\nlisten = \"127.0.0.1:{wport}\"\n{worker}",
            dir.join("data").display(),
            dir.join("client.toml").display()
        ),
    );
    let base = format!("https://127.0.0.1:{mport}");
    let http = admin_http(&dir.join("client.toml"), 64).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/nodes")).send().await
            && let Ok(nodes) = r.json::<Vec<serde_json::Value>>().await
            && !nodes.is_empty()
        {
            return (node, base, http);
        }
        assert!(Instant::now() < deadline, "the cube node did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP client of a manager as its admin, from the client file it
/// writes (waited for): its CA trusted, its admin token sent; keeps up to
/// `pool` idle connections.
pub async fn admin_http(client_file: &Path, pool: usize) -> reqwest::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    let file = loop {
        if let Ok(file) = cube::config::ClientFile::load(client_file) {
            break file;
        }
        assert!(
            Instant::now() < deadline,
            "the manager wrote no client file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ca = std::fs::read_to_string(&file.ca).expect("the CA");
    let tls = cube::security::tls::Trust::from_pem(&ca)
        .expect("a PEM CA")
        .client(cube::security::tls::Expect::Manager)
        .expect("TLS");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", file.token).parse().expect("a header"),
    );
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .default_headers(headers)
        .pool_max_idle_per_host(pool)
        .build()
        .expect("an HTTP client")
}

/// A port nothing listens on and no other caller in this process was
/// given, below the kernel's ephemeral range (32768-60999): there the
/// engine publishes containers' ports and outgoing connections take their
/// own, and either could take a port between its choosing and the node's
/// binding it (seen as a node that never came up).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: std::sync::OnceLock<AtomicU16> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU16::new((std::process::id() % u32::from(SPAN)) as u16));
    for _ in 0..SPAN {
        let port = LOW + next.fetch_add(1, Ordering::Relaxed) % SPAN;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port from {LOW} to {}", LOW + SPAN);
}

/// The label of the containers a bench runs through the engine directly.
pub const BENCH_LABEL: &str = "cube.bench";

/// Creates and starts a container of the workload image through the engine
/// directly (`cmd`, `env`), labelled `cube.bench=<label>`; its id.
pub async fn engine_start(docker: &Docker, cmd: &[&str], env: &[String], label: &str) -> String {
    let body = bollard::models::ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(cmd.iter().map(|c| c.to_string()).collect()),
        env: Some(env.to_vec()),
        labels: Some(HashMap::from([(BENCH_LABEL.into(), label.into())])),
        ..Default::default()
    };
    let created = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            body,
        )
        .await
        .expect("create");
    docker
        .start_container(&created.id, None)
        .await
        .expect("start");
    created.id
}

/// Force-removes every container with this label (`key=value`), then the
/// networks with it (a worker's container network is labelled with its
/// node, as its containers are).
pub async fn remove_labelled(docker: &Docker, label: &str) {
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
    let options = bollard::query_parameters::ListNetworksOptions {
        filters: Some(HashMap::from([("label".into(), vec![label.to_string()])])),
    };
    for network in docker
        .list_networks(Some(options))
        .await
        .unwrap_or_default()
    {
        if let Some(id) = network.id {
            let _ = docker.remove_network(&id).await;
        }
    }
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}
