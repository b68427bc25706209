//! Cube: a small container orchestrator built as an actix actor system.
//!
//! Layout (one concern per module):
//! - [`config`]: the TOML node config (`role`, `data_dir`, `[manager]`, `[worker]`).
//! - [`task`]: the task spec and its validation, the task record, the state table.
//! - [`wire`]: the JSON messages that cross process boundaries (manager <-> worker).
//! - [`api_error`]: how every HTTP error is shaped: `{"error": ..., "field": ...}`.
//! - [`store`]: the Store actor, the only code that touches LMDB.
//! - [`core`]: the manager's state machine: `ClusterState`, commands, `apply`, effects (pure).
//! - [`scheduler`]: placement strategies (pure functions) and the Scheduler actor.
//! - [`manager`]: the Manager actor (desired state of the cluster) and its HTTP routes.
//! - [`worker`]: the Worker, TaskSupervisor, DockerEvents and Stats actors and routes.
//! - [`runtime`]: the Engine trait over the container engine (Docker), and a fake for tests.
//! - [`client`]: the HTTP client used by the CLI, the manager and the workers.
//! - [`node`]: starts the actors and HTTP servers a config asks for.
//! - [`cli`]: the user-facing commands (`run`, `status`, `stop`, `nodes`).

pub mod api_error;
pub mod cli;
pub mod client;
pub mod config;
pub mod core;
pub mod dns;
pub mod ingress;
pub mod listener;
pub mod manager;
pub mod node;
pub mod raft;
pub mod runtime;
pub mod scheduler;
pub mod security;
pub mod service;
pub mod store;
pub mod task;
pub mod wire;
pub mod worker;
