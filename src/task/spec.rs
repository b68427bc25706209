//! The task spec (what a user writes) and its validation.
//!
//! Parsing goes field by field through a JSON value so that every error names
//! the field it is about: `{"error": "...", "field": "cpu"}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One container to run. Units are in the field names.
///
/// Nothing here can give a container the host: there is no field for
/// privileged mode, host namespaces, host mounts, devices or capabilities
/// (see [`REFUSED`]), and every container runs with `no-new-privileges` and
/// a pids limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub image: String,
    /// The container's command; the image's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// CPU cores the container may use (a limit, and its request for placement).
    #[serde(default)]
    pub cpu: f64,
    /// Memory limit in MiB; 0 means no limit.
    #[serde(default)]
    pub memory_mb: u64,
    /// Disk the task expects to use in MiB (for placement).
    #[serde(default)]
    pub disk_mb: u64,
    /// Container TCP ports, each published on a host port: an ephemeral one,
    /// or the one asked for (`"8080:7777"`).
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// What the worker does when the container exits by itself.
    #[serde(default)]
    pub restart: RestartSpec,
    /// Seconds between SIGTERM and SIGKILL when the task is stopped.
    #[serde(default = "default_stop_timeout_s")]
    pub stop_timeout_s: u32,
    /// How the worker checks that the task is healthy (none: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// The most processes and threads the container may hold at once.
    #[serde(default = "default_pids_limit")]
    pub pids_limit: u32,
    /// The user (and group) the container's process runs as: `"1000"`,
    /// `"1000:1000"`, `"app"` or `"app:app"`; the image's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The container's root file system is read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A health check, run by the worker's HealthChecker: an HTTP GET that must
/// answer 2xx, a TCP connect, or a command run in the container that must
/// exit 0. After `retries` failures in a row the task is unhealthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// HTTP path to GET on `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Connect to `port`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tcp: bool,
    /// Run this command in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Container port of the HTTP and TCP checks (one of the task's `ports`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "default_interval_s")]
    pub interval_s: f64,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Failures in this first period after a start do not count.
    #[serde(default)]
    pub start_period_s: f64,
}

fn default_interval_s() -> f64 {
    5.0
}

fn default_timeout_s() -> f64 {
    2.0
}

fn default_retries() -> u32 {
    3
}

fn default_stop_timeout_s() -> u32 {
    10
}

/// The pids limit of a spec that does not give one.
pub const DEFAULT_PIDS_LIMIT: u32 = 1024;

fn default_pids_limit() -> u32 {
    DEFAULT_PIDS_LIMIT
}

/// When a container that exited by itself is started again (by the
/// worker's TaskSupervisor, not by the engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Never: the task ends with the container.
    #[default]
    #[serde(rename = "no")]
    No,
    /// After any exit.
    #[serde(rename = "always")]
    Always,
    /// After any exit, like `always`; a task the user stopped stays stopped
    /// (in Cube a user's stop always ends the task, across worker restarts too).
    #[serde(rename = "unless-stopped")]
    UnlessStopped,
    /// After a non-zero exit, at most `max_retries` times; exit 0 completes.
    #[serde(rename = "on-failure")]
    OnFailure,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default)]
    pub policy: RestartPolicy,
    /// With `on-failure`: restarts before the task is Failed (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

impl TaskSpec {
    /// The host ports the task needs free on its node.
    pub fn host_ports(&self) -> Vec<u16> {
        self.ports.iter().filter_map(|p| p.host).collect()
    }
}

/// One published container port: `7777` (on an ephemeral host port) or
/// `"8080:7777"` (on host port 8080, which the scheduler keeps free).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub container: u16,
    pub host: Option<u16>,
}

impl PortSpec {
    pub fn ephemeral(container: u16) -> Self {
        PortSpec {
            container,
            host: None,
        }
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host {
            Some(host) => write!(f, "{host}:{}", self.container),
            None => write!(f, "{}", self.container),
        }
    }
}

impl std::str::FromStr for PortSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = |part: &str| {
            part.trim()
                .parse::<u16>()
                .map_err(|_| format!("{text:?} is not PORT or HOST:CONTAINER (ports 1-65535)"))
        };
        match text.split_once(':') {
            Some((host, container)) => Ok(PortSpec {
                container: number(container)?,
                host: Some(number(host)?),
            }),
            None => Ok(PortSpec::ephemeral(number(text)?)),
        }
    }
}

impl Serialize for PortSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.host {
            None => s.serialize_u16(self.container),
            Some(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u16),
            Text(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Number(port)) => Ok(PortSpec::ephemeral(port)),
            Ok(Raw::Text(text)) => text.parse().map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "expected a port number (1-65535) or a \"HOST:CONTAINER\" string",
            )),
        }
    }
}

/// A spec that cannot be accepted, with the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct SpecError {
    /// The field at fault; `None` when the document itself is malformed.
    pub field: Option<String>,
    pub message: String,
}

impl SpecError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        SpecError {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
    pub fn document(message: impl Into<String>) -> Self {
        SpecError {
            field: None,
            message: message.into(),
        }
    }
}

const FIELDS: &[&str] = &[
    "name",
    "image",
    "cmd",
    "env",
    "cpu",
    "memory_mb",
    "disk_mb",
    "ports",
    "restart",
    "stop_timeout_s",
    "health",
    "pids_limit",
    "user",
    "read_only",
];

