//! The Raft log and metadata, and the replicated changes of the records,
//! on the Store's thread. Bytes only: what an entry or a vote is, is the
//! `raft` module's business. Every write is one transaction, committed
//! (synced) before the reply.

use actix::prelude::*;
use heed::{EnvFlags, FlagSetMode};

use super::{REPLICATED, Store, StoreError};

/// A copy of the Store's handles, for [`Store::reader`].
pub struct ReadSide;

impl Message for ReadSide {
    type Result = Store;
}

impl Handler<ReadSide> for Store {
    type Result = MessageResult<ReadSide>;

    fn handle(&mut self, _msg: ReadSide, _ctx: &mut SyncContext<Self>) -> Self::Result {
        MessageResult(self.clone())
    }
}

/// Entries appended to the log: (index, encoded entry), in index order.
pub struct LogAppend(pub Vec<(u64, Vec<u8>)>);

impl Message for LogAppend {
    type Result = Result<(), StoreError>;
}

impl Handler<LogAppend> for Store {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: LogAppend, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let mut wtxn = self.env.write_txn()?;
        for (index, entry) in &msg.0 {
            self.raft_log
                .put(&mut wtxn, index, entry)
                .map_err(|e| self.classify(e))?;
        }
        wtxn.commit().map_err(|e| self.classify(e))?;
        Ok(())
    }
}

/// The entries with indexes in `from..to`, in order.
pub struct LogRange {
    pub from: u64,
    pub to: u64,
}

impl Message for LogRange {
    type Result = Result<Vec<(u64, Vec<u8>)>, StoreError>;
}

impl Handler<LogRange> for Store {
    type Result = Result<Vec<(u64, Vec<u8>)>, StoreError>;

    fn handle(&mut self, msg: LogRange, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        if msg.from >= msg.to {
            return Ok(out);
        }
        for entry in self.raft_log.range(&rtxn, &(msg.from..msg.to))? {
            let (index, bytes) = entry?;
            out.push((index, bytes.to_vec()));
        }
        Ok(out)
    }
}

/// The last entry of the log, if any.
pub struct LogLast;

impl Message for LogLast {
    type Result = Result<Option<(u64, Vec<u8>)>, StoreError>;
}

impl Handler<LogLast> for Store {
    type Result = Result<Option<(u64, Vec<u8>)>, StoreError>;

    fn handle(&mut self, _msg: LogLast, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let rtxn = self.env.read_txn()?;
        Ok(self
            .raft_log
            .last(&rtxn)?
            .map(|(index, bytes)| (index, bytes.to_vec())))
    }
}

/// Removes the entries from index `from` on (a conflict: a new leader's
/// log replaces them).
pub struct LogTruncate {
    pub from: u64,
}

impl Message for LogTruncate {
    type Result = Result<(), StoreError>;
}

impl Handler<LogTruncate> for Store {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: LogTruncate, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let mut wtxn = self.env.write_txn()?;
        self.raft_log
            .delete_range(&mut wtxn, &(msg.from..))
            .map_err(|e| self.classify(e))?;
        wtxn.commit().map_err(|e| self.classify(e))?;
        Ok(())
    }
}

/// Removes the entries up to index `upto` (in a snapshot now), and notes
/// `meta` (which was the last) in the same transaction.
pub struct LogPurge {
    pub upto: u64,
    pub meta: (&'static str, Vec<u8>),
}

impl Message for LogPurge {
    type Result = Result<(), StoreError>;
}

impl Handler<LogPurge> for Store {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: LogPurge, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let mut wtxn = self.env.write_txn()?;
        self.raft_log
            .delete_range(&mut wtxn, &(..=msg.upto))
            .map_err(|e| self.classify(e))?;
        let (key, value) = &msg.meta;
        self.raft_meta
            .put(&mut wtxn, key, value)
            .map_err(|e| self.classify(e))?;
        wtxn.commit().map_err(|e| self.classify(e))?;
        Ok(())
    }
}

