//! Cube's Raft types: a manager is a [`Member`]; an entry's data is a
//! [`Change`] of records.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::store::{RawWrite, Stored};

pub type NodeId = u64;
/// A manager's Raft.
pub type Raft = openraft::Raft<Cube>;
pub type Entry = openraft::Entry<Cube>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<Cube>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
/// A change of the members: voters or learners added or removed.
pub type ChangeMembers = openraft::ChangeMembers<NodeId, Member>;
/// What a Raft says of itself: its role, who leads, the log.
pub type Metrics = openraft::RaftMetrics<NodeId, Member>;
/// Who the managers are: the voters, and every member's id and URL.
pub type Membership = openraft::Membership<NodeId, Member>;

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

impl Record {
    /// `record`'s new value, encoded as the Store keeps it.
    pub fn put<T: Stored>(record: &T) -> Result<Self, serde_json::Error> {
        Ok(Record {
            table: T::TABLE.to_string(),
            key: record.key(),
            value: Some(serde_json::value::to_raw_value(record)?),
        })
    }

    /// The record of `key` in `table` removed.
    pub fn delete(table: &str, key: String) -> Self {
        Record {
            table: table.to_string(),
            key,
            value: None,
        }
    }
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

/// What a manager's state machine tells its manager once entries are
/// applied to the Store (its in-memory state follows the log by these).
#[derive(Debug)]
pub enum Replicated {
    /// Committed changes applied, in log order; the last entry applied is
    /// at index `upto`.
    Changes { upto: u64, changes: Vec<Change> },
    /// A snapshot replaced every record; it ends at index `upto`.
    Installed { upto: u64 },
}

/// Where a state machine sends what it applied.
pub type Feed = tokio::sync::mpsc::UnboundedSender<Replicated>;

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
