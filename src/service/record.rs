//! What the cluster keeps of a service: the spec it runs now and its
//! version, the version before (what a rollback returns to), the counter
//! its replicas' task ids come from, and the update in progress.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::spec::ServiceSpec;
use crate::store::Stored;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Made when the service is created; its replicas' task ids derive from
    /// it, so a service made again under the same name shares nothing with
    /// the one before.
    pub id: Uuid,
    pub spec: ServiceSpec,
    /// The version of `spec`: 1 when created, a new one for every change of
    /// the spec (a rollback returns to the version it rolls back to).
    pub version: u64,
    /// The spec before the last update, for a rollback.
    pub previous: Option<Previous>,
    /// The version the next update gets (versions are never reused).
    pub next_version: u64,
    /// Replicas made so far (each one's task id derives from its number).
    pub tasks_made: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The token that created it.
    pub created_by: Option<String>,
    /// The last update (or rollback), in progress or done.
    pub update: Option<UpdateStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Previous {
    pub version: u64,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Completed,
    Paused,
    RollingBack,
    RolledBack,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Completed => "completed",
            UpdateState::Paused => "paused",
            UpdateState::RollingBack => "rolling_back",
            UpdateState::RolledBack => "rolled_back",
        }
    }

    /// Replicas are being replaced.
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollingBack)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub from_version: u64,
    pub to_version: u64,
    pub started_at: DateTime<Utc>,
    /// When it completed, paused or rolled back.
    pub ended_at: Option<DateTime<Utc>>,
    /// When the last slot was done (its new replica counted and the old one
    /// was stopped): the next one starts `delay_s` later.
    pub last_done_at: Option<DateTime<Utc>>,
    /// Why it paused or rolled back.
    pub message: Option<String>,
}

impl ServiceRecord {
    /// A new service at version 1.
    pub fn new(id: Uuid, spec: ServiceSpec, by: Option<String>, now: DateTime<Utc>) -> Self {
        ServiceRecord {
            id,
            spec,
            version: 1,
            previous: None,
            next_version: 2,
            tasks_made: 0,
            created_at: now,
            updated_at: now,
            created_by: by,
            update: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether replicas are being replaced now.
    pub fn updating(&self) -> bool {
        self.update.as_ref().is_some_and(|u| u.state.in_progress())
    }

    /// Starts an update to `spec`: the current one becomes the previous.
    pub fn update_to(&mut self, spec: ServiceSpec, now: DateTime<Utc>) {
        let from = self.version;
        let old = std::mem::replace(&mut self.spec, spec);
        self.previous = Some(Previous {
            version: from,
            spec: old,
        });
        self.version = self.next_version;
        self.next_version = self.next_version.saturating_add(1);
        self.update = Some(UpdateStatus::begin(
            UpdateState::Updating,
            from,
            self.version,
            now,
        ));
        self.updated_at = now;
    }

    /// Goes back to the previous spec (the current one becomes the
    /// previous); false when there is none.
    pub fn roll_back(&mut self, why: Option<String>, now: DateTime<Utc>) -> bool {
        let Some(previous) = self.previous.take() else {
            return false;
        };
        let from = self.version;
        let spec = std::mem::replace(&mut self.spec, previous.spec);
        self.previous = Some(Previous {
            version: from,
            spec,
        });
        self.version = previous.version;
        let mut status = UpdateStatus::begin(UpdateState::RollingBack, from, self.version, now);
        status.message = why;
        self.update = Some(status);
        self.updated_at = now;
        true
    }
}

impl UpdateStatus {
    fn begin(state: UpdateState, from: u64, to: u64, now: DateTime<Utc>) -> Self {
        UpdateStatus {
            state,
            from_version: from,
            to_version: to,
            started_at: now,
            ended_at: None,
            last_done_at: None,
            message: None,
        }
    }
}

impl Stored for ServiceRecord {
    const TABLE: &'static str = "services";
    fn key(&self) -> String {
        self.spec.name.clone()
    }
}

/// A service as `GET /services` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub id: Uuid,
    pub version: u64,
    pub spec: ServiceSpec,
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas of any version running.
    pub running: u32,
    /// Replicas running and healthy (or running, without a health check).
    pub healthy: u32,
    /// The last update (or rollback).
    pub update: Option<UpdateStatus>,
    /// Slots waiting out a back-off after failures, and why.
    pub waiting: Vec<SlotWait>,
    /// The version a rollback returns to.
    pub previous_version: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotWait {
    pub slot: u32,
    pub why: String,
}
