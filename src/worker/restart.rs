//! Restart policies and their back-off: what the TaskSupervisor does when a
//! container exits by itself. Pure functions; the supervisor only acts.

use crate::task::TaskState;
use crate::task::spec::{RestartPolicy, RestartSpec};

pub use crate::task::backoff::Backoff;

/// What follows an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    Restart,
    End(TaskState),
}

/// The policy's answer to a container that exited with `exit_code` after
/// `restarts` restarts of this attempt.
pub fn after_exit(restart: &RestartSpec, exit_code: i64, restarts: u32) -> AfterExit {
    let ended = if exit_code == 0 {
        TaskState::Completed
    } else {
        TaskState::Failed
    };
    match restart.policy {
        RestartPolicy::No => AfterExit::End(ended),
        RestartPolicy::Always | RestartPolicy::UnlessStopped => AfterExit::Restart,
        RestartPolicy::OnFailure if exit_code == 0 => AfterExit::End(TaskState::Completed),
        RestartPolicy::OnFailure => match restart.max_retries {
            Some(max) if restarts >= max => AfterExit::End(TaskState::Failed),
            _ => AfterExit::Restart,
        },
    }
}

/// The policy's answer to a container stopped for failing its health
/// check: a failure, as a non-zero exit would be.
pub fn after_unhealthy(restart: &RestartSpec, restarts: u32) -> AfterExit {
    after_exit(restart, 1, restarts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(policy: RestartPolicy, max_retries: Option<u32>) -> RestartSpec {
        RestartSpec {
            policy,
            max_retries,
        }
    }

    #[test]
    fn each_policy_after_each_kind_of_exit() {
        use AfterExit::*;
        use RestartPolicy::*;
        use TaskState::{Completed, Failed};
        let cases = [
            // (policy, max_retries, exit code, restarts so far, expected)
            (No, None, 0, 0, End(Completed)),
            (No, None, 3, 0, End(Failed)),
            (Always, None, 0, 0, Restart),
            (Always, None, 3, 99, Restart),
            (UnlessStopped, None, 0, 5, Restart),
            (UnlessStopped, None, 137, 5, Restart),
            (OnFailure, None, 0, 0, End(Completed)),
            (OnFailure, None, 3, 1000, Restart),
            (OnFailure, Some(3), 3, 0, Restart),
            (OnFailure, Some(3), 3, 2, Restart),
            (OnFailure, Some(3), 3, 3, End(Failed)),
            (OnFailure, Some(3), 0, 3, End(Completed)),
            (OnFailure, Some(0), 1, 0, End(Failed)),
        ];
        for (policy, max, code, restarts, expected) in cases {
            assert_eq!(
                after_exit(&spec(policy, max), code, restarts),
                expected,
                "{policy:?} max {max:?} exit {code} after {restarts}"
            );
        }
    }

    #[test]
    fn an_unhealthy_container_is_a_failure() {
        use RestartPolicy::*;
        assert_eq!(
            after_unhealthy(&spec(No, None), 0),
            AfterExit::End(TaskState::Failed)
        );
        assert_eq!(after_unhealthy(&spec(Always, None), 9), AfterExit::Restart);
        assert_eq!(
            after_unhealthy(&spec(OnFailure, Some(2)), 1),
            AfterExit::Restart
        );
        assert_eq!(
            after_unhealthy(&spec(OnFailure, Some(2)), 2),
            AfterExit::End(TaskState::Failed)
        );
    }

    #[test]
    fn the_delay_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let ms: Vec<u128> = (0..12).map(|s| b.delay(s).as_millis()).collect();
        assert_eq!(
            ms,
            vec![
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn a_clean_run_resets_the_back_off() {
        let b = Backoff::default();
        assert_eq!(b.next_step(5, Duration::from_secs(2)), 5);
        assert_eq!(b.next_step(5, Duration::from_secs(10)), 0);
    }
}
