//! Tasks: the spec a user writes, the record the system keeps, the state table.

pub mod backoff;
pub mod name;
pub mod record;
pub mod spec;
pub mod state;
pub mod status;

pub use record::{ApplyError, DesiredState, TaskRecord};
pub use spec::{SpecError, TaskSpec};
pub use state::{IllegalTransition, TaskState, check_transition};
