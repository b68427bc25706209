//! The node config: one TOML file chooses the role of a `cube node` process.
//!
//! ```toml
//! role = "dev"                      # "manager" | "worker" | "dev"
//! data_dir = "data/dev"             # LMDB lives here
//! [manager]
//! listen = "127.0.0.1:5555"
//! scheduler = "round-robin"
//! [worker]
//! name = "w1"
//! listen = "127.0.0.1:5556"
//! manager = "https://127.0.0.1:5555"
//! join_token = "CUBE1-..."          # or CUBE_JOIN_TOKEN; not needed in dev
//! publish_addr = "0.0.0.0"         # the host address task ports are published on
//! ingress_addr = "0.0.0.0"         # where the load balancer listens on published ports
//! network = "cube"                 # the bridge network the containers join
//! dns_listen = "127.0.0.2:5353"    # optional: where the host can ask the node's DNS
//! ingress_threads = 1              # threads serving each published HTTP port
//! ingress_kernel_tcp = true        # the kernel (nftables) forwards published TCP ports
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::task::backoff::Backoff;
use crate::wire::Capacity;

/// What a node process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
    /// Manager and worker in one process.
    Dev,
}

/// The placement strategy of the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SchedulerKind {
    #[serde(rename = "round-robin")]
    RoundRobin,
    #[serde(rename = "epvm")]
    Epvm,
    #[serde(rename = "bin-pack")]
    BinPack,
    #[serde(rename = "spread")]
    Spread,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 4] = [
        SchedulerKind::RoundRobin,
        SchedulerKind::Epvm,
        SchedulerKind::BinPack,
        SchedulerKind::Spread,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::RoundRobin => "round-robin",
            SchedulerKind::Epvm => "epvm",
            SchedulerKind::BinPack => "bin-pack",
            SchedulerKind::Spread => "spread",
        }
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    pub listen: SocketAddr,
    #[serde(default = "default_scheduler")]
    pub scheduler: SchedulerKind,
    /// A worker not heard from for this long is down, and its tasks move.
    #[serde(default = "default_down_after_ms")]
    pub down_after_ms: u64,
    /// How long ended tasks are kept, and how many at most.
    #[serde(default)]
    pub retain_ended: RetainEnded,
    /// More names (DNS names or IP addresses) the manager's certificate is
    /// good for, besides its listen address, `localhost` and 127.0.0.1.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// Where the manager writes the CLI's client file (its URL, the CA, the
    /// admin token); default `~/.cube/client.toml`.
    pub client_file: Option<PathBuf>,
    /// How long a node's certificate (a worker's, and the manager's own)
    /// is good for (default 90 days); each renews at 50-80% of it.
    #[serde(default = "default_node_cert_ttl_s")]
    pub node_cert_ttl_s: u64,
    /// A manager of the cluster this one joins (its URL); without it, a
    /// manager starting on an empty data dir makes a cluster of its own.
    pub join: Option<String>,
    /// The manager join token (`<a manager's data_dir>/manager.token`);
    /// `CUBE_MANAGER_JOIN_TOKEN` in the environment also does.
    pub join_token: Option<String>,
    /// The URL the other managers reach this one at (default: https:// and
    /// the listen address).
    pub advertise: Option<String>,
    /// The Raft log grows by this many entries before a snapshot cuts it
    /// back to half of that.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// How often the leader speaks to the other managers.
    #[serde(default = "default_raft_heartbeat_ms")]
    pub raft_heartbeat_ms: u64,
    /// A manager that hears no leader for a random time between these two
    /// stands for election.
    #[serde(default = "default_election_min_ms")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "default_election_max_ms")]
    pub election_timeout_max_ms: u64,
}

fn default_raft_heartbeat_ms() -> u64 {
    100
}

fn default_election_min_ms() -> u64 {
    400
}

fn default_election_max_ms() -> u64 {
    550
}

