//! The manager's core: a pure state machine.
//!
//! [`ClusterState`] holds what the manager knows; [`apply`] applies one
//! [`Command`] to it at a given time and returns the [`Reply`] for whoever
//! sent the command and the [`Effect`]s the Manager actor must carry out
//! once the state's staged changes are committed (assignments and stops to
//! send). Nothing here does I/O, reads a clock or spawns: the same commands
//! applied in the same order at the same times give the same state and the
//! same effects. This is what a replicated log will feed every manager.

pub mod apply;
pub mod command;
pub mod drain;
pub mod events;
pub mod join_tokens;
pub mod liveness;
pub mod nodes;
pub mod orchestrate;
pub mod place;
pub mod reconcile;
pub mod services;
pub mod state;
pub mod tokens;

pub use apply::apply;
pub use command::{Command, CoreError, Effect, Now, Reply, TaskPage, TaskQuery};
pub use state::{ClusterState, Retention, Staged};

#[cfg(test)]
mod tests;
