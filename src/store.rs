//! The Store actor: the only code that touches LMDB (through heed).
//!
//! It runs on a `SyncArbiter` thread of its own, so the blocking LMDB calls
//! (and the fsync of every commit) never stall an async arbiter. One thread
//! means one writer. A `Put` answers only after its transaction committed
//! with LMDB's default, synced flags: whoever waits on it may say "done".
//!
//! `raft.rs` holds the Raft log and its metadata (vote, applied, ...) in
//! two more tables, and applies replicated changes to the records: the
//! manager's batches, each one entry of the log (group commit). Past the
//! soft limit a batch that adds a record is refused before it is proposed
//! ([`CheckRoom`]: [`StoreError::Full`]); removing records frees room
//! again.

mod raft;
pub use raft::{
    ApplyWrites, CheckRoom, Dump, DumpRecords, LogAppend, LogLast, LogPurge, LogRange, LogTruncate,
    MetaGet, MetaPut, RawWrite, ReadSide, ReplaceRecords, SyncNow,
};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use actix::prelude::*;
use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, EnvOpenOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The default LMDB map size: the most the data file may grow to (it is sparse).
pub const MAP_SIZE_BYTES: usize = 1 << 30;

/// Past this share of the map, a batch that adds or replaces records is
/// refused as full; removals still go through and make room.
const SOFT_LIMIT_PERCENT: u64 = 85;

/// Tables (LMDB named databases) of records this store holds.
const TABLES: &[&str] = &[
    "tasks",
    "nodes",
    "worker_tasks",
    "tokens",
    "join_tokens",
    "services",
];
/// The tables of the manager's records, which managers replicate (not
/// `worker_tasks`: a worker's own, in the same file on a `dev` node).
const REPLICATED: &[&str] = &["tasks", "nodes", "tokens", "join_tokens", "services"];
/// The Raft log (by index) and the Raft metadata (by name).
const RAFT_LOG: &str = "raft_log";
const RAFT_META: &str = "raft_meta";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the store is full (its LMDB map of {map_mb} MB is used up): remove ended tasks or raise store_map_mb"
    )]
    Full { map_mb: usize },
    #[error("LMDB: {0}")]
    Lmdb(#[from] heed::Error),
    #[error("cannot encode or decode a {table} record: {source}")]
    Codec {
        table: &'static str,
        source: serde_json::Error,
    },
    #[error("the store is unavailable: {0}")]
    Mailbox(#[from] MailboxError),
}

/// A kind of record the Store keeps: its table and key.
pub trait Stored: Serialize + DeserializeOwned + Send + 'static {
    const TABLE: &'static str;
    fn key(&self) -> String;
    /// Whether `self` may replace `old`; false keeps the stored one (a write
    /// that lost a race never takes the record back in time).
    fn supersedes(&self, _old: &Self) -> bool {
        true
    }
}

#[derive(Clone)]
pub struct Store {
    env: Env,
    tables: HashMap<&'static str, Database<Str, Bytes>>,
    raft_log: Database<U64<BigEndian>, Bytes>,
    raft_meta: Database<Str, Bytes>,
    map_size: usize,
}

impl Store {
    /// Opens (or creates) the LMDB environment under `data_dir/lmdb` and
    /// starts the Store on its own thread.
    pub fn start(data_dir: &Path) -> Result<Addr<Store>, StoreError> {
        Self::start_with_map_size(data_dir, MAP_SIZE_BYTES)
    }

    /// As [`Store::start`], with a map of `map_size` bytes.
    pub fn start_with_map_size(
        data_dir: &Path,
        map_size: usize,
    ) -> Result<Addr<Store>, StoreError> {
        let path = data_dir.join("lmdb");
        std::fs::create_dir_all(&path).map_err(|source| StoreError::DataDir {
            path: path.clone(),
            source,
        })?;
        // SAFETY: heed requires that one process opens an environment once and
        // that nothing else maps the file unsafely; the Store is the only
        // opener in this process and LMDB's own locks cover other processes.
        let env = unsafe {
            EnvOpenOptions::new()
                .map_size(map_size)
                .max_dbs(TABLES.len() as u32 + 2)
                .open(&path)?
        };
        let mut wtxn = env.write_txn()?;
        let mut tables = HashMap::new();
        for name in TABLES {
            let db: Database<Str, Bytes> = env.create_database(&mut wtxn, Some(name))?;
            tables.insert(*name, db);
        }
        let raft_log = env.create_database(&mut wtxn, Some(RAFT_LOG))?;
        let raft_meta = env.create_database(&mut wtxn, Some(RAFT_META))?;
        wtxn.commit()?;
        log::info!("store: LMDB opened at {}", path.display());
        Ok(SyncArbiter::start(1, move || Store {
            env: env.clone(),
            tables: tables.clone(),
            raft_log,
            raft_meta,
            map_size,
        }))
    }

