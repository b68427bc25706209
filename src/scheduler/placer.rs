//! Placing a batch without scoring every node for every task.
//!
//! Up to [`EXHAUSTIVE_UP_TO`] ready nodes, and always for round-robin (which
//! stops at the first fit after its cursor), each task goes through
//! [`place`]: every node filtered, every fitting node scored.
//!
//! Above that, epvm, bin-pack and spread score, per task, only these
//! candidates, and choose among those that fit by the strategy's own
//! [`Standing`] (so by the same score and tie-breaks as [`place`]):
//! - the shortlist: the [`SHORTLIST`] best nodes for the task that last
//!   refreshed it. The first task of a batch, and then one task in every
//!   `ready / 32`, refreshes it by scoring every node: that task gets the node
//!   [`place`] would give it, and the tasks after it start from the nodes
//!   that were best then (epvm: the least loaded; spread: the emptiest).
//! - the nodes this batch chose last ([`RECENT`]): bin-pack keeps filling
//!   the node it is filling, as the exhaustive scan does; epvm keeps a cheap
//!   node while it stays cheap.
//! - a sample, as Nomad does: random ready nodes until log2(ready) of them fit
//!   (at most 4 log2(ready) tried), drawn from a deterministic generator
//!   seeded per batch. It finds what the shortlist went stale on (spread: a
//!   node without the task's name).
//!
//! A task none of them fits goes through [`place`], which finds a node if
//! any fits, or says why none does: no fitting task is ever refused.
//! Work per task: at most 32 + 8 + 4 log2(N) nodes filtered (fewer scored),
//! plus 32 amortized for the refreshes, whatever the cluster's size, where
//! [`place`] filters N. The bench prints it beside the quality of the choices.
//!
//! The choice is not always the scan's: the bench measures how far it is
//! (bin-pack packs as tight or tighter, spread keeps tasks of one name apart
//! as the scan does, epvm's summed cost a few percent higher).

use super::filter::fits;
use super::{
    NoFit, NodeSnapshot, SchedulerKind, Standing, TaskRequest, bin_pack, epvm, place, spread,
};

/// Batches on at most this many ready nodes are placed by [`place`] alone.
pub const EXHAUSTIVE_UP_TO: usize = 64;

/// How many of the best nodes a refresh keeps.
pub const SHORTLIST: usize = 32;

/// How many of the batch's last chosen nodes are candidates.
pub const RECENT: usize = 8;

/// A strategy's standing of `nodes[i]` for a task.
type Rank = for<'a> fn(&TaskRequest, &'a [NodeSnapshot], usize) -> Standing<'a>;

/// Places tasks one after another on a batch's nodes, adding each placement
/// to the chosen node, so that the next task sees it.
pub struct Placer {
    kind: SchedulerKind,
    nodes: Vec<NodeSnapshot>,
    sampler: Option<Sampler>,
    /// Nodes scored so far (for the bench and tests).
    scored: u64,
}

impl Placer {
    /// A placer for one batch; `seed` seeds its sampling.
    pub fn new(kind: SchedulerKind, nodes: Vec<NodeSnapshot>, seed: u64) -> Placer {
        Placer::sampling_above(kind, nodes, seed, EXHAUSTIVE_UP_TO)
    }

