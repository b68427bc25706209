//! Container runtimes behind one trait, [`Engine`]: what the worker asks of a
//! container engine (create, start, inspect, stop, remove, list, events,
//! logs, exec). [`docker`] implements it over the Docker Engine API and is
//! the only module that uses the engine's client library; [`fake`] keeps
//! containers in memory for tests.
//! The types that cross the trait are Cube's own.

pub mod docker;
pub mod fake;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use uuid::Uuid;

use crate::task::TaskSpec;

/// Labels every Cube container carries.
pub const LABEL_MANAGED: &str = "cube.managed";
pub const LABEL_TASK: &str = "cube.task";
pub const LABEL_ATTEMPT: &str = "cube.attempt";
pub const LABEL_NODE: &str = "cube.node";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {image} is not present locally and could not be pulled: {reason}")]
    ImageUnavailable { image: String, reason: String },
    #[error("the container engine is unreachable: {0}")]
    EngineDown(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A container of that name exists already.
    #[error("a container named {0} exists already")]
    Conflict(String),
    #[error("container engine: {0}")]
    Engine(String),
}

/// An engine call's answer.
pub type EngineFuture<'a, T> = BoxFuture<'a, Result<T, RuntimeError>>;
/// A stream from the engine; it ends when the engine closes it.
pub type EngineStream<T> = BoxStream<'static, Result<T, RuntimeError>>;
/// The engine as the worker's actors share it.
pub type SharedEngine = Arc<dyn Engine>;

/// A container engine. Calls about a container take its id or its name.
pub trait Engine: Send + Sync + 'static {
    /// Reaches the engine (negotiating the API where there is one); says
    /// which engine it is. Fails with `EngineDown` when it cannot be reached.
    fn connect(&self) -> EngineFuture<'_, String>;
    /// Makes sure `image` is available: used if local, pulled otherwise.
    fn ensure_image<'a>(&'a self, image: &'a str) -> EngineFuture<'a, ()>;
    /// Makes sure the bridge network `name` exists (creating it, labelled
    /// with `node`); its name and the host's address on it.
    fn network<'a>(&'a self, name: &'a str, node: &'a str) -> EngineFuture<'a, ContainerNetwork>;
    /// Creates a container; its id. `Conflict` if the name is taken.
    fn create<'a>(&'a self, spec: &'a ContainerSpec) -> EngineFuture<'a, String>;
    /// Starts a created container; one already running is fine.
    fn start<'a>(&'a self, id: &'a str) -> EngineFuture<'a, ()>;
    /// The container as the engine sees it; `None` when there is none.
    fn inspect<'a>(&'a self, id: &'a str) -> EngineFuture<'a, Option<ContainerView>>;
    /// SIGTERM, then SIGKILL after `timeout_s`; a container that is not
    /// running, or gone, is fine.
    fn stop<'a>(&'a self, id: &'a str, timeout_s: u32) -> EngineFuture<'a, ()>;
    /// Removes a container, running or not; one already gone is fine.
    fn remove<'a>(&'a self, id: &'a str) -> EngineFuture<'a, ()>;
    /// The containers (any state) labelled with this node.
    fn list<'a>(&'a self, node: &'a str) -> EngineFuture<'a, Vec<NodeContainer>>;
    /// Events of this node's containers from `since_s` (seconds since the
    /// epoch) on: the engine replays what happened since then, so a
    /// reconnect loses nothing.
    fn events(&self, node: &str, since_s: i64) -> EngineStream<ContainerEvent>;
    /// An item each time the engine removes the network `name` from now on
    /// (`docker network rm`, a prune): the worker makes it again.
    fn network_gone(&self, name: &str) -> EngineStream<()>;
    /// The container's stdout and stderr from its start; with `follow`, the
    /// stream goes on until the container stops.
    fn logs(&self, id: &str, follow: bool) -> EngineStream<Bytes>;
    /// Runs `cmd` in a running container and waits for it.
    fn exec<'a>(&'a self, id: &'a str, cmd: &'a [String]) -> EngineFuture<'a, ExecOutput>;
}

/// What a command run in a container gave.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// The tail of its output.
    pub output: String,
}

/// The network a node's containers join: a bridge of the node's own, whose
/// gateway is the host's address on it, where the node's DNS server and
/// load balancer serve the containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerNetwork {
    pub name: String,
    pub gateway: IpAddr,
    /// Its containers' addresses.
    pub subnet: Option<ipnet::IpNet>,
    /// The host's interface for it (`br-<id>`, or the name the network
    /// was made with), when the engine says.
    pub bridge: Option<String>,
}

/// Whether `name` can be a Linux network interface's: 1 to 15 letters,
/// digits, `-`, `_` or `.`, not `.` or `..` (what Cube writes into
/// firewall rules and `/proc` paths).
pub fn interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A container port published on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedPort {
    pub container: u16,
    /// `None`: an ephemeral port the engine picks.
    pub host: Option<u16>,
}

