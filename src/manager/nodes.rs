//! What the manager knows of each worker node.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::Stored;
use crate::task::TaskRecord;
use crate::wire::Capacity;

/// A registered worker, as stored in LMDB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// Base URL of the worker's API.
    pub address: String,
    pub capacity: Capacity,
    pub registered_at: DateTime<Utc>,
}

impl Stored for NodeRecord {
    const TABLE: &'static str = "nodes";
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// A node as `GET /nodes` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub address: String,
    pub state: String,
    pub capacity: Capacity,
    pub registered_at: DateTime<Utc>,
    /// Tasks placed on the node that have not ended.
    pub tasks: usize,
}

impl NodeView {
    pub fn new<'a>(node: &NodeRecord, tasks: impl Iterator<Item = &'a TaskRecord>) -> Self {
        let active = tasks
            .filter(|t| t.node.as_deref() == Some(node.name.as_str()) && !t.state.is_terminal())
            .count();
        NodeView {
            name: node.name.clone(),
            address: node.address.clone(),
            state: "ready".to_string(),
            capacity: node.capacity.clone(),
            registered_at: node.registered_at,
            tasks: active,
        }
    }
}
