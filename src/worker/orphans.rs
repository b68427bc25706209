//! Containers labelled with this node that no task wants any more (a task
//! that ended or moved while the worker was down, a record lost with its
//! data dir): the worker removes them after a grace period. Pure.

use uuid::Uuid;

/// The ids of the containers in `found` (task, attempt, container id) that
/// `wanted` does not claim.
pub fn orphans(found: &[(Uuid, u32, String)], wanted: impl Fn(Uuid, u32) -> bool) -> Vec<String> {
    found
        .iter()
        .filter(|(task, attempt, _)| !wanted(*task, *attempt))
        .map(|(_, _, id)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_containers_no_task_claims_are_orphans() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let found = vec![
            (a, 2, "current".to_string()),
            (a, 1, "older-attempt".to_string()),
            (b, 1, "unknown-task".to_string()),
        ];
        let wanted = |task: Uuid, attempt: u32| task == a && attempt == 2;
        assert_eq!(
            orphans(&found, wanted),
            vec!["older-attempt", "unknown-task"]
        );
        assert!(orphans(&found, |_, _| true).is_empty());
    }
}
