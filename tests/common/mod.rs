//! Shared harness for the integration tests: real `cube` processes on
//! loopback ports with their own data dirs, the real Docker engine, and the
//! workload image built locally on first use.

#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cube::client::Client;
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
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
}

impl NodeProc {
    pub fn start(config: PathBuf, log: PathBuf, env: Vec<(String, String)>) -> Self {
        let mut node = NodeProc {
            config,
            log,
            child: None,
            env,
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cube"));
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
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        // A paused process must wake to die promptly.
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill9();
    }
}

/// Removes every container labelled with one of these node names, also when
/// the test fails (Drop runs while a panic unwinds).
pub struct ContainerGuard(pub Vec<String>);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        for node in &self.0 {
            for id in containers_of_node(node) {
                let _ = Command::new("docker")
                    .args(["rm", "-f", &id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
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

/// A cluster under test: the node processes, its directory, its clients.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub manager_url: String,
    pub nodes: Vec<NodeProc>,
    pub worker_names: Vec<String>,
    _guard: ContainerGuard,
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
                 scheduler = \"round-robin\"\n[worker]\nname = \"{name}\"\nlisten = \"127.0.0.1:{wport}\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let guard = ContainerGuard(vec![name.clone()]);
        let node = NodeProc::start(config, dir.path().join("dev.log"), env);
        Cluster {
            manager_url: format!("http://127.0.0.1:{mport}"),
            nodes: vec![node],
            worker_names: vec![name],
            dir,
            _guard: guard,
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
        let dir = tempfile::tempdir().expect("tempdir");
        let mport = free_port();
        let mconfig = dir.path().join("manager.toml");
        std::fs::write(
            &mconfig,
            format!(
                "role = \"manager\"\ndata_dir = \"{}\"\n[manager]\nlisten = \"127.0.0.1:{mport}\"\n\
                 scheduler = \"{scheduler}\"\n{manager}\n",
                dir.path().join("manager").display()
            ),
        )
        .unwrap();
        let manager_url = format!("http://127.0.0.1:{mport}");
        let nodes = vec![NodeProc::start(
            mconfig,
            dir.path().join("manager.log"),
            vec![],
        )];
        let mut cluster = Cluster {
            manager_url,
            nodes,
            worker_names: Vec::new(),
            dir,
            _guard: ContainerGuard(Vec::new()),
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

    /// Starts a worker process under a given name (which may be taken).
    pub fn add_named_worker(&mut self, name: &str, extra: &str) -> usize {
        let config = self
            .dir
            .path()
            .join(format!("{name}-{}.toml", self.nodes.len()));
        std::fs::write(
            &config,
            format!(
                "role = \"worker\"\ndata_dir = \"{}\"\n[worker]\nname = \"{name}\"\n\
                 listen = \"127.0.0.1:{}\"\nmanager = \"{}\"\n{extra}\n",
                self.dir
                    .path()
                    .join(format!("{name}-{}", self.nodes.len()))
                    .display(),
                free_port(),
                self.manager_url
            ),
        )
        .unwrap();
        let log = self
            .dir
            .path()
            .join(format!("{name}-{}.log", self.nodes.len()));
        self.nodes.push(NodeProc::start(config, log, vec![]));
        if !self.worker_names.iter().any(|n| n == name) {
            self.worker_names.push(name.to_string());
            self._guard.0.push(name.to_string());
        }
        self.nodes.len() - 1
    }

    pub fn client(&self) -> Client {
        Client::new(&self.manager_url)
    }

    /// Waits until the manager answers and every worker has registered.
    pub async fn ready(&self) {
        let client = self.client();
        let want = self.worker_names.len();
        wait_for("the workers to register", Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                let nodes = client.nodes().await.ok()?;
                (nodes.len() >= want).then_some(())
            }
        })
        .await;
    }

    pub async fn post(&self, spec: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/tasks", self.manager_url))
            .json(spec)
            .send()
            .await
            .expect("manager unreachable")
    }

    /// Waits until the task is in `state` and returns its record.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> TaskRecord {
        let client = self.client();
        let what = format!("task {id} to be {state}");
        wait_for(&what, timeout, || {
            let client = client.clone();
            async move {
                let t = client.task(id).await.ok()?;
                (t.state.as_str() == state).then_some(t)
            }
        })
        .await
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
