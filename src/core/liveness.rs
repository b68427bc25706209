//! Which workers are alive: heartbeats in, "down" out. Pure: the Manager
//! actor feeds it heartbeats and timer ticks and acts on what it says.
//!
//! Rules:
//! - a node not heard from for `down_after` is down; it is *drained* (its
//!   tasks move) once some other node is demonstrably alive: heard from
//!   within `down_after / 2`. Workers frozen or cut off together fall silent
//!   within one heartbeat of each other, so when the first of them goes
//!   down the others are already older than that, and nothing moves;
//! - if every node goes silent at once, the manager suspects itself (its own
//!   network, or the manager was paused) and drains nothing; when a node is
//!   heard again, the others get a fresh `down_after` before any drain;
//! - if the manager's own timer fires late by more than `down_after` (the
//!   process was stopped or starved), every node gets a fresh `down_after`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::wire::MachineStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Ready,
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Down => "down",
        }
    }
}

/// What the manager knows of one node's life (memory only: after a restart
/// of the manager every node starts Ready with a fresh `down_after`).
#[derive(Debug, Clone, PartialEq)]
pub struct Life {
    pub state: NodeState,
    pub last_seen: Instant,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub stats: Option<MachineStats>,
    /// Its tasks were moved away since it went down.
    pub drained: bool,
}

impl Life {
    pub fn new(now: Instant) -> Self {
        Life {
            state: NodeState::Ready,
            last_seen: now,
            last_heartbeat: None,
            stats: None,
            drained: false,
        }
    }

    /// The node registered, or a heartbeat of a Ready node came in.
    pub fn seen(&mut self, now: Instant, at: DateTime<Utc>, stats: MachineStats) {
        self.state = NodeState::Ready;
        self.drained = false;
        self.last_seen = now;
        self.last_heartbeat = Some(at);
        self.stats = Some(stats);
    }
}

/// What a tick found.
#[derive(Debug, Default, PartialEq)]
pub struct Tick {
    /// Nodes that just went down.
    pub went_down: Vec<String>,
    /// Down nodes whose tasks must move now.
    pub drain: Vec<String>,
    /// Every node is silent: nothing is drained.
    pub all_silent: bool,
    /// The manager's timer fired late: every node got a fresh grace period.
    pub paused: bool,
}

/// The liveness clock over all nodes.
#[derive(Debug, Clone)]
pub struct Watch {
    down_after: Duration,
    last_tick: Option<Instant>,
    /// No drain before this (after all nodes had gone silent).
    hold_until: Option<Instant>,
    all_silent: bool,
}

impl Watch {
    pub fn new(down_after: Duration) -> Self {
        Watch {
            down_after,
            last_tick: None,
            hold_until: None,
            all_silent: false,
        }
    }

    pub fn down_after(&self) -> Duration {
        self.down_after
    }

    /// How often the manager should tick.
    pub fn tick_every(&self) -> Duration {
        (self.down_after / 10).clamp(Duration::from_millis(10), Duration::from_millis(250))
    }

