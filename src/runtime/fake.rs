//! A container engine in memory, for tests of the worker's actors without
//! Docker. It behaves as the engine does where the worker can tell (names
//! are unique, a failed start leaves a Created container, events are
//! replayed from `since`), and a test drives it: make a container exit with
//! a code, run out of memory, be removed behind the worker's back (`docker rm
//! -f`), make the next create or start fail, make exec checks fail, take the
//! whole engine down and up again.
//!
//! It stands for another process (the engine), so its state sits behind one
//! mutex that no call holds across an await.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{
    ContainerEvent, ContainerEventKind, ContainerNetwork, ContainerSpec, ContainerView, Engine,
    EngineFuture, EngineStream, ExecOutput, LABEL_ATTEMPT, LABEL_NODE, LABEL_TASK, NodeContainer,
    RuntimeError,
};

/// The exit code of a container killed by SIGKILL.
pub const KILLED: i64 = 137;
/// The exit code of a container stopped by SIGTERM.
pub const TERMINATED: i64 = 143;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeState {
    Created,
    Running,
    Exited,
}

/// One container of the fake engine.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeContainer {
    pub id: String,
    pub name: String,
    /// What it was created with (limits, user, read-only root, publish
    /// address, `no-new-privileges`), for tests to check.
    pub spec: ContainerSpec,
    pub state: FakeState,
    pub exit_code: Option<i64>,
    pub started_at: Option<DateTime<Utc>>,
    pub host_ports: BTreeMap<u16, u16>,
    /// Its address on its network (while it runs).
    pub ip: std::net::IpAddr,
    /// What `exec` answers in it.
    pub exec_exit_code: i64,
    /// Killed for its memory limit.
    pub oom_killed: bool,
}

impl FakeContainer {
    pub fn task_id(&self) -> Option<Uuid> {
        self.spec.labels.get(LABEL_TASK)?.parse().ok()
    }

    pub fn attempt(&self) -> Option<u32> {
        self.spec.labels.get(LABEL_ATTEMPT)?.parse().ok()
    }

    fn view(&self) -> ContainerView {
        ContainerView {
            id: self.id.clone(),
            started: self.state != FakeState::Created,
            running: self.state == FakeState::Running,
            exit_code: self.exit_code,
            host_ports: self.host_ports.clone(),
            ip: (self.state == FakeState::Running).then_some(self.ip),
            started_at: self.started_at,
            oom_killed: self.oom_killed,
        }
    }
}

/// What a live event stream receives.
#[derive(Debug, Clone)]
enum Signal {
    Event(ContainerEvent, String),
    /// The engine went down: streams end.
    Down,
}

#[derive(Default)]
struct State {
    up: bool,
    connects: u32,
    next_id: u64,
    next_host_port: u16,
    containers: BTreeMap<String, FakeContainer>,
    /// Every event, with its container's node, for replays.
    history: Vec<(ContainerEvent, String)>,
    missing_images: BTreeSet<String>,
    create_failures: VecDeque<String>,
    start_failures: VecDeque<String>,
    /// Names another client's create holds: a create of one conflicts, and
    /// it inspects as absent this many more times before its container
    /// appears (the engine finishing a dead client's request).
    in_creation: BTreeMap<String, (u32, ContainerSpec)>,
    /// Every call that changed something, in order: "create NAME",
    /// "start ID", "stop ID", "remove ID".
    calls: Vec<String>,
}