/// A container to create. It never asks for privileged mode, a host
/// namespace, a host mount, a device or a capability: there is nothing here
/// to ask for them with.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// The image's default command when `None`.
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PublishedPort>,
    /// CPU limit in billionths of a core.
    pub nano_cpus: Option<i64>,
    /// Memory limit (and memory + swap: no swap beyond it).
    pub memory_bytes: Option<i64>,
    /// The host address `ports` are published on (the worker's `publish_addr`).
    pub publish_addr: IpAddr,
    /// The most processes and threads the container may hold at once.
    pub pids_limit: u32,
    /// The user (and group) its process runs as; the image's when `None`.
    pub user: Option<String>,
    /// The root file system is read-only.
    pub read_only: bool,
    /// No process in it gains privileges through setuid binaries or file
    /// capabilities (`no-new-privileges`). Always set for a task.
    pub no_new_privileges: bool,
    /// The network it joins; the engine's default bridge when `None`.
    pub network: Option<String>,
    /// The name servers it asks; the engine's choice when empty.
    pub dns: Vec<IpAddr>,
}

impl ContainerSpec {
    /// The container of a task attempt's `restart`-th run, its ports
    /// published on `publish_addr`.
    pub fn for_task(
        task_id: Uuid,
        attempt: u32,
        restart: u32,
        node: &str,
        publish_addr: IpAddr,
        spec: &TaskSpec,
    ) -> Self {
        let nano_cpus = spec.cpu * 1e9;
        ContainerSpec {
            name: container_name(task_id, attempt, restart),
            image: spec.image.clone(),
            cmd: spec.cmd.clone(),
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            labels: labels(task_id, attempt, node),
            ports: spec
                .ports
                .iter()
                .map(|p| PublishedPort {
                    container: p.container,
                    host: p.host,
                })
                .collect(),
            // A float to integer cast saturates; NaN gives 0.
            nano_cpus: (spec.cpu > 0.0).then_some(nano_cpus as i64),
            memory_bytes: (spec.memory_mb > 0).then(|| {
                spec.memory_mb
                    .checked_mul(1024 * 1024)
                    .and_then(|b| i64::try_from(b).ok())
                    .unwrap_or(i64::MAX)
            }),
            publish_addr,
            pids_limit: spec.pids_limit,
            user: spec.user.clone(),
            read_only: spec.read_only,
            no_new_privileges: true,
            network: None,
            dns: Vec::new(),
        }
    }

    /// Joins `network` and asks its gateway (the node's DNS server) for names.
    pub fn on_network(mut self, network: Option<&ContainerNetwork>) -> Self {
        if let Some(net) = network {
            self.network = Some(net.name.clone());
            self.dns = vec![net.gateway];
        }
        self
    }
}

/// The deterministic name of a task attempt's container, and of each
/// restart's: a restart never waits for (or adopts) its dying predecessor.
pub fn container_name(task_id: Uuid, attempt: u32, restart: u32) -> String {
    match restart {
        0 => format!("cube-{task_id}-{attempt}"),
        n => format!("cube-{task_id}-{attempt}-r{n}"),
    }
}

pub fn labels(task_id: Uuid, attempt: u32, node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_TASK.to_string(), task_id.to_string()),
        (LABEL_ATTEMPT.to_string(), attempt.to_string()),
        (LABEL_NODE.to_string(), node.to_string()),
    ])
}

/// A container as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub id: String,
    /// It was started at some point (not merely created).
    pub started: bool,
    pub running: bool,
    /// The exit code once it has exited.
    pub exit_code: Option<i64>,
    /// Container port -> host port.
    pub host_ports: BTreeMap<u16, u16>,
    /// Its address on its network, while it runs there (the node's own
    /// balancer reaches it there, past the engine's port proxy).
    pub ip: Option<std::net::IpAddr>,
    /// When it (last) started.
    pub started_at: Option<DateTime<Utc>>,
    /// The kernel killed it for its memory limit (last run).
    pub oom_killed: bool,
}

/// A container labelled with a node, and the task attempt it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeContainer {
    pub id: String,
    pub task_id: Uuid,
    pub attempt: u32,
}

/// Something happened to a container of this node.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerEvent {
    pub task_id: Uuid,
    pub attempt: u32,
    pub container_id: String,
    pub kind: ContainerEventKind,
    /// Engine time of the event, in seconds since the epoch.
    pub time_s: i64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ContainerEventKind {
    Started,
    /// Exited, or was killed.
    Died {
        exit_code: i64,
    },
    /// Removed.
    Destroyed,
    /// The kernel killed a process of the container for its memory limit
    /// (the engine sends this before the container's `die`).
    OutOfMemory,
}

