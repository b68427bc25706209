//! Cube's Raft types: a manager is a [`Member`]; an entry's data is a
//! [`Change`] of records.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::store::RawWrite;

pub type NodeId = u64;
/// A manager's Raft.
pub type Raft = openraft::Raft<Cube>;
pub type Entry = openraft::Entry<Cube>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<Cube>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;

/// A manager in the Raft cluster: its name and where its API is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub url: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.name, self.url)
    }
}

/// What one entry changes: records put or removed, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Change {
    pub records: Vec<Record>,
}

/// One record's new value (`None`: removed), JSON as the Store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub table: String,
    pub key: String,
    pub value: Option<Box<RawValue>>,
}

impl From<&Record> for RawWrite {
    fn from(r: &Record) -> Self {
        RawWrite {
            table: r.table.clone(),
            key: r.key.clone(),
            value: r.value.as_ref().map(|v| v.get().as_bytes().to_vec()),
        }
    }
}

/// What applying an entry answers: nothing beyond its being applied (the
/// leader answers its clients from its own core).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied;

openraft::declare_raft_types!(
    /// Cube's Raft: managers as [`Member`]s, [`Change`]s in the log.
    pub Cube:
        D = Change,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<Cube>,
        SnapshotData = Cursor<Vec<u8>>,
);
