//! The HealthChecker actor: one per running container of a task that has a
//! health check. It probes on the check's interval (an HTTP GET through the
//! published host port, on the worker's publish address or loopback when
//! that is every address, a TCP connect, or a command run in the
//! container), keeps the tally, and tells its TaskSupervisor whenever the
//! health changes; after `retries` failures in a row the task is unhealthy
//! and the supervisor acts on its restart policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tokio::time::Instant;

use super::supervisor::{HealthChanged, TaskSupervisor};
use crate::runtime::{ExecOutput, SharedEngine};
use crate::task::spec::HealthSpec;
use crate::wire::{Health, HealthState};

/// What one check reaches.
#[derive(Clone)]
pub enum Target {
    Http {
        url: String,
        /// Made once per checker and reused by every check.
        client: reqwest::Client,
    },
    Tcp {
        addr: String,
    },
    Exec {
        engine: SharedEngine,
        container: String,
        cmd: Vec<String>,
    },
    /// The check's port is not published: every check fails saying so.
    Unpublished(u16),
    /// No HTTP client could be made: every check fails saying why.
    Broken(String),
}

/// Where the worker reaches a port published on `publish_addr`: loopback
/// when it is published on every address, that address otherwise.
pub fn probe_ip(publish_addr: IpAddr) -> IpAddr {
    match publish_addr {
        IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    }
}

impl Target {
    /// The target of `spec` for a container with these ports published on
    /// `publish_addr`.
    pub fn of(
        spec: &HealthSpec,
        host_ports: &std::collections::BTreeMap<u16, u16>,
        publish_addr: IpAddr,
        engine: SharedEngine,
        container: String,
    ) -> Target {
        if let Some(cmd) = &spec.exec {
            return Target::Exec {
                engine,
                container,
                cmd: cmd.clone(),
            };
        }
        let port = spec.port.unwrap_or_default();
        match host_ports.get(&port) {
            None => Target::Unpublished(port),
            Some(&host) => {
                let addr = SocketAddr::new(probe_ip(publish_addr), host);
                match &spec.http {
                    Some(path) => match crate::client::plain_http() {
                        Ok(client) => Target::Http {
                            url: format!("http://{addr}{path}"),
                            client,
                        },
                        Err(e) => Target::Broken(e.to_string()),
                    },
                    None => Target::Tcp {
                        addr: addr.to_string(),
                    },
                }
            }
        }
    }
}

/// Runs one check: whether it passed, and what it found.
async fn probe(target: Target, timeout: Duration) -> (bool, String) {
    let run = async {
        match target {
            Target::Http { url, client } => match client.get(&url).timeout(timeout).send().await {
                Ok(r) => (
                    r.status().is_success(),
                    format!("HTTP {}", r.status().as_u16()),
                ),
                Err(e) => (false, format!("HTTP GET failed: {e}")),
            },
            Target::Tcp { addr } => match tokio::net::TcpStream::connect(&addr).await {
                Ok(_) => (true, format!("connected to {addr}")),
                Err(e) => (false, format!("cannot connect to {addr}: {e}")),
            },
            Target::Exec {
                engine,
                container,
                cmd,
            } => match engine.exec(&container, &cmd).await {
                Ok(ExecOutput { exit_code: 0, .. }) => (true, "exit code 0".to_string()),
                Ok(ExecOutput { exit_code, output }) => {
                    (false, format!("exit code {exit_code}: {output}"))
                }
                Err(e) => (false, format!("exec failed: {e}")),
            },
            Target::Unpublished(port) => (false, format!("port {port} is not published")),
            Target::Broken(why) => (false, why),
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(outcome) => outcome,
        Err(_) => (false, format!("no answer within {timeout:?}")),
    }
}

/// The tally of checks since the container started. Pure.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    pub health: Health,
    retries: u32,
}

impl Tally {
    pub fn new(retries: u32) -> Self {
        Tally {
            health: Health {
                state: HealthState::Starting,
                failures: 0,
                last_probe: None,
                checked_at: None,
            },
            retries,
        }
    }

    /// Records a check; returns whether the state or the failure count
    /// changed. Failures inside the start period do not count, unless the
    /// check has passed once already.
    pub fn record(&mut self, passed: bool, found: String, in_start_period: bool) -> bool {
        let before = (self.health.state, self.health.failures);
        self.health.last_probe = Some(found);
        self.health.checked_at = Some(Utc::now());
        if passed {
            self.health.state = HealthState::Healthy;
            self.health.failures = 0;
        } else if !(in_start_period && self.health.state == HealthState::Starting) {
            self.health.failures += 1;
            if self.health.failures >= self.retries {
                self.health.state = HealthState::Unhealthy;
            }
        }
        before != (self.health.state, self.health.failures)
    }
}

pub struct HealthChecker {
    task: uuid::Uuid,
    target: Target,
    interval: Duration,
    timeout: Duration,
    start_period: Duration,
    started: Instant,
    tally: Tally,
    supervisor: Addr<TaskSupervisor>,
    in_flight: bool,
}

