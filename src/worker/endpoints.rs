//! The worker's copy of every service's endpoints, followed from the
//! manager's feed (`GET /workers/endpoints`, a stream: changes arrive as
//! they are committed). While the manager cannot be reached the worker
//! keeps the table it last had, and tries again, backing off to 5 s; a new
//! connection starts with the whole table. What this node's balancer and
//! DNS read (a watch channel: the follower alone writes it).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::client::Client;
use crate::service::EndpointTable;
use crate::service::endpoints::FeedLine;
use crate::task::TaskState;
use crate::wire::TaskStatus;

const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The feed sends at least an empty line every 3 s; silence this long
/// means the connection is gone (the manager frozen, or cut off).
pub const SILENCE: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where a node's parts read the endpoints from.
pub type EndpointView = watch::Receiver<Arc<EndpointTable>>;

/// This node's tasks that run, as its own worker last saw them, and the
/// address of each one's container (none when it is on no network of
/// the node's): the node's balancer reaches a replica of its own node only
/// while it is here, never at an address the manager's endpoints still
/// give for a container that is gone (the address may be another's by
/// then).
pub type Running = std::collections::HashMap<uuid::Uuid, Option<std::net::IpAddr>>;

/// Where the node's balancer reads [`Running`] from (the worker alone
/// writes it).
pub type RunningView = watch::Receiver<Arc<Running>>;

/// The tasks of `statuses` that run, with their containers' addresses.
pub fn running<'a>(statuses: impl IntoIterator<Item = &'a TaskStatus>) -> Running {
    statuses
        .into_iter()
        .filter(|s| s.state == TaskState::Running)
        .map(|s| (s.task_id, s.container_ip))
        .collect()
}

pub struct EndpointFollower {
    name: String,
    manager: Client,
    table: watch::Sender<Arc<EndpointTable>>,
}

impl EndpointFollower {
    /// A follower for worker `name`, and what its readers watch.
    pub fn new(name: &str, manager: Client) -> (Self, EndpointView) {
        let (table, view) = watch::channel(Arc::new(EndpointTable::new()));
        let follower = EndpointFollower {
            name: name.to_string(),
            manager,
            table,
        };
        (follower, view)
    }
}

/// Applies one line of the feed to the table.
pub fn apply_line(table: &mut EndpointTable, line: FeedLine) {
    match line {
        FeedLine::Table(all) => {
            *table = all
                .into_iter()
                .map(|e| (e.service.clone(), Arc::new(e)))
                .collect();
        }
        FeedLine::Service(e) if e.endpoints.is_empty() && e.expose.is_empty() => {
            table.remove(&e.service);
        }
        FeedLine::Service(e) => {
            table.insert(e.service.clone(), Arc::new(e));
        }
    }
}

async fn follow(name: String, manager: Client, table: watch::Sender<Arc<EndpointTable>>) {
    let mut wait = RETRY_FIRST;
    let mut failing = false;
    loop {
        let opened =
            tokio::time::timeout(SILENCE, manager.stream_lines("/workers/endpoints")).await;
        match opened.unwrap_or_else(|_| {
            Err(crate::client::ClientError::Unreachable {
                url: format!("{}/workers/endpoints", manager.base()),
                reason: format!("no answer within {SILENCE:?}"),
            })
        }) {
            Ok(stream) => {
                if failing {
                    log::info!("worker {name}: following the manager's endpoints again");
                }
                wait = RETRY_FIRST;
                let mut lines = Box::pin(stream);
                while let Ok(Some(Ok(line))) = tokio::time::timeout(SILENCE, lines.next()).await {
                    // The feed's keep-alive is an empty line.
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<FeedLine>(&line) {
                        Ok(line) => table.send_modify(|t| apply_line(Arc::make_mut(t), line)),
                        Err(e) => {
                            log::warn!("worker {name}: an endpoint line that does not parse: {e}")
                        }
                    }
                }
                log::warn!(
                    "worker {name}: the endpoint feed ended or fell silent; keeping the last known, reconnecting"
                );
                failing = true;
            }
            Err(e) => {
                if !failing {
                    log::warn!(
                        "worker {name}: cannot follow the manager's endpoints ({e}); keeping the last known, trying again"
                    );
                    failing = true;
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

impl Actor for EndpointFollower {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let work = follow(self.name.clone(), self.manager.clone(), self.table.clone());
        ctx.spawn(work.into_actor(self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Endpoints;

    fn entry(service: &str, n: usize) -> Endpoints {
        Endpoints {
            service: service.into(),
            expose: vec![],
            endpoints: (0..n)
                .map(|i| crate::service::Endpoint {
                    task: uuid::Uuid::new_v4(),
                    slot: i as u32 + 1,
                    node: "w1".into(),
                    address: "127.0.0.1".into(),
                    ports: Default::default(),
                    container_ip: None,
                })
                .collect(),
        }
    }

    fn status(state: TaskState, ip: Option<&str>) -> TaskStatus {
        TaskStatus {
            task_id: uuid::Uuid::new_v4(),
            attempt: 1,
            node: "w1".into(),
            state,
            container_id: None,
            host_ports: Default::default(),
            container_ip: ip.map(|ip| ip.parse().unwrap()),
            exit_code: None,
            error: None,
            at: chrono::Utc::now(),
            seq: 0,
            restart_count: 0,
            started_at: None,
            next_restart_at: None,
            health: None,
        }
    }

    #[test]
    fn only_tasks_that_run_are_running_with_their_addresses() {
        let statuses = [
            status(TaskState::Running, Some("172.18.0.2")),
            status(TaskState::Running, None),
            status(TaskState::Scheduled, Some("172.18.0.3")),
            status(TaskState::Failed, None),
            status(TaskState::Completed, None),
        ];
        let now = running(&statuses);
        assert_eq!(
            now,
            Running::from([
                (statuses[0].task_id, statuses[0].container_ip),
                (statuses[1].task_id, None),
            ])
        );
    }

    #[test]
    fn a_table_replaces_and_a_line_changes_or_removes_one_service() {
        let mut table = EndpointTable::new();
        apply_line(&mut table, FeedLine::Service(entry("old", 1)));
        apply_line(
            &mut table,
            FeedLine::Table(vec![entry("web", 2), entry("api", 1)]),
        );
        assert_eq!(table.len(), 2, "a new connection's table replaces all");
        apply_line(&mut table, FeedLine::Service(entry("web", 3)));
        assert_eq!(table["web"].endpoints.len(), 3);
        apply_line(&mut table, FeedLine::Service(Endpoints::gone("api")));
        assert!(!table.contains_key("api"));
        // Lines read back as what they were, port maps included.
        let mut with_ports = entry("web", 1);
        with_ports.endpoints[0].ports.insert(7777, 32768);
        for line in [
            FeedLine::Service(with_ports.clone()),
            FeedLine::Table(vec![with_ports]),
        ] {
            let text = serde_json::to_string(&line).unwrap();
            assert_eq!(serde_json::from_str::<FeedLine>(&text).unwrap(), line);
        }
    }
}