pub struct FakeEngine {
    state: Mutex<State>,
    signals: broadcast::Sender<Signal>,
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeEngine {
    /// An engine that is up, with every image.
    pub fn new() -> Self {
        let (signals, _) = broadcast::channel(1024);
        FakeEngine {
            state: Mutex::new(State {
                up: true,
                next_host_port: 40_000,
                ..State::default()
            }),
            signals,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every container, in id order.
    pub fn containers(&self) -> Vec<FakeContainer> {
        self.lock().containers.values().cloned().collect()
    }

    /// The containers of one task.
    pub fn containers_of(&self, task: Uuid) -> Vec<FakeContainer> {
        self.containers()
            .into_iter()
            .filter(|c| c.task_id() == Some(task))
            .collect()
    }

    /// The calls that changed something, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// How many times `connect` was called.
    pub fn connects(&self) -> u32 {
        self.lock().connects
    }

    /// Takes the engine down (every call fails, event streams end) or up.
    pub fn set_up(&self, up: bool) {
        let mut state = self.lock();
        state.up = up;
        if !up {
            let _ = self.signals.send(Signal::Down);
        }
    }

    /// `ensure_image` of this image fails.
    pub fn remove_image(&self, image: &str) {
        self.lock().missing_images.insert(image.to_string());
    }

    /// The next `create` fails with this message after the engine made the
    /// container (an engine that fails half-way leaves it Created).
    pub fn fail_next_create(&self, message: &str) {
        self.lock().create_failures.push_back(message.to_string());
    }

    /// The next `start` fails with this message; the container stays
    /// Created, as the engine leaves it.
    pub fn fail_next_start(&self, message: &str) {
        self.lock().start_failures.push_back(message.to_string());
    }

    /// Another client is creating `spec`'s container: its name is taken,
    /// yet the container inspects as absent `hidden` more times.
    pub fn creating_elsewhere(&self, spec: ContainerSpec, hidden: u32) {
        self.lock()
            .in_creation
            .insert(spec.name.clone(), (hidden, spec));
    }

    /// `exec` in this container exits with `code` from now on.
    pub fn set_exec_exit_code(&self, id: &str, code: i64) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.exec_exit_code = code;
        }
    }

    /// The container's process exits with `code` by itself.
    pub fn exit(&self, id: &str, code: i64) {
        let mut state = self.lock();
        self.die(&mut state, id, code);
    }

    /// The kernel kills the container for its memory limit.
    pub fn out_of_memory(&self, id: &str) {
        self.oom_kill(id, true);
    }

    /// As `out_of_memory`, but the engine's `oom` event is lost (or comes
    /// too late): only the container's record says so.
    pub fn out_of_memory_without_event(&self, id: &str) {
        self.oom_kill(id, false);
    }

    fn oom_kill(&self, id: &str, event: bool) {
        let mut state = self.lock();
        let running = state
            .containers
            .get(id)
            .is_some_and(|c| c.state == FakeState::Running);
        if running {
            if let Some(c) = state.containers.get_mut(id) {
                c.oom_killed = true;
            }
            if event {
                self.emit(&mut state, id, ContainerEventKind::OutOfMemory);
            }
            self.die(&mut state, id, KILLED);
        }
    }

    /// `docker rm -f`: killed if running, then removed.
    pub fn kill(&self, id: &str) {
        let mut state = self.lock();
        self.die(&mut state, id, KILLED);
        self.destroy(&mut state, id);
    }

    /// Adds a running container as if an earlier worker process had
    /// started it.
    pub fn add_running(&self, spec: ContainerSpec, started_at: DateTime<Utc>) -> String {
        let mut state = self.lock();
        let id = Self::insert(&mut state, spec);
        if let Some(c) = state.containers.get_mut(&id) {
            c.state = FakeState::Running;
            c.started_at = Some(started_at);
        }
        id
    }

    fn insert(state: &mut State, spec: ContainerSpec) -> String {
        state.next_id += 1;
        let id = format!("{:064x}", state.next_id);
        let mut host_ports = BTreeMap::new();
        for port in &spec.ports {
            let host = port.host.unwrap_or_else(|| {
                state.next_host_port = state.next_host_port.wrapping_add(1).max(40_000);
                state.next_host_port
            });
            host_ports.insert(port.container, host);
        }
        let container = FakeContainer {
            id: id.clone(),
            name: spec.name.clone(),
            spec,
            state: FakeState::Created,
            exit_code: None,
            started_at: None,
            host_ports,
            // 10.88.0.0/16, one address per container made.
            ip: std::net::Ipv4Addr::from(0x0a58_0000 | (state.next_id & 0xffff) as u32).into(),
            exec_exit_code: 0,
            oom_killed: false,
        };
        state.containers.insert(id.clone(), container);
        id
    }

    fn die(&self, state: &mut State, id: &str, code: i64) {
        let Some(c) = state.containers.get_mut(id) else {
            return;
        };
        if c.state != FakeState::Running {
            return;
        }
        c.state = FakeState::Exited;
        c.exit_code = Some(code);
        self.emit(state, id, ContainerEventKind::Died { exit_code: code });
    }

    fn destroy(&self, state: &mut State, id: &str) {
        if state.containers.contains_key(id) {
            self.emit(state, id, ContainerEventKind::Destroyed);
            state.containers.remove(id);
        }
    }

    fn emit(&self, state: &mut State, id: &str, kind: ContainerEventKind) {
        let Some(c) = state.containers.get(id) else {
            return;
        };
        let (Some(task_id), Some(attempt)) = (c.task_id(), c.attempt()) else {
            return;
        };
        let node = c.spec.labels.get(LABEL_NODE).cloned().unwrap_or_default();
        let event = ContainerEvent {
            task_id,
            attempt,
            container_id: id.to_string(),
            kind,
            time_s: Utc::now().timestamp(),
        };
        state.history.push((event.clone(), node.clone()));
        // No receiver is fine: nobody follows events yet.
        let _ = self.signals.send(Signal::Event(event, node));
    }

    /// Resolves a name or an id to an id.
    fn find(state: &State, id_or_name: &str) -> Option<String> {
        if state.containers.contains_key(id_or_name) {
            return Some(id_or_name.to_string());
        }
        state
            .containers
            .values()
            .find(|c| c.name == id_or_name)
            .map(|c| c.id.clone())
    }

    /// The state, or `EngineDown` while the engine is down.
    fn up(&self) -> Result<MutexGuard<'_, State>, RuntimeError> {
        let state = self.lock();
        if state.up {
            Ok(state)
        } else {
            Err(RuntimeError::EngineDown("the fake engine is down".into()))
        }
    }