/// What would give a container the host. None of these is a field of a
/// spec; they are refused as any unknown field is, with the reason.
/// Matched ignoring case, `_` and `-` (`network_mode`, `NetworkMode`).
pub const REFUSED: &[(&str, &str)] = &[
    (
        "privileged",
        "Cube never runs a privileged container: it would hold every capability and the host's devices",
    ),
    ("network_mode", HOST_NAMESPACES),
    ("network", HOST_NAMESPACES),
    ("host_network", HOST_NAMESPACES),
    ("pid_mode", HOST_NAMESPACES),
    ("pid", HOST_NAMESPACES),
    ("ipc_mode", HOST_NAMESPACES),
    ("ipc", HOST_NAMESPACES),
    ("uts_mode", HOST_NAMESPACES),
    ("userns_mode", HOST_NAMESPACES),
    ("binds", HOST_MOUNTS),
    ("volumes", HOST_MOUNTS),
    ("mounts", HOST_MOUNTS),
    (
        "cap_add",
        "a container keeps the engine's default capabilities, never more",
    ),
    (
        "capabilities",
        "a container keeps the engine's default capabilities, never more",
    ),
    (
        "devices",
        "no device of the host is passed into a container",
    ),
    (
        "security_opt",
        "every container runs with no-new-privileges and the engine's default confinement; they cannot be changed",
    ),
];

const HOST_NAMESPACES: &str =
    "a container never shares the host's network, PID, IPC, UTS or user namespace";
const HOST_MOUNTS: &str = "nothing of the host is mounted into a container: a host path (or the Docker socket) would hand it the host";

/// The reason a field that would give a container the host is refused.
fn refused_reason(field: &str) -> Option<&'static str> {
    let plain = |text: &str| -> String {
        text.chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let field = plain(field);
    REFUSED
        .iter()
        .find(|(name, _)| plain(name) == field)
        .map(|(_, reason)| *reason)
}

/// Parses a spec from JSON text.
pub fn parse_json(text: &str) -> Result<TaskSpec, SpecError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| SpecError::document(format!("request body is not valid JSON: {e}")))?;
    from_value(value)
}

/// Parses a spec from TOML text (the CLI accepts both).
pub fn parse_toml(text: &str) -> Result<TaskSpec, SpecError> {
    let value: toml::Value = toml::from_str(text)
        .map_err(|e| SpecError::document(format!("spec is not valid TOML: {e}")))?;
    refuse_non_finite(&value, "")?;
    let json = serde_json::to_value(value)
        .map_err(|e| SpecError::document(format!("spec cannot be converted: {e}")))?;
    from_value(json)
}

/// TOML has `nan` and `inf`, which JSON (and so a spec) cannot hold: they
/// would become null, that is "absent". Refused by name instead.
fn refuse_non_finite(value: &toml::Value, path: &str) -> Result<(), SpecError> {
    match value {
        toml::Value::Float(f) if !f.is_finite() => {
            Err(SpecError::field(path, "must be a finite number"))
        }
        toml::Value::Table(table) => table.iter().try_for_each(|(key, v)| {
            let path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            refuse_non_finite(v, &path)
        }),
        toml::Value::Array(items) => items.iter().try_for_each(|v| refuse_non_finite(v, path)),
        _ => Ok(()),
    }
}

/// Checks a spec document field by field and builds the spec.
pub fn from_value(value: Value) -> Result<TaskSpec, SpecError> {
    let Value::Object(map) = value else {
        return Err(SpecError::document("a task spec must be a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let message = match refused_reason(unknown) {
            Some(reason) => format!("refused: {reason}"),
            None => format!("unknown field (known fields: {})", FIELDS.join(", ")),
        };
        return Err(SpecError::field(unknown, message));
    }
    let spec = TaskSpec {
        name: required(&map, "name", "a string")?,
        image: required(&map, "image", "a string")?,
        cmd: optional(&map, "cmd", "an array of strings")?,
        env: optional(&map, "env", "an object of string values")?.unwrap_or_default(),
        cpu: optional(&map, "cpu", "a number of cores")?.unwrap_or(0.0),
        memory_mb: optional(&map, "memory_mb", "a non-negative integer")?.unwrap_or(0),
        disk_mb: optional(&map, "disk_mb", "a non-negative integer")?.unwrap_or(0),
        ports: optional(
            &map,
            "ports",
            "an array of port numbers (1-65535) or \"HOST:CONTAINER\" strings",
        )?
        .unwrap_or_default(),
        restart: optional(
            &map,
            "restart",
            "{\"policy\": \"no\" | \"always\" | \"unless-stopped\" | \"on-failure\", \"max_retries\": N}",
        )?
        .unwrap_or_default(),
        stop_timeout_s: optional(&map, "stop_timeout_s", "a non-negative number of seconds")?
            .unwrap_or_else(default_stop_timeout_s),
        health: optional(
            &map,
            "health",
            "{\"http\": \"/path\" | \"tcp\": true | \"exec\": [...], \"port\", \"interval_s\", \"timeout_s\", \"retries\", \"start_period_s\"}",
        )?,
        pids_limit: optional(
            &map,
            "pids_limit",
            &format!("an integer from {MIN_PIDS_LIMIT} to {MAX_PIDS_LIMIT}"),
        )?
        .unwrap_or(DEFAULT_PIDS_LIMIT),
        user: optional(&map, "user", "a string: \"UID[:GID]\" or \"NAME[:GROUP]\"")?,
        read_only: optional(&map, "read_only", "true or false")?.unwrap_or(false),
    };
    validate(&spec)?;
    Ok(spec)
}

fn required<T: serde::de::DeserializeOwned>(
    map: &Map<String, Value>,
    field: &str,
    expected: &str,
) -> Result<T, SpecError> {
    optional(map, field, expected)?
        .ok_or_else(|| SpecError::field(field, format!("missing (expected {expected})")))
}

fn optional<T: serde::de::DeserializeOwned>(
    map: &Map<String, Value>,
    field: &str,
    expected: &str,
) -> Result<Option<T>, SpecError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| SpecError::field(field, format!("expected {expected}: {e}"))),
    }
}

