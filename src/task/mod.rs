//! Tasks: the spec a user writes, the record the system keeps, the state table.

pub mod record;
pub mod spec;
pub mod state;

pub use record::{ApplyError, DesiredState, TaskRecord};
pub use spec::{SpecError, TaskSpec};
pub use state::{IllegalTransition, TaskState, check_transition};