    pub fn tick(&mut self, nodes: &mut BTreeMap<String, Life>, now: Instant) -> Tick {
        let mut out = Tick::default();
        let late = self
            .last_tick
            .is_some_and(|last| now.saturating_duration_since(last) > self.down_after);
        self.last_tick = Some(now);
        if late {
            for life in nodes.values_mut() {
                if life.state == NodeState::Ready {
                    life.last_seen = now;
                }
            }
            self.hold_until = Some(now + self.down_after);
            out.paused = true;
            return out;
        }
        for (name, life) in nodes.iter_mut() {
            if life.state == NodeState::Ready
                && now.saturating_duration_since(life.last_seen) > self.down_after
            {
                life.state = NodeState::Down;
                out.went_down.push(name.clone());
            }
        }
        let any_ready = nodes.values().any(|l| l.state == NodeState::Ready);
        if !any_ready && !nodes.is_empty() {
            self.all_silent = true;
            out.all_silent = true;
            return out;
        }
        if self.all_silent {
            // Someone is back: the manager was not cut off from everyone
            // for good; give the others a fresh period before moving tasks.
            self.all_silent = false;
            self.hold_until = Some(now + self.down_after);
        }
        if self.hold_until.is_some_and(|until| now < until) {
            return out;
        }
        self.hold_until = None;
        let fresh = nodes.values().any(|l| {
            l.state == NodeState::Ready
                && now.saturating_duration_since(l.last_seen) <= self.down_after / 2
        });
        if !fresh {
            return out;
        }
        for (name, life) in nodes.iter_mut() {
            if life.state == NodeState::Down && !life.drained {
                life.drained = true;
                out.drain.push(name.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(3);

    fn nodes(names: &[&str], now: Instant) -> BTreeMap<String, Life> {
        names
            .iter()
            .map(|n| (n.to_string(), Life::new(now)))
            .collect()
    }

    fn beat(nodes: &mut BTreeMap<String, Life>, name: &str, now: Instant) {
        nodes
            .get_mut(name)
            .unwrap()
            .seen(now, Utc::now(), MachineStats::default());
    }

    /// Ticks every 100 ms from `from` to `to`, `beating` nodes heartbeating
    /// each second; returns every tick's outcome that was not empty.
    fn run(
        watch: &mut Watch,
        nodes: &mut BTreeMap<String, Life>,
        beating: &[&str],
        from: Instant,
        to: Instant,
    ) -> Vec<(Duration, Tick)> {
        let mut out = Vec::new();
        let mut now = from;
        while now < to {
            now += Duration::from_millis(100);
            if (now - from).as_millis().is_multiple_of(1000) {
                for name in beating {
                    beat(nodes, name, now);
                }
            }
            let tick = watch.tick(nodes, now);
            if tick != Tick::default() {
                out.push((now - from, tick));
            }
        }
        out
    }

    #[test]
    fn a_silent_node_goes_down_after_the_threshold_and_is_drained() {
        let t0 = Instant::now();
        let mut n = nodes(&["a", "b", "c"], t0);
        let mut w = Watch::new(D);
        let events = run(
            &mut w,
            &mut n,
            &["a", "b"],
            t0,
            t0 + Duration::from_secs(10),
        );
        assert_eq!(events.len(), 1, "{events:?}");
        let (at, tick) = &events[0];
        assert!(*at > D && *at <= D + Duration::from_millis(100), "{at:?}");
        assert_eq!(tick.went_down, vec!["c".to_string()]);
        assert_eq!(tick.drain, vec!["c".to_string()]);
        assert_eq!(n["c"].state, NodeState::Down);
        assert!(n["c"].drained);
        assert_eq!(n["a"].state, NodeState::Ready);
    }

    #[test]
    fn a_node_that_comes_back_is_ready_and_not_drained() {
        let t0 = Instant::now();
        let mut n = nodes(&["a", "b"], t0);
        let mut w = Watch::new(D);
        run(&mut w, &mut n, &["a"], t0, t0 + Duration::from_secs(5));
        assert!(n["b"].drained);
        beat(&mut n, "b", t0 + Duration::from_secs(5));
        assert_eq!(n["b"].state, NodeState::Ready);
        assert!(!n["b"].drained);
    }

    #[test]
    fn when_everyone_is_silent_the_manager_suspects_itself() {
        let t0 = Instant::now();
        let mut n = nodes(&["a", "b", "c"], t0);
        let mut w = Watch::new(D);
        let events = run(&mut w, &mut n, &[], t0, t0 + Duration::from_secs(10));
        assert!(events.iter().all(|(_, t)| t.drain.is_empty()), "{events:?}");
        assert!(events.iter().any(|(_, t)| t.all_silent));
        // a and b come back; c stays silent: c is drained, but only after a
        // fresh period from the moment the others were heard again.
        let back = t0 + Duration::from_secs(10);
        beat(&mut n, "a", back);
        beat(&mut n, "b", back);
        let events = run(
            &mut w,
            &mut n,
            &["a", "b"],
            back,
            back + Duration::from_secs(10),
        );
        let drains: Vec<_> = events.iter().filter(|(_, t)| !t.drain.is_empty()).collect();
        assert_eq!(drains.len(), 1, "{events:?}");
        assert_eq!(drains[0].1.drain, vec!["c".to_string()]);
        assert!(drains[0].0 >= D, "{:?}", drains[0].0);
    }

    #[test]
    fn workers_frozen_together_between_heartbeats_are_not_drained() {
        let t0 = Instant::now();
        let mut n = nodes(&["a", "b", "c"], t0);
        let mut w = Watch::new(D);
        // Heartbeats every second, a little out of step; at 10.95 s all
        // three freeze: a beat last at 10.0 s, b at 10.3 s, c at 10.9 s.
        let mut now = t0;
        let mut events = Vec::new();
        while now < t0 + Duration::from_secs(30) {
            now += Duration::from_millis(50);
            let ms = (now - t0).as_millis();
            for (name, offset) in [("a", 0), ("b", 300), ("c", 900)] {
                if ms < 10_950 && ms % 1000 == offset {
                    beat(&mut n, name, now);
                }
            }
            let tick = w.tick(&mut n, now);
            if tick != Tick::default() {
                events.push((ms, tick));
            }
        }
        assert!(events.iter().all(|(_, t)| t.drain.is_empty()), "{events:?}");
        assert!(events.iter().any(|(_, t)| t.all_silent), "{events:?}");
        // a went down first, while b and c were still counted ready.
        assert_eq!(events[0].1.went_down, vec!["a".to_string()]);
    }

    #[test]
    fn a_late_timer_gives_every_node_a_fresh_period() {
        let t0 = Instant::now();
        let mut n = nodes(&["a", "b"], t0);
        let mut w = Watch::new(D);
        assert_eq!(w.tick(&mut n, t0), Tick::default());
        // The manager was stopped for 20 s: nobody's heartbeats were read.
        let late = t0 + Duration::from_secs(20);
        let tick = w.tick(&mut n, late);
        assert!(tick.paused);
        assert!(tick.went_down.is_empty());
        let events = run(
            &mut w,
            &mut n,
            &["a", "b"],
            late,
            late + Duration::from_secs(10),
        );
        assert!(events.is_empty(), "{events:?}");
        assert!(n.values().all(|l| l.state == NodeState::Ready));
    }

    #[test]
    fn the_tick_is_a_fraction_of_the_threshold() {
        assert_eq!(Watch::new(D).tick_every(), Duration::from_millis(250));
        assert_eq!(
            Watch::new(Duration::from_millis(500)).tick_every(),
            Duration::from_millis(50)
        );
    }
}
