//! The manager: the desired state of the cluster (Manager actor), what it
//! knows of workers (nodes) and of their liveness, and its HTTP routes.

pub mod actor;
pub mod drain;
pub mod events;
pub mod liveness;
pub mod nodes;
pub mod reconcile;
pub mod routes;

pub use actor::Manager;