fn default_snapshot_every() -> u64 {
    1000
}

fn default_node_cert_ttl_s() -> u64 {
    90 * 24 * 3600
}

/// `[manager.retain_ended]`: ended tasks are removed from the store after
/// `max_age_s`, and beyond the newest `max_tasks`, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetainEnded {
    #[serde(default = "default_retain_age_s")]
    pub max_age_s: u64,
    #[serde(default = "default_retain_tasks")]
    pub max_tasks: usize,
}

impl Default for RetainEnded {
    fn default() -> Self {
        RetainEnded {
            max_age_s: default_retain_age_s(),
            max_tasks: default_retain_tasks(),
        }
    }
}

fn default_retain_age_s() -> u64 {
    24 * 3600
}

fn default_retain_tasks() -> usize {
    10_000
}

fn default_scheduler() -> SchedulerKind {
    SchedulerKind::RoundRobin
}

fn default_down_after_ms() -> u64 {
    3000
}

fn default_heartbeat_ms() -> u64 {
    1000
}

impl ManagerConfig {
    pub fn down_after(&self) -> Duration {
        Duration::from_millis(self.down_after_ms)
    }
}

/// Resources a worker offers instead of what sysinfo reads (to keep some
/// back for the machine, or to test placement). Each is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityOverride {
    pub cpus: Option<f64>,
    pub memory_mb: Option<u64>,
    pub disk_mb: Option<u64>,
}

impl CapacityOverride {
    /// The capacity offered: the machine's, where not overridden.
    pub fn apply(&self, machine: &Capacity) -> Capacity {
        Capacity {
            cpus: self.cpus.unwrap_or(machine.cpus),
            memory_mb: self.memory_mb.unwrap_or(machine.memory_mb),
            disk_mb: self.disk_mb.unwrap_or(machine.disk_mb),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Base URL (https) of the manager this worker registers with. In `dev`
    /// it may be left out: the worker then registers with the manager of
    /// its own process.
    pub manager: Option<String>,
    /// The token that lets this worker join the cluster (the manager's
    /// `worker.token`); `CUBE_JOIN_TOKEN` in the environment also does.
    /// Needed only until the worker holds its certificate.
    pub join_token: Option<String>,
    /// The address the manager uses to reach this worker; defaults to
    /// `https://<listen>`.
    pub advertise: Option<String>,
    /// How often the worker tells the manager it is alive (with its stats).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// What the worker offers for placement, where it is not the machine's.
    #[serde(default)]
    pub capacity: CapacityOverride,
    /// The wait between restarts of a task whose container exited.
    #[serde(default)]
    pub restart_backoff: BackoffConfig,
    /// How long a container labelled with this node that no task wants is
    /// left alone before it is removed.
    #[serde(default = "default_orphan_grace_ms")]
    pub orphan_grace_ms: u64,
    /// The host address the tasks' ports are published on: `"0.0.0.0"`
    /// (every IPv4 address of the host, the default), `"127.0.0.1"` (this
    /// machine only), one address of the host, or `"::"` (IPv6). Health
    /// checks reach the ports there (on loopback for `0.0.0.0` and `::`).
    #[serde(default = "default_publish_addr", deserialize_with = "publish_addr")]
    pub publish_addr: IpAddr,
    /// The address this node's load balancer listens on, on each port a
    /// service publishes (`expose`): `"0.0.0.0"` by default; several
    /// workers on one machine each take their own (127.0.0.2, ...).
    #[serde(default = "default_publish_addr", deserialize_with = "ingress_addr")]
    pub ingress_addr: IpAddr,
    /// The bridge network (of the engine) this node's containers join,
    /// made if missing. Its gateway is where the node's DNS server (port
    /// 53) and load balancer serve the containers, so several workers on
    /// one machine each take their own network.
    #[serde(default = "default_network")]
    pub network: String,
    /// One more address the node's DNS server answers on (UDP and TCP),
    /// for the host: `web.cube` there is the balancer on `ingress_addr`.
    pub dns_listen: Option<SocketAddr>,
    /// Threads serving each published HTTP port (1 to 64). One suits a
    /// node whose cores run its replicas (a second thread there measured
    /// slower: more switching, no more CPU); more for a node with idle
    /// cores and one very busy port.
    #[serde(default = "default_ingress_threads")]
    pub ingress_threads: usize,
    /// Whether the kernel forwards the published TCP ports it can
    /// (nftables, needs root and Debian's `nftables`), so that their bytes
    /// never pass through the balancer's process. `false`: the balancer
    /// carries every connection itself.
    #[serde(default = "default_true")]
    pub ingress_kernel_tcp: bool,
}

fn default_ingress_threads() -> usize {
    1
}

fn default_true() -> bool {
    true
}

/// The most threads a published HTTP port may be given.
pub const MAX_INGRESS_THREADS: usize = 64;

fn default_network() -> String {
    "cube".to_string()
}

/// An IP address, or an error that names the key.
fn ingress_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "key `worker.ingress_addr`: {text:?} is not an IP address (e.g. \"0.0.0.0\", \"127.0.0.2\")"
        ))
    })
}