/// How often a create whose name is taken, yet not inspectable, is tried
/// again, and the wait between tries.
const ADOPT_TRIES: u32 = 20;
const ADOPT_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Creates a container; if one of that name exists already (a worker
/// restarted mid-way), answers its id instead: there is never a second copy.
/// A name taken by a create still in progress in the engine (a worker
/// killed while its create request ran: the engine finishes it) inspects
/// as absent for a moment; it is tried again until the container appears
/// (adopted) or the name is free (created), at most [`ADOPT_TRIES`] times.
pub async fn create_or_adopt(
    engine: &dyn Engine,
    spec: &ContainerSpec,
) -> Result<String, RuntimeError> {
    let mut tries = 0;
    loop {
        match engine.create(spec).await {
            Err(RuntimeError::Conflict(name)) => {
                if let Some(view) = engine.inspect(&spec.name).await? {
                    log::info!(
                        "runtime: container {} exists already, adopting it",
                        spec.name
                    );
                    return Ok(view.id);
                }
                tries += 1;
                if tries >= ADOPT_TRIES {
                    return Err(RuntimeError::Conflict(name));
                }
                log::info!(
                    "runtime: the name {} is taken by a container not there yet; trying again",
                    spec.name
                );
                tokio::time::sleep(ADOPT_WAIT).await;
            }
            other => return other,
        }
    }
}

/// Stops and removes a container; answers its exit code when it could still
/// be read. A container that is already gone is fine.
pub async fn stop_and_remove(
    engine: &dyn Engine,
    id: &str,
    timeout_s: u32,
) -> Result<Option<i64>, RuntimeError> {
    engine.stop(id, timeout_s).await?;
    let exit_code = engine
        .inspect(id)
        .await
        .ok()
        .flatten()
        .and_then(|v| v.exit_code);
    engine.remove(id).await?;
    Ok(exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_name_taken_by_a_create_in_progress_is_adopted_once_it_appears() {
        let engine = fake::FakeEngine::new();
        let id = Uuid::new_v4();
        let task: TaskSpec =
            serde_json::from_value(serde_json::json!({"name": "web", "image": "img"})).unwrap();
        let spec = ContainerSpec::for_task(id, 1, 0, "n1", ANY, &task);
        engine.creating_elsewhere(spec.clone(), 3);
        let adopted = create_or_adopt(&engine, &spec).await.unwrap();
        let containers = engine.containers();
        assert_eq!(containers.len(), 1, "one copy");
        assert_eq!(containers[0].id, adopted);
    }

    const ANY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

    #[test]
    fn a_task_spec_becomes_a_labelled_container_named_after_its_run() {
        let id = Uuid::new_v4();
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "name": "web", "image": "img", "cmd": ["/echo"], "env": {"A": "b"},
            "cpu": 0.5, "memory_mb": 64, "ports": [7777],
        }))
        .unwrap();
        let c = ContainerSpec::for_task(id, 2, 3, "n1", ANY, &spec);
        assert_eq!(c.name, format!("cube-{id}-2-r3"));
        assert_eq!(c.env, vec!["A=b"]);
        assert_eq!(c.nano_cpus, Some(500_000_000));
        assert_eq!(c.memory_bytes, Some(64 * 1024 * 1024));
        assert_eq!(
            c.ports,
            vec![PublishedPort {
                container: 7777,
                host: None
            }]
        );
        assert_eq!(c.labels[LABEL_TASK], id.to_string());
        assert_eq!(c.labels[LABEL_ATTEMPT], "2");
        assert_eq!(c.labels[LABEL_NODE], "n1");
        assert_eq!(
            ContainerSpec::for_task(id, 1, 0, "n1", ANY, &spec).name,
            format!("cube-{id}-1")
        );
    }

    #[test]
    fn a_huge_memory_limit_saturates() {
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "name": "web", "image": "img", "memory_mb": u64::MAX,
        }))
        .unwrap();
        let c = ContainerSpec::for_task(Uuid::new_v4(), 1, 0, "n", ANY, &spec);
        assert_eq!(c.memory_bytes, Some(i64::MAX));
    }

    #[test]
    fn every_container_is_hardened_as_its_spec_says() {
        let spec = crate::task::spec::from_value(serde_json::json!({
            "name": "web", "image": "img",
        }))
        .unwrap();
        let c = ContainerSpec::for_task(Uuid::new_v4(), 1, 0, "n", ANY, &spec);
        assert!(c.no_new_privileges);
        assert_eq!(c.pids_limit, crate::task::spec::DEFAULT_PIDS_LIMIT);
        assert_eq!((c.user.as_deref(), c.read_only), (None, false));
        assert_eq!(c.publish_addr, ANY);

        let spec = crate::task::spec::from_value(serde_json::json!({
            "name": "web", "image": "img", "pids_limit": 64, "user": "1000:1000",
            "read_only": true,
        }))
        .unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let c = ContainerSpec::for_task(Uuid::new_v4(), 1, 0, "n", loopback, &spec);
        assert!(c.no_new_privileges);
        assert_eq!(c.pids_limit, 64);
        assert_eq!((c.user.as_deref(), c.read_only), (Some("1000:1000"), true));
        assert_eq!(c.publish_addr, loopback);
    }
}
