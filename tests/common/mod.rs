//! Shared harness for the integration tests: real `cube` processes on
//! loopback ports with their own data dirs, the real Docker engine, and the
//! workload image built locally on first use.

#![allow(dead_code)]

pub mod netns;

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cube::client::Client;
use cube::security::tls::{Expect, NodeTls, Trust};
use cube::task::TaskRecord;
use serde_json::Value;

pub const IMAGE: &str = "cube-demo/echo:latest";

/// Builds the workload image once per test binary (the script itself is
/// idempotent and locked across binaries). Panics loudly without Docker.
pub fn ensure_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .expect("cannot run images/build.sh");
        assert!(
            out.status.success(),
            "building the workload image failed (these tests need a running Docker engine):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
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
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU16::new((std::process::id() % u32::from(SPAN)) as u16));
    for _ in 0..SPAN {
        let port = LOW + next.fetch_add(1, Ordering::Relaxed) % SPAN;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port from {LOW} to {}", LOW + SPAN);
}

/// A plain HTTP GET, for a workload's own port (Cube's ports are all TLS).
pub async fn plain_get(url: &str) -> reqwest::Result<reqwest::Response> {
    static PLAIN: OnceLock<reqwest::Client> = OnceLock::new();
    PLAIN
        .get_or_init(|| cube::client::plain_http().unwrap())
        .get(url)
        .send()
        .await
}

/// A name no other test uses: it goes into node names and so into labels.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Waits until `check` gives `Some`, polling; panics with `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `cube node` process.
pub struct NodeProc {
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// What the command runs under (e.g. `ip netns exec NAME`).
    prefix: Vec<String>,
}

impl NodeProc {
    pub fn start(config: PathBuf, log: PathBuf, env: Vec<(String, String)>) -> Self {
        Self::start_under(Vec::new(), config, log, env)
    }