    /// A placer that samples when more than `threshold` nodes are ready.
    pub(crate) fn sampling_above(
        kind: SchedulerKind,
        nodes: Vec<NodeSnapshot>,
        seed: u64,
        threshold: usize,
    ) -> Placer {
        let rank: Option<Rank> = match kind {
            SchedulerKind::RoundRobin => None,
            SchedulerKind::Epvm => Some(epvm::standing),
            SchedulerKind::BinPack => Some(bin_pack::standing),
            SchedulerKind::Spread => Some(spread::standing),
        };
        let ready: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].ready).collect();
        let sampler = rank
            .filter(|_| ready.len() > threshold)
            .map(|rank| Sampler::new(rank, ready, seed));
        Placer {
            kind,
            nodes,
            sampler,
            scored: 0,
        }
    }

    /// Places `task` (see the module doc) and adds it to the chosen node.
    /// Round-robin starts at `cursor` and moves it past the node chosen. A
    /// replica of a service goes to a node holding none of its replicas
    /// while one fits, else wherever it fits.
    pub fn place(&mut self, task: &TaskRequest, cursor: &mut usize) -> Result<usize, NoFit> {
        let Some(group) = &task.group else {
            return self.place_anywhere(task, cursor);
        };
        let holding: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].ready && self.nodes[i].groups.get(group).is_some_and(|n| *n > 0)
            })
            .collect();
        if holding.is_empty() {
            return self.place_anywhere(task, cursor);
        }
        for &i in &holding {
            self.nodes[i].ready = false;
        }
        let apart = self.place_anywhere(task, cursor);
        for &i in &holding {
            self.nodes[i].ready = true;
        }
        apart.or_else(|_| self.place_anywhere(task, cursor))
    }

    fn place_anywhere(&mut self, task: &TaskRequest, cursor: &mut usize) -> Result<usize, NoFit> {
        let sampled = match &mut self.sampler {
            Some(sampler) => sampler.choose(task, &self.nodes, &mut self.scored),
            None => None,
        };
        let i = match sampled {
            Some(i) => i,
            None => {
                self.scored += self.nodes.len() as u64;
                place(self.kind, task, &self.nodes, cursor)?
            }
        };
        self.nodes[i].add(task);
        if let Some(sampler) = &mut self.sampler {
            sampler.chose(i);
        }
        Ok(i)
    }

    /// The nodes, with the placements so far added.
    pub fn nodes(&self) -> &[NodeSnapshot] {
        &self.nodes
    }

    /// Whether the placer samples (else every task is a full scan).
    pub fn samples(&self) -> bool {
        self.sampler.is_some()
    }

    /// Nodes scored over every placement so far (a full scan counts all).
    pub fn scored(&self) -> u64 {
        self.scored
    }
}

/// The candidates' state across a batch.
struct Sampler {
    rank: Rank,
    ready: Vec<usize>,
    rng: XorShift,
    shortlist: Vec<usize>,
    /// The batch's last chosen nodes, latest first, without repeats.
    recent: Vec<usize>,
    /// Tasks since the shortlist was refreshed, and how many between two.
    since_refresh: usize,
    period: usize,
    /// Fitting nodes a sample looks for: log2(ready), rounded up.
    sample: usize,
}

impl Sampler {
    fn new(rank: Rank, ready: Vec<usize>, seed: u64) -> Sampler {
        let sample = ready.len().next_power_of_two().trailing_zeros().max(1) as usize;
        Sampler {
            rank,
            rng: XorShift::seeded(seed),
            shortlist: Vec::new(),
            recent: Vec::with_capacity(RECENT + 1),
            since_refresh: 0,
            period: (ready.len() / 32).max(1),
            sample,
            ready,
        }
    }

    /// The best fitting candidate for `task`, or None when none fits.
    fn choose(
        &mut self,
        task: &TaskRequest,
        nodes: &[NodeSnapshot],
        scored: &mut u64,
    ) -> Option<usize> {
        if self.shortlist.is_empty() || self.since_refresh >= self.period {
            self.refresh(task, nodes, scored);
        }
        self.since_refresh += 1;

        let rank = self.rank;
        let mut best: Option<Standing> = None;
        // Whether `nodes[i]` fits, keeping it if it is the best so far.
        let mut consider = |i: usize| {
            if fits(task, &nodes[i]).is_err() {
                return false;
            }
            *scored += 1;
            let standing = rank(task, nodes, i);
            if best.is_none_or(|b| standing < b) {
                best = Some(standing);
            }
            true
        };
        for &i in self.shortlist.iter().chain(&self.recent) {
            consider(i);
        }
        let (mut fitting, mut tried) = (0, 0);
        while fitting < self.sample && tried < 4 * self.sample {
            tried += 1;
            let i = self.ready[self.rng.below(self.ready.len())];
            if consider(i) {
                fitting += 1;
            }
        }
        best.map(|b| b.index)
    }