impl HealthChecker {
    pub fn new(
        task: uuid::Uuid,
        spec: &HealthSpec,
        target: Target,
        supervisor: Addr<TaskSupervisor>,
    ) -> Self {
        HealthChecker {
            task,
            target,
            interval: Duration::from_secs_f64(spec.interval_s),
            timeout: Duration::from_secs_f64(spec.timeout_s),
            start_period: Duration::from_secs_f64(spec.start_period_s),
            started: Instant::now(),
            tally: Tally::new(spec.retries),
            supervisor,
            in_flight: false,
        }
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.tally.health.state == HealthState::Unhealthy {
            return;
        }
        self.in_flight = true;
        let work = probe(self.target.clone(), self.timeout);
        ctx.spawn(work.into_actor(self).map(|(passed, found), act, _| {
            act.in_flight = false;
            let in_start_period = act.started.elapsed() < act.start_period;
            if !passed {
                log::info!("health: task {} check failed: {found}", act.task);
            }
            if act.tally.record(passed, found, in_start_period) {
                log::info!(
                    "health: task {} is {:?} ({} failures in a row)",
                    act.task,
                    act.tally.health.state,
                    act.tally.health.failures
                );
                act.supervisor
                    .do_send(HealthChanged(act.tally.health.clone()));
            }
        }));
    }
}

impl Actor for HealthChecker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.interval, |act, ctx| act.check(ctx));
    }
}

/// The container is gone or stopping: checking ends.
pub struct StopChecking;

impl Message for StopChecking {
    type Result = ();
}

impl Handler<StopChecking> for HealthChecker {
    type Result = ();

    fn handle(&mut self, _msg: StopChecking, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_make_it_unhealthy_and_a_pass_resets_them() {
        let mut t = Tally::new(3);
        assert_eq!(t.health.state, HealthState::Starting);
        assert!(t.record(false, "refused".into(), false));
        assert!(t.record(false, "refused".into(), false));
        assert_eq!(
            (t.health.state, t.health.failures),
            (HealthState::Starting, 2)
        );
        assert!(t.record(true, "HTTP 200".into(), false));
        assert_eq!(
            (t.health.state, t.health.failures),
            (HealthState::Healthy, 0)
        );
        assert!(!t.record(true, "HTTP 200".into(), false), "nothing changed");
        t.record(false, "HTTP 503".into(), false);
        t.record(false, "HTTP 503".into(), false);
        assert_eq!(t.health.state, HealthState::Healthy);
        assert!(t.record(false, "HTTP 503".into(), false));
        assert_eq!(
            (t.health.state, t.health.failures),
            (HealthState::Unhealthy, 3)
        );
        assert_eq!(t.health.last_probe.as_deref(), Some("HTTP 503"));
    }

    #[test]
    fn the_start_period_forgives_failures_until_the_first_pass() {
        let mut t = Tally::new(1);
        assert!(!t.record(false, "refused".into(), true));
        assert_eq!(t.health.state, HealthState::Starting);
        t.record(true, "ok".into(), true);
        assert!(t.record(false, "refused".into(), true));
        assert_eq!(t.health.state, HealthState::Unhealthy);
    }

    #[test]
    fn targets_go_through_the_published_port_on_the_publish_address() {
        let spec: HealthSpec = serde_json::from_value(serde_json::json!(
            {"http": "/health", "port": 7777}
        ))
        .unwrap();
        let ports = std::collections::BTreeMap::from([(7777, 32001)]);
        let engine: SharedEngine = std::sync::Arc::new(crate::runtime::fake::FakeEngine::new());
        let any = Ipv4Addr::UNSPECIFIED.into();
        let http = |publish_addr: IpAddr| match Target::of(
            &spec,
            &ports,
            publish_addr,
            engine.clone(),
            "c".into(),
        ) {
            Target::Http { url, .. } => url,
            _ => panic!("not an HTTP target"),
        };
        assert_eq!(http(any), "http://127.0.0.1:32001/health");
        assert_eq!(
            http("10.0.0.5".parse().unwrap()),
            "http://10.0.0.5:32001/health"
        );
        assert_eq!(
            http(Ipv6Addr::UNSPECIFIED.into()),
            "http://[::1]:32001/health"
        );
        let tcp: HealthSpec =
            serde_json::from_value(serde_json::json!({"tcp": true, "port": 7777})).unwrap();
        assert!(matches!(
            Target::of(&tcp, &ports, "127.0.0.2".parse().unwrap(), engine.clone(), "c".into()),
            Target::Tcp { addr } if addr == "127.0.0.2:32001"
        ));
        let none = std::collections::BTreeMap::new();
        assert!(matches!(
            Target::of(&spec, &none, any, engine, "c".into()),
            Target::Unpublished(7777)
        ));
    }
}
