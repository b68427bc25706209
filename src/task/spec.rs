//! The task spec (what a user writes) and its validation.
//!
//! Parsing goes field by field through a JSON value so that every error names
//! the field it is about: `{"error": "...", "field": "cpu"}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One container to run. Units are in the field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    fn field(field: &str, message: impl Into<String>) -> Self {
        SpecError {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
    fn document(message: impl Into<String>) -> Self {
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
];

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
    let json = serde_json::to_value(value)
        .map_err(|e| SpecError::document(format!("spec cannot be converted: {e}")))?;
    from_value(json)
}

/// Checks a spec document field by field and builds the spec.
pub fn from_value(value: Value) -> Result<TaskSpec, SpecError> {
    let Value::Object(map) = value else {
        return Err(SpecError::document("a task spec must be a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(SpecError::field(
            unknown,
            format!("unknown field (known fields: {})", FIELDS.join(", ")),
        ));
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

/// Semantic checks on a well-typed spec.
pub fn validate(spec: &TaskSpec) -> Result<(), SpecError> {
    crate::config::validate_node_name(&spec.name).map_err(|m| SpecError::field("name", m))?;
    if spec.image.trim().is_empty() {
        return Err(SpecError::field("image", "must not be empty"));
    }
    if spec.image.chars().any(char::is_whitespace) {
        return Err(SpecError::field("image", "must not contain whitespace"));
    }
    if let Some(cmd) = &spec.cmd
        && cmd.is_empty()
    {
        return Err(SpecError::field(
            "cmd",
            "must not be empty (leave it out to use the image's command)",
        ));
    }
    for key in spec.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(SpecError::field(
                "env",
                format!("{key:?} is not a valid variable name"),
            ));
        }
    }
    if !spec.cpu.is_finite() || spec.cpu < 0.0 {
        return Err(SpecError::field(
            "cpu",
            "must be a non-negative number of cores",
        ));
    }
    if spec.cpu > 1024.0 {
        return Err(SpecError::field("cpu", "must be at most 1024 cores"));
    }
    if spec.memory_mb > 0 && spec.memory_mb < 6 {
        return Err(SpecError::field(
            "memory_mb",
            "must be 0 (no limit) or at least 6 (the engine's minimum)",
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
    if let Some(health) = &spec.health {
        validate_health(health, spec)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut seen_host = std::collections::BTreeSet::new();
    for port in &spec.ports {
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
    if let Some(path) = &health.http
        && !path.starts_with('/')
    {
        return Err(SpecError::field(
            "health.http",
            "must be a path starting with /",
        ));
    }
    if health.exec.as_ref().is_some_and(Vec::is_empty) {
        return Err(SpecError::field("health.exec", "must not be empty"));
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
    if health.retries == 0 {
        return Err(SpecError::field("health.retries", "must be at least 1"));
    }
    Ok(())
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