    /// A second thread on `store`'s environment, for reads only: LMDB's
    /// readers do not wait for its writer, so a read sent there does not
    /// queue behind the writer's `fdatasync`s. A read sent once a write's
    /// answer has come sees the write (committed before it answers).
    pub async fn reader(store: &Addr<Store>) -> Result<Addr<Store>, StoreError> {
        let copy = store.send(ReadSide).await?;
        Ok(SyncArbiter::start(1, move || copy.clone()))
    }

    fn table(&self, name: &'static str) -> Database<Str, Bytes> {
        // TABLES lists every Stored::TABLE; all were created at start.
        self.tables[name]
    }

    /// A replicated table named by data (a replicated change): one of
    /// [`REPLICATED`], if it is.
    fn replicated_table(&self, name: &str) -> Option<Database<Str, Bytes>> {
        REPLICATED
            .contains(&name)
            .then(|| self.tables.get(name).copied())
            .flatten()
    }

    /// Whether the records use more than [`SOFT_LIMIT_PERCENT`] of the map.
    fn over_soft_limit(&self) -> Result<bool, StoreError> {
        let limit = (self.map_size as u64 / 100).saturating_mul(SOFT_LIMIT_PERCENT);
        // The file's high-water mark bounds what is used: below the limit,
        // no need to count the pages in use (the usual case, and cheap).
        let page_size = u64::from(self.env.stat().page_size);
        let high_water = (self.env.info().last_page_number as u64)
            .saturating_add(1)
            .saturating_mul(page_size);
        if high_water <= limit {
            return Ok(false);
        }
        let used = self.env.non_free_pages_size()?;
        Ok(used > limit)
    }

    /// A map-full error says so; any other stays an LMDB error.
    fn classify(&self, e: heed::Error) -> StoreError {
        match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => StoreError::Full {
                map_mb: self.map_size >> 20,
            },
            e => StoreError::Lmdb(e),
        }
    }
}

impl Actor for Store {
    type Context = SyncContext<Self>;
}

/// Writes (inserts or replaces) one record, committed before the reply.
pub struct Put<T: Stored>(pub T);

impl<T: Stored> Message for Put<T> {
    type Result = Result<(), StoreError>;
}

impl<T: Stored> Handler<Put<T>> for Store {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: Put<T>, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let db = self.table(T::TABLE);
        let key = msg.0.key();
        let mut wtxn = self.env.write_txn()?;
        if let Some(bytes) = db.get(&wtxn, &key)? {
            let old: T = decode(T::TABLE, bytes)?;
            if !msg.0.supersedes(&old) {
                log::debug!("store: kept newer {} record {key}", T::TABLE);
                return Ok(());
            }
        }
        let bytes = serde_json::to_vec(&msg.0).map_err(|source| StoreError::Codec {
            table: T::TABLE,
            source,
        })?;
        db.put(&mut wtxn, &key, &bytes)
            .map_err(|e| self.classify(e))?;
        wtxn.commit().map_err(|e| self.classify(e))?;
        Ok(())
    }
}

/// Reads every record of one table.
pub struct LoadAll<T: Stored>(std::marker::PhantomData<T>);

impl<T: Stored> LoadAll<T> {
    pub fn new() -> Self {
        LoadAll(std::marker::PhantomData)
    }
}

impl<T: Stored> Default for LoadAll<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Stored> Message for LoadAll<T> {
    type Result = Result<Vec<T>, StoreError>;
}

impl<T: Stored> Handler<LoadAll<T>> for Store {
    type Result = Result<Vec<T>, StoreError>;