/// Smallest memory limit the engine accepts (Docker refuses less than 6 MiB).
pub const MIN_MEMORY_MB: u64 = 6;
/// 1 PiB: more than any one machine has, and far below where MiB turned
/// into bytes would overflow the engine's i64 (8 EiB).
pub const MAX_MEMORY_MB: u64 = 1 << 30;
/// 1 PiB, as for memory: a request for placement no node can mean beyond it.
pub const MAX_DISK_MB: u64 = 1 << 30;
/// Smallest CPU limit the engine takes (Docker's NanoCPUs: 0.01 core).
pub const MIN_CPU: f64 = 0.01;
/// More cores than any one machine offers.
pub const MAX_CPU: f64 = 1024.0;
/// Each published port costs the engine a proxy process and a host port.
pub const MAX_PORTS: usize = 64;
/// Environment variables per task.
pub const MAX_ENV: usize = 256;
/// All of `KEY=VALUE` together: far below the kernel's limit on a process's
/// arguments and environment (ARG_MAX, 2 MiB by default, and 128 KiB a string).
pub const MAX_ENV_BYTES: usize = 64 * 1024;
/// Arguments of `cmd` and of `health.exec`.
pub const MAX_ARGS: usize = 256;
/// All arguments of `cmd` (or of `health.exec`) together, as for the environment.
pub const MAX_ARGS_BYTES: usize = 64 * 1024;
/// An image reference: repository (255 at most), tag (128) and digest fit.
pub const MAX_IMAGE_LEN: usize = 512;
/// The path of an HTTP health check.
pub const MAX_HEALTH_PATH_LEN: usize = 1024;
/// Failed health checks in a row before the task is unhealthy.
pub const MAX_HEALTH_RETRIES: u32 = 1000;
/// The smallest pids limit: the workload's process and its threads, a
/// health check's exec and a few helpers need this many.
pub const MIN_PIDS_LIMIT: u32 = 16;
/// The largest pids limit: 2^20, far above what a container needs and
/// below the kernel's own ceiling (`pid_max`, at most 2^22).
pub const MAX_PIDS_LIMIT: u32 = 1 << 20;
/// `user:group` of two names of 32 characters (the usual limit) fits.
pub const MAX_USER_LEN: usize = 128;

impl TaskSpec {
    /// The memory limit in bytes, as the engine takes it (`None`: no limit).
    /// Checked: a spec that passed `validate` always fits, any other that
    /// does not is refused, never wrapped into "no limit".
    pub fn memory_limit_bytes(&self) -> Result<Option<i64>, SpecError> {
        if self.memory_mb == 0 {
            return Ok(None);
        }
        self.memory_mb
            .checked_mul(1024 * 1024)
            .and_then(|bytes| i64::try_from(bytes).ok())
            .map(Some)
            .ok_or_else(|| {
                SpecError::field(
                    "memory_mb",
                    format!(
                        "{} MiB does not fit in the engine's byte count",
                        self.memory_mb
                    ),
                )
            })
    }
}

/// Semantic checks on a well-typed spec.
pub fn validate(spec: &TaskSpec) -> Result<(), SpecError> {
    super::name::validate_node_name(&spec.name).map_err(|m| SpecError::field("name", m))?;
    validate_image(&spec.image)?;
    if let Some(cmd) = &spec.cmd {
        if cmd.is_empty() {
            return Err(SpecError::field(
                "cmd",
                "must not be empty (leave it out to use the image's command)",
            ));
        }
        validate_args("cmd", cmd)?;
    }
    validate_env(&spec.env)?;
    if !spec.cpu.is_finite() || spec.cpu < 0.0 {
        return Err(SpecError::field(
            "cpu",
            "must be a non-negative number of cores",
        ));
    }
    if spec.cpu > 0.0 && spec.cpu < MIN_CPU {
        return Err(SpecError::field(
            "cpu",
            format!("must be 0 (no limit) or at least {MIN_CPU} (the engine's smallest limit)"),
        ));
    }
    if spec.cpu > MAX_CPU {
        return Err(SpecError::field(
            "cpu",
            format!("must be at most {MAX_CPU} cores"),
        ));
    }
    if spec.memory_mb > 0 && spec.memory_mb < MIN_MEMORY_MB {
        return Err(SpecError::field(
            "memory_mb",
            format!("must be 0 (no limit) or at least {MIN_MEMORY_MB} (the engine's minimum)"),
        ));
    }
    if spec.memory_mb > MAX_MEMORY_MB {
        return Err(SpecError::field(
            "memory_mb",
            format!("must be at most {MAX_MEMORY_MB} (1 PiB)"),
        ));
    }
    if spec.disk_mb > MAX_DISK_MB {
        return Err(SpecError::field(
            "disk_mb",
            format!("must be at most {MAX_DISK_MB} (1 PiB)"),
        ));
    }
    if spec.restart.max_retries.is_some() && spec.restart.policy != RestartPolicy::OnFailure {
        return Err(SpecError::field(
            "restart.max_retries",
            "only applies to the \"on-failure\" policy",
        ));
    }
    if spec.stop_timeout_s > 3600 {
        return Err(SpecError::field(
            "stop_timeout_s",
            "must be at most 3600 seconds",
        ));
    }
    validate_ports(&spec.ports)?;
    if let Some(health) = &spec.health {
        validate_health(health, spec)?;
    }
    if !(MIN_PIDS_LIMIT..=MAX_PIDS_LIMIT).contains(&spec.pids_limit) {
        return Err(SpecError::field(
            "pids_limit",
            format!(
                "must be between {MIN_PIDS_LIMIT} and {MAX_PIDS_LIMIT} (processes and threads; default {DEFAULT_PIDS_LIMIT})"
            ),
        ));
    }
    if let Some(user) = &spec.user {
        validate_user(user)?;
    }
    Ok(())
}

