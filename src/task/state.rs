//! Task states and the one table that says which transitions are legal.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Accepted and stored, not yet placed on a node.
    Pending,
    /// Placed on a node; its container is not running yet (or waits to be
    /// restarted by its restart policy).
    Scheduled,
    /// The container runs.
    Running,
    /// Ended well: exit code 0, or stopped by the user.
    Completed,
    /// Ended badly: non-zero exit, or the container could not be run.
    Failed,
}

pub const ALL_STATES: [TaskState; 5] = [
    TaskState::Pending,
    TaskState::Scheduled,
    TaskState::Running,
    TaskState::Completed,
    TaskState::Failed,
];

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "Pending",
            TaskState::Scheduled => "Scheduled",
            TaskState::Running => "Running",
            TaskState::Completed => "Completed",
            TaskState::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal task transition {from} -> {to}")]
pub struct IllegalTransition {
    pub from: TaskState,
    pub to: TaskState,
}

/// The transition table: `TABLE[from][to]` says whether `from -> to` is legal.
/// Rows and columns follow [`ALL_STATES`]: Pending, Scheduled, Running,
/// Completed, Failed. Staying in the same state is not a transition.
const TABLE: [[bool; 5]; 5] = [
    //  Pend   Sched  Run    Compl  Fail
    [false, true, false, true, true], // Pending: placed, stopped before placement, or refused
    [true, false, true, true, true], // Scheduled: back to Pending when its node refuses it or is lost
    [true, true, false, true, true], // Running: it ends, waits to restart (Scheduled), or its node is lost
    [false, false, false, false, false], // Completed: terminal
    [false, false, false, false, false], // Failed: terminal
];

fn index(state: TaskState) -> usize {
    match state {
        TaskState::Pending => 0,
        TaskState::Scheduled => 1,
        TaskState::Running => 2,
        TaskState::Completed => 3,
        TaskState::Failed => 4,
    }
}

/// Checks `from -> to` against the table.
pub fn check_transition(from: TaskState, to: TaskState) -> Result<(), IllegalTransition> {
    if TABLE[index(from)][index(to)] {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::*;
    use super::*;

    #[test]
    fn every_pair_of_states() {
        let legal = [
            (Pending, Scheduled),
            (Pending, Completed),
            (Pending, Failed),
            (Scheduled, Pending),
            (Scheduled, Running),
            (Scheduled, Completed),
            (Scheduled, Failed),
            (Running, Pending),
            (Running, Scheduled),
            (Running, Completed),
            (Running, Failed),
        ];
        for from in ALL_STATES {
            for to in ALL_STATES {
                let expected = legal.contains(&(from, to));
                assert_eq!(
                    check_transition(from, to).is_ok(),
                    expected,
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in [Completed, Failed] {
            assert!(from.is_terminal());
            for to in ALL_STATES {
                assert_eq!(
                    check_transition(from, to),
                    Err(IllegalTransition { from, to })
                );
            }
        }
    }

    #[test]
    fn states_serialize_by_name() {
        for s in ALL_STATES {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}