/// A name the engine takes for a network, kept short.
fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn default_orphan_grace_ms() -> u64 {
    30_000
}

fn default_publish_addr() -> IpAddr {
    Ipv4Addr::UNSPECIFIED.into()
}

/// An IP address, or an error that names the key.
fn publish_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "key `worker.publish_addr`: {text:?} is not an IP address (e.g. \"0.0.0.0\", \"127.0.0.1\", \"::\")"
        ))
    })
}

/// `[worker.restart_backoff]`: the first wait, doubling up to the cap, and
/// back to the first after a run of `reset_after_ms`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    pub first_ms: u64,
    pub max_ms: u64,
    pub reset_after_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        let b = Backoff::default();
        BackoffConfig {
            first_ms: b.first.as_millis() as u64,
            max_ms: b.max.as_millis() as u64,
            reset_after_ms: b.reset_after.as_millis() as u64,
        }
    }
}

impl BackoffConfig {
    pub fn backoff(&self) -> Backoff {
        Backoff {
            first: Duration::from_millis(self.first_ms),
            max: Duration::from_millis(self.max_ms),
            reset_after: Duration::from_millis(self.reset_after_ms),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub role: Role,
    pub data_dir: PathBuf,
    /// The most the node's LMDB file may grow to, in MB (default 1024).
    #[serde(default = "default_store_map_mb")]
    pub store_map_mb: usize,
    pub manager: Option<ManagerConfig>,
    pub worker: Option<WorkerConfig>,
}

fn default_store_map_mb() -> usize {
    1024
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates a config. Errors name the offending key.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| describe_toml_error(&e))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::key("data_dir", "must not be empty"));
        }
        let needs_manager = matches!(self.role, Role::Manager | Role::Dev);
        let needs_worker = matches!(self.role, Role::Worker | Role::Dev);
        match (&self.manager, needs_manager) {
            (None, true) => {
                return Err(ConfigError::key(
                    "manager",
                    format!("role {:?} needs a [manager] section", self.role),
                ));
            }
            (Some(_), false) => {
                return Err(ConfigError::key(
                    "manager",
                    "a worker node has no [manager] section (the manager URL goes in [worker] manager)",
                ));
            }
            _ => {}
        }
        match (&self.worker, needs_worker) {
            (None, true) => {
                return Err(ConfigError::key(
                    "worker",
                    format!("role {:?} needs a [worker] section", self.role),
                ));
            }
            (Some(_), false) => {
                return Err(ConfigError::key(
                    "worker",
                    "a manager node has no [worker] section",
                ));
            }
            _ => {}
        }
        if let Some(manager) = &self.manager {
            if let Some(url) = &manager.join {
                validate_urls(url).map_err(|m| ConfigError::key("manager.join", m))?;
            }
            if let Some(url) = &manager.advertise {
                validate_url(url).map_err(|m| ConfigError::key("manager.advertise", m))?;
            }
            if !(10..=1_000_000).contains(&manager.snapshot_every) {
                return Err(ConfigError::key(
                    "manager.snapshot_every",
                    "must be between 10 and 1000000 (log entries)",
                ));
            }
            if !(10..=10_000).contains(&manager.raft_heartbeat_ms) {
                return Err(ConfigError::key(
                    "manager.raft_heartbeat_ms",
                    "must be between 10 and 10000 (milliseconds)",
                ));
            }
            if manager.election_timeout_min_ms <= manager.raft_heartbeat_ms {
                return Err(ConfigError::key(
                    "manager.election_timeout_min_ms",
                    "must be above raft_heartbeat_ms (a follower would stand while its leader speaks)",
                ));
            }
            if manager.election_timeout_max_ms <= manager.election_timeout_min_ms
                || manager.election_timeout_max_ms > 60_000
            {
                return Err(ConfigError::key(
                    "manager.election_timeout_max_ms",
                    "must be above election_timeout_min_ms, and at most 60000",
                ));
            }
            if manager.join.is_some() && self.role == Role::Dev {
                return Err(ConfigError::key(
                    "manager.join",
                    "a dev node makes its own cluster: only role \"manager\" joins one",
                ));
            }
        }
        if let Some(worker) = &self.worker {
            validate_node_name(&worker.name).map_err(|m| ConfigError::key("worker.name", m))?;
            match &worker.manager {
                Some(urls) => {
                    validate_urls(urls).map_err(|m| ConfigError::key("worker.manager", m))?
                }
                None if self.role == Role::Worker => {
                    return Err(ConfigError::key(
                        "worker.manager",
                        "missing: a worker must name the manager it registers with",
                    ));
                }
                None => {}
            }
            if let Some(url) = &worker.advertise {
                validate_url(url).map_err(|m| ConfigError::key("worker.advertise", m))?;
            }
            if !(10..=60_000).contains(&worker.heartbeat_ms) {
                return Err(ConfigError::key(
                    "worker.heartbeat_ms",
                    "must be between 10 and 60000 (milliseconds)",
                ));
            }
            let c = &worker.capacity;
            if c.cpus.is_some_and(|cpus| !(cpus.is_finite() && cpus > 0.0)) {
                return Err(ConfigError::key(
                    "worker.capacity.cpus",
                    "must be a positive number of cores",
                ));
            }
            if c.memory_mb == Some(0) {
                return Err(ConfigError::key(
                    "worker.capacity.memory_mb",
                    "must be positive",
                ));
            }
            let b = &worker.restart_backoff;
            if b.first_ms == 0 {
                return Err(ConfigError::key(
                    "worker.restart_backoff.first_ms",
                    "must be positive",
                ));
            }
            if b.max_ms < b.first_ms {
                return Err(ConfigError::key(
                    "worker.restart_backoff.max_ms",
                    "must be at least first_ms",
                ));
            }
            if c.disk_mb == Some(0) {
                return Err(ConfigError::key(
                    "worker.capacity.disk_mb",
                    "must be positive",
                ));
            }
            if matches!(worker.network.as_str(), "host" | "none") {
                return Err(ConfigError::key(
                    "worker.network",
                    "must be a bridge network: not the engine's \"host\" or \"none\"",
                ));
            }
            if !(1..=MAX_INGRESS_THREADS).contains(&worker.ingress_threads) {
                return Err(ConfigError::key(
                    "worker.ingress_threads",
                    format!("must be from 1 to {MAX_INGRESS_THREADS}"),
                ));
            }
            if !valid_network_name(&worker.network) {
                return Err(ConfigError::key(
                    "worker.network",
                    "must be 1 to 64 of a-z, A-Z, 0-9, '_', '-' and '.', starting with a letter or digit",
                ));
            }
            if worker.publish_addr.is_multicast()
                || worker.publish_addr == IpAddr::V4(Ipv4Addr::BROADCAST)
            {
                return Err(ConfigError::key(
                    "worker.publish_addr",
                    "must be an address of this host, or 0.0.0.0 / :: for all of them",
                ));
            }
        }
        if !(1..=1_048_576).contains(&self.store_map_mb) {
            return Err(ConfigError::key(
                "store_map_mb",
                "must be between 1 and 1048576 (MB)",
            ));
        }
        if let Some(manager) = &self.manager {
            let r = &manager.retain_ended;
            if r.max_age_s > 10 * 365 * 24 * 3600 {
                return Err(ConfigError::key(
                    "manager.retain_ended.max_age_s",
                    "must be at most ten years (in seconds)",
                ));
            }
            if r.max_tasks > 10_000_000 {
                return Err(ConfigError::key(
                    "manager.retain_ended.max_tasks",
                    "must be at most 10000000",
                ));
            }
        }
        if let Some(manager) = &self.manager {
            for name in &manager.tls_names {
                validate_host(name).map_err(|m| ConfigError::key("manager.tls_names", m))?;
            }
            if !(5..=10 * 365 * 24 * 3600).contains(&manager.node_cert_ttl_s) {
                return Err(ConfigError::key(
                    "manager.node_cert_ttl_s",
                    "must be between 5 and 315360000 (seconds)",
                ));
            }
        }
        if let Some(manager) = &self.manager
            && !(100..=600_000).contains(&manager.down_after_ms)
        {
            return Err(ConfigError::key(
                "manager.down_after_ms",
                "must be between 100 and 600000 (milliseconds)",
            ));
        }
        Ok(())
    }

    /// The URL a worker in this process registers with.
    pub fn manager_url_for_worker(&self) -> Option<String> {
        let worker = self.worker.as_ref()?;
        match (&worker.manager, &self.manager) {
            (Some(url), _) => Some(url.trim_end_matches('/').to_string()),
            (None, Some(m)) => Some(format!("https://{}", reachable(m.listen))),
            (None, None) => None,
        }
    }
}