/// `UID`, `UID:GID`, `NAME` or `NAME:GROUP`, as the engine takes it: which
/// users exist is the image's business, the shape is checked here.
fn validate_user(user: &str) -> Result<(), SpecError> {
    if user.is_empty() {
        return Err(SpecError::field(
            "user",
            "must not be empty (leave it out to use the image's user)",
        ));
    }
    if user.len() > MAX_USER_LEN {
        return Err(SpecError::field(
            "user",
            format!("must be at most {MAX_USER_LEN} bytes"),
        ));
    }
    if user.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(SpecError::field(
            "user",
            "must not contain whitespace or control characters",
        ));
    }
    let mut parts = user.split(':');
    let (name, group, rest) = (parts.next(), parts.next(), parts.next());
    if rest.is_some() || name == Some("") || group == Some("") {
        return Err(SpecError::field(
            "user",
            format!("{user:?} is not USER or USER:GROUP (a name or a number each)"),
        ));
    }
    Ok(())
}

fn validate_image(image: &str) -> Result<(), SpecError> {
    if image.trim().is_empty() {
        return Err(SpecError::field("image", "must not be empty"));
    }
    if image.len() > MAX_IMAGE_LEN {
        return Err(SpecError::field(
            "image",
            format!("must be at most {MAX_IMAGE_LEN} characters"),
        ));
    }
    if image.chars().any(char::is_whitespace) {
        return Err(SpecError::field("image", "must not contain whitespace"));
    }
    if let Some(c) = image
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-/:@".contains(*c)))
    {
        return Err(SpecError::field(
            "image",
            format!(
                "{c:?} cannot be in an image reference (letters, digits, '.', '_', '-', '/', ':', '@')"
            ),
        ));
    }
    Ok(())
}

/// A command's arguments (`cmd`, `health.exec`): bounded, and each a C string.
fn validate_args(field: &str, args: &[String]) -> Result<(), SpecError> {
    if args.len() > MAX_ARGS {
        return Err(SpecError::field(
            field,
            format!(
                "has {} arguments, at most {MAX_ARGS} are allowed",
                args.len()
            ),
        ));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(SpecError::field(
            field,
            "an argument must not contain a NUL character",
        ));
    }
    let bytes = args
        .iter()
        .map(|a| a.len().saturating_add(1))
        .fold(0, usize::saturating_add);
    if bytes > MAX_ARGS_BYTES {
        return Err(SpecError::field(
            field,
            format!("is {bytes} bytes long, at most {MAX_ARGS_BYTES} are allowed"),
        ));
    }
    Ok(())
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if env.len() > MAX_ENV {
        return Err(SpecError::field(
            "env",
            format!("has {} variables, at most {MAX_ENV} are allowed", env.len()),
        ));
    }
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(SpecError::field(
                "env",
                format!("{key:?} is not a valid variable name"),
            ));
        }
        if value.contains('\0') {
            return Err(SpecError::field(
                "env",
                format!("the value of {key:?} must not contain a NUL character"),
            ));
        }
    }
    // Each variable reaches the container as `KEY=VALUE`.
    let bytes = env
        .iter()
        .map(|(k, v)| k.len().saturating_add(v.len()).saturating_add(2))
        .fold(0, usize::saturating_add);
    if bytes > MAX_ENV_BYTES {
        return Err(SpecError::field(
            "env",
            format!("is {bytes} bytes long, at most {MAX_ENV_BYTES} are allowed"),
        ));
    }
    Ok(())
}

