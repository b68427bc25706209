//! The Raft log in LMDB: entries by index (JSON), the vote and the last
//! purged id, each write committed by the Store before it is
//! acknowledged. Reads go to a Store thread of their own, so that
//! replication and the log's state do not wait behind the writer's
//! `fdatasync`s.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use actix::Addr;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, RaftLogReader, StorageIOError, Vote};

use super::types::{Cube, Entry, LogId, NodeId, StorageError};
use crate::store::{LogAppend, LogLast, LogPurge, LogRange, LogTruncate, MetaGet, MetaPut, Store};

const VOTE: &str = "vote";
const PURGED: &str = "purged";

/// The log of one manager, through its Store: writes to its one writer,
/// reads to a reader on the same environment ([`Store::reader`]).
#[derive(Clone)]
pub struct LogStore {
    store: Addr<Store>,
    reader: Addr<Store>,
}

impl LogStore {
    /// `reader` takes reads only: a write sent there could overtake one
    /// sent to `store` before it.
    pub fn new(store: Addr<Store>, reader: Addr<Store>) -> Self {
        LogStore { store, reader }
    }

    /// One metadata value, decoded.
    async fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
        fail: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let mut values = self
            .reader
            .send(MetaGet(vec![key]))
            .await
            .map_err(|e| fail(AnyError::new(&e)))?
            .map_err(|e| fail(AnyError::new(&e)))?;
        match values.pop().flatten() {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| fail(AnyError::new(&e)).into()),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: Option<&T>,
        fail: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = value
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| fail(AnyError::new(&e)))?;
        self.store
            .send(MetaPut(vec![(key, bytes)]))
            .await
            .map_err(|e| fail(AnyError::new(&e)))?
            .map_err(|e| fail(AnyError::new(&e)).into())
    }
}

fn read_error(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::read_logs(e)
}

fn write_error(e: AnyError) -> StorageIOError<NodeId> {
    StorageIOError::write_logs(e)
}

fn decode(index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StorageIOError::read_log_at_index(index, AnyError::new(&e)).into())
}

impl RaftLogReader<Cube> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        let rows = self
            .reader
            .send(LogRange { from, to })
            .await
            .map_err(|e| read_error(AnyError::new(&e)))?
            .map_err(|e| read_error(AnyError::new(&e)))?;
        rows.iter().map(|(i, bytes)| decode(*i, bytes)).collect()
    }
}

// `save_committed` / `read_committed` keep openraft's defaults: the commit
// index is not kept. It is volatile in Raft, and keeping it cost a synced
// commit (two `fdatasync`s) on every node for every batch, on the
// leader's path to an answer. What a node applied is in the Store, noted
// with the records in one transaction; what was committed beyond it is
// applied again once a leader says so. A leader takes commands only after
// it has applied everything committed (the Manager's `settle`), so a state
// rolled back by a machine's crash (the apply's meta page is not synced)
// is caught up before anything acts on it. A value an earlier version
// kept in the data dir is left unread.
impl RaftLogStorage<Cube> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<Cube>, StorageError> {
        let purged: Option<LogId> = self.meta(PURGED, read_error).await?;
        let last = self
            .reader
            .send(LogLast)
            .await
            .map_err(|e| read_error(AnyError::new(&e)))?
            .map_err(|e| read_error(AnyError::new(&e)))?;
        let last = match last {
            Some((index, bytes)) => Some(decode(index, &bytes)?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta(VOTE, Some(vote), StorageIOError::write_vote)
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.meta(VOTE, StorageIOError::read_vote).await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Cube>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let rows = entries
            .into_iter()
            .map(|e| serde_json::to_vec(&e).map(|bytes| (e.log_id.index, bytes)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| write_error(AnyError::new(&e)))?;
        let written = self
            .store
            .send(LogAppend(rows))
            .await
            .map_err(|e| write_error(AnyError::new(&e)))?;
        // Durable (the Store committed the transaction) before it is said.
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_error(AnyError::new(&e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.store
            .send(LogTruncate { from: log_id.index })
            .await
            .map_err(|e| write_error(AnyError::new(&e)))?
            .map_err(|e| write_error(AnyError::new(&e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let meta = serde_json::to_vec(&log_id).map_err(|e| write_error(AnyError::new(&e)))?;
        self.store
            .send(LogPurge {
                upto: log_id.index,
                meta: (PURGED, meta),
            })
            .await
            .map_err(|e| write_error(AnyError::new(&e)))?
            .map_err(|e| write_error(AnyError::new(&e)).into())
    }
}
