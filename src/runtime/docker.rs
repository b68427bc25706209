//! The Docker Engine API through bollard: the only module in the crate that
//! speaks bollard. The API version is negotiated (the engine here speaks 1.41).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use actix_web::web::Bytes;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig,
    NetworkCreateRequest, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions,
    LogsOptionsBuilder, RemoveContainerOptions, StopContainerOptions,
};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;

use super::{
    ContainerEvent, ContainerEventKind, ContainerNetwork, ContainerSpec, ContainerView, Engine,
    EngineFuture, EngineStream, ExecOutput, LABEL_ATTEMPT, LABEL_MANAGED, LABEL_NODE, LABEL_TASK,
    NodeContainer, RuntimeError,
};

/// How long a pull may take before the task is failed.
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

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

/// The local Docker engine (DOCKER_HOST or the default socket).
pub struct DockerEngine {
    /// The client, or why it could not be set up (then the engine is down).
    docker: Result<Docker, String>,
}

impl DockerEngine {
    /// Sets up the client; nothing is sent before `connect`.
    pub fn local() -> Self {
        DockerEngine {
            docker: Docker::connect_with_local_defaults().map_err(|e| e.to_string()),
        }
    }

    fn docker(&self) -> Result<&Docker, RuntimeError> {
        self.docker
            .as_ref()
            .map_err(|e| RuntimeError::EngineDown(e.clone()))
    }
}