fn validate_ports(ports: &[PortSpec]) -> Result<(), SpecError> {
    if ports.len() > MAX_PORTS {
        return Err(SpecError::field(
            "ports",
            format!("has {} ports, at most {MAX_PORTS} are allowed", ports.len()),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut seen_host = std::collections::BTreeSet::new();
    for port in ports {
        if port.container == 0 || port.host == Some(0) {
            return Err(SpecError::field("ports", "port 0 is not a valid port"));
        }
        if !seen.insert(port.container) {
            return Err(SpecError::field(
                "ports",
                format!("container port {} is listed twice", port.container),
            ));
        }
        if let Some(host) = port.host
            && !seen_host.insert(host)
        {
            return Err(SpecError::field(
                "ports",
                format!("host port {host} is listed twice"),
            ));
        }
    }
    Ok(())
}

fn validate_health(health: &HealthSpec, spec: &TaskSpec) -> Result<(), SpecError> {
    let kinds = usize::from(health.http.is_some())
        + usize::from(health.tcp)
        + usize::from(health.exec.is_some());
    if kinds != 1 {
        return Err(SpecError::field(
            "health",
            "give exactly one of \"http\", \"tcp\" or \"exec\"",
        ));
    }
    if let Some(path) = &health.http {
        // It becomes `http://127.0.0.1:PORT{path}`: printable ASCII only.
        if !path.starts_with('/') || !path.chars().all(|c| c.is_ascii_graphic()) {
            return Err(SpecError::field(
                "health.http",
                "must be a path starting with / (printable ASCII, no spaces)",
            ));
        }
        if path.len() > MAX_HEALTH_PATH_LEN {
            return Err(SpecError::field(
                "health.http",
                format!("must be at most {MAX_HEALTH_PATH_LEN} characters"),
            ));
        }
    }
    if let Some(exec) = &health.exec {
        if exec.is_empty() {
            return Err(SpecError::field("health.exec", "must not be empty"));
        }
        validate_args("health.exec", exec)?;
    }
    if health.http.is_some() || health.tcp {
        let Some(port) = health.port else {
            return Err(SpecError::field(
                "health.port",
                "missing: the HTTP and TCP checks need a port",
            ));
        };
        if !spec.ports.iter().any(|p| p.container == port) {
            return Err(SpecError::field(
                "health.port",
                format!(
                    "{port} is not one of the task's ports (the check reaches it through its host port)"
                ),
            ));
        }
    }
    for (field, value, min) in [
        ("health.interval_s", health.interval_s, 0.05),
        ("health.timeout_s", health.timeout_s, 0.01),
    ] {
        if !value.is_finite() || value < min || value > 3600.0 {
            return Err(SpecError::field(
                field,
                format!("must be between {min} and 3600 seconds"),
            ));
        }
    }
    if !health.start_period_s.is_finite() || !(0.0..=3600.0).contains(&health.start_period_s) {
        return Err(SpecError::field(
            "health.start_period_s",
            "must be between 0 and 3600 seconds",
        ));
    }
    if health.retries == 0 || health.retries > MAX_HEALTH_RETRIES {
        return Err(SpecError::field(
            "health.retries",
            format!("must be between 1 and {MAX_HEALTH_RETRIES}"),
        ));
    }
    Ok(())
}

impl From<SpecError> for crate::api_error::ApiError {
    fn from(e: SpecError) -> Self {
        crate::api_error::ApiError::bad_request(e.message, e.field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> TaskSpec {
        from_value(v).unwrap()
    }

    fn field_of(v: Value) -> Option<String> {
        from_value(v).unwrap_err().field
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = ok(json!({"name": "a", "image": "busybox"}));
        assert_eq!(s.cmd, None);
        assert!(s.env.is_empty());
        assert_eq!((s.cpu, s.memory_mb, s.disk_mb), (0.0, 0, 0));
        assert!(s.ports.is_empty());
    }

    #[test]
    fn full_spec_parses() {
        let s = ok(
            json!({"name": "echo", "image": "cube-demo/echo:latest", "cmd": ["/echo"],
            "env": {"GREETING": "hi"}, "cpu": 0.25, "memory_mb": 64, "disk_mb": 100,
            "ports": [7777]}),
        );
        assert_eq!(s.cmd.as_deref(), Some(&["/echo".to_string()][..]));
        assert_eq!(s.env["GREETING"], "hi");
        assert_eq!(s.ports, vec![PortSpec::ephemeral(7777)]);
        assert!(s.host_ports().is_empty());
    }

    #[test]
    fn restart_policies_and_the_stop_timeout() {
        let s = ok(json!({"name": "a", "image": "b"}));
        assert_eq!(s.restart, RestartSpec::default());
        assert_eq!(s.restart.policy, RestartPolicy::No);
        assert_eq!(s.stop_timeout_s, 10);
        let s = ok(json!({"name": "a", "image": "b", "stop_timeout_s": 2,
            "restart": {"policy": "on-failure", "max_retries": 3}}));
        assert_eq!(s.restart.policy, RestartPolicy::OnFailure);
        assert_eq!(s.restart.max_retries, Some(3));
        assert_eq!(s.stop_timeout_s, 2);
        for (policy, expected) in [
            ("no", RestartPolicy::No),
            ("always", RestartPolicy::Always),
            ("unless-stopped", RestartPolicy::UnlessStopped),
        ] {
            let s = ok(json!({"name": "a", "image": "b", "restart": {"policy": policy}}));
            assert_eq!(s.restart.policy, expected);
        }
        let v = serde_json::to_value(ok(
            json!({"name": "a", "image": "b", "restart": {"policy": "always"}}),
        ))
        .unwrap();
        assert_eq!(v["restart"], json!({"policy": "always"}));
    }

    #[test]
    fn health_checks_parse_with_defaults_and_errors_name_the_field() {
        let s = ok(json!({"name": "a", "image": "b", "ports": [7777],
            "health": {"http": "/health", "port": 7777}}));
        let h = s.health.unwrap();
        assert_eq!(h.http.as_deref(), Some("/health"));
        assert_eq!(
            (h.interval_s, h.timeout_s, h.retries, h.start_period_s),
            (5.0, 2.0, 3, 0.0)
        );
        let s = ok(json!({"name": "a", "image": "b",
            "health": {"exec": ["/echo", "exit", "0"], "interval_s": 0.2, "retries": 1}}));
        assert_eq!(s.health.unwrap().retries, 1);
        let bad = |health: Value, ports: Value| {
            from_value(json!({"name": "a", "image": "b", "ports": ports, "health": health}))
                .unwrap_err()
                .field
                .unwrap()
        };
        assert_eq!(bad(json!({"port": 80}), json!([80])), "health");
        assert_eq!(
            bad(json!({"http": "/", "tcp": true, "port": 80}), json!([80])),
            "health"
        );
        assert_eq!(
            bad(json!({"http": "x", "port": 80}), json!([80])),
            "health.http"
        );
        assert_eq!(bad(json!({"http": "/"}), json!([80])), "health.port");
        assert_eq!(
            bad(json!({"tcp": true, "port": 81}), json!([80])),
            "health.port"
        );
        assert_eq!(bad(json!({"exec": []}), json!([])), "health.exec");
        assert_eq!(
            bad(json!({"exec": ["x"], "interval_s": 0}), json!([])),
            "health.interval_s"
        );
        assert_eq!(
            bad(json!({"exec": ["x"], "retries": 0}), json!([])),
            "health.retries"
        );
        assert_eq!(
            bad(json!({"exec": ["x"], "intervall": 1}), json!([])),
            "health"
        );
    }

    #[test]
    fn a_port_may_name_its_host_port() {
        let s = ok(json!({"name": "a", "image": "b", "ports": [7777, "8080:80"]}));
        assert_eq!(
            s.ports,
            vec![
                PortSpec::ephemeral(7777),
                PortSpec {
                    container: 80,
                    host: Some(8080)
                }
            ]
        );
        assert_eq!(s.host_ports(), vec![8080]);
        // It goes back out as it came in.
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["ports"], json!([7777, "8080:80"]));
        let e = from_value(json!({"name": "a", "image": "b", "ports": ["80:x"]})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ports"));
        assert!(e.message.contains("HOST:CONTAINER"), "{e}");
    }

    #[test]
    fn missing_fields_are_named() {
        assert_eq!(field_of(json!({"name": "a"})).as_deref(), Some("image"));
        assert_eq!(field_of(json!({"image": "a"})).as_deref(), Some("name"));
        assert_eq!(
            field_of(json!({"name": "a", "image": null})).as_deref(),
            Some("image")
        );
    }

    #[test]
    fn ill_typed_fields_are_named() {
        let base = || json!({"name": "a", "image": "b"});
        for (field, bad) in [
            ("name", json!(3)),
            ("image", json!(["x"])),
            ("cmd", json!("echo hi")),
            ("env", json!({"A": 1})),
            ("cpu", json!("lots")),
            ("memory_mb", json!(-5)),
            ("disk_mb", json!(1.5)),
            ("ports", json!([70000])),
            ("ports", json!(["99999:80"])),
            ("ports", json!([true])),
            ("restart", json!("always")),
            ("restart", json!({"policy": "sometimes"})),
            ("restart", json!({"policy": "always", "retries": 2})),
            ("stop_timeout_s", json!(-1)),
        ] {
            let mut v = base();
            v[field] = bad;
            assert_eq!(field_of(v).as_deref(), Some(field), "{field}");
        }
    }

    #[test]
    fn semantic_errors_are_named() {
        let base = || json!({"name": "a", "image": "b"});
        for (field, bad) in [
            ("name", json!("has space")),
            ("image", json!("")),
            ("cmd", json!([])),
            ("env", json!({"A=B": "x"})),
            ("cpu", json!(-1.0)),
            ("memory_mb", json!(3)),
            ("ports", json!([0])),
            ("ports", json!([80, 80])),
            ("ports", json!(["0:80"])),
            ("ports", json!(["8080:80", "8080:81"])),
            ("ports", json!(["8080:80", 80])),
            ("stop_timeout_s", json!(7200)),
        ] {
            let mut v = base();
            v[field] = bad;
            assert_eq!(field_of(v).as_deref(), Some(field), "{field}");
        }
        let v =
            json!({"name": "a", "image": "b", "restart": {"policy": "always", "max_retries": 2}});
        assert_eq!(field_of(v).as_deref(), Some("restart.max_retries"));
    }

    /// Sets `field` of a minimal spec; whether it is accepted, else the field named.
    fn with(field: &str, value: Value) -> Result<TaskSpec, Option<String>> {
        let mut v = json!({"name": "a", "image": "b"});
        v[field] = value;
        from_value(v).map_err(|e| e.field)
    }

    fn refused(field: &str, value: Value) {
        assert_eq!(
            with(field, value.clone()).err(),
            Some(Some(field.to_string())),
            "{field} = {value} should be refused naming {field}"
        );
    }

    fn accepted(field: &str, value: Value) {
        if let Err(e) = with(field, value.clone()) {
            panic!("{field} = {value} should be accepted, refused naming {e:?}");
        }
    }

    #[test]
    fn memory_is_within_what_the_engine_and_a_machine_can_mean() {
        accepted("memory_mb", json!(0));
        refused("memory_mb", json!(MIN_MEMORY_MB - 1));
        accepted("memory_mb", json!(MIN_MEMORY_MB));
        accepted("memory_mb", json!(MAX_MEMORY_MB));
        refused("memory_mb", json!(MAX_MEMORY_MB + 1));
        // 2^44 MiB is 2^64 bytes: it wrapped to 0, a container without a limit.
        refused("memory_mb", json!(1u64 << 44));
        refused("memory_mb", json!(u64::MAX));
        // Past u64: ill-typed, still named.
        refused("memory_mb", json!(18446744073709551616.0));
        // The largest accepted limit fits the engine's i64 byte count.
        let s = with("memory_mb", json!(MAX_MEMORY_MB)).unwrap();
        assert_eq!(
            s.memory_limit_bytes(),
            Ok(Some((MAX_MEMORY_MB as i64) * 1024 * 1024))
        );
        let s = with("memory_mb", json!(64)).unwrap();
        assert_eq!(s.memory_limit_bytes(), Ok(Some(64 * 1024 * 1024)));
        assert_eq!(
            with("memory_mb", json!(0)).unwrap().memory_limit_bytes(),
            Ok(None)
        );
    }

    #[test]
    fn a_memory_limit_that_does_not_fit_in_bytes_is_an_error_not_no_limit() {
        let mut s = ok(json!({"name": "a", "image": "b"}));
        for mb in [1u64 << 44, (i64::MAX as u64 >> 20) + 1, u64::MAX] {
            s.memory_mb = mb;
            let e = s.memory_limit_bytes().unwrap_err();
            assert_eq!(e.field.as_deref(), Some("memory_mb"), "{mb}");
        }
        s.memory_mb = i64::MAX as u64 >> 20;
        assert!(s.memory_limit_bytes().unwrap().unwrap() > 0);
    }

    #[test]
    fn disk_is_bounded() {
        accepted("disk_mb", json!(0));
        accepted("disk_mb", json!(MAX_DISK_MB));
        refused("disk_mb", json!(MAX_DISK_MB + 1));
        refused("disk_mb", json!(u64::MAX));
    }

    #[test]
    fn cpu_is_zero_or_what_the_engine_can_limit() {
        accepted("cpu", json!(0));
        accepted("cpu", json!(0.0));
        refused("cpu", json!(0.001));
        refused("cpu", json!(0.009));
        accepted("cpu", json!(MIN_CPU));
        accepted("cpu", json!(MAX_CPU));
        refused("cpu", json!(MAX_CPU + 0.5));
        refused("cpu", json!(-0.5));
        refused("cpu", json!(1e308));
        // JSON has no NaN or infinity; TOML has, and they are refused by name.
        for bad in ["nan", "inf", "-inf"] {
            let e = parse_toml(&format!("name = \"a\"\nimage = \"b\"\ncpu = {bad}\n")).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("cpu"), "{bad}");
        }
        let e =
            parse_toml("name = \"a\"\nimage = \"b\"\n[health]\nexec = [\"x\"]\ninterval_s = nan\n")
                .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("health.interval_s"));
    }

    #[test]
    fn ports_are_at_most_64() {
        let ports = |n: u16| json!((1..=n).collect::<Vec<u16>>());
        accepted("ports", ports(MAX_PORTS as u16));
        refused("ports", ports(MAX_PORTS as u16 + 1));
        refused("ports", ports(10_000));
    }

    #[test]
    fn env_is_bounded_in_count_and_size_and_has_no_nul() {
        let vars = |n: usize| {
            Value::Object(
                (0..n)
                    .map(|i| (format!("V{i}"), Value::String("x".into())))
                    .collect(),
            )
        };
        accepted("env", vars(MAX_ENV));
        refused("env", vars(MAX_ENV + 1));
        // KEY=VALUE and a terminator: "A=" + value + NUL.
        accepted("env", json!({"A": "x".repeat(MAX_ENV_BYTES - 3)}));
        refused("env", json!({"A": "x".repeat(MAX_ENV_BYTES - 2)}));
        refused("env", json!({"A": "x\u{0}y"}));
        refused("env", json!({"A\u{0}": "x"}));
        refused("env", json!({"": "x"}));
    }

    #[test]
    fn commands_are_bounded_in_count_and_size_and_have_no_nul() {
        let args = |n: usize| json!(vec!["x"; n]);
        accepted("cmd", args(MAX_ARGS));
        refused("cmd", args(MAX_ARGS + 1));
        accepted("cmd", json!(["x".repeat(MAX_ARGS_BYTES - 1)]));
        refused("cmd", json!(["x".repeat(MAX_ARGS_BYTES)]));
        refused("cmd", json!(["/echo", "a\u{0}b"]));
        let exec = |exec: Value| {
            from_value(json!({"name": "a", "image": "b", "health": {"exec": exec}}))
                .map_err(|e| e.field)
        };
        assert!(exec(args(MAX_ARGS)).is_ok());
        assert_eq!(
            exec(args(MAX_ARGS + 1)).unwrap_err().as_deref(),
            Some("health.exec")
        );
        assert_eq!(
            exec(json!(["x".repeat(MAX_ARGS_BYTES)]))
                .unwrap_err()
                .as_deref(),
            Some("health.exec")
        );
        assert_eq!(
            exec(json!(["a\u{0}"])).unwrap_err().as_deref(),
            Some("health.exec")
        );
    }

    #[test]
    fn names_and_images_are_bounded() {
        accepted("name", json!("n".repeat(63)));
        refused("name", json!("n".repeat(64)));
        accepted("image", json!("registry.example:5000/team/app:v1.2-rc_3"));
        accepted("image", json!(format!("busybox@sha256:{}", "a".repeat(64))));
        accepted("image", json!("i".repeat(MAX_IMAGE_LEN)));
        refused("image", json!("i".repeat(MAX_IMAGE_LEN + 1)));
        refused("image", json!("busy\u{0}box"));
        refused("image", json!("busybox\n"));
        refused("image", json!("busybox;rm"));
        refused("image", json!("bücher"));
    }

    #[test]
    fn health_paths_and_retries_are_bounded() {
        let http = |path: Value| {
            from_value(json!({"name": "a", "image": "b", "ports": [80],
                "health": {"http": path, "port": 80}}))
            .map_err(|e| e.field)
        };
        assert!(http(json!(format!("/{}", "p".repeat(MAX_HEALTH_PATH_LEN - 1)))).is_ok());
        for bad in [
            json!(format!("/{}", "p".repeat(MAX_HEALTH_PATH_LEN))),
            json!("/a b"),
            json!("/a\r\nHost: x"),
            json!("/\u{0}"),
        ] {
            assert_eq!(
                http(bad.clone()).unwrap_err().as_deref(),
                Some("health.http"),
                "{bad}"
            );
        }
        let retries = |n: u32| {
            from_value(json!({"name": "a", "image": "b",
                "health": {"exec": ["x"], "retries": n}}))
            .map_err(|e| e.field)
        };
        assert!(retries(MAX_HEALTH_RETRIES).is_ok());
        assert_eq!(
            retries(MAX_HEALTH_RETRIES + 1).unwrap_err().as_deref(),
            Some("health.retries")
        );
    }

    #[test]
    fn a_spec_the_manager_sends_parses_back_the_same() {
        // The worker parses an assignment's spec with `from_value` too.
        let s = ok(json!({"name": "echo", "image": "cube-demo/echo:latest",
            "cmd": ["/echo"], "env": {"A": "b"}, "cpu": 0.1, "memory_mb": 64, "disk_mb": 5,
            "ports": [7777, "8080:80"], "restart": {"policy": "on-failure", "max_retries": 2},
            "stop_timeout_s": 3, "health": {"http": "/h", "port": 7777},
            "pids_limit": 64, "user": "1000:1000", "read_only": true}));
        assert_eq!(ok(serde_json::to_value(&s).unwrap()), s);
        let minimal = ok(json!({"name": "a", "image": "b"}));
        assert_eq!(ok(serde_json::to_value(&minimal).unwrap()), minimal);
    }

    #[test]
    fn fields_that_would_give_a_container_the_host_are_refused_by_name() {
        for (field, value) in [
            ("privileged", json!(true)),
            ("network_mode", json!("host")),
            ("NetworkMode", json!("host")),
            ("network", json!("host")),
            ("pid_mode", json!("host")),
            ("pid", json!("host")),
            ("ipc", json!("host")),
            ("ipc_mode", json!("host")),
            ("uts_mode", json!("host")),
            ("userns_mode", json!("host")),
            (
                "binds",
                json!(["/var/run/docker.sock:/var/run/docker.sock"]),
            ),
            (
                "volumes",
                json!(["/var/run/docker.sock:/var/run/docker.sock"]),
            ),
            ("mounts", json!([{"source": "/", "target": "/host"}])),
            ("cap_add", json!(["SYS_ADMIN"])),
            ("devices", json!(["/dev/sda"])),
            ("security_opt", json!(["seccomp=unconfined"])),
        ] {
            let e = from_value(json!({"name": "a", "image": "b", field: value})).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{field}");
            assert!(e.message.starts_with("refused: "), "{field}: {e}");
            // The typed spec refuses them too, whoever deserializes it.
            let typed =
                serde_json::from_value::<TaskSpec>(json!({"name": "a", "image": "b", field: true}));
            assert!(typed.is_err(), "{field}");
        }
        // Not every unknown field is a danger: the usual message for the rest.
        let e = from_value(json!({"name": "a", "image": "b", "colour": "red"})).unwrap_err();
        assert!(e.message.starts_with("unknown field"), "{e}");
    }

    #[test]
    fn pids_limit_defaults_and_is_bounded() {
        assert_eq!(ok(json!({"name": "a", "image": "b"})).pids_limit, 1024);
        accepted("pids_limit", json!(MIN_PIDS_LIMIT));
        accepted("pids_limit", json!(MAX_PIDS_LIMIT));
        assert_eq!(with("pids_limit", json!(32)).unwrap().pids_limit, 32);
        for bad in [
            json!(0),
            json!(MIN_PIDS_LIMIT - 1),
            json!(MAX_PIDS_LIMIT + 1),
            json!(-1),
            json!(u64::from(u32::MAX) + 1),
            json!(u64::MAX),
            json!(1.5),
            json!("many"),
        ] {
            refused("pids_limit", bad);
        }
    }

    #[test]
    fn user_and_read_only() {
        let s = ok(json!({"name": "a", "image": "b"}));
        assert_eq!((s.user, s.read_only), (None, false));
        for good in [
            "1000",
            "1000:1000",
            "app",
            "app:staff",
            "u".repeat(MAX_USER_LEN).as_str(),
        ] {
            assert_eq!(
                with("user", json!(good)).unwrap().user.as_deref(),
                Some(good)
            );
        }
        for bad in [
            json!(""),
            json!(" "),
            json!("a b"),
            json!("a\u{0}"),
            json!("a\n"),
            json!("a\u{7f}"),
            json!("a:b:c"),
            json!(":1000"),
            json!("1000:"),
            json!("u".repeat(MAX_USER_LEN + 1)),
            json!(1000),
        ] {
            refused("user", bad);
        }
        assert!(with("read_only", json!(true)).unwrap().read_only);
        refused("read_only", json!("yes"));
        refused("read_only", json!(1));
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let e = from_value(json!({"name": "a", "image": "b", "imgae": "c"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("imgae"));
    }

    #[test]
    fn not_an_object_or_not_json() {
        assert_eq!(from_value(json!([1])).unwrap_err().field, None);
        assert_eq!(parse_json("{").unwrap_err().field, None);
    }

    #[test]
    fn toml_spec_parses_like_json() {
        let t = parse_toml(
            "name = \"echo\"\nimage = \"x\"\ncpu = 0.5\nports = [80]\n[env]\nA = \"b\"\n",
        )
        .unwrap();
        let j = parse_json(r#"{"name":"echo","image":"x","cpu":0.5,"ports":[80],"env":{"A":"b"}}"#)
            .unwrap();
        assert_eq!(t, j);
        assert_eq!(
            parse_toml("name = \"a\"\nimage = 5\n")
                .unwrap_err()
                .field
                .as_deref(),
            Some("image")
        );
    }
}
