//! The Docker Engine API through bollard: the only module that speaks to the
//! engine. The API version is negotiated (the engine here speaks 1.41).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig,
    PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions,
    LogsOptionsBuilder, RemoveContainerOptions, StopContainerOptions,
};
use futures_util::{Stream, StreamExt};
use uuid::Uuid;

use crate::task::TaskSpec;

/// Labels every Cube container carries.
pub const LABEL_MANAGED: &str = "cube.managed";
pub const LABEL_TASK: &str = "cube.task";
pub const LABEL_ATTEMPT: &str = "cube.attempt";
pub const LABEL_NODE: &str = "cube.node";

/// How long a pull may take before the task is failed.
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {image} is not present locally and could not be pulled: {reason}")]
    ImageUnavailable { image: String, reason: String },
    #[error("the container engine is unreachable: {0}")]
    EngineDown(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("container engine: {0}")]
    Engine(String),
}

impl From<BollardError> for RuntimeError {
    fn from(e: BollardError) -> Self {
        match &e {
            BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            } => RuntimeError::NotFound(message.clone()),
            BollardError::IOError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::RequestTimeoutError => RuntimeError::EngineDown(e.to_string()),
            _ => RuntimeError::Engine(e.to_string()),
        }
    }
}

/// Connects to the local engine (DOCKER_HOST or the default socket) and
/// negotiates the API version. On failure the engine is down (or absent).
pub async fn connect() -> Result<(Docker, String), RuntimeError> {
    let docker = Docker::connect_with_local_defaults()
        .map_err(|e| RuntimeError::EngineDown(e.to_string()))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| RuntimeError::EngineDown(e.to_string()))?;
    let version = docker.version().await.map_err(RuntimeError::from)?;
    let described = format!(
        "{} (API {})",
        version.version.unwrap_or_default(),
        version.api_version.unwrap_or_default()
    );
    Ok((docker, described))
}

/// The deterministic name of a task attempt's container, and of each
/// restart's: a restart never waits for (or adopts) its dying predecessor.
pub fn container_name(task_id: Uuid, attempt: u32, restart: u32) -> String {
    match restart {
        0 => format!("cube-{task_id}-{attempt}"),
        n => format!("cube-{task_id}-{attempt}-r{n}"),
    }
}

pub fn labels(task_id: Uuid, attempt: u32, node: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_TASK.to_string(), task_id.to_string()),
        (LABEL_ATTEMPT.to_string(), attempt.to_string()),
        (LABEL_NODE.to_string(), node.to_string()),
    ])
}

/// Makes sure `image` is available: used if local, pulled otherwise.
pub async fn ensure_image(docker: &Docker, image: &str) -> Result<(), RuntimeError> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => return Err(e.into()),
    }
    log::info!("runtime: image {image} is not local, pulling it");
    let options = CreateImageOptions {
        from_image: Some(image.to_string()),
        ..Default::default()
    };
    let pull = async {
        let mut stream = docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            item.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    let unavailable = |reason: String| RuntimeError::ImageUnavailable {
        image: image.to_string(),
        reason,
    };
    match tokio::time::timeout(PULL_TIMEOUT, pull).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(unavailable(reason)),
        Err(_) => Err(unavailable(format!(
            "pull timed out after {} s",
            PULL_TIMEOUT.as_secs()
        ))),
    }
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
}

/// Creates the container of a task attempt. If a container of that name
/// exists already (a worker restarted mid-way), returns its id instead:
/// there is never a second copy.
pub async fn create(
    docker: &Docker,
    task_id: Uuid,
    attempt: u32,
    restart: u32,
    node: &str,
    spec: &TaskSpec,
) -> Result<String, RuntimeError> {
    let name = container_name(task_id, attempt, restart);
    let body = create_body(task_id, attempt, node, spec)?;
    let options = CreateContainerOptions {
        name: Some(name.clone()),
        ..Default::default()
    };
    match docker.create_container(Some(options), body).await {
        Ok(created) => Ok(created.id),
        Err(BollardError::DockerResponseServerError {
            status_code: 409, ..
        }) => {
            log::info!("runtime: container {name} exists already, adopting it");
            Ok(inspect(docker, &name).await?.id)
        }
        Err(e) => Err(e.into()),
    }
}