/// An address to reach a listener on: one bound to every interface is
/// reached on loopback.
pub fn reachable(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    }
}

impl ManagerConfig {
    /// The names and addresses the manager's certificate is good for.
    pub fn cert_hosts(&self) -> Vec<String> {
        let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if !self.listen.ip().is_unspecified() {
            hosts.push(self.listen.ip().to_string());
        }
        if let Some(url) = &self.advertise {
            hosts.push(host_of(url));
        }
        hosts.extend(self.tls_names.iter().cloned());
        hosts.sort();
        hosts.dedup();
        hosts
    }

    pub fn node_cert_ttl(&self) -> Duration {
        Duration::from_secs(self.node_cert_ttl_s)
    }

    /// How this manager's Raft runs.
    pub fn raft_timing(&self) -> crate::raft::Timing {
        crate::raft::Timing {
            heartbeat: Duration::from_millis(self.raft_heartbeat_ms),
            election_min: Duration::from_millis(self.election_timeout_min_ms),
            election_max: Duration::from_millis(self.election_timeout_max_ms),
            snapshot_every: self.snapshot_every,
        }
    }

    /// Where the other managers (and the workers, once told) reach this
    /// manager.
    pub fn advertise_url(&self) -> String {
        match &self.advertise {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://{}", reachable(self.listen)),
        }
    }
}

