//! The request bodies a node's balancer may hold in memory at once, over
//! all its ports and threads (each HTTP request's body is read whole before
//! it is sent, so that a retry can send it again).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of request bodies held, against a cap.
#[derive(Debug)]
pub struct BodyBudget {
    cap: usize,
    used: AtomicUsize,
}

/// The default cap: 256 MiB.
pub const BODY_BUDGET: usize = 256 << 20;

impl BodyBudget {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(BodyBudget {
            cap,
            used: AtomicUsize::new(0),
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// An empty hold on the budget, to grow as a body arrives.
    pub fn hold(self: &Arc<Self>) -> Held {
        Held {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes of the budget held for one body, given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Held {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `more` bytes besides, if the budget has them.
    pub fn grow(&mut self, more: usize) -> bool {
        let cap = self.budget.cap;
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|&total| total <= cap)
            });
        if taken.is_ok() {
            self.bytes += more;
        }
        taken.is_ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_add_up_to_the_cap_and_are_given_back_when_dropped() {
        let budget = BodyBudget::new(100);
        let mut a = budget.hold();
        let mut b = budget.hold();
        assert!(a.grow(60));
        assert!(!b.grow(41), "past the cap");
        assert_eq!(b.bytes(), 0, "a refused grow holds nothing");
        assert!(b.grow(40));
        assert!(!a.grow(1));
        assert!(!a.grow(usize::MAX), "no overflow");
        drop(a);
        let mut c = budget.hold();
        assert!(c.grow(60), "a's 60 bytes given back");
        drop((b, c));
        assert!(budget.hold().grow(100));
    }
}