fn create_body(
    task_id: Uuid,
    attempt: u32,
    node: &str,
    spec: &TaskSpec,
) -> Result<ContainerCreateBody, RuntimeError> {
    // Checked: a limit that does not fit is an error, never "no limit".
    let memory = spec
        .memory_limit_bytes()
        .map_err(|e| RuntimeError::Engine(e.to_string()))?;
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let port_keys: Vec<String> = spec
        .ports
        .iter()
        .map(|p| format!("{}/tcp", p.container))
        .collect();
    let bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
        .ports
        .iter()
        .zip(&port_keys)
        .map(|(port, key)| {
            let binding = PortBinding {
                host_ip: None,
                // Empty: the engine picks an ephemeral port.
                host_port: Some(port.host.map(|h| h.to_string()).unwrap_or_default()),
            };
            (key.clone(), Some(vec![binding]))
        })
        .collect();
    let host_config = HostConfig {
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        nano_cpus: (spec.cpu > 0.0).then_some((spec.cpu * 1e9) as i64),
        memory,
        // The limit is the limit: no swap beyond it (as Kubernetes does).
        memory_swap: memory,
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.cmd.clone(),
        env: (!env.is_empty()).then_some(env),
        labels: Some(labels(task_id, attempt, node)),
        exposed_ports: (!port_keys.is_empty()).then_some(port_keys),
        host_config: Some(host_config),
        ..Default::default()
    })
}

