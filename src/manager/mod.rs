//! The manager: the Manager actor (the shell around `core`), its event
//! log and its HTTP routes.

pub mod actor;
pub mod auth;
pub mod events;
pub mod join;
pub mod join_tokens;
pub mod members;
pub mod raft_rpc;
pub mod routes;
pub mod services;
pub mod tokens;

pub use actor::Manager;
