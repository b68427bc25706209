//! A service spec: its name, how many replicas, the task every replica
//! runs (a task spec without its name: replicas are named after the
//! service and their slot) and how an update rolls out.
//!
//! Parsed field by field like a task spec; an error in the task names its
//! path (`task.memory_mb`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::task::spec::{self as task_spec, SpecError, TaskSpec};

/// The most replicas one service may ask for.
pub const MAX_REPLICAS: u32 = 1000;
/// A service name is a DNS label short enough that `<name>.<slot>` is a
/// task name (63 characters at most).
pub const MAX_NAME_LEN: usize = 48;
/// Variables Cube adds to every replica's environment.
const REPLICA_ENV_COUNT: usize = 3;
/// The longest `delay_s` and `monitor_s`: an hour.
pub const MAX_UPDATE_SECONDS: u32 = 3600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub replicas: u32,
    /// The task of every replica; its `name` is the service's.
    pub task: TaskSpec,
    #[serde(default)]
    pub update: UpdateConfig,
    /// Ports the service offers through every node's load balancer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<Expose>,
}

/// A port of the service reached through the cluster: every worker listens
/// on `publish` and forwards to `port` of a healthy replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expose {
    /// The container port (one of the task's `ports`).
    pub port: u16,
    /// The port every node's balancer listens on.
    pub publish: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// How an `http` port picks a replica for each request.
    #[serde(default)]
    pub balance: Balance,
    /// A `tcp` port sends a PROXY protocol v2 header to the replica, so
    /// that it learns the client's address.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// A `tcp` connection that carries no byte either way for this long is
    /// closed (so idle clients cannot hold the port's places forever); on
    /// an `http` port, a replica that sends nothing for this long is given
    /// up on (504 before its answer began), and the replicas one request
    /// tries get this long together. Default: [`Expose::idle_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u32>,
}

impl Expose {
    /// `idle_timeout_s`, or by default 300 s for `tcp` (long-lived
    /// connections) and 60 s for `http` (a replica's answer, as nginx's
    /// `proxy_read_timeout`).
    pub fn idle_timeout(&self) -> std::time::Duration {
        let seconds = self.idle_timeout_s.unwrap_or(match self.protocol {
            Protocol::Tcp => 300,
            Protocol::Http => 60,
        });
        std::time::Duration::from_secs(u64::from(seconds))
    }
}

/// The longest `idle_timeout_s`: a day.
pub const MAX_IDLE_TIMEOUT_S: u32 = 86_400;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Balanced per request.
    #[default]
    Http,
    /// Balanced per connection.
    Tcp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
}

/// How an update (and a rollback) replaces the replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Slots replaced at a time.
    pub parallelism: u32,
    pub order: UpdateOrder,
    /// Seconds between one slot done and the next one started.
    pub delay_s: u32,
    /// How long a new replica has to be running (and healthy, if it has a
    /// health check): sooner, a replica with a health check counts once it
    /// passes; an update fails when a new replica exits, turns unhealthy or
    /// is not running within this time.
    pub monitor_s: u32,
    pub failure_action: FailureAction,
    /// Seconds a replica is out of every balancer before it is stopped.
    #[serde(default = "default_drain_s")]
    pub drain_s: u32,
}

fn default_drain_s() -> u32 {
    2
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            order: UpdateOrder::StartFirst,
            delay_s: 0,
            monitor_s: 10,
            failure_action: FailureAction::Rollback,
            drain_s: default_drain_s(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Start the new replica, and stop the old one once the new one counts:
    /// never fewer healthy replicas than asked for.
    StartFirst,
    /// Stop the old replica, then start the new one (no room for both).
    StopFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    /// Go back to the previous version, the same way.
    Rollback,
    /// Stop where the update is.
    Pause,
}

const FIELDS: &[&str] = &["name", "replicas", "task", "update", "expose"];
const UPDATE_FIELDS: &[&str] = &[
    "parallelism",
    "order",
    "delay_s",
    "monitor_s",
    "failure_action",
    "drain_s",
];
/// Ports one service may expose.
pub const MAX_EXPOSE: usize = 16;

/// A service name: a DNS label (lowercase letters, digits and '-', starting
/// with a letter, not ending with '-').
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} characters"));
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let starts = name.starts_with(|c: char| c.is_ascii_lowercase());
    if !ok_chars || !starts || name.ends_with('-') {
        return Err(format!(
            "{name:?} is not a DNS label: lowercase letters, digits and '-', starting with a letter"
        ));
    }
    Ok(())
}

pub fn parse_json(text: &str) -> Result<ServiceSpec, SpecError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| SpecError::document(format!("request body is not valid JSON: {e}")))?;
    from_value(value)
}

