//! The worker: the Worker actor (owns the node), one TaskSupervisor per task,
//! the DockerEvents actor (the engine connection and its event stream), the
//! Stats actor (sysinfo), the worker's own task records, and its routes.

pub mod actor;
pub mod endpoints;
pub mod events;
pub mod health;
pub mod join;
pub mod managers;
pub mod orphans;
pub mod record;
pub mod restart;
pub mod routes;
pub mod stats;
pub mod supervisor;

pub use actor::Worker;
