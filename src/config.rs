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
//! manager = "http://127.0.0.1:5555"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    pub listen: SocketAddr,
    #[serde(default = "default_scheduler")]
    pub scheduler: SchedulerKind,
}

fn default_scheduler() -> SchedulerKind {
    SchedulerKind::RoundRobin
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Base URL of the manager this worker registers with. In `dev` it may be
    /// left out: the worker then registers with the manager of its own process.
    pub manager: Option<String>,
    /// The address the manager uses to reach this worker; defaults to
    /// `http://<listen>`.
    pub advertise: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub role: Role,
    pub data_dir: PathBuf,
    pub manager: Option<ManagerConfig>,
    pub worker: Option<WorkerConfig>,
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
        if let Some(worker) = &self.worker {
            validate_node_name(&worker.name).map_err(|m| ConfigError::key("worker.name", m))?;
            match &worker.manager {
                Some(url) => {
                    validate_url(url).map_err(|m| ConfigError::key("worker.manager", m))?
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
        }
        Ok(())
    }

    /// The URL a worker in this process registers with.
    pub fn manager_url_for_worker(&self) -> Option<String> {
        let worker = self.worker.as_ref()?;
        match (&worker.manager, &self.manager) {
            (Some(url), _) => Some(url.trim_end_matches('/').to_string()),
            (None, Some(m)) => Some(format!("http://{}", m.listen)),
            (None, None) => None,
        }
    }
}

impl WorkerConfig {
    pub fn advertise_url(&self) -> String {
        match &self.advertise {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }
}

/// A node name goes into container names and labels: keep it to a safe alphabet.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "{name:?} may only contain letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn validate_url(url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{url:?} is not an http:// URL"))
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
            Some("http://127.0.0.1:5555")
        );
        assert_eq!(
            c.worker.as_ref().unwrap().advertise_url(),
            "http://127.0.0.1:5556"
        );
    }

    #[test]
    fn parses_a_worker_config() {
        let c = NodeConfig::parse(
            r#"role = "worker"
data_dir = "d"
[worker]
name = "w2"
listen = "127.0.0.1:6000"
manager = "http://127.0.0.1:5555/"
"#,
        )
        .unwrap();
        assert_eq!(
            c.manager_url_for_worker().as_deref(),
            Some("http://127.0.0.1:5555")
        );
    }

    fn err(text: &str) -> String {
        NodeConfig::parse(text).unwrap_err().to_string()
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
        let e = err(&DEV.replace("round-robin", "epvm"));
        assert!(e.contains("scheduler") || e.contains("epvm"), "{e}");
        let e = err(&DEV.replace("\"dev\"", "\"boss\""));
        assert!(e.contains("role") || e.contains("boss"), "{e}");
        let e = err(&DEV.replace("\"w1\"", "\"w 1\""));
        assert!(e.contains("worker.name"), "{e}");
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
