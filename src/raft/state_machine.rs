//! The replicated state: the Store's records. Applying entries writes
//! their changes, the last applied id and the membership in one
//! transaction (its meta page not synced: the log is). The records in the Store are the
//! snapshot: building one makes them durable and names it; sending one
//! reads every record with those two in one transaction (so never older
//! than what was applied).

use std::io::Cursor;

use actix::Addr;
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::types::{
    Applied, Cube, Entry, Feed, LogId, Replicated, Snapshot, SnapshotMeta, StorageError,
    StoredMembership,
};
use crate::store::{ApplyWrites, DumpRecords, RawWrite, ReplaceRecords, Store, SyncNow};

const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";

/// The state machine of one manager, through its Store.
#[derive(Clone)]
pub struct StateMachine {
    store: Addr<Store>,
    /// Told what was applied (the manager's in-memory state), if anyone
    /// listens.
    feed: Option<Feed>,
}

impl StateMachine {
    pub fn new(store: Addr<Store>, feed: Option<Feed>) -> Self {
        StateMachine { store, feed }
    }

    /// Tells the listener, if any; one that has gone away is not missed.
    fn tell(&self, replicated: Replicated) {
        if let Some(feed) = &self.feed {
            let _ = feed.send(replicated);
        }
    }
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct Content {
    meta: SnapshotMeta,
    /// (table, key, record)
    records: Vec<(String, String, Box<RawValue>)>,
}

fn read_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn write_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(write_error)
}

fn decode<T: for<'de> Deserialize<'de> + Default>(
    bytes: Option<&Vec<u8>>,
) -> Result<T, StorageError> {
    match bytes {
        Some(bytes) => serde_json::from_slice(bytes).map_err(read_error),
        None => Ok(T::default()),
    }
}

/// The last applied id and the membership, from the metadata read as
/// `[APPLIED, MEMBERSHIP]`.
fn applied_of(meta: &[Option<Vec<u8>>]) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let applied = decode(meta.first().and_then(Option::as_ref))?;
    let membership = decode(meta.get(1).and_then(Option::as_ref))?;
    Ok((applied, membership))
}

/// The replicated records as `store` holds them, and the index of the
/// last entry applied to them (0: none), read in one transaction.
pub async fn applied_records(store: &Addr<Store>) -> Result<(Vec<RawWrite>, u64), StorageError> {
    let (records, meta) = store
        .send(DumpRecords {
            meta: vec![APPLIED, MEMBERSHIP],
        })
        .await
        .map_err(read_error)?
        .map_err(read_error)?;
    let (applied, _) = applied_of(&meta)?;
    Ok((records, applied.map_or(0, |l| l.index)))
}

impl StateMachine {
    /// Every record, the last applied id and the membership, as one
    /// snapshot.
    async fn snapshot(&self) -> Result<Snapshot, StorageError> {
        let (records, meta) = self
            .store
            .send(DumpRecords {
                meta: vec![APPLIED, MEMBERSHIP],
            })
            .await
            .map_err(read_error)?
            .map_err(read_error)?;
        let (applied, membership) = applied_of(&meta)?;
        let meta = meta_of(applied, membership);
        let records = records
            .into_iter()
            .map(|r| {
                let text = String::from_utf8(r.value.unwrap_or_default()).map_err(read_error)?;
                let value = RawValue::from_string(text).map_err(read_error)?;
                Ok((r.table, r.key, value))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let content = Content {
            meta: meta.clone(),
            records,
        };
        let data = serde_json::to_vec(&content).map_err(read_error)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Building a snapshot only names one: the records in the Store are the
/// snapshot (openraft keeps only the meta of what is built, then cuts the
/// log back to it), so it makes them durable and says up to where; the
/// records are read when a snapshot is sent (`get_current_snapshot`).
impl RaftSnapshotBuilder<Cube> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.store
            .send(SyncNow)
            .await
            .map_err(write_error)?
            .map_err(write_error)?;
        let (applied, membership) = self.applied_state().await?;
        Ok(Snapshot {
            meta: meta_of(applied, membership),
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

fn meta_of(applied: Option<LogId>, membership: StoredMembership) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id: applied.map_or_else(
            || "empty".to_string(),
            |last| format!("{}-{}", last.leader_id, last.index),
        ),
    }
}

impl RaftStateMachine<Cube> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let meta = self
            .store
            .send(crate::store::MetaGet(vec![APPLIED, MEMBERSHIP]))
            .await
            .map_err(read_error)?
            .map_err(read_error)?;
        applied_of(&meta)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut writes: Vec<RawWrite> = Vec::new();
        let mut last = None;
        let mut membership = None;
        let mut answers = Vec::new();
        let mut changes = Vec::new();
        for entry in entries {
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(change) => {
                    writes.extend(change.records.iter().map(RawWrite::from));
                    changes.push(change);
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                }
            }
            last = Some(entry.log_id);
            answers.push(Applied);
        }
        let Some(last) = last else {
            return Ok(answers);
        };
        let mut meta = vec![(APPLIED, encode(&Some(last))?)];
        if let Some(membership) = &membership {
            meta.push((MEMBERSHIP, encode(membership)?));
        }
        self.store
            .send(ApplyWrites { writes, meta })
            .await
            .map_err(write_error)?
            .map_err(write_error)?;
        if !changes.is_empty() {
            self.tell(Replicated::Changes {
                upto: last.index,
                changes,
            });
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let content: Content = serde_json::from_slice(snapshot.get_ref()).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        let records = content
            .records
            .into_iter()
            .map(|(table, key, value)| RawWrite {
                table,
                key,
                value: Some(value.get().as_bytes().to_vec()),
            })
            .collect();
        let stored_meta = vec![
            (APPLIED, encode(&meta.last_log_id)?),
            (MEMBERSHIP, encode(&meta.last_membership)?),
        ];
        self.store
            .send(ReplaceRecords {
                records,
                meta: stored_meta,
            })
            .await
            .map_err(write_error)?
            .map_err(write_error)?;
        self.tell(Replicated::Installed {
            upto: meta.last_log_id.map_or(0, |l| l.index),
        });
        Ok(())
    }

    /// The state as it is now; none while nothing has been applied.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let snapshot = self.snapshot().await?;
        Ok(snapshot.meta.last_log_id.is_some().then_some(snapshot))
    }
}
