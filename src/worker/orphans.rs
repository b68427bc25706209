//! Containers labelled with this node that no task wants any more (a task
//! that ended or moved while the worker was down, a record lost with its
//! data dir): the worker removes them after a grace period. Pure.

use uuid::Uuid;

use crate::runtime::NodeContainer;

/// The ids of the containers in `found` that `wanted` (task, attempt) does
/// not claim.
pub fn orphans(found: &[NodeContainer], wanted: impl Fn(Uuid, u32) -> bool) -> Vec<String> {
    found
        .iter()
        .filter(|c| !wanted(c.task_id, c.attempt))
        .map(|c| c.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_containers_no_task_claims_are_orphans() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let found: Vec<NodeContainer> = [
            (a, 2, "current"),
            (a, 1, "older-attempt"),
            (b, 1, "unknown-task"),
        ]
        .into_iter()
        .map(|(task_id, attempt, id)| NodeContainer {
            id: id.to_string(),
            task_id,
            attempt,
        })
        .collect();
        let wanted = |task: Uuid, attempt: u32| task == a && attempt == 2;
        assert_eq!(
            orphans(&found, wanted),
            vec!["older-attempt", "unknown-task"]
        );
        assert!(orphans(&found, |_, _| true).is_empty());
    }
}
