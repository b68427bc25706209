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
        Ok((dir, LogStore::new(store.clone()), StateMachine::new(store)))
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
    use crate::raft::types::{Change, Entry, LogId, Record};
    use crate::store::{ApplyWrites, DumpRecords, RawWrite, Store};

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

    async fn records(store: &actix::Addr<Store>) -> Vec<RawWrite> {
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
        let mut leader = StateMachine::new(a.clone());
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
        let snapshot = leader
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot once something was applied");
        let mut follower = StateMachine::new(b.clone());
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("installed");
        assert_eq!(records(&b).await, on_a);
        let (applied, _) = follower.applied_state().await.expect("read");
        assert_eq!(applied.map(|l| l.index), Some(2));
        // A change naming no table of the store is refused, not applied.
        let forged = follower
            .apply([entry(3, vec![record("nope", "x", Some("{}"))])])
            .await;
        assert!(forged.is_err());
        let (applied, _) = follower.applied_state().await.expect("read");
        assert_eq!(applied.map(|l| l.index), Some(2));
    }
}