impl WorkerConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn advertise_url(&self) -> String {
        match &self.advertise {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://{}", reachable(self.listen)),
        }
    }

    /// The host (name or IP) the manager reaches this worker at: what its
    /// certificate must be good for.
    pub fn advertise_host(&self) -> String {
        host_of(&self.advertise_url())
    }
}

/// The host of an `https://host:port/...` URL (brackets of an IPv6 host
/// removed).
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.to_string()
}

/// A DNS name or an IP address a certificate can name.
pub fn validate_host(host: &str) -> Result<(), String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{host:?} is not a DNS name or an IP address"))
    }
}

pub use crate::task::name::validate_node_name;

/// The CLI's client file: where the manager is, the CA to trust and the
/// token to send. A manager writes one for its admin token.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    pub manager: String,
    pub ca: PathBuf,
    pub token: String,
}

impl ClientFile {
    pub fn to_toml(&self) -> String {
        format!(
            "# Written by the Cube manager: the CLI reads it when no --manager, --ca or --token is given.\n{}",
            toml::to_string(self).unwrap_or_default()
        )
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| describe_toml_error(&e))
    }
}

/// Where the CLI looks for its client file by default:
/// `~/.cube/client.toml`.
pub fn default_client_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cube").join("client.toml"))
}

/// One URL, or several separated by commas (managers of one cluster).
fn validate_urls(urls: &str) -> Result<(), String> {
    urls.split(',').map(str::trim).try_for_each(validate_url)
}