/// Writes (or, with `None`, removes) metadata by name.
pub struct MetaPut(pub Vec<(&'static str, Option<Vec<u8>>)>);

impl Message for MetaPut {
    type Result = Result<(), StoreError>;
}

impl Handler<MetaPut> for Store {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: MetaPut, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let mut wtxn = self.env.write_txn()?;
        for (key, value) in &msg.0 {
            match value {
                Some(value) => self.raft_meta.put(&mut wtxn, key, value),
                None => self.raft_meta.delete(&mut wtxn, key).map(|_| ()),
            }
            .map_err(|e| self.classify(e))?;
        }
        wtxn.commit().map_err(|e| self.classify(e))?;
        Ok(())
    }
}

/// Reads metadata by name (the values of the names asked, in order).
pub struct MetaGet(pub Vec<&'static str>);

impl Message for MetaGet {
    type Result = Result<Vec<Option<Vec<u8>>>, StoreError>;
}

impl Handler<MetaGet> for Store {
    type Result = Result<Vec<Option<Vec<u8>>>, StoreError>;

    fn handle(&mut self, msg: MetaGet, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let rtxn = self.env.read_txn()?;
        msg.0
            .iter()
            .map(|key| Ok(self.raft_meta.get(&rtxn, key)?.map(<[u8]>::to_vec)))
            .collect()
    }
}

/// One replicated change of a record: its table, key and new encoded
/// value (`None`: removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawWrite {
    pub table: String,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// Applies committed changes to the records, and notes `meta` (what was
/// applied last), in one transaction. Not refused past the soft limit:
/// what the cluster committed is applied (the leader checks for room
/// before it proposes). A write to a table that is not replicated is
/// skipped.
///
/// Synced once, not twice: its data pages are, its meta page is left to
/// the next commit (LMDB's `MDB_NOMETASYNC`, which keeps the file intact;
/// `MDB_NOSYNC` would not on a file system that reorders writes). A
/// machine that dies before may lose this last apply with the applied id
/// noted with it, in the same transaction: it is applied again from the
/// log, which is synced. `SyncNow` makes it durable before the log is cut
/// back.
pub struct ApplyWrites {
    pub writes: Vec<RawWrite>,
    pub meta: Vec<(&'static str, Vec<u8>)>,
}

impl Message for ApplyWrites {
    type Result = Result<(), StoreError>;
}

impl Handler<ApplyWrites> for Store {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: ApplyWrites, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let mut wtxn = self.env.write_txn()?;
        self.write_records(&mut wtxn, &msg.writes, &msg.meta)?;
        self.commit_unsynced(wtxn)
    }
}

/// Syncs every commit so far to the disk.
pub struct SyncNow;

impl Message for SyncNow {
    type Result = Result<(), StoreError>;
}

impl Handler<SyncNow> for Store {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, _msg: SyncNow, _ctx: &mut SyncContext<Self>) -> Self::Result {
        self.env.force_sync().map_err(|e| self.classify(e))
    }
}

impl Store {
    /// Commits without syncing its meta page (see `ApplyWrites`): only
    /// this commit; the Store's thread is the only writer, so no other
    /// commit runs while the flag is set.
    fn commit_unsynced(&self, wtxn: heed::RwTxn) -> Result<(), StoreError> {
        // Safety: heed marks the flag unsafe for what it risks, the last
        // commit on a machine's crash, which is what is accepted here (see
        // `ApplyWrites`); it is set only around this one commit.
        unsafe {
            self.env
                .set_flags(EnvFlags::NO_META_SYNC, FlagSetMode::Enable)
        }
        .map_err(|e| self.classify(e))?;
        let committed = wtxn.commit().map_err(|e| self.classify(e));
        let restored = unsafe {
            self.env
                .set_flags(EnvFlags::NO_META_SYNC, FlagSetMode::Disable)
        }
        .map_err(|e| self.classify(e));
        committed.and(restored)
    }
}

/// Whether the records named (table, key), about to be put, fit: past
/// the soft limit a batch that adds a record is refused (`Full`), as a
/// commit would be. The leader asks before it proposes a change, since
/// what the cluster committed is applied whatever the room.
pub struct CheckRoom(pub Vec<(String, String)>);

impl Message for CheckRoom {
    type Result = Result<(), StoreError>;
}

impl Handler<CheckRoom> for Store {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: CheckRoom, _ctx: &mut SyncContext<Self>) -> Self::Result {
        if msg.0.is_empty() || !self.over_soft_limit()? {
            return Ok(());
        }
        let rtxn = self.env.read_txn()?;
        for (table, key) in &msg.0 {
            let Some(db) = self.replicated_table(table) else {
                continue;
            };
            if db.get(&rtxn, key)?.is_none() {
                return Err(StoreError::Full {
                    map_mb: self.map_size >> 20,
                });
            }
        }
        Ok(())
    }
}

