//! Round-robin: the next fitting node after the last one chosen.

use super::filter::{candidates, fits};
use super::{NoFit, NodeSnapshot, TaskRequest};

/// Picks the first node that fits `task` at or after `cursor` (wrapping), and
/// returns its index and the cursor for the next call (the index after it).
pub fn place(
    task: &TaskRequest,
    nodes: &[NodeSnapshot],
    cursor: usize,
) -> Result<(usize, usize), NoFit> {
    let n = nodes.len();
    // Scan from the cursor and stop at the first fit; only a task that fits
    // nowhere pays for the full filter (which says why).
    let chosen = (0..n)
        .map(|offset| (cursor + offset) % n)
        .find(|&i| fits(task, &nodes[i]).is_ok());
    match chosen {
        Some(i) => Ok((i, (i + 1) % n)),
        None => Err(candidates(task, nodes)
            .err()
            .unwrap_or_else(|| NoFit("no node fits the task".into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{node, task};

    /// (case, nodes, task, cursor, expected node, expected next cursor)
    type Case = (
        &'static str,
        Vec<NodeSnapshot>,
        TaskRequest,
        usize,
        &'static str,
        usize,
    );

    #[test]
    fn table() {
        let small = task("t", 1.0, 512, 0);
        let cases: Vec<Case> = vec![
            (
                "cursor at the start",
                vec![node("w0", 2.0, 1024, 0), node("w1", 2.0, 1024, 0)],
                small.clone(),
                0,
                "w0",
                1,
            ),
            (
                "cursor in the middle",
                vec![node("w0", 2.0, 1024, 0), node("w1", 2.0, 1024, 0)],
                small.clone(),
                1,
                "w1",
                0,
            ),
            (
                "a cursor past the end wraps",
                vec![node("w0", 2.0, 1024, 0), node("w1", 2.0, 1024, 0)],
                small.clone(),
                7,
                "w1",
                0,
            ),
            (
                "skips a node that is not ready",
                vec![
                    node("w0", 2.0, 1024, 0),
                    node("w1", 2.0, 1024, 0).not_ready(),
                    node("w2", 2.0, 1024, 0),
                ],
                small.clone(),
                1,
                "w2",
                0,
            ),
            (
                "skips a full node and wraps",
                vec![
                    node("w0", 2.0, 1024, 0),
                    node("w1", 2.0, 1024, 0).with_allocated(0.0, 1000, 0),
                ],
                small.clone(),
                1,
                "w0",
                1,
            ),
            (
                "skips a node holding the host port",
                vec![
                    node("w0", 2.0, 1024, 0).with_ports(&[80]),
                    node("w1", 2.0, 1024, 0),
                ],
                small.clone().with_ports(&[80]),
                0,
                "w1",
                0,
            ),
        ];
        for (case, nodes, task, cursor, expected, next) in cases {
            let (i, got_next) = place(&task, &nodes, cursor).expect(case);
            assert_eq!(
                (nodes[i].name.as_str(), got_next),
                (expected, next),
                "{case}"
            );
        }
    }

    #[test]
    fn cycles_through_the_nodes() {
        let nodes = vec![
            node("w0", 8.0, 8192, 0),
            node("w1", 8.0, 8192, 0),
            node("w2", 8.0, 8192, 0),
        ];
        let t = task("t", 1.0, 64, 0);
        let mut cursor = 0;
        let mut picked = Vec::new();
        for _ in 0..6 {
            let (i, next) = place(&t, &nodes, cursor).expect("fits");
            picked.push(i);
            cursor = next;
        }
        assert_eq!(picked, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn no_fit_says_why() {
        let t = task("t", 0.0, 0, 0);
        assert_eq!(
            place(&t, &[], 0),
            Err(NoFit("no worker has registered yet".into()))
        );
        let down = vec![node("w0", 1.0, 1, 0).not_ready()];
        assert!(place(&t, &down, 0).is_err());
    }
}