    /// Started by `prefix` (which must exec the command, keeping its
    /// process id, as `ip netns exec` does).
    pub fn start_under(
        prefix: Vec<String>,
        config: PathBuf,
        log: PathBuf,
        env: Vec<(String, String)>,
    ) -> Self {
        let mut node = NodeProc {
            config,
            log,
            child: None,
            env,
            prefix,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("cannot open node log");
        let mut cmd = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(env!("CARGO_BIN_EXE_cube"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_cube")),
        };
        cmd.arg("node")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("cannot start cube node"));
    }

    /// kill -9: no chance to clean up or flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the process is not running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Waits for the process to exit by itself; its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still alive.
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        // A paused process must wake to die promptly.
        let pid = self.pid();
        if let Some(pid) = pid {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        self.kill9();
        // Killed, it could not remove its guard table (a later node
        // would): the test leaves none behind.
        if let Some(pid) = pid {
            remove_guard_table(pid);
        }
    }
}

/// Removes the guard table of the node process `pid`, if any (its
/// forwarding table went with it).
pub fn remove_guard_table(pid: u32) {
    let name = cube::ingress::kernel::rules::guard_name(pid);
    let _ = Command::new("nft")
        .args(["delete", "table", "ip", &name])
        .stderr(Stdio::null())
        .status();
}

/// What `nft list table` shows of the node process `pid`'s forwarding
/// table, if it has one.
pub fn forwarding_table(pid: u32) -> Option<String> {
    nft_table(&cube::ingress::kernel::rules::table_name(pid))
}

/// What `nft list table` shows of the node process `pid`'s guard table,
/// if it has one.
pub fn guard_table(pid: u32) -> Option<String> {
    nft_table(&cube::ingress::kernel::rules::guard_name(pid))
}

fn nft_table(name: &str) -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "table", "ip", name])
        .output()
        .expect("cannot run nft (Debian's nftables)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `[worker]` line giving a worker a container network of its own
/// (named as the node), unless `extra` names one: workers sharing this
/// machine cannot share a network, whose gateway each one's DNS serves.
pub fn own_network(name: &str, extra: &str) -> String {
    if extra.contains("network =") {
        String::new()
    } else {
        format!("network = \"{name}\"\n")
    }
}

/// Removes every container and network labelled with one of these node
/// names, also when the test fails (Drop runs while a panic unwinds).
pub struct ContainerGuard(pub Vec<String>);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        // A container the engine is still removing (its worker's own
        // removal under way) refuses `rm -f` and keeps its network in use:
        // both are tried again until gone, for at most 20 s.
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.0 {
            loop {
                for id in containers_of_node(node) {
                    let _ = Command::new("docker")
                        .args(["rm", "-f", &id])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                remove_networks_of_node(node);
                let left =
                    !containers_of_node(node).is_empty() || !networks_of_node(node).is_empty();
                if !left || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // A network create the killed worker had sent may still be under
        // way in the engine, which finishes it without its client: the
        // network shows up after the loop saw none. The engine gives no
        // barrier for requests in flight, so the guard looks once more
        // after a bound longer than a create takes (tens of ms).
        if self.0.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
        for node in &self.0 {
            remove_networks_of_node(node);
        }
    }
}

/// Ids of the networks labelled with this node.
pub fn networks_of_node(node: &str) -> Vec<String> {
    Command::new("docker")
        .args(["network", "ls", "-q", "--filter"])
        .arg(format!("label=cube.node={node}"))
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the networks labelled with this node.
pub fn remove_networks_of_node(node: &str) {
    for id in networks_of_node(node) {
        let _ = Command::new("docker")
            .args(["network", "rm", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Ids of the containers (any state) labelled with this node.
pub fn containers_of_node(node: &str) -> Vec<String> {
    docker_ids(&["--filter", &format!("label=cube.node={node}")])
}

/// Ids of the containers (any state) of one task.
pub fn containers_of_task(task: &str) -> Vec<String> {
    docker_ids(&["--filter", &format!("label=cube.task={task}")])
}

fn docker_ids(filters: &[&str]) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc"])
        .args(filters)
        .output()
        .expect("docker CLI missing");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// `docker inspect` of one container, as JSON.
pub fn inspect(id: &str) -> Option<Value> {
    let out = Command::new("docker").args(["inspect", id]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0).cloned()
}

/// What a manager wrote under its data dir: the CA, its own certificate
/// and key, the tokens.
#[derive(Debug, Clone)]
pub struct ManagerFiles {
    pub ca_pem: String,
    pub admin_token: String,
    pub worker_token: String,
    pub tls: NodeTls,
}

/// Waits (up to 30 s) until the manager whose data dir is `data_dir` has
/// written its CA, certificate and tokens, and reads them.
pub fn manager_files(data_dir: &Path) -> ManagerFiles {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = |f: &str| std::fs::read_to_string(data_dir.join(f)).ok();
        if let (Some(ca_pem), Some(crt), Some(key), Some(admin), Some(worker)) = (
            read("pki/ca.crt"),
            read("pki/manager.crt"),
            read("pki/manager.key"),
            read("admin.token"),
            read("worker.token"),
        ) && let Ok(tls) = NodeTls::from_pem(&ca_pem, &crt, &key)
        {
            return ManagerFiles {
                ca_pem,
                admin_token: admin.trim().to_string(),
                worker_token: worker.trim().to_string(),
                tls,
            };
        }
        assert!(
            Instant::now() < deadline,
            "the manager in {} wrote no CA and tokens within 30 s",
            data_dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP client over this TLS configuration.
pub fn https(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

impl ManagerFiles {
    /// An HTTP client of the manager as its admin: the CA trusted, only a
    /// manager accepted, the admin token sent.
    pub fn http(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.admin_token).parse().unwrap(),
        );
        reqwest::Client::builder()
            .tls_backend_preconfigured(self.user_tls())
            .default_headers(headers)
            .build()
            .unwrap()
    }

    /// An HTTP client of the manager with no token.
    pub fn anonymous(&self) -> reqwest::Client {
        https(self.user_tls())
    }

    /// Cube's client of the manager, as its admin.
    pub fn client(&self, url: &str) -> Client {
        Client::new(url, &self.user_tls())
            .unwrap()
            .with_token(&self.admin_token)
    }

    /// The TLS of a user (no certificate) calling the manager.
    pub fn user_tls(&self) -> rustls::ClientConfig {
        Trust::from_pem(&self.ca_pem)
            .unwrap()
            .client(Expect::Manager)
            .unwrap()
    }

    /// The TLS of a client without a certificate calling the worker `name`.
    pub fn user_tls_for_worker(&self, name: &str) -> rustls::ClientConfig {
        Trust::from_pem(&self.ca_pem)
            .unwrap()
            .client(Expect::Worker(name.to_string()))
            .unwrap()
    }

    /// The TLS of the manager calling the worker `name`.
    pub fn manager_tls(&self, name: &str) -> rustls::ClientConfig {
        self.tls.client(Expect::Worker(name.to_string())).unwrap()
    }

    /// An HTTP client of the worker `name`, presenting the manager's
    /// certificate.
    pub fn worker_http(&self, name: &str) -> reqwest::Client {
        https(self.manager_tls(name))
    }

    /// A client of a worker, presenting the manager's certificate (what
    /// the manager does), expecting the worker `name`.
    pub fn worker_client(&self, address: &str, name: &str) -> Client {
        let tls = self.tls.client(Expect::Worker(name.to_string())).unwrap();
        Client::new(address, &tls).unwrap()
    }
}

/// A cluster under test: the node processes, its directory, its clients.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub manager_url: String,
    /// The manager's data dir.
    pub manager_dir: PathBuf,
    files: OnceLock<ManagerFiles>,
    pub nodes: Vec<NodeProc>,
    pub worker_names: Vec<String>,
    /// The address workers listen on (and the manager reaches them at).
    worker_host: String,
    _guard: ContainerGuard,
    /// The manager's own network namespace, if apart (dropped after the
    /// nodes).
    pub netns: Option<netns::Netns>,
}

impl Cluster {
    /// One `dev` process: manager and worker together.
    pub fn dev() -> Self {
        Self::dev_with_env(vec![])
    }

    pub fn dev_with_env(env: Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = unique("dev");
        let (mport, wport) = (free_port(), free_port());
        let config = dir.path().join("dev.toml");
        std::fs::write(
            &config,
            format!(
                "role = \"dev\"\ndata_dir = \"{}\"\n[manager]\nlisten = \"127.0.0.1:{mport}\"\n\
                 scheduler = \"round-robin\"\nclient_file = \"{}\"\n\
                 [worker]\nname = \"{name}\"\nlisten = \"127.0.0.1:{wport}\"\n{}",
                dir.path().join("data").display(),
                dir.path().join("client.toml").display(),
                own_network(&name, "")
            ),
        )
        .unwrap();
        let guard = ContainerGuard(vec![name.clone()]);
        let node = NodeProc::start(config, dir.path().join("dev.log"), env);
        Cluster {
            manager_url: format!("https://127.0.0.1:{mport}"),
            manager_dir: dir.path().join("data"),
            files: OnceLock::new(),
            nodes: vec![node],
            worker_names: vec![name],
            worker_host: "127.0.0.1".into(),
            dir,
            _guard: guard,
            netns: None,
        }
    }

    /// A manager process and `workers` worker processes.
    pub fn split(workers: usize) -> Self {
        Self::split_with("round-robin", &vec![""; workers])
    }

    /// A manager with this scheduler, and one worker per entry of `workers`,
    /// each entry being extra TOML for its `[worker]` section.
    pub fn split_with(scheduler: &str, workers: &[&str]) -> Self {
        Self::split_tuned(scheduler, "", workers)
    }

    /// As `split_with`, with `manager` as extra TOML for the `[manager]`
    /// section (e.g. `down_after_ms = 1500`).
    pub fn split_tuned(scheduler: &str, manager: &str, workers: &[&str]) -> Self {
        Self::split_in(None, scheduler, manager, workers)
    }

    /// As `split_with`, the manager in a network namespace of its own
    /// (`cluster.netns`, whose `cut` and `heal` partition it from the
    /// workers), the workers on the host's end of its link.
    pub fn split_apart(scheduler: &str, workers: &[&str]) -> Self {
        Self::split_in(Some(netns::Netns::new()), scheduler, "", workers)
    }

    fn split_in(
        netns: Option<netns::Netns>,
        scheduler: &str,
        manager: &str,
        workers: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (manager_host, worker_host, prefix) = match &netns {
            Some(ns) => (ns.ns_ip.clone(), ns.host_ip.clone(), ns.exec()),
            None => ("127.0.0.1".into(), "127.0.0.1".into(), Vec::new()),
        };
        let mport = free_port();
        let mconfig = dir.path().join("manager.toml");
        std::fs::write(
            &mconfig,
            format!(
                "role = \"manager\"\ndata_dir = \"{}\"\n[manager]\nlisten = \"{manager_host}:{mport}\"\n\
                 scheduler = \"{scheduler}\"\nclient_file = \"{}\"\n{manager}\n",
                dir.path().join("manager").display(),
                dir.path().join("client.toml").display()
            ),
        )
        .unwrap();
        let manager_url = format!("https://{manager_host}:{mport}");
        let nodes = vec![NodeProc::start_under(
            prefix,
            mconfig,
            dir.path().join("manager.log"),
            vec![],
        )];
        let mut cluster = Cluster {
            manager_url,
            manager_dir: dir.path().join("manager"),
            files: OnceLock::new(),
            nodes,
            worker_names: Vec::new(),
            worker_host,
            dir,
            _guard: ContainerGuard(Vec::new()),
            netns,
        };
        for extra in workers {
            cluster.add_worker(extra);
        }
        cluster
    }

    /// Starts one more worker process; `extra` is TOML for its `[worker]`
    /// section. Returns its index in `nodes`.
    pub fn add_worker(&mut self, extra: &str) -> usize {
        let name = unique(&format!("w{}", self.worker_names.len()));
        self.add_named_worker(&name, extra)
    }

    /// As `add_worker`, with `env` in the worker's environment.
    pub fn add_worker_with_env(&mut self, extra: &str, env: Vec<(String, String)>) -> usize {
        let name = unique(&format!("w{}", self.worker_names.len()));
        self.start_worker(&name, extra, env)
    }

    /// Starts a worker process under a given name (which may be taken).
    pub fn add_named_worker(&mut self, name: &str, extra: &str) -> usize {
        self.start_worker(name, extra, vec![])
    }

    fn start_worker(&mut self, name: &str, extra: &str, env: Vec<(String, String)>) -> usize {
        let config = self
            .dir
            .path()
            .join(format!("{name}-{}.toml", self.nodes.len()));
        std::fs::write(
            &config,
            format!(
                "role = \"worker\"\ndata_dir = \"{}\"\n[worker]\nname = \"{name}\"\n\
                 listen = \"{}:{}\"\nmanager = \"{}\"\njoin_token = \"{}\"\n{}{extra}\n",
                self.dir
                    .path()
                    .join(format!("{name}-{}", self.nodes.len()))
                    .display(),
                self.worker_host,
                free_port(),
                self.manager_url,
                self.files().worker_token,
                own_network(name, extra),
            ),
        )
        .unwrap();
        let log = self
            .dir
            .path()
            .join(format!("{name}-{}.log", self.nodes.len()));
        self.nodes.push(NodeProc::start(config, log, env));
        if !self.worker_names.iter().any(|n| n == name) {
            self.worker_names.push(name.to_string());
            self._guard.0.push(name.to_string());
        }
        self.nodes.len() - 1
    }

    /// The manager's CA, certificate and tokens (waits for them).
    pub fn files(&self) -> ManagerFiles {
        self.files
            .get_or_init(|| manager_files(&self.manager_dir))
            .clone()
    }

    /// Cube's client of the manager, as its admin.
    pub fn client(&self) -> Client {
        self.files().client(&self.manager_url)
    }

    /// An HTTP client of the manager, as its admin.
    pub fn http(&self) -> reqwest::Client {
        self.files().http()
    }

    /// A client of a worker, with the manager's certificate.
    pub fn worker_client(&self, address: &str, name: &str) -> Client {
        self.files().worker_client(address, name)
    }

    /// The certificate of a dev node's worker (in the node's data dir).
    pub fn dev_worker_tls(&self) -> NodeTls {
        let read = |f: &str| std::fs::read_to_string(self.manager_dir.join(f)).unwrap();
        NodeTls::from_pem(
            &read("pki/ca.crt"),
            &read("pki/node.crt"),
            &read("pki/node.key"),
        )
        .unwrap()
    }

    /// The client file the manager wrote for the CLI.
    pub fn client_file(&self) -> PathBuf {
        self.dir.path().join("client.toml")
    }

    /// The `cube` CLI, reaching this cluster's manager as its admin.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cube"));
        cmd.env("CUBE_CLIENT_FILE", self.client_file())
            .env_remove("CUBE_MANAGER")
            .env_remove("CUBE_CA")
            .env_remove("CUBE_TOKEN");
        cmd
    }

    /// Runs the CLI with `args`; it must succeed (else its stderr is shown).
    pub fn cli_ok(&self, args: &[&str]) -> std::process::Output {
        let out = self.cli().args(args).output().expect("the cube CLI runs");
        assert!(
            out.status.success(),
            "cube {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Waits until the manager answers and every worker has registered; on
    /// a timeout, fails with the nodes' logs.
    pub async fn ready(&self) {
        let client = self.client();
        let want = self.worker_names.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(nodes) = client.nodes().await
                && nodes.len() >= want
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after 30s waiting for the workers to register\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn post(&self, spec: &Value) -> reqwest::Response {
        self.post_to("/tasks", spec).await
    }

    /// `POST` of `body` to the manager's `path`, as the admin.
    pub async fn post_to(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http()
            .post(format!("{}{path}", self.manager_url))
            .json(body)
            .send()
            .await
            .expect("manager unreachable")
    }

    /// `GET` of the manager's `path`, as the admin.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http()
            .get(format!("{}{path}", self.manager_url))
            .send()
            .await
            .expect("manager unreachable")
    }

    /// Waits until the task is in `state` and returns its record; fails
    /// with the task as last seen and the nodes' logs.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> TaskRecord {
        let client = self.client();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = None;
        loop {
            match client.task(id).await {
                Ok(t) if t.state.as_str() == state => return t,
                Ok(t) => seen = Some(t),
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for task {id} to be {state}; last seen: \
                     {seen:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("==== {}\n{}", n.log.display(), n.log_text()))
            .collect()
    }
}

/// The example spec, with its command and env set by the test.
pub fn echo_spec(name: &str, cmd: &[&str]) -> Value {
    serde_json::json!({
        "name": name,
        "image": IMAGE,
        "cmd": cmd,
        "env": {"GREETING": "hello-from-test"},
        "memory_mb": 64,
        "ports": [7777],
    })
}