    /// Scores every ready node for `task` and keeps the best [`SHORTLIST`].
    fn refresh(&mut self, task: &TaskRequest, nodes: &[NodeSnapshot], scored: &mut u64) {
        let mut fitting: Vec<Standing> = self
            .ready
            .iter()
            .filter(|&&i| fits(task, &nodes[i]).is_ok())
            .map(|&i| (self.rank)(task, nodes, i))
            .collect();
        *scored += fitting.len() as u64;
        let keep = SHORTLIST.min(fitting.len());
        if keep > 0 && keep < fitting.len() {
            fitting.select_nth_unstable(keep - 1);
        }
        self.shortlist = fitting[..keep].iter().map(|s| s.index).collect();
        self.since_refresh = 0;
    }

    /// Remembers that the batch chose `nodes[i]`.
    fn chose(&mut self, i: usize) {
        self.recent.retain(|&r| r != i);
        self.recent.insert(0, i);
        self.recent.truncate(RECENT);
    }
}

/// xorshift64*, seeded through splitmix64: small, fast, deterministic.
struct XorShift(u64);

impl XorShift {
    fn seeded(seed: u64) -> XorShift {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The generator is stuck at 0.
        XorShift(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{arb_node, arb_task, node, task};
    use proptest::prelude::*;

    const RANKED: [SchedulerKind; 3] = [
        SchedulerKind::Epvm,
        SchedulerKind::BinPack,
        SchedulerKind::Spread,
    ];

    #[test]
    fn replicas_of_a_service_go_apart_while_a_node_fits_then_anywhere() {
        for kind in RANKED.into_iter().chain([SchedulerKind::RoundRobin]) {
            // bin-pack would stack them all on the first node.
            let mut placer = Placer::new(kind, alike(3), 1);
            let mut cursor = 0;
            let mut replica = task("web.1", 0.5, 64, 0);
            replica.group = Some("web".into());
            let mut used: Vec<usize> = (0..3)
                .map(|_| placer.place(&replica, &mut cursor).unwrap())
                .collect();
            used.sort();
            assert_eq!(used, vec![0, 1, 2], "{kind:?}");
            // A fourth still finds a place.
            assert!(placer.place(&replica, &mut cursor).is_ok(), "{kind:?}");
            assert_eq!(
                placer
                    .nodes()
                    .iter()
                    .map(|n| n.groups["web"])
                    .sum::<usize>(),
                4
            );
        }
    }

    /// `count` identical empty nodes, named in order.
    fn alike(count: usize) -> Vec<NodeSnapshot> {
        (0..count)
            .map(|i| node(&format!("w{i:04}"), 4.0, 4096, 0))
            .collect()
    }

    fn nodes_used(chosen: &[usize]) -> usize {
        let mut used = chosen.to_vec();
        used.sort_unstable();
        used.dedup();
        used.len()
    }

    #[test]
    fn small_batches_and_round_robin_are_scanned() {
        for kind in SchedulerKind::ALL {
            let samples = Placer::new(kind, alike(EXHAUSTIVE_UP_TO), 1).samples();
            assert!(!samples, "{kind}: {EXHAUSTIVE_UP_TO} nodes");
            let mut more = alike(EXHAUSTIVE_UP_TO + 5);
            for n in &mut more[..5] {
                n.ready = false;
            }
            let samples = Placer::new(kind, more, 1).samples();
            assert!(!samples, "{kind}: {EXHAUSTIVE_UP_TO} ready nodes");
            let samples = Placer::new(kind, alike(EXHAUSTIVE_UP_TO + 1), 1).samples();
            assert_eq!(samples, kind != SchedulerKind::RoundRobin, "{kind}");
        }
    }

    #[test]
    fn round_robin_through_the_placer_is_the_scan() {
        let mut nodes = alike(300);
        for (i, n) in nodes.iter_mut().enumerate() {
            n.allocated.cpu = (i % 9) as f64 * 0.5;
        }
        // More than fits: the last tasks are refused, by both.
        let t = task("t", 1.0, 64, 0);
        let (mut scanned, mut cursor) = (nodes.clone(), 5);
        let expected: Vec<Result<usize, NoFit>> = (0..700)
            .map(|_| {
                let i = place(SchedulerKind::RoundRobin, &t, &scanned, &mut cursor)?;
                scanned[i].add(&t);
                Ok(i)
            })
            .collect();
        assert!(expected.iter().any(|r| r.is_err()));
        let mut placer = Placer::new(SchedulerKind::RoundRobin, nodes, 1);
        let mut cursor = 5;
        let got: Vec<Result<usize, NoFit>> =
            (0..700).map(|_| placer.place(&t, &mut cursor)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn bin_pack_still_packs_on_a_large_cluster() {
        // 4,096 empty 4-cpu nodes and 1,000 tasks of half a cpu: eight to a
        // node, 125 nodes, as the scan does, scoring a few dozen per task.
        let t = task("web", 0.5, 256, 0);
        let mut placer = Placer::new(SchedulerKind::BinPack, alike(4096), 1);
        let chosen: Vec<usize> = (0..1000)
            .map(|_| placer.place(&t, &mut 0).expect("fits"))
            .collect();
        assert_eq!(nodes_used(&chosen), 125);
        let per_task = placer.scored() / 1000;
        assert!(per_task < 200, "{per_task} nodes scored per task");
    }

    #[test]
    fn spread_still_spreads_on_a_large_cluster() {
        // 1,000 tasks of one name on 4,096 empty nodes: one per node.
        let t = task("web", 0.5, 256, 0);
        let mut placer = Placer::new(SchedulerKind::Spread, alike(4096), 1);
        let chosen: Vec<usize> = (0..1000)
            .map(|_| placer.place(&t, &mut 0).expect("fits"))
            .collect();
        assert_eq!(nodes_used(&chosen), 1000);
        let per_task = placer.scored() / 1000;
        assert!(per_task < 200, "{per_task} nodes scored per task");
    }

    #[test]
    fn a_batch_places_the_same_way_every_time() {
        let mut nodes = alike(500);
        for (i, n) in nodes.iter_mut().enumerate() {
            n.allocated.cpu = (i * 7 % 13) as f64 * 0.25;
            n.usage.memory_mb = (i * 11 % 17) as u64 * 200;
        }
        let tasks: Vec<TaskRequest> = (0..300)
            .map(|k| task(["a", "b", "c"][k % 3], [0.25, 0.5, 1.0][k % 3], 128, 0))
            .collect();
        for kind in RANKED {
            let run = || {
                let mut placer = Placer::new(kind, nodes.clone(), 7);
                tasks
                    .iter()
                    .map(|t| placer.place(t, &mut 0))
                    .collect::<Vec<_>>()
            };
            assert_eq!(run(), run(), "{kind}");
        }
    }

    proptest! {
        /// Through the sampler, a task goes only where it fits, and is refused
        /// only when no node fits; the chosen node gets the task added.
        #[test]
        fn placements_fit_and_refusals_are_real(
            nodes in proptest::collection::vec(arb_node(), 0..120),
            tasks in proptest::collection::vec(arb_task(), 0..40),
            seed in any::<u64>(),
        ) {
            for kind in RANKED {
                let mut placer = Placer::sampling_above(kind, nodes.clone(), seed, 0);
                for t in &tasks {
                    let before = placer.nodes().to_vec();
                    let some_node_fits = before.iter().any(|n| fits(t, n).is_ok());
                    match placer.place(t, &mut 0) {
                        Ok(i) => {
                            prop_assert!(fits(t, &before[i]).is_ok(), "{}: {:?}", kind, before[i]);
                            let mut expected = before;
                            expected[i].add(t);
                            prop_assert_eq!(placer.nodes(), &expected[..], "{}", kind);
                        }
                        Err(no_fit) => {
                            prop_assert!(!some_node_fits, "{}: refused ({}) though a node fits", kind, no_fit);
                            prop_assert_eq!(placer.nodes(), &before[..], "{}", kind);
                        }
                    }
                }
            }
        }

        /// The first task of a batch refreshes the shortlist, so it goes
        /// where the scan puts it.
        #[test]
        fn the_first_task_goes_where_the_scan_puts_it(
            nodes in proptest::collection::vec(arb_node(), 0..120),
            t in arb_task(),
            seed in any::<u64>(),
        ) {
            for kind in RANKED {
                let mut placer = Placer::sampling_above(kind, nodes.clone(), seed, 0);
                prop_assert_eq!(placer.place(&t, &mut 0), place(kind, &t, &nodes, &mut 0), "{}", kind);
            }
        }
    }
}
