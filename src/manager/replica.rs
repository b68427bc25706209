//! A manager's in-memory state kept to the replicated log. Whole, from
//! the records the Store holds (when the manager starts to lead, stops
//! leading, or installed a snapshot); one record at a time from the
//! committed changes while it follows. Pure over plain data: the actor
//! brings the records and publishes what changed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::SchedulerKind;
use crate::core::events::EventDraft;
use crate::core::join_tokens::JoinTokenRecord;
use crate::core::nodes::NodeRecord;
use crate::core::tokens::TokenRecord;
use crate::core::{ClusterState, Retention};
use crate::raft::{Change, Record};
use crate::service::ServiceRecord;
use crate::store::{RawWrite, Stored};
use crate::task::TaskRecord;

/// How a manager's state is built: what its config says.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub scheduler: SchedulerKind,
    pub down_after: Duration,
    pub retention: Retention,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("a replicated {table} record {key:?} cannot be read: {source}")]
    Decode {
        table: String,
        key: String,
        source: serde_json::Error,
    },
}

/// The records of the replicated tables, decoded.
#[derive(Debug, Default)]
pub struct Records {
    pub tasks: Vec<TaskRecord>,
    pub nodes: Vec<NodeRecord>,
    pub tokens: Vec<TokenRecord>,
    pub join_tokens: Vec<JoinTokenRecord>,
    pub services: Vec<ServiceRecord>,
}

fn decode<T: Stored>(table: &str, key: &str, bytes: &[u8]) -> Result<T, ReplicaError> {
    serde_json::from_slice(bytes).map_err(|source| ReplicaError::Decode {
        table: table.to_string(),
        key: key.to_string(),
        source,
    })
}

impl Records {
    /// The Store's records (as a dump gives them) by table; other tables'
    /// are not the manager's.
    pub fn from_dump(dump: &[RawWrite]) -> Result<Self, ReplicaError> {
        let mut records = Records::default();
        for w in dump {
            let Some(bytes) = w.value.as_deref() else {
                continue;
            };
            let (table, key) = (w.table.as_str(), w.key.as_str());
            match table {
                TaskRecord::TABLE => records.tasks.push(decode(table, key, bytes)?),
                NodeRecord::TABLE => records.nodes.push(decode(table, key, bytes)?),
                TokenRecord::TABLE => records.tokens.push(decode(table, key, bytes)?),
                JoinTokenRecord::TABLE => records.join_tokens.push(decode(table, key, bytes)?),
                ServiceRecord::TABLE => records.services.push(decode(table, key, bytes)?),
                _ => {}
            }
        }
        Ok(records)
    }
}

impl Shape {
    /// The state over `records`: every node gets a full `down_after` to
    /// be heard from (after a restart, and after a change of leader).
    pub fn build(&self, records: Records, now: Instant) -> ClusterState {
        ClusterState::new(
            records.tasks,
            records.nodes,
            self.scheduler,
            self.down_after,
            self.retention,
            now,
        )
        .with_tokens(records.tokens)
        .with_join_tokens(records.join_tokens)
        .with_services(records.services)
    }
}

/// What committed changes altered, for the actor to publish (the
/// leader's batch, or the changes a follower follows).
#[derive(Debug, Default)]
pub struct Altered {
    pub tokens_changed: bool,
    pub join_tokens_changed: bool,
    pub nodes_changed: bool,
    /// The services whose endpoints may have changed.
    pub services: BTreeSet<String>,
    pub events: Vec<EventDraft>,
}

/// Applies committed changes, in order, to a follower's state. A record
/// that cannot be read is an error: the state would no longer be the
/// log's (the actor then rebuilds it from the Store).
pub fn follow(
    state: &mut ClusterState,
    changes: &[Change],
    at: DateTime<Utc>,
) -> Result<Altered, ReplicaError> {
    let mut followed = Altered::default();
    let result = changes
        .iter()
        .flat_map(|c| c.records.iter())
        .try_for_each(|r| put(state, r, at, &mut followed));
    // What was applied is the state now, whatever came after it.
    let staged = state.take_staged();
    state.commit();
    result?;
    followed.events = staged.events;
    Ok(followed)
}

