//! Round-robin: the next ready node after the last one chosen.

use super::{NoFit, NodeSnapshot};

/// Picks the first ready node at or after `cursor` (wrapping), and returns its
/// index and the cursor for the next call.
pub fn place(nodes: &[NodeSnapshot], cursor: usize) -> Result<(usize, usize), NoFit> {
    if nodes.is_empty() {
        return Err(NoFit("no worker has registered yet".into()));
    }
    let n = nodes.len();
    (0..n)
        .map(|offset| (cursor + offset) % n)
        .find(|&i| nodes[i].ready)
        .map(|i| (i, (i + 1) % n))
        .ok_or_else(|| NoFit(format!("none of the {n} workers is ready")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ready: &[bool]) -> Vec<NodeSnapshot> {
        ready
            .iter()
            .enumerate()
            .map(|(i, &ready)| NodeSnapshot {
                name: format!("w{i}"),
                ready,
            })
            .collect()
    }

    #[test]
    fn cycles_through_ready_nodes() {
        let all = nodes(&[true, true, true]);
        let mut cursor = 0;
        let mut picked = Vec::new();
        for _ in 0..6 {
            let (i, next) = place(&all, cursor).unwrap();
            picked.push(i);
            cursor = next;
        }
        assert_eq!(picked, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_nodes_that_are_not_ready() {
        let some = nodes(&[true, false, true]);
        assert_eq!(place(&some, 1).unwrap(), (2, 0));
        assert_eq!(place(&some, 0).unwrap(), (0, 1));
    }

    #[test]
    fn a_cursor_past_the_end_wraps() {
        assert_eq!(place(&nodes(&[true, true]), 7).unwrap(), (1, 0));
    }

    #[test]
    fn no_fit_says_why() {
        assert!(place(&[], 0).unwrap_err().0.contains("no worker"));
        assert!(place(&nodes(&[false]), 0).unwrap_err().0.contains("ready"));
    }
}
