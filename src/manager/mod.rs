//! The manager: the Manager actor (the shell around `core`), its event
//! log and its HTTP routes.

pub mod actor;
pub mod auth;
pub mod client_file;
pub mod consensus;
pub mod events;
pub mod forward;
pub mod join;
pub mod join_tokens;
pub mod joining;
pub mod managers;
pub mod members;
pub mod raft_rpc;
pub mod replica;
pub mod routes;
pub mod services;
pub mod tokens;

pub use actor::Manager;