fn put(
    state: &mut ClusterState,
    record: &Record,
    at: DateTime<Utc>,
    followed: &mut Altered,
) -> Result<(), ReplicaError> {
    let (table, key) = (record.table.as_str(), record.key.as_str());
    let value = record.value.as_ref().map(|v| v.get().as_bytes());
    match (table, value) {
        (TaskRecord::TABLE, Some(bytes)) => {
            let task: TaskRecord = decode(table, key, bytes)?;
            if let Some(service) = &task.service {
                followed.services.insert(service.clone());
            }
            state.put_task(task, at);
        }
        (TaskRecord::TABLE, None) => {
            if let Ok(id) = key.parse::<Uuid>() {
                if let Some(service) = state.task(&id).and_then(|t| t.service.clone()) {
                    followed.services.insert(service);
                }
                state.remove_task(id);
            }
        }
        (NodeRecord::TABLE, Some(bytes)) => {
            let node: NodeRecord = decode(table, key, bytes)?;
            // A node's address is in its replicas' endpoints.
            for id in state.active_on(&node.name) {
                if let Some(service) = state.task(&id).and_then(|t| t.service.clone()) {
                    followed.services.insert(service);
                }
            }
            state.put_node(node);
            followed.nodes_changed = true;
        }
        (TokenRecord::TABLE, Some(bytes)) => {
            state.put_token(decode(table, key, bytes)?);
            followed.tokens_changed = true;
        }
        (TokenRecord::TABLE, None) => {
            state.remove_token(key);
            followed.tokens_changed = true;
        }
        (JoinTokenRecord::TABLE, Some(bytes)) => {
            state.put_join_token(decode(table, key, bytes)?);
            followed.join_tokens_changed = true;
        }
        (ServiceRecord::TABLE, Some(bytes)) => {
            let service: ServiceRecord = decode(table, key, bytes)?;
            followed.services.insert(service.spec.name.clone());
            state.put_service(service);
        }
        (ServiceRecord::TABLE, None) => {
            followed.services.insert(key.to_string());
            state.remove_service(key);
        }
        // Node records are never removed; other tables are not the
        // manager's (the Store skipped them too).
        _ => log::warn!("manager: a replicated change to {table} {key:?} is not followed"),
    }
    Ok(())
}

