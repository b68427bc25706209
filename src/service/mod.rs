//! Services: `replicas` copies of one task spec, kept running one per slot
//! (`web.1`, `web.2`, ...), scaled, and updated slot by slot with automatic
//! rollback. `spec.rs` is what a user writes (checked field by field, every
//! error naming its path), `record.rs` what the cluster keeps of a service
//! (its versions and the update in progress). What to do about a service is
//! decided in `core::orchestrate`.

pub mod endpoints;
pub mod record;
pub mod spec;

pub use endpoints::{Endpoint, EndpointTable, Endpoints};
pub use record::{ServiceRecord, ServiceView, SlotWait, UpdateState, UpdateStatus};
pub use spec::{Expose, FailureAction, ServiceSpec, UpdateConfig, UpdateOrder};