pub fn validate_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        validate_host(&host_of(url))
    } else if url.starts_with("http://") {
        Err(format!(
            "{url:?} is plain HTTP: every Cube listener speaks TLS (https://)"
        ))
    } else {
        Err(format!("{url:?} is not an https:// URL"))
    }
}

/// toml's messages already name unknown and missing keys, with the line.
fn describe_toml_error(e: &toml::de::Error) -> ConfigError {
    ConfigError::Parse(e.to_string().trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = r#"
role = "dev"
data_dir = "data/dev"
[manager]
listen = "127.0.0.1:5555"
scheduler = "round-robin"
[worker]
name = "w1"
listen = "127.0.0.1:5556"
"#;

    #[test]
    fn parses_a_dev_config() {
        let c = NodeConfig::parse(DEV).unwrap();
        assert_eq!(c.role, Role::Dev);
        assert_eq!(
            c.manager.as_ref().unwrap().scheduler,
            SchedulerKind::RoundRobin
        );
        assert_eq!(
            c.manager_url_for_worker().as_deref(),
            Some("https://127.0.0.1:5555")
        );
        assert_eq!(
            c.worker.as_ref().unwrap().advertise_url(),
            "https://127.0.0.1:5556"
        );
    }

    #[test]
    fn every_scheduler_and_the_liveness_settings_parse() {
        for kind in SchedulerKind::ALL {
            let c = NodeConfig::parse(&DEV.replace("round-robin", kind.as_str())).unwrap();
            assert_eq!(c.manager.unwrap().scheduler, kind);
        }
        let c = NodeConfig::parse(DEV).unwrap();
        assert_eq!(
            c.manager.as_ref().unwrap().down_after(),
            Duration::from_secs(3)
        );
        let w = c.worker.as_ref().unwrap();
        assert_eq!(w.heartbeat(), Duration::from_secs(1));
        assert_eq!(w.capacity, CapacityOverride::default());
        assert_eq!(w.restart_backoff.backoff(), Backoff::default());
        let text = DEV.replace(
            "[worker]",
            "down_after_ms = 1500\n[worker]\nheartbeat_ms = 200",
        ) + "[worker.capacity]\nmemory_mb = 4096\ncpus = 2.5\n";
        let c = NodeConfig::parse(&text).unwrap();
        assert_eq!(c.manager.unwrap().down_after_ms, 1500);
        let w = c.worker.unwrap();
        assert_eq!(w.heartbeat_ms, 200);
        assert_eq!(w.capacity.memory_mb, Some(4096));
        assert_eq!(w.capacity.cpus, Some(2.5));
        assert_eq!(w.capacity.disk_mb, None);
    }

    #[test]
    fn the_shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                NodeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 4, "{seen} configs");
    }

    #[test]
    fn parses_a_worker_config() {
        let c = NodeConfig::parse(
            r#"role = "worker"
data_dir = "d"
[worker]
name = "w2"
listen = "127.0.0.1:6000"
manager = "https://127.0.0.1:5555/"
"#,
        )
        .unwrap();
        assert_eq!(
            c.manager_url_for_worker().as_deref(),
            Some("https://127.0.0.1:5555")
        );
    }

    fn err(text: &str) -> String {
        NodeConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn plain_http_urls_are_refused_and_hosts_are_read() {
        let e = err(&DEV.replace("[worker]", "[worker]\nmanager = \"http://127.0.0.1:5555\""));
        assert!(e.contains("worker.manager") && e.contains("TLS"), "{e}");
        assert_eq!(host_of("https://10.0.0.2:5556/x"), "10.0.0.2");
        assert_eq!(host_of("https://[::1]:5556"), "::1");
        assert_eq!(host_of("https://node-a.lan:1"), "node-a.lan");
        let e = err(&DEV.replace("scheduler =", "tls_names = [\"bad name\"]\nscheduler ="));
        assert!(e.contains("manager.tls_names"), "{e}");
    }

    #[test]
    fn managers_settings_are_checked_naming_the_key() {
        let manager = |extra: &str| {
            format!(
                "role = \"manager\"\ndata_dir = \"d\"\n[manager]\nlisten = \"127.0.0.1:5555\"\n{extra}\n"
            )
        };
        let c = NodeConfig::parse(&manager(
            "join = \"https://10.0.0.1:5555,https://10.0.0.2:5555\"\nraft_heartbeat_ms = 50",
        ))
        .expect("parses");
        let timing = c.manager.expect("a manager").raft_timing();
        assert_eq!(timing.heartbeat, Duration::from_millis(50));
        assert_eq!(timing.election_min, Duration::from_millis(400));
        for (extra, key) in [
            ("join = \"http://10.0.0.1:5555\"", "manager.join"),
            ("join = \"https://a:1,ftp://b\"", "manager.join"),
            ("advertise = \"10.0.0.1:5555\"", "manager.advertise"),
            ("snapshot_every = 5", "manager.snapshot_every"),
            ("raft_heartbeat_ms = 0", "manager.raft_heartbeat_ms"),
            (
                "election_timeout_min_ms = 100",
                "manager.election_timeout_min_ms",
            ),
            (
                "election_timeout_max_ms = 400",
                "manager.election_timeout_max_ms",
            ),
        ] {
            let e = err(&manager(extra));
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = err(&DEV.replace("[manager]", "[manager]\njoin = \"https://10.0.0.1:5555\""));
        assert!(e.contains("manager.join") && e.contains("dev"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&format!("{DEV}\nbogus = 1\n"));
        assert!(e.contains("bogus"), "{e}");
        let e = err(&DEV.replace("scheduler =", "schedular ="));
        assert!(e.contains("schedular"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = err(&DEV.replace("\"127.0.0.1:5555\"", "\"localhost\""));
        assert!(e.contains("listen"), "{e}");
        let e = err(&DEV.replace("round-robin", "best"));
        assert!(e.contains("scheduler") || e.contains("best"), "{e}");
        let e = err(&DEV.replace("[worker]", "[worker]\nheartbeat_ms = 0"));
        assert!(e.contains("worker.heartbeat_ms"), "{e}");
        let e = err(&DEV.replace("[worker]", "[worker]\ncapacity = { memory_mb = 0 }"));
        assert!(e.contains("worker.capacity.memory_mb"), "{e}");
        let e = err(&DEV.replace("[worker]", "[worker]\ncapacity = { gpus = 1 }"));
        assert!(e.contains("gpus"), "{e}");
        let e = err(&format!(
            "{DEV}[worker.restart_backoff]\nfirst_ms = 500\nmax_ms = 100\n"
        ));
        assert!(e.contains("worker.restart_backoff.max_ms"), "{e}");
        let e = err(&DEV.replace("[worker]", "down_after_ms = 5\n[worker]"));
        assert!(e.contains("manager.down_after_ms"), "{e}");
        let e = err(&DEV.replace("\"dev\"", "\"boss\""));
        assert!(e.contains("role") || e.contains("boss"), "{e}");
        let e = err(&DEV.replace("\"w1\"", "\"w 1\""));
        assert!(e.contains("worker.name"), "{e}");
        for bad in ["localhost", "127.0.0.1:80", "", "0.0.0.256"] {
            let e = err(&DEV.replace("[worker]", &format!("[worker]\npublish_addr = {bad:?}")));
            assert!(e.contains("worker.publish_addr"), "{bad}: {e}");
        }
        let e = err(&DEV.replace("[worker]", "[worker]\npublish_addr = 7"));
        assert!(e.contains("publish_addr"), "{e}");
        for bad in ["224.0.0.1", "255.255.255.255", "ff02::1"] {
            let e = err(&DEV.replace("[worker]", &format!("[worker]\npublish_addr = {bad:?}")));
            assert!(e.contains("worker.publish_addr"), "{bad}: {e}");
        }
        for bad in ["", "-x", "a b", "net/1", &"n".repeat(65), "host", "none"] {
            let e = err(&DEV.replace("[worker]", &format!("[worker]\nnetwork = {bad:?}")));
            assert!(e.contains("worker.network"), "{bad}: {e}");
        }
        for bad in ["0", "65"] {
            let e = err(&DEV.replace("[worker]", &format!("[worker]\ningress_threads = {bad}")));
            assert!(e.contains("worker.ingress_threads"), "{bad}: {e}");
        }
        let e = err(&DEV.replace("[worker]", "[worker]\ndns_listen = \"127.0.0.2\""));
        assert!(e.contains("dns_listen"), "{e}");
    }

    #[test]
    fn containers_join_the_cube_network_unless_told() {
        let w = NodeConfig::parse(DEV).unwrap().worker.unwrap();
        assert_eq!((w.network.as_str(), w.dns_listen), ("cube", None));
        let text = DEV.replace(
            "[worker]",
            "[worker]\nnetwork = \"cube-w1\"\ndns_listen = \"127.0.0.2:5353\"",
        );
        let w = NodeConfig::parse(&text).unwrap().worker.unwrap();
        assert_eq!(w.network, "cube-w1");
        assert_eq!(w.dns_listen, Some("127.0.0.2:5353".parse().unwrap()));
    }

    #[test]
    fn ports_are_published_on_every_ipv4_address_unless_told() {
        let c = NodeConfig::parse(DEV).unwrap();
        assert_eq!(
            c.worker.unwrap().publish_addr,
            IpAddr::from(Ipv4Addr::UNSPECIFIED)
        );
        for addr in ["127.0.0.1", "10.1.2.3", "::", "::1"] {
            let text = DEV.replace("[worker]", &format!("[worker]\npublish_addr = {addr:?}"));
            let c = NodeConfig::parse(&text).unwrap();
            assert_eq!(c.worker.unwrap().publish_addr.to_string(), addr);
        }
    }

    #[test]
    fn missing_keys_and_sections_are_named() {
        let e = err(&DEV.replace("data_dir = \"data/dev\"", ""));
        assert!(e.contains("data_dir"), "{e}");
        let e = err("role = \"worker\"\ndata_dir = \"d\"\n");
        assert!(e.contains("`worker`"), "{e}");
        let e = err(
            "role = \"worker\"\ndata_dir = \"d\"\n[worker]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n",
        );
        assert!(e.contains("worker.manager"), "{e}");
        let e = err("role = \"manager\"\ndata_dir = \"d\"\n");
        assert!(e.contains("`manager`"), "{e}");
    }
}