/// The staged changes of a batch as the records of one replicated change.
pub fn change_of(staged: crate::core::Staged) -> Result<Change, serde_json::Error> {
    let mut records = Vec::with_capacity(
        staged.tasks.len()
            + staged.nodes.len()
            + staged.removed_tasks.len()
            + staged.services.len()
            + staged.tokens.len()
            + staged.join_tokens.len(),
    );
    for node in &staged.nodes {
        records.push(Record::put(node)?);
    }
    for task in &staged.tasks {
        records.push(Record::put(task)?);
    }
    records.extend(
        staged
            .removed_tasks
            .iter()
            .map(|id| Record::delete(TaskRecord::TABLE, id.to_string())),
    );
    for service in &staged.services {
        records.push(Record::put(service)?);
    }
    records.extend(
        staged
            .removed_services
            .iter()
            .map(|name| Record::delete(ServiceRecord::TABLE, name.clone())),
    );
    for token in &staged.tokens {
        records.push(Record::put(token)?);
    }
    records.extend(
        staged
            .removed_tokens
            .iter()
            .map(|name| Record::delete(TokenRecord::TABLE, name.clone())),
    );
    for join_token in &staged.join_tokens {
        records.push(Record::put(join_token)?);
    }
    Ok(Change { records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::join_tokens::JoinRole;
    use crate::core::tokens::Role as TokenRole;
    use crate::core::{Command, Now, apply};
    use crate::wire::{Capacity, MachineStats, Registration};

    fn shape() -> Shape {
        Shape {
            scheduler: SchedulerKind::RoundRobin,
            down_after: Duration::from_secs(3),
            retention: Retention::default(),
        }
    }

    fn empty() -> ClusterState {
        shape().build(Records::default(), Instant::now())
    }

    fn register(name: &str) -> Command {
        let capacity = Capacity {
            cpus: 4.0,
            memory_mb: 4096,
            disk_mb: 10_000,
        };
        Command::Register {
            registration: Registration {
                name: name.into(),
                instance: Uuid::new_v4(),
                address: format!("https://{name}:1"),
                capacity: capacity.clone(),
                tasks: vec![],
                stats: MachineStats {
                    capacity,
                    ..Default::default()
                },
            },
            generation: 0,
        }
    }

    /// Applies commands on the leader as one batch and hands the change
    /// on, as the log would, to the follower.
    fn batch(leader: &mut ClusterState, follower: &mut ClusterState, commands: Vec<Command>) {
        for command in commands {
            apply(leader, command, Now::read()).expect("applies");
        }
        let change = change_of(leader.take_staged()).expect("encodes");
        leader.commit();
        // Through JSON, as the log carries it.
        let change: Change = serde_json::from_slice(&serde_json::to_vec(&change).unwrap()).unwrap();
        follow(follower, &[change], chrono::Utc::now()).expect("followed");
    }

    fn same(leader: &ClusterState, follower: &ClusterState) {
        let tasks = |s: &ClusterState| s.tasks().cloned().collect::<Vec<_>>();
        let tokens = |s: &ClusterState| s.tokens().cloned().collect::<Vec<_>>();
        assert_eq!(tasks(follower), tasks(leader));
        // Liveness is the leader's alone: the records are the same.
        for node in leader.node_names() {
            assert_eq!(follower.node(&node), leader.node(&node), "{node}");
        }
        assert_eq!(follower.node_names(), leader.node_names());
        assert_eq!(tokens(follower), tokens(leader));
        assert_eq!(
            follower.services().cloned().collect::<Vec<_>>(),
            leader.services().cloned().collect::<Vec<_>>()
        );
        for node in leader.node_names() {
            assert_eq!(follower.active_on(&node), leader.active_on(&node), "{node}");
        }
        assert_eq!(follower.pending(), leader.pending());
    }

    #[test]
    fn a_follower_applying_the_changes_holds_what_the_leader_holds() {
        let (mut leader, mut follower) = (empty(), empty());
        batch(
            &mut leader,
            &mut follower,
            vec![register("n1"), register("n2")],
        );
        same(&leader, &follower);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let submits = ids
            .iter()
            .map(|id| Command::Submit {
                id: *id,
                spec: crate::task::spec::from_value(
                    serde_json::json!({"name": "a", "image": "i", "memory_mb": 64}),
                )
                .unwrap(),
                by: None,
            })
            .collect();
        batch(&mut leader, &mut follower, submits);
        same(&leader, &follower);
        assert!(
            !follower.active_on("n1").is_empty(),
            "the follower's indexes follow the placed tasks"
        );
        let service = crate::service::spec::from_value(serde_json::json!({
            "name": "web", "replicas": 2, "task": {"image": "i"}
        }))
        .unwrap();
        let token = TokenRecord {
            name: "ci".into(),
            role: TokenRole::Admin,
            hash: "00".into(),
            created_at: chrono::Utc::now(),
            expires_at: None,
            created_by: None,
        };
        batch(
            &mut leader,
            &mut follower,
            vec![
                Command::Stop {
                    id: ids[0],
                    by: None,
                },
                Command::CreateService {
                    id: Uuid::new_v4(),
                    spec: service,
                    by: None,
                },
                Command::CreateToken { record: token },
            ],
        );
        same(&leader, &follower);
        assert_eq!(
            follower
                .service_tasks(follower.service("web").unwrap())
                .len(),
            2
        );
        batch(
            &mut leader,
            &mut follower,
            vec![
                Command::RevokeToken { name: "ci".into() },
                Command::RemoveService {
                    name: "web".into(),
                    by: None,
                },
            ],
        );
        same(&leader, &follower);
        assert!(follower.token("ci").is_none());
    }

    fn rotation(role: JoinRole) -> Command {
        Command::RotateJoinToken {
            record: JoinTokenRecord {
                role,
                token: crate::security::secret::JoinToken::new(&"cd".repeat(32)).unwrap(),
                rotated_at: chrono::Utc::now(),
                rotated_by: "admin".into(),
            },
        }
    }

    #[test]
    fn a_rotated_join_token_reaches_the_follower_and_a_failed_batch_undoes_it() {
        let (mut leader, mut follower) = (empty(), empty());
        assert!(follower.join_token_table().is_empty());
        batch(&mut leader, &mut follower, vec![rotation(JoinRole::Worker)]);
        assert_eq!(follower.join_token_table(), leader.join_token_table());
        assert_eq!(
            follower.join_token_table().keys().collect::<Vec<_>>(),
            [&JoinRole::Worker]
        );
        // A second rotation replaces the first.
        batch(
            &mut leader,
            &mut follower,
            vec![rotation(JoinRole::Worker), rotation(JoinRole::Manager)],
        );
        assert_eq!(follower.join_token_table(), leader.join_token_table());
        assert_eq!(follower.join_token_table().len(), 2);
        // Rolled back (a batch not committed): the last committed token.
        let before = leader.join_token_table();
        apply(&mut leader, rotation(JoinRole::Manager), Now::read()).unwrap();
        assert_ne!(leader.join_token_table(), before);
        leader.take_staged();
        leader.rollback();
        assert_eq!(leader.join_token_table(), before);
        // And a rebuild from the Store's records holds it.
        let dump: Vec<RawWrite> = JoinRole::ALL
            .iter()
            .map(|role| {
                let record = leader.join_token(*role).unwrap();
                RawWrite {
                    table: JoinTokenRecord::TABLE.into(),
                    key: record.key(),
                    value: Some(serde_json::to_vec(record).unwrap()),
                }
            })
            .collect();
        let rebuilt = shape().build(Records::from_dump(&dump).unwrap(), Instant::now());
        assert_eq!(rebuilt.join_token_table(), before);
    }

    #[test]
    fn a_record_that_cannot_be_read_is_an_error_naming_it() {
        let mut follower = empty();
        let change = Change {
            records: vec![Record {
                table: TaskRecord::TABLE.into(),
                key: "x".into(),
                value: Some(serde_json::value::RawValue::from_string("{}".into()).unwrap()),
            }],
        };
        let e = follow(&mut follower, &[change], chrono::Utc::now()).unwrap_err();
        assert!(e.to_string().contains("tasks record \"x\""), "{e}");
    }

    #[test]
    fn a_dump_is_read_by_table_and_other_tables_are_left_out() {
        let leader = {
            let mut s = empty();
            apply(&mut s, register("n1"), Now::read()).unwrap();
            s
        };
        let node = leader.node("n1").unwrap();
        let dump = vec![
            RawWrite {
                table: "nodes".into(),
                key: "n1".into(),
                value: Some(serde_json::to_vec(node).unwrap()),
            },
            RawWrite {
                table: "worker_tasks".into(),
                key: "w".into(),
                value: Some(b"not a record".to_vec()),
            },
        ];
        let records = Records::from_dump(&dump).expect("read");
        assert_eq!(records.nodes, std::slice::from_ref(node));
        assert!(records.tasks.is_empty());
        let state = shape().build(records, Instant::now());
        assert_eq!(state.node_names(), ["n1"]);
    }
}
