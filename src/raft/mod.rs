//! Managers replicated on Raft (openraft). What the log carries is the
//! records a batch of commands changed ([`Change`]), as the leader's core
//! staged them: applying an entry writes those records, the same on every
//! manager, so the managers' stores stay the same without replaying
//! decisions that depend on the leader's own view (liveness clocks, node
//! load, placement).
//!
//! - `types.rs`: Cube's Raft type configuration and what an entry holds.
//! - `log_store.rs`: the log, vote and committed id, in LMDB through the
//!   Store (`store::raft`).
//! - `state_machine.rs`: applying entries to the records, and snapshots
//!   (every record, with the last applied id and membership).
//! - `network.rs`: the RPCs between managers as JSON over a `Transport`,
//!   and `answer`, their receiving side.
//! - `start.rs`: a manager's Raft started on its Store, with its `Timing`.

// openraft's traits fix the error type (`StorageError`, 200-odd bytes).
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod network;
pub mod start;
pub mod state_machine;
pub mod types;

pub use log_store::LogStore;
pub use network::Contacts;
pub use start::{Taps, Timing, compact, start};
pub use state_machine::StateMachine;
pub use types::{
    Change, ChangeMembers, Cube, Feed, Member, Metrics, NodeId, Raft, Record, Replicated,
};

#[cfg(test)]
mod tests;