/// Every replicated record, and the metadata asked for, read in one
/// transaction (a snapshot's content).
pub struct DumpRecords {
    pub meta: Vec<&'static str>,
}

/// Records as (table, key, encoded value), and the metadata asked for.
pub type Dump = (Vec<RawWrite>, Vec<Option<Vec<u8>>>);

impl Message for DumpRecords {
    type Result = Result<Dump, StoreError>;
}

impl Handler<DumpRecords> for Store {
    type Result = Result<Dump, StoreError>;

    fn handle(&mut self, msg: DumpRecords, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let rtxn = self.env.read_txn()?;
        let mut records = Vec::new();
        for name in REPLICATED {
            for entry in self.table(name).iter(&rtxn)? {
                let (key, value) = entry?;
                records.push(RawWrite {
                    table: (*name).to_string(),
                    key: key.to_string(),
                    value: Some(value.to_vec()),
                });
            }
        }
        let meta = msg
            .meta
            .iter()
            .map(|key| Ok(self.raft_meta.get(&rtxn, key)?.map(<[u8]>::to_vec)))
            .collect::<Result<_, StoreError>>()?;
        Ok((records, meta))
    }
}

/// Replaces every replicated record with `records` (a snapshot installed)
/// and notes `meta`, in one transaction; the worker's own records stay.
pub struct ReplaceRecords {
    pub records: Vec<RawWrite>,
    pub meta: Vec<(&'static str, Vec<u8>)>,
}

impl Message for ReplaceRecords {
    type Result = Result<(), StoreError>;
}

impl Handler<ReplaceRecords> for Store {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: ReplaceRecords, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let mut wtxn = self.env.write_txn()?;
        for name in REPLICATED {
            self.table(name)
                .clear(&mut wtxn)
                .map_err(|e| self.classify(e))?;
        }
        self.write_records(&mut wtxn, &msg.records, &msg.meta)?;
        wtxn.commit().map_err(|e| self.classify(e))?;
        Ok(())
    }
}

impl Store {
    /// Puts or removes each record of `writes`, and puts `meta`.
    fn write_records(
        &self,
        wtxn: &mut heed::RwTxn,
        writes: &[RawWrite],
        meta: &[(&'static str, Vec<u8>)],
    ) -> Result<(), StoreError> {
        for write in writes {
            // Skipped the same way on every manager (a change from a newer
            // version, say): failing would stop each of them for good, on
            // this entry, at every start.
            let Some(table) = self.replicated_table(&write.table) else {
                log::warn!(
                    "store: a replicated change names table {:?}, not replicated here: skipped",
                    write.table
                );
                continue;
            };
            match &write.value {
                Some(value) => table.put(wtxn, &write.key, value),
                None => table.delete(wtxn, &write.key).map(|_| ()),
            }
            .map_err(|e| self.classify(e))?;
        }
        for (key, value) in meta {
            self.raft_meta
                .put(wtxn, key, value)
                .map_err(|e| self.classify(e))?;
        }
        Ok(())
    }
}