    fn handle(&mut self, _msg: LoadAll<T>, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let db = self.table(T::TABLE);
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        for entry in db.iter(&rtxn)? {
            let (_key, bytes) = entry?;
            out.push(decode(T::TABLE, bytes)?);
        }
        Ok(out)
    }
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Codec { table, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Row {
        id: String,
        version: u64,
    }

    impl Stored for Row {
        const TABLE: &'static str = "tasks";
        fn key(&self) -> String {
            self.id.clone()
        }
        fn supersedes(&self, old: &Self) -> bool {
            self.version >= old.version
        }
    }

    #[actix_rt::test]
    async fn put_commits_and_never_goes_back_in_time() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::start(dir.path()).unwrap();
            let row = |v| Row {
                id: "a".into(),
                version: v,
            };
            store.send(Put(row(2))).await.unwrap().unwrap();
            store.send(Put(row(1))).await.unwrap().unwrap();
            store
                .send(Put(Row {
                    id: "b".into(),
                    version: 1,
                }))
                .await
                .unwrap()
                .unwrap();
            let rows = store.send(LoadAll::<Row>::new()).await.unwrap().unwrap();
            assert_eq!(rows.len(), 2);
            assert_eq!(rows[0].version, 2);
        }
    }

    /// A batch as the manager's leader writes it: checked for room, then
    /// applied.
    async fn commit(store: &Addr<Store>, writes: Vec<RawWrite>) -> Result<(), StoreError> {
        let puts = writes
            .iter()
            .filter(|w| w.value.is_some())
            .map(|w| (w.table.clone(), w.key.clone()))
            .collect();
        store.send(CheckRoom(puts)).await.unwrap()?;
        store
            .send(ApplyWrites {
                writes,
                meta: vec![],
            })
            .await
            .unwrap()
    }

    fn row(id: usize, version: u64) -> RawWrite {
        let key = format!("{id:06}");
        RawWrite {
            table: "tasks".into(),
            value: Some(
                serde_json::to_vec(&Row {
                    id: key.clone(),
                    version,
                })
                .unwrap(),
            ),
            key,
        }
    }

    #[actix_rt::test]
    async fn a_full_map_is_refused_whole_and_deleting_frees_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::start_with_map_size(dir.path(), 1 << 20).unwrap();
        // Fill the map in small batches until it refuses.
        let mut stored = 0;
        loop {
            let batch = (stored..stored + 50).map(|i| row(i, 1)).collect();
            match commit(&store, batch).await {
                Ok(()) => stored += 50,
                Err(StoreError::Full { map_mb }) => {
                    assert_eq!(map_mb, 1);
                    break;
                }
                Err(e) => panic!("unexpected: {e}"),
            }
            assert!(stored < 100_000, "a 1 MB map never filled");
        }
        // A refused batch left nothing behind.
        let rows = store.send(LoadAll::<Row>::new()).await.unwrap().unwrap();
        assert_eq!(rows.len(), stored);
        // Deleting half frees room for more.
        let deletes = (0..stored / 2)
            .map(|i| RawWrite {
                table: "tasks".into(),
                key: format!("{i:06}"),
                value: None,
            })
            .collect();
        commit(&store, deletes).await.unwrap();
        commit(&store, (stored..stored + 50).map(|i| row(i, 1)).collect())
            .await
            .unwrap();
    }

    #[actix_rt::test]
    async fn past_the_soft_limit_stored_records_still_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::start_with_map_size(dir.path(), 1 << 20).unwrap();
        let mut stored = 0;
        while commit(&store, (stored..stored + 50).map(|i| row(i, 1)).collect())
            .await
            .is_ok()
        {
            stored += 50;
            assert!(stored < 100_000, "a 1 MB map never filled");
        }
        // A new record is refused, even beside a change; a change alone
        // goes through.
        let mixed = vec![row(0, 2), row(stored + 1, 1)];
        assert!(matches!(
            commit(&store, mixed).await,
            Err(StoreError::Full { .. })
        ));
        commit(&store, vec![row(0, 2), row(1, 2)]).await.unwrap();
        let rows = store.send(LoadAll::<Row>::new()).await.unwrap().unwrap();
        assert_eq!(rows.len(), stored);
        assert_eq!(rows[0].version, 2);
        assert_eq!(rows[2].version, 1);
    }
}