    fn found(state: &State, id: &str) -> Result<String, RuntimeError> {
        Self::find(state, id).ok_or_else(|| RuntimeError::NotFound(format!("no container {id}")))
    }
}

impl Engine for FakeEngine {
    fn connect(&self) -> EngineFuture<'_, String> {
        let result = {
            let mut state = self.lock();
            state.connects += 1;
            if state.up {
                Ok("fake engine".to_string())
            } else {
                Err(RuntimeError::EngineDown("the fake engine is down".into()))
            }
        };
        Box::pin(async move { result })
    }

    fn network<'a>(&'a self, name: &'a str, _node: &'a str) -> EngineFuture<'a, ContainerNetwork> {
        let result = self.up().map(|_| ContainerNetwork {
            name: name.to_string(),
            gateway: std::net::Ipv4Addr::LOCALHOST.into(),
            subnet: None,
            bridge: None,
        });
        Box::pin(async move { result })
    }

    fn ensure_image<'a>(&'a self, image: &'a str) -> EngineFuture<'a, ()> {
        let result = self.up().and_then(|state| {
            if state.missing_images.contains(image) {
                Err(RuntimeError::ImageUnavailable {
                    image: image.to_string(),
                    reason: "the fake engine has no such image".into(),
                })
            } else {
                Ok(())
            }
        });
        Box::pin(async move { result })
    }

    fn create<'a>(&'a self, spec: &'a ContainerSpec) -> EngineFuture<'a, String> {
        let result = self.up().and_then(|mut state| {
            state.calls.push(format!("create {}", spec.name));
            if Self::find(&state, &spec.name).is_some()
                || state.in_creation.contains_key(&spec.name)
            {
                return Err(RuntimeError::Conflict(spec.name.clone()));
            }
            let id = Self::insert(&mut state, spec.clone());
            match state.create_failures.pop_front() {
                Some(message) => Err(RuntimeError::Engine(message)),
                None => Ok(id),
            }
        });
        Box::pin(async move { result })
    }

    fn start<'a>(&'a self, id: &'a str) -> EngineFuture<'a, ()> {
        let result = self.up().and_then(|mut state| {
            let id = Self::found(&state, id)?;
            state.calls.push(format!("start {id}"));
            if let Some(message) = state.start_failures.pop_front() {
                return Err(RuntimeError::Engine(message));
            }
            let Some(c) = state.containers.get_mut(&id) else {
                return Err(RuntimeError::NotFound(id));
            };
            if c.state == FakeState::Running {
                return Ok(());
            }
            c.state = FakeState::Running;
            c.exit_code = None;
            c.started_at = Some(Utc::now());
            self.emit(&mut state, &id, ContainerEventKind::Started);
            Ok(())
        });
        Box::pin(async move { result })
    }

    fn inspect<'a>(&'a self, id: &'a str) -> EngineFuture<'a, Option<ContainerView>> {
        let result = self.up().map(|mut state| {
            if let Some((hidden, spec)) = state.in_creation.remove(id) {
                if hidden > 0 {
                    state.in_creation.insert(id.to_string(), (hidden - 1, spec));
                    return None;
                }
                Self::insert(&mut state, spec);
            }
            Self::find(&state, id).and_then(|id| state.containers.get(&id).map(|c| c.view()))
        });
        Box::pin(async move { result })
    }

    fn stop<'a>(&'a self, id: &'a str, _timeout_s: u32) -> EngineFuture<'a, ()> {
        let result = self.up().map(|mut state| {
            if let Some(id) = Self::find(&state, id) {
                state.calls.push(format!("stop {id}"));
                self.die(&mut state, &id, TERMINATED);
            }
        });
        Box::pin(async move { result })
    }

    fn remove<'a>(&'a self, id: &'a str) -> EngineFuture<'a, ()> {
        let result = self.up().map(|mut state| {
            if let Some(id) = Self::find(&state, id) {
                state.calls.push(format!("remove {id}"));
                self.die(&mut state, &id, KILLED);
                self.destroy(&mut state, &id);
            }
        });
        Box::pin(async move { result })
    }

    fn list<'a>(&'a self, node: &'a str) -> EngineFuture<'a, Vec<NodeContainer>> {
        let result = self.up().map(|state| {
            state
                .containers
                .values()
                .filter(|c| c.spec.labels.get(LABEL_NODE).map(String::as_str) == Some(node))
                .filter_map(|c| {
                    Some(NodeContainer {
                        id: c.id.clone(),
                        task_id: c.task_id()?,
                        attempt: c.attempt()?,
                    })
                })
                .collect()
        });
        Box::pin(async move { result })
    }

    fn network_gone(&self, _name: &str) -> EngineStream<()> {
        futures_util::stream::pending().boxed()
    }

    fn events(&self, node: &str, since_s: i64) -> EngineStream<ContainerEvent> {
        let (replay, receiver) = match self.up() {
            Err(e) => return futures_util::stream::once(async move { Err(e) }).boxed(),
            // Under the lock: nothing is emitted between the copy and the
            // subscription, so nothing is lost or seen twice.
            Ok(state) => {
                let replay: Vec<ContainerEvent> = state
                    .history
                    .iter()
                    .filter(|(e, n)| n == node && e.time_s >= since_s)
                    .map(|(e, _)| e.clone())
                    .collect();
                (replay, self.signals.subscribe())
            }
        };
        let node = node.to_string();
        let live =
            futures_util::stream::unfold((receiver, node), |(mut receiver, node)| async move {
                loop {
                    match receiver.recv().await {
                        Ok(Signal::Event(event, of)) if of == node => {
                            return Some((Ok(event), (receiver, node)));
                        }
                        Ok(Signal::Event(..)) => {}
                        Ok(Signal::Down) | Err(broadcast::error::RecvError::Closed) => {
                            return None;
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let e = RuntimeError::Engine(format!("{n} events lost"));
                            return Some((Err(e), (receiver, node)));
                        }
                    }
                }
            });
        futures_util::stream::iter(replay.into_iter().map(Ok))
            .chain(live)
            .boxed()
    }

    fn logs(&self, id: &str, _follow: bool) -> EngineStream<Bytes> {
        let result = self.up().and_then(|state| {
            let id = Self::found(&state, id)?;
            Ok(Bytes::from(format!("fake logs of {id}\n")))
        });
        futures_util::stream::once(async move { result }).boxed()
    }

    fn exec<'a>(&'a self, id: &'a str, cmd: &'a [String]) -> EngineFuture<'a, ExecOutput> {
        let result = self.up().and_then(|state| {
            let id = Self::found(&state, id)?;
            let c = &state.containers[&id];
            if c.state != FakeState::Running {
                return Err(RuntimeError::Engine(format!(
                    "container {id} is not running"
                )));
            }
            Ok(ExecOutput {
                exit_code: c.exec_exit_code,
                output: format!("{} exited {}", cmd.join(" "), c.exec_exit_code),
            })
        });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{PublishedPort, container_name, create_or_adopt, labels, stop_and_remove};

    fn spec(task: Uuid, node: &str) -> ContainerSpec {
        ContainerSpec {
            name: container_name(task, 1, 0),
            image: "img".into(),
            cmd: None,
            env: vec![],
            labels: labels(task, 1, node),
            ports: vec![PublishedPort {
                container: 7777,
                host: None,
            }],
            nano_cpus: None,
            memory_bytes: None,
            publish_addr: std::net::Ipv4Addr::UNSPECIFIED.into(),
            pids_limit: 1024,
            user: None,
            read_only: false,
            no_new_privileges: true,
            network: None,
            dns: Vec::new(),
        }
    }

    #[actix_rt::test]
    async fn containers_live_and_die_as_in_the_engine() {
        let engine = FakeEngine::new();
        let task = Uuid::new_v4();
        let mut events = engine.events("n1", 0);
        let id = engine.create(&spec(task, "n1")).await.unwrap();
        assert!(matches!(
            engine.create(&spec(task, "n1")).await,
            Err(RuntimeError::Conflict(_))
        ));
        assert_eq!(
            create_or_adopt(&engine, &spec(task, "n1")).await,
            Ok(id.clone())
        );
        let created = engine.inspect(&id).await.unwrap().unwrap();
        assert!(!created.started && !created.running);
        engine.start(&id).await.unwrap();
        let running = engine.inspect(&container_name(task, 1, 0)).await.unwrap();
        let running = running.unwrap();
        assert!(running.running && running.started_at.is_some());
        assert_eq!(running.host_ports.len(), 1);
        engine.exit(&id, 3);
        let exited = engine.inspect(&id).await.unwrap().unwrap();
        assert_eq!((exited.running, exited.exit_code), (false, Some(3)));
        assert_eq!(engine.list("n1").await.unwrap().len(), 1);
        assert!(engine.list("n2").await.unwrap().is_empty());
        assert_eq!(stop_and_remove(&engine, &id, 1).await, Ok(Some(3)));
        assert_eq!(engine.inspect(&id).await, Ok(None));
        let kinds: Vec<ContainerEventKind> = [0, 1, 2]
            .iter()
            .map(|_| futures_util::FutureExt::now_or_never(events.next()))
            .map(|e| e.flatten().unwrap().unwrap().kind)
            .collect();
        assert_eq!(
            kinds,
            vec![
                ContainerEventKind::Started,
                ContainerEventKind::Died { exit_code: 3 },
                ContainerEventKind::Destroyed
            ]
        );
        // A replay from the start gives the same events.
        let replayed: Vec<_> = engine.events("n1", 0).take(3).collect().await;
        assert_eq!(replayed.len(), 3);
    }

    #[actix_rt::test]
    async fn a_failed_start_leaves_a_created_container_and_down_means_down() {
        let engine = FakeEngine::new();
        let task = Uuid::new_v4();
        engine.fail_next_start("exec: no such file");
        let id = engine.create(&spec(task, "n1")).await.unwrap();
        assert!(engine.start(&id).await.is_err());
        assert!(!engine.inspect(&id).await.unwrap().unwrap().started);
        engine.set_up(false);
        assert!(matches!(
            engine.connect().await,
            Err(RuntimeError::EngineDown(_))
        ));
        assert!(matches!(
            engine.inspect(&id).await,
            Err(RuntimeError::EngineDown(_))
        ));
        engine.set_up(true);
        assert!(engine.connect().await.is_ok());
        assert_eq!(engine.connects(), 2);
        engine.kill(&id);
        assert!(engine.containers().is_empty());
    }
}