/// Checks a service document field by field and builds the spec.
pub fn from_value(value: Value) -> Result<ServiceSpec, SpecError> {
    let Value::Object(map) = value else {
        return Err(SpecError::document("a service spec must be a JSON object"));
    };
    unknown(&map, FIELDS, "")?;
    let name: String = required(&map, "name", "a string")?;
    validate_name(&name).map_err(|m| SpecError::field("name", m))?;
    let replicas: u32 = required(
        &map,
        "replicas",
        &format!("a whole number from 0 to {MAX_REPLICAS}"),
    )?;
    check_replicas(replicas)?;
    let task = task_of(&map, &name)?;
    let update = match map.get("update") {
        None | Some(Value::Null) => UpdateConfig::default(),
        Some(value) => update_of(value)?,
    };
    let expose = match map.get("expose") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => expose_of(value, &task)?,
    };
    Ok(ServiceSpec {
        name,
        replicas,
        task,
        update,
        expose,
    })
}

fn expose_of(value: &Value, task: &TaskSpec) -> Result<Vec<Expose>, SpecError> {
    let expose: Vec<Expose> = serde_json::from_value(value.clone()).map_err(|e| {
        SpecError::field(
            "expose",
            format!(
                "expected [{{\"port\", \"publish\", \"protocol\": \"http\" | \"tcp\", \"balance\": \"round-robin\" | \"least-conn\", \"proxy_protocol\", \"idle_timeout_s\"}}]: {e}"
            ),
        )
    })?;
    if expose.len() > MAX_EXPOSE {
        return Err(SpecError::field(
            "expose",
            format!("at most {MAX_EXPOSE} ports"),
        ));
    }
    let mut published = std::collections::BTreeSet::new();
    for (i, e) in expose.iter().enumerate() {
        if !task.ports.iter().any(|p| p.container == e.port) {
            return Err(SpecError::field(
                &format!("expose[{i}].port"),
                format!("{} is not one of the task's ports", e.port),
            ));
        }
        if e.publish == 0 {
            return Err(SpecError::field(
                &format!("expose[{i}].publish"),
                "must be a port from 1 to 65535",
            ));
        }
        if !published.insert(e.publish) {
            return Err(SpecError::field(
                &format!("expose[{i}].publish"),
                format!("{} is published twice", e.publish),
            ));
        }
        if let Some(s) = e.idle_timeout_s
            && !(1..=MAX_IDLE_TIMEOUT_S).contains(&s)
        {
            return Err(SpecError::field(
                &format!("expose[{i}].idle_timeout_s"),
                format!("must be from 1 to {MAX_IDLE_TIMEOUT_S} (seconds)"),
            ));
        }
        if e.proxy_protocol && e.protocol != Protocol::Tcp {
            return Err(SpecError::field(
                &format!("expose[{i}].proxy_protocol"),
                "only a tcp port sends the PROXY protocol",
            ));
        }
    }
    Ok(expose)
}

/// `replicas` within its bound.
pub fn check_replicas(replicas: u32) -> Result<(), SpecError> {
    if replicas > MAX_REPLICAS {
        return Err(SpecError::field(
            "replicas",
            format!("{replicas} is more than {MAX_REPLICAS}"),
        ));
    }
    Ok(())
}

/// The task template: a task spec without a name (it takes the service's).
fn task_of(map: &Map<String, Value>, service: &str) -> Result<TaskSpec, SpecError> {
    let Some(Value::Object(task)) = map.get("task") else {
        return Err(SpecError::field(
            "task",
            "missing (expected a task spec, without its name)",
        ));
    };
    if task.contains_key("name") {
        return Err(SpecError::field(
            "task.name",
            "a service's replicas are named after it and their slot (web.1, web.2, ...)",
        ));
    }
    let env = task
        .get("env")
        .and_then(Value::as_object)
        .map_or(0, Map::len);
    let room = task_spec::MAX_ENV - REPLICA_ENV_COUNT;
    if env > room {
        return Err(SpecError::field(
            "task.env",
            format!(
                "at most {room} variables (Cube adds CUBE_SERVICE, CUBE_SLOT and CUBE_TASK_ID)"
            ),
        ));
    }
    let mut task = task.clone();
    task.insert("name".into(), Value::String(service.to_string()));
    task_spec::from_value(Value::Object(task)).map_err(|e| SpecError {
        field: Some(match e.field {
            Some(field) => format!("task.{field}"),
            None => "task".into(),
        }),
        message: e.message,
    })
}