pub async fn start(docker: &Docker, id: &str) -> Result<(), RuntimeError> {
    match docker.start_container(id, None).await {
        Ok(()) => Ok(()),
        // 304: already started (an adopted container).
        Err(BollardError::DockerResponseServerError {
            status_code: 304, ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub async fn inspect(docker: &Docker, id: &str) -> Result<ContainerView, RuntimeError> {
    let info = docker.inspect_container(id, None).await?;
    Ok(view(info))
}

/// Inspects a container by id or name; `None` when there is none.
pub async fn inspect_existing(
    docker: &Docker,
    id: &str,
) -> Result<Option<ContainerView>, RuntimeError> {
    match inspect(docker, id).await {
        Ok(view) => Ok(Some(view)),
        Err(RuntimeError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn view(info: ContainerInspectResponse) -> ContainerView {
    let state = info.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let mut host_ports = BTreeMap::new();
    if let Some(ports) = info.network_settings.and_then(|n| n.ports) {
        for (key, bindings) in ports {
            let Some(container_port) = key.split('/').next().and_then(|p| p.parse().ok()) else {
                continue;
            };
            let host_port = bindings
                .unwrap_or_default()
                .into_iter()
                .find_map(|b| b.host_port.and_then(|p| p.parse::<u16>().ok()));
            if let Some(host_port) = host_port {
                host_ports.insert(container_port, host_port);
            }
        }
    }
    let started = !matches!(state.status, Some(ContainerStateStatusEnum::CREATED) | None);
    ContainerView {
        id: info.id.unwrap_or_default(),
        started,
        running,
        exit_code: if running { None } else { state.exit_code },
        host_ports,
    }
}

/// Stops (SIGTERM, then SIGKILL after `timeout_s`) and removes a container;
/// answers its exit code when it could still be read. A container that is
/// already gone is fine.
pub async fn stop_and_remove(
    docker: &Docker,
    id: &str,
    timeout_s: i32,
) -> Result<Option<i64>, RuntimeError> {
    let stop = StopContainerOptions {
        t: Some(timeout_s),
        ..Default::default()
    };
    match docker.stop_container(id, Some(stop)).await {
        Ok(())
        | Err(BollardError::DockerResponseServerError {
            status_code: 304 | 404,
            ..
        }) => {}
        Err(e) => return Err(e.into()),
    }
    let exit_code = inspect_existing(docker, id)
        .await
        .ok()
        .flatten()
        .and_then(|v| v.exit_code);
    remove(docker, id).await?;
    Ok(exit_code)
}

/// Runs `cmd` in a running container, waits for it, and gives its exit
/// code and the tail of its output.
pub async fn exec(
    docker: &Docker,
    id: &str,
    cmd: &[String],
) -> Result<(i64, String), RuntimeError> {
    let options = CreateExecOptions {
        cmd: Some(cmd.to_vec()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let created = docker.create_exec(id, options).await?;
    let mut output = String::new();
    if let StartExecResults::Attached {
        output: mut stream, ..
    } = docker.start_exec(&created.id, None).await?
    {
        while let Some(chunk) = stream.next().await {
            output.push_str(&chunk?.to_string());
            // Keep the tail only.
            if output.len() > 4096 {
                let cut = output.len() - 1024;
                let cut = (cut..output.len())
                    .find(|&i| output.is_char_boundary(i))
                    .unwrap_or(output.len());
                output.drain(..cut);
            }
        }
    }
    let inspected = docker.inspect_exec(&created.id).await?;
    let code = inspected
        .exit_code
        .ok_or_else(|| RuntimeError::Engine(format!("exec in {id} has no exit code")))?;
    Ok((code, output.trim().to_string()))
}

/// The container's stdout and stderr from its start; with `follow`, the
/// stream goes on until the container stops.
pub fn logs(
    docker: &Docker,
    id: &str,
    follow: bool,
) -> impl Stream<Item = Result<actix_web::web::Bytes, RuntimeError>> + use<> {
    let options = LogsOptionsBuilder::new()
        .follow(follow)
        .stdout(true)
        .stderr(true)
        .tail("all")
        .build();
    docker.logs(id, Some(options)).map(|item| {
        item.map(|output| output.into_bytes())
            .map_err(RuntimeError::from)
    })
}

/// Removes a (stopped) container; a container that is already gone is fine.
pub async fn remove(docker: &Docker, id: &str) -> Result<(), RuntimeError> {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(())
        | Err(BollardError::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The containers this node labelled, with their task id and attempt.
pub async fn list_node_containers(
    docker: &Docker,
    node: &str,
) -> Result<Vec<(Uuid, u32, String)>, RuntimeError> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_NODE}={node}")],
        )])),
        ..Default::default()
    };
    let containers = docker.list_containers(Some(options)).await?;
    Ok(containers
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels?;
            let task = labels.get(LABEL_TASK)?.parse().ok()?;
            let attempt = labels.get(LABEL_ATTEMPT)?.parse().ok()?;
            Some((task, attempt, c.id?))
        })
        .collect())
}

/// A container of this node died (exited, was killed, or was removed).
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
    Died {
        exit_code: i64,
    },
    Destroyed,
    /// The kernel killed a process of the container for its memory limit
    /// (the engine sends this before the container's `die`).
    OutOfMemory,
}

/// The engine's event stream for this node's containers, from `since_s`
/// (seconds since the epoch) on: the engine replays what happened since then,
/// so a reconnect loses nothing.
pub fn container_events(
    docker: &Docker,
    node: &str,
    since_s: i64,
) -> impl Stream<Item = Result<ContainerEvent, RuntimeError>> + use<> {
    let options = EventsOptions {
        since: Some(since_s.to_string()),
        until: None,
        filters: Some(HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![format!("{LABEL_NODE}={node}")]),
            (
                "event".to_string(),
                vec!["die".to_string(), "destroy".to_string(), "oom".to_string()],
            ),
        ])),
    };
    docker.events(Some(options)).filter_map(|item| async move {
        match item {
            Err(e) => Some(Err(RuntimeError::from(e))),
            Ok(msg) => {
                let actor = msg.actor?;
                let attrs = actor.attributes.unwrap_or_default();
                let kind = match msg.action.as_deref()? {
                    "die" => ContainerEventKind::Died {
                        exit_code: attrs.get("exitCode")?.parse().ok()?,
                    },
                    "destroy" => ContainerEventKind::Destroyed,
                    "oom" => ContainerEventKind::OutOfMemory,
                    _ => return None,
                };
                Some(Ok(ContainerEvent {
                    task_id: attrs.get(LABEL_TASK)?.parse().ok()?,
                    attempt: attrs.get(LABEL_ATTEMPT)?.parse().ok()?,
                    container_id: actor.id?,
                    kind,
                    time_s: msg.time.unwrap_or_default(),
                }))
            }
        }
    })
}
