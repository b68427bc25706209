//! openraft's own suite of storage tests, on a real LMDB file through the
//! Store.

use openraft::testing::{StoreBuilder, Suite};

use super::types::{Cube, StorageError};
use super::{LogStore, StateMachine};
use crate::store::Store;

/// A fresh Store in a directory of its own (kept while the test runs).
struct Fresh;

impl StoreBuilder<Cube, LogStore, StateMachine, tempfile::TempDir> for Fresh {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::start(dir.path()).expect("the store opens");
        let reader = Store::reader(&store).await.expect("a reader");
        Ok((
            dir,
            LogStore::new(store.clone(), reader),
            StateMachine::new(store, None),
        ))
    }
}

#[test]
fn the_log_and_state_machine_pass_openrafts_storage_suite() -> Result<(), StorageError> {
    // The Store's thread belongs to an actix system, which must run (its
    // arbiter hands the Store its messages); the suite runs runtimes of
    // its own on this thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let system = actix::System::new();
        let _ = tx.send(actix::System::current());
        system.run()
    });
    let system = rx.recv().expect("the actix system started");
    actix::System::set_current(system.clone());
    let tested = Suite::test_all(Fresh);
    system.stop();
    tested
}

mod changes {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};
    use serde_json::value::RawValue;

    use crate::raft::StateMachine;
    use crate::raft::types::{Change, Entry, LogId, Record, Replicated};
    use crate::store::{ApplyWrites, DumpRecords, LoadAll, Put, RawWrite, Store, Stored};

    /// A worker's own record, in the same file on a `dev` node.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Own {
        id: String,
    }

    impl Stored for Own {
        const TABLE: &'static str = "worker_tasks";
        fn key(&self) -> String {
            self.id.clone()
        }
    }

    fn record(table: &str, key: &str, json: Option<&str>) -> Record {
        Record {
            table: table.into(),
            key: key.into(),
            value: json.map(|j| RawValue::from_string(j.into()).expect("JSON")),
        }
    }

    fn entry(index: u64, records: Vec<Record>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Change { records }),
        }
    }

    pub(super) async fn records(store: &actix::Addr<Store>) -> Vec<RawWrite> {
        store
            .send(DumpRecords { meta: vec![] })
            .await
            .expect("the store answers")
            .expect("read")
            .0
    }

    #[actix_rt::test]
    async fn applied_changes_reach_the_records_and_a_snapshot_carries_them_to_another_store() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Store::start(dir_a.path()).unwrap();
        let b = Store::start(dir_b.path()).unwrap();
        let (feed, mut told) = tokio::sync::mpsc::unbounded_channel();
        let mut leader = StateMachine::new(a.clone(), Some(feed));
        leader
            .apply([
                entry(
                    1,
                    vec![
                        record("tokens", "ci", Some(r#"{"name":"ci"}"#)),
                        record("tokens", "old", Some(r#"{"name":"old"}"#)),
                    ],
                ),
                entry(2, vec![record("tokens", "old", None)]),
            ])
            .await
            .expect("applied");
        // The manager is told the changes, in order, up to the last.
        match told.try_recv() {
            Ok(Replicated::Changes { upto, changes }) => {
                assert_eq!(upto, 2);
                let keys: Vec<Vec<&str>> = changes
                    .iter()
                    .map(|c| c.records.iter().map(|r| r.key.as_str()).collect())
                    .collect();
                assert_eq!(keys, [vec!["ci", "old"], vec!["old"]]);
            }
            other => panic!("not told the changes: {other:?}"),
        }
        let on_a = records(&a).await;
        assert_eq!(
            on_a,
            [RawWrite {
                table: "tokens".into(),
                key: "ci".into(),
                value: Some(br#"{"name":"ci"}"#.to_vec()),
            }]
        );
        // A record the other store holds and the snapshot does not: gone
        // once the snapshot is installed.
        b.send(ApplyWrites {
            writes: vec![RawWrite {
                table: "tasks".into(),
                key: "stale".into(),
                value: Some(b"{}".to_vec()),
            }],
            meta: vec![],
        })
        .await
        .unwrap()
        .unwrap();
        let own = Own { id: "mine".into() };
        b.send(Put(own.clone())).await.unwrap().unwrap();
        let snapshot = leader
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot once something was applied");
        let (feed, mut told) = tokio::sync::mpsc::unbounded_channel();
        let mut follower = StateMachine::new(b.clone(), Some(feed));
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("installed");
        assert!(
            matches!(told.try_recv(), Ok(Replicated::Installed { upto: 2 })),
            "not told of the snapshot"
        );
        assert_eq!(records(&b).await, on_a);
        // The worker's own records are not the managers': they stay.
        let kept = b.send(LoadAll::<Own>::new()).await.unwrap().unwrap();
        assert_eq!(kept, [own]);
        let (applied, _) = follower.applied_state().await.expect("read");
        assert_eq!(applied.map(|l| l.index), Some(2));
        // A change naming a table that is not replicated is skipped, the
        // same on every manager (failing would stop them all on it, at
        // every start): the worker's own records stay as they are.
        follower
            .apply([
                entry(3, vec![record("nope", "x", Some("{}"))]),
                entry(4, vec![record("worker_tasks", "mine", None)]),
            ])
            .await
            .expect("applied, the unknown writes skipped");
        let (applied, _) = follower.applied_state().await.expect("read");
        assert_eq!(applied.map(|l| l.index), Some(4));
        assert_eq!(records(&b).await, on_a);
        let kept = b.send(LoadAll::<Own>::new()).await.unwrap().unwrap();
        assert_eq!(kept, [Own { id: "mine".into() }]);
    }
}

/// Three managers' Rafts in one process, each on a Store of its own (real
/// LMDB files), their RPCs passed in memory by a simulated network whose
/// members can be cut off: elections, replication, a leader's loss and a
/// member catching up.
mod cluster {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use openraft::Raft;
    use serde_json::value::RawValue;

    use crate::raft::Timing;
    use crate::raft::network::{Rpc, Transport, TransportError, answer};
    use crate::raft::types::{Change, Cube, Member, NodeId, Record};
    use crate::store::Store;

    /// The simulated network: the members it reaches, by URL.
    #[derive(Clone, Default)]
    struct Memory {
        reached: Arc<Mutex<HashMap<String, Raft<Cube>>>>,
    }

    impl Memory {
        fn join(&self, url: &str, raft: Raft<Cube>) {
            self.reached.lock().unwrap().insert(url.into(), raft);
        }
        fn cut(&self, url: &str) {
            self.reached.lock().unwrap().remove(url);
        }
    }

    impl Transport for Memory {
        async fn call(
            &self,
            _target: NodeId,
            to: &Member,
            rpc: Rpc,
            body: Vec<u8>,
            _timeout: Duration,
        ) -> Result<Vec<u8>, TransportError> {
            let raft = self.reached.lock().unwrap().get(&to.url).cloned();
            let raft =
                raft.ok_or_else(|| TransportError::Unreachable(to.url.clone(), "cut off".into()))?;
            answer(&raft, rpc, &body)
                .await
                .map_err(|e| TransportError::Failed(to.url.clone(), e.to_string()))
        }
    }

    fn member(id: NodeId) -> Member {
        Member {
            name: format!("m{id}"),
            url: format!("memory://m{id}"),
        }
    }

    async fn start(id: NodeId, store: &actix::Addr<Store>, net: &Memory) -> Raft<Cube> {
        let timing = Timing {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(300),
            election_max: Duration::from_millis(600),
            ..Timing::default()
        };
        let raft = crate::raft::start(id, timing, store.clone(), net.clone(), Default::default())
            .await
            .expect("raft starts");
        net.join(&member(id).url, raft.clone());
        raft
    }

    fn change(key: &str) -> Change {
        Change {
            records: vec![Record {
                table: "tokens".into(),
                key: key.into(),
                value: Some(RawValue::from_string(format!("{{\"name\":\"{key}\"}}")).unwrap()),
            }],
        }
    }

    async fn keys(store: &actix::Addr<Store>) -> Vec<String> {
        super::changes::records(store)
            .await
            .into_iter()
            .map(|r| r.key)
            .collect()
    }

    async fn leader_among(rafts: &[&Raft<Cube>], not: Option<NodeId>) -> NodeId {
        let wait = rafts[0].wait(Some(Duration::from_secs(10)));
        let metrics = wait
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != not,
                "a leader",
            )
            .await
            .expect("a leader within 10 s");
        metrics.current_leader.expect("a leader")
    }

    #[actix_rt::test]
    async fn three_members_elect_replicate_survive_the_leaders_loss_and_catch_up() {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores: Vec<actix::Addr<Store>> = dirs
            .iter()
            .map(|d| Store::start(d.path()).unwrap())
            .collect();
        let net = Memory::default();
        let mut rafts = Vec::new();
        for (i, store) in stores.iter().enumerate() {
            rafts.push(start(i as NodeId + 1, store, &net).await);
        }
        let members: BTreeMap<NodeId, Member> = (1..=3).map(|id| (id, member(id))).collect();
        rafts[0].initialize(members).await.expect("initialized");
        let leader = leader_among(&[&rafts[0]], None).await;
        let written = rafts[(leader - 1) as usize]
            .client_write(change("first"))
            .await
            .expect("written");
        let index = written.log_id.index;
        for raft in &rafts {
            raft.wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(Some(index), "applied everywhere")
                .await
                .expect("applied");
        }
        for store in &stores {
            assert_eq!(keys(store).await, ["first"]);
        }

        // The leader is lost: cut off and stopped.
        let lost = (leader - 1) as usize;
        net.cut(&member(leader).url);
        rafts[lost].shutdown().await.expect("shut down");
        let left: Vec<&Raft<Cube>> = (0..3).filter(|&i| i != lost).map(|i| &rafts[i]).collect();
        let since = std::time::Instant::now();
        let new_leader = leader_among(&left, Some(leader)).await;
        println!(
            "a new leader ({new_leader}) {:?} after the leader's loss",
            since.elapsed()
        );
        let written = rafts[(new_leader - 1) as usize]
            .client_write(change("second"))
            .await
            .expect("written by the new leader");
        for raft in &left {
            raft.wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(Some(written.log_id.index), "applied by the two")
                .await
                .expect("applied");
        }

        // The lost one comes back on its store and catches up.
        let back = start(leader, &stores[lost], &net).await;
        back.wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(written.log_id.index), "caught up")
            .await
            .expect("the member that came back caught up");
        for store in &stores {
            assert_eq!(keys(store).await, ["first", "second"]);
        }
        for raft in left.into_iter().chain([&back]) {
            raft.shutdown().await.expect("shut down");
        }
    }

    #[actix_rt::test]
    async fn a_member_with_no_data_catches_up_from_a_snapshot_once_the_log_is_purged() {
        let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores: Vec<actix::Addr<Store>> = dirs
            .iter()
            .map(|d| Store::start(d.path()).unwrap())
            .collect();
        let net = Memory::default();
        let first = start(1, &stores[0], &net).await;
        first
            .initialize(BTreeMap::from([(1, member(1))]))
            .await
            .expect("initialized");
        leader_among(&[&first], None).await;
        let mut last = 0;
        for key in ["a", "b", "c"] {
            last = first
                .client_write(change(key))
                .await
                .expect("written")
                .log_id
                .index;
        }
        // A snapshot, and the log up to it gone: the log alone cannot bring
        // a new member up to date.
        first.trigger().snapshot().await.expect("snapshot asked");
        first
            .wait(Some(Duration::from_secs(10)))
            .snapshot(
                openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), last),
                "snapshot built",
            )
            .await
            .expect("a snapshot");
        first.trigger().purge_log(last).await.expect("purge asked");
        first
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.purged.map(|p| p.index) == Some(last), "purged")
            .await
            .expect("purged");
        // A member with an empty store joins as a learner, then a voter.
        let second = start(2, &stores[1], &net).await;
        first
            .add_learner(2, member(2), true)
            .await
            .expect("the learner caught up");
        first
            .change_membership([1, 2], false)
            .await
            .expect("a voter");
        second
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(last), "caught up")
            .await
            .expect("caught up");
        assert_eq!(keys(&stores[1]).await, ["a", "b", "c"]);
        let metrics = second.metrics().borrow().clone();
        assert!(
            metrics.snapshot.is_some_and(|s| s.index >= last),
            "not caught up from a snapshot: {metrics:?}"
        );
        for raft in [first, second] {
            raft.shutdown().await.expect("shut down");
        }
    }
}