fn update_of(value: &Value) -> Result<UpdateConfig, SpecError> {
    let Value::Object(map) = value else {
        return Err(SpecError::field("update", "expected an object"));
    };
    unknown(map, UPDATE_FIELDS, "update.")?;
    let d = UpdateConfig::default();
    let seconds = format!("a whole number of seconds from 0 to {MAX_UPDATE_SECONDS}");
    let config = UpdateConfig {
        parallelism: optional(
            map,
            "update.parallelism",
            "parallelism",
            &format!("a whole number from 1 to {MAX_REPLICAS}"),
        )?
        .unwrap_or(d.parallelism),
        order: optional(
            map,
            "update.order",
            "order",
            "\"start-first\" or \"stop-first\"",
        )?
        .unwrap_or(d.order),
        delay_s: optional(map, "update.delay_s", "delay_s", &seconds)?.unwrap_or(d.delay_s),
        monitor_s: optional(map, "update.monitor_s", "monitor_s", &seconds)?.unwrap_or(d.monitor_s),
        failure_action: optional(
            map,
            "update.failure_action",
            "failure_action",
            "\"rollback\" or \"pause\"",
        )?
        .unwrap_or(d.failure_action),
        drain_s: optional(map, "update.drain_s", "drain_s", &seconds)?.unwrap_or(d.drain_s),
    };
    if !(1..=MAX_REPLICAS).contains(&config.parallelism) {
        return Err(SpecError::field(
            "update.parallelism",
            format!("must be from 1 to {MAX_REPLICAS}"),
        ));
    }
    for (field, value) in [
        ("update.delay_s", config.delay_s),
        ("update.monitor_s", config.monitor_s),
        ("update.drain_s", config.drain_s),
    ] {
        if value > MAX_UPDATE_SECONDS {
            return Err(SpecError::field(
                field,
                format!("must be at most {MAX_UPDATE_SECONDS}"),
            ));
        }
    }
    if config.monitor_s == 0 {
        return Err(SpecError::field(
            "update.monitor_s",
            "must be at least 1: a new replica is watched that long",
        ));
    }
    Ok(config)
}

fn unknown(map: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), SpecError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(field) => Err(SpecError::field(
            &format!("{prefix}{field}"),
            format!("unknown field (known fields: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn required<T: serde::de::DeserializeOwned>(
    map: &Map<String, Value>,
    field: &str,
    expected: &str,
) -> Result<T, SpecError> {
    optional(map, field, field, expected)?
        .ok_or_else(|| SpecError::field(field, format!("missing (expected {expected})")))
}

fn optional<T: serde::de::DeserializeOwned>(
    map: &Map<String, Value>,
    path: &str,
    key: &str,
    expected: &str,
) -> Result<Option<T>, SpecError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| SpecError::field(path, format!("expected {expected}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(value: Value) -> Option<String> {
        from_value(value).expect_err("refused").field
    }

    #[test]
    fn a_service_spec_takes_a_nameless_task_and_defaults_its_update() {
        let spec = from_value(json!({
            "name": "web", "replicas": 3,
            "task": {"image": "cube-demo/echo", "memory_mb": 64}
        }))
        .unwrap();
        assert_eq!(spec.task.name, "web");
        assert_eq!(spec.task.memory_mb, 64);
        assert_eq!(spec.update, UpdateConfig::default());
        let spec = from_value(json!({
            "name": "web", "replicas": 0, "task": {"image": "i"},
            "update": {"parallelism": 2, "order": "stop-first", "delay_s": 1,
                       "monitor_s": 5, "failure_action": "pause"}
        }))
        .unwrap();
        assert_eq!(spec.update.order, UpdateOrder::StopFirst);
        assert_eq!(spec.update.failure_action, FailureAction::Pause);
    }

    #[test]
    fn every_error_names_its_path() {
        let task = json!({"image": "i"});
        for (doc, field) in [
            (json!({"name": "Web", "replicas": 1, "task": task}), "name"),
            (json!({"name": "web-", "replicas": 1, "task": task}), "name"),
            (json!({"name": "web", "task": task}), "replicas"),
            (
                json!({"name": "web", "replicas": 1001, "task": task}),
                "replicas",
            ),
            (
                json!({"name": "web", "replicas": -1, "task": task}),
                "replicas",
            ),
            (json!({"name": "web", "replicas": 1}), "task"),
            (
                json!({"name": "web", "replicas": 1, "task": {"image": "i", "memory_mb": "x"}}),
                "task.memory_mb",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": {"image": "i", "privileged": true}}),
                "task.privileged",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": {"image": "i", "name": "x"}}),
                "task.name",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": task, "update": {"parallelism": 0}}),
                "update.parallelism",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": task, "update": {"order": "x"}}),
                "update.order",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": task, "update": {"monitor_s": 0}}),
                "update.monitor_s",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": task, "update": {"delay_s": 9999}}),
                "update.delay_s",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": task, "update": {"x": 1}}),
                "update.x",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": task, "x": 1}),
                "x",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": {"image": "i", "ports": [80]},
                       "expose": [{"port": 81, "publish": 8080}]}),
                "expose[0].port",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": {"image": "i", "ports": [80]},
                       "expose": [{"port": 80, "publish": 8080}, {"port": 80, "publish": 8080}]}),
                "expose[1].publish",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": {"image": "i", "ports": [80]},
                       "expose": [{"port": 80, "publish": 8080, "proxy_protocol": true}]}),
                "expose[0].proxy_protocol",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": {"image": "i", "ports": [80]},
                       "expose": [{"port": 80, "publish": 8080, "idle_timeout_s": 0}]}),
                "expose[0].idle_timeout_s",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": {"image": "i", "ports": [80]},
                       "expose": [{"port": 80, "publish": 8080, "protocol": "udp"}]}),
                "expose",
            ),
            (
                json!({"name": "web", "replicas": 1, "task": task, "update": {"drain_s": 4000}}),
                "update.drain_s",
            ),
        ] {
            assert_eq!(field_of(doc.clone()).as_deref(), Some(field), "{doc}");
        }
    }
}