impl Engine for DockerEngine {
    fn connect(&self) -> EngineFuture<'_, String> {
        Box::pin(async move {
            let docker = self.docker()?;
            // Negotiation sets the version every clone of this client uses.
            docker
                .clone()
                .negotiate_version()
                .await
                .map_err(|e| RuntimeError::EngineDown(e.to_string()))?;
            let version = docker.version().await?;
            Ok(format!(
                "{} (API {})",
                version.version.unwrap_or_default(),
                version.api_version.unwrap_or_default()
            ))
        })
    }

    fn ensure_image<'a>(&'a self, image: &'a str) -> EngineFuture<'a, ()> {
        Box::pin(async move { ensure_image(self.docker()?, image).await })
    }

    fn network<'a>(&'a self, name: &'a str, node: &'a str) -> EngineFuture<'a, ContainerNetwork> {
        Box::pin(async move { ensure_network(self.docker()?, name, node).await })
    }

    fn create<'a>(&'a self, spec: &'a ContainerSpec) -> EngineFuture<'a, String> {
        Box::pin(async move {
            let options = CreateContainerOptions {
                name: Some(spec.name.clone()),
                ..Default::default()
            };
            match self
                .docker()?
                .create_container(Some(options), create_body(spec))
                .await
            {
                Ok(created) => Ok(created.id),
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => Err(RuntimeError::Conflict(spec.name.clone())),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            match self.docker()?.start_container(id, None).await {
                Ok(()) => Ok(()),
                // 304: already started (an adopted container).
                Err(BollardError::DockerResponseServerError {
                    status_code: 304, ..
                }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn inspect<'a>(&'a self, id: &'a str) -> EngineFuture<'a, Option<ContainerView>> {
        Box::pin(async move {
            match self.docker()?.inspect_container(id, None).await {
                Ok(info) => Ok(Some(view(info))),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn stop<'a>(&'a self, id: &'a str, timeout_s: u32) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let stop = StopContainerOptions {
                t: Some(i32::try_from(timeout_s).unwrap_or(i32::MAX)),
                ..Default::default()
            };
            match self.docker()?.stop_container(id, Some(stop)).await {
                Ok(())
                | Err(BollardError::DockerResponseServerError {
                    status_code: 304 | 404,
                    ..
                }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let options = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            match self.docker()?.remove_container(id, Some(options)).await {
                // 409: its removal is already under way.
                Ok(())
                | Err(BollardError::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn list<'a>(&'a self, node: &'a str) -> EngineFuture<'a, Vec<NodeContainer>> {
        Box::pin(async move {
            let options = ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![format!("{LABEL_NODE}={node}")],
                )])),
                ..Default::default()
            };
            let containers = self.docker()?.list_containers(Some(options)).await?;
            Ok(containers
                .into_iter()
                .filter_map(|c| {
                    let labels = c.labels?;
                    Some(NodeContainer {
                        task_id: labels.get(LABEL_TASK)?.parse().ok()?,
                        attempt: labels.get(LABEL_ATTEMPT)?.parse().ok()?,
                        id: c.id?,
                    })
                })
                .collect())
        })
    }

    fn network_gone(&self, name: &str) -> EngineStream<()> {
        match self.docker() {
            Ok(docker) => network_gone(docker, name),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn events(&self, node: &str, since_s: i64) -> EngineStream<ContainerEvent> {
        match self.docker() {
            Ok(docker) => container_events(docker, node, since_s),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn logs(&self, id: &str, follow: bool) -> EngineStream<Bytes> {
        let docker = match self.docker() {
            Ok(docker) => docker,
            Err(e) => return futures_util::stream::once(async move { Err(e) }).boxed(),
        };
        let options = LogsOptionsBuilder::new()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail("all")
            .build();
        docker
            .logs(id, Some(options))
            .map(|item| {
                item.map(|output| output.into_bytes())
                    .map_err(RuntimeError::from)
            })
            .boxed()
    }

    fn exec<'a>(&'a self, id: &'a str, cmd: &'a [String]) -> EngineFuture<'a, ExecOutput> {
        Box::pin(async move { exec(self.docker()?, id, cmd).await })
    }
}

async fn ensure_image(docker: &Docker, image: &str) -> Result<(), RuntimeError> {
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

/// What Cube needs of a network it found: a bridge, not another node's,
/// with an IPv4 gateway.
fn network_of(
    name: &str,
    node: &str,
    found: bollard::models::NetworkInspect,
) -> Result<ContainerNetwork, RuntimeError> {
    if found.driver.as_deref() != Some("bridge") {
        return Err(RuntimeError::Engine(format!(
            "network {name} is not a bridge (driver {:?})",
            found.driver.unwrap_or_default()
        )));
    }
    let owner = found.labels.as_ref().and_then(|l| l.get(LABEL_NODE));
    if let Some(owner) = owner.filter(|owner| owner.as_str() != node) {
        return Err(RuntimeError::Engine(format!(
            "network {name} belongs to node {owner}: give this worker a network of its own ([worker] network)"
        )));
    }
    let ipv4 = found
        .ipam
        .and_then(|ipam| ipam.config)
        .unwrap_or_default()
        .into_iter()
        .find_map(|c| {
            let gateway = c.gateway?.parse::<std::net::IpAddr>().ok()?;
            let subnet = c.subnet.and_then(|s| s.parse::<ipnet::IpNet>().ok());
            gateway.is_ipv4().then_some((gateway, subnet))
        });
    let (gateway, subnet) =
        ipv4.ok_or_else(|| RuntimeError::Engine(format!("network {name} has no IPv4 gateway")))?;
    let named = found
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name"))
        .cloned();
    let bridge = named
        .or_else(|| Some(format!("br-{}", found.id.as_deref()?.get(..12)?)))
        .filter(|b| super::interface_name(b));
    Ok(ContainerNetwork {
        name: name.to_string(),
        gateway,
        subnet,
        bridge,
    })
}

/// The bridge network `name`, made if missing; its gateway.
async fn ensure_network(
    docker: &Docker,
    name: &str,
    node: &str,
) -> Result<ContainerNetwork, RuntimeError> {
    for _ in 0..2 {
        match docker.inspect_network(name, None).await {
            Ok(found) => return network_of(name, node, found),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            labels: Some(HashMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_NODE.to_string(), node.to_string()),
            ])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            // Made, or made meanwhile by another: look again.
            Ok(_)
            | Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(RuntimeError::Engine(format!(
        "network {name} could not be made"
    )))
}

fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
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
                host_ip: Some(spec.publish_addr.to_string()),
                // Empty: the engine picks an ephemeral port.
                host_port: Some(port.host.map(|h| h.to_string()).unwrap_or_default()),
            };
            (key.clone(), Some(vec![binding]))
        })
        .collect();
    let host_config = HostConfig {
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        nano_cpus: spec.nano_cpus,
        memory: spec.memory_bytes,
        // The limit is the limit: no swap beyond it (as Kubernetes does).
        memory_swap: spec.memory_bytes,
        pids_limit: Some(i64::from(spec.pids_limit)),
        readonly_rootfs: Some(spec.read_only),
        security_opt: spec
            .no_new_privileges
            .then(|| vec!["no-new-privileges".to_string()]),
        // Explicit, though they are the engine's defaults too: never
        // privileged, and no capability beyond the engine's default set.
        privileged: Some(false),
        network_mode: spec.network.clone(),
        dns: (!spec.dns.is_empty()).then(|| spec.dns.iter().map(|ip| ip.to_string()).collect()),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.cmd.clone(),
        user: spec.user.clone(),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        exposed_ports: (!port_keys.is_empty()).then_some(port_keys),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn view(info: ContainerInspectResponse) -> ContainerView {
    let state = info.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let mut host_ports = BTreeMap::new();
    let network = info.network_settings.unwrap_or_default();
    // Cube's containers join one network (or none).
    let ip = network
        .networks
        .unwrap_or_default()
        .into_values()
        .find_map(|n| n.ip_address.and_then(|ip| ip.parse().ok()))
        .filter(|_| running);
    if let Some(ports) = network.ports {
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
        ip,
        started_at: started
            .then(|| state.started_at.as_deref().and_then(parse_time))
            .flatten(),
        oom_killed: state.oom_killed.unwrap_or(false),
    }
}

/// The engine's RFC 3339 times; its zero time (never) is `None`.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let time = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
    (time.timestamp() > 0).then_some(time)
}

async fn exec(docker: &Docker, id: &str, cmd: &[String]) -> Result<ExecOutput, RuntimeError> {
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
    let exit_code = inspected
        .exit_code
        .ok_or_else(|| RuntimeError::Engine(format!("exec in {id} has no exit code")))?;
    Ok(ExecOutput {
        exit_code,
        output: output.trim().to_string(),
    })
}

fn network_gone(docker: &Docker, name: &str) -> EngineStream<()> {
    // By name: the engine's network events carry no labels to filter on.
    let options = EventsOptions {
        since: None,
        until: None,
        filters: Some(HashMap::from([
            ("type".to_string(), vec!["network".to_string()]),
            ("network".to_string(), vec![name.to_string()]),
            ("event".to_string(), vec!["destroy".to_string()]),
        ])),
    };
    let name = name.to_string();
    docker
        .events(Some(options))
        .filter_map(move |item| {
            let name = name.clone();
            async move {
                match item {
                    Err(e) => Some(Err(RuntimeError::from(e))),
                    // The filter also matches a network whose id is `name`.
                    Ok(msg) => {
                        let gone = msg.actor?.attributes?.remove("name")?;
                        (gone == name).then_some(Ok(()))
                    }
                }
            }
        })
        .boxed()
}

fn container_events(docker: &Docker, node: &str, since_s: i64) -> EngineStream<ContainerEvent> {
    let options = EventsOptions {
        since: Some(since_s.to_string()),
        until: None,
        filters: Some(HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![format!("{LABEL_NODE}={node}")]),
            (
                "event".to_string(),
                vec![
                    "start".to_string(),
                    "die".to_string(),
                    "destroy".to_string(),
                    "oom".to_string(),
                ],
            ),
        ])),
    };
    docker
        .events(Some(options))
        .filter_map(|item| async move {
            match item {
                Err(e) => Some(Err(RuntimeError::from(e))),
                Ok(msg) => {
                    let actor = msg.actor?;
                    let attrs = actor.attributes.unwrap_or_default();
                    let kind = match msg.action.as_deref()? {
                        "start" => ContainerEventKind::Started,
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
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::PublishedPort;

    fn bridge_network(id: &str, options: &[(&str, &str)]) -> bollard::models::NetworkInspect {
        bollard::models::NetworkInspect {
            id: Some(id.into()),
            driver: Some("bridge".into()),
            options: Some(
                options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ipam: Some(bollard::models::Ipam {
                config: Some(vec![bollard::models::IpamConfig {
                    gateway: Some("172.18.0.1".into()),
                    subnet: Some("172.18.0.0/16".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_network_s_bridge_is_its_given_name_or_br_and_its_id() {
        let id = "0123456789abcdef0123";
        let net = network_of("cube", "w1", bridge_network(id, &[])).unwrap();
        assert_eq!(net.bridge.as_deref(), Some("br-0123456789ab"));
        let named = [("com.docker.network.bridge.name", "docker0")];
        let net = network_of("bridge", "w1", bridge_network(id, &named)).unwrap();
        assert_eq!(net.bridge.as_deref(), Some("docker0"));
        // What cannot be an interface's name is not taken for one.
        let odd = [("com.docker.network.bridge.name", "a\"; drop")];
        let net = network_of("x", "w1", bridge_network(id, &odd)).unwrap();
        assert_eq!(net.bridge, None);
        assert_eq!(
            network_of("x", "w1", bridge_network("short", &[]))
                .unwrap()
                .bridge,
            None
        );
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "c".into(),
            image: "img".into(),
            cmd: None,
            env: Vec::new(),
            labels: BTreeMap::new(),
            ports: vec![PublishedPort {
                container: 7777,
                host: None,
            }],
            nano_cpus: None,
            memory_bytes: None,
            publish_addr: "127.0.0.1".parse().unwrap(),
            pids_limit: 32,
            user: Some("1000:1000".into()),
            read_only: true,
            no_new_privileges: true,
            network: None,
            dns: Vec::new(),
        }
    }

    #[test]
    fn the_body_hardens_the_container_and_publishes_on_the_address() {
        let body = create_body(&spec());
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        let host = body.host_config.unwrap();
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_string()])
        );
        assert_eq!(host.pids_limit, Some(32));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.network_mode, None);
        assert_eq!(host.pid_mode, None);
        assert_eq!(host.ipc_mode, None);
        assert_eq!(host.binds, None);
        assert_eq!(host.mounts, None);
        assert_eq!(host.cap_add, None);
        assert_eq!(host.devices, None);
        let bindings = host.port_bindings.unwrap();
        let binding = &bindings["7777/tcp"].as_ref().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some(""));
    }

    #[test]
    fn the_engines_zero_time_is_never() {
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), None);
        let t = parse_time("2024-05-01T10:00:00.123456789Z").unwrap();
        assert_eq!(t.timestamp(), 1_714_557_600);
        assert_eq!(parse_time("garbage"), None);
    }
}
