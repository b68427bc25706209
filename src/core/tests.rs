//! The core driven through commands alone, as the Manager actor drives it:
//! no actor, no I/O, time passed in.

use std::time::{Duration, Instant};

use chrono::Utc;
use uuid::Uuid;

use super::*;
use crate::config::SchedulerKind;
use crate::task::{TaskSpec, TaskState};
use crate::wire::{Capacity, Heartbeat, MachineStats, Registration, ReportReply, TaskStatus};

struct Clock(Instant, chrono::DateTime<Utc>);

impl Clock {
    fn new() -> Self {
        Clock(Instant::now(), Utc::now())
    }
    fn now(&self) -> Now {
        Now {
            at: self.1,
            mono: self.0,
        }
    }
    fn advance(&mut self, d: Duration) {
        self.0 += d;
        self.1 += chrono::Duration::from_std(d).unwrap();
    }
}

fn state() -> ClusterState {
    ClusterState::new(
        vec![],
        vec![],
        SchedulerKind::RoundRobin,
        Duration::from_secs(3),
        Retention {
            max_age: Duration::from_secs(3600),
            max_tasks: 2,
        },
        Instant::now(),
    )
}

fn spec(name: &str) -> TaskSpec {
    crate::task::spec::from_value(serde_json::json!({"name": name, "image": "i"})).unwrap()
}

fn registration(name: &str, tasks: Vec<TaskStatus>) -> Registration {
    let capacity = Capacity {
        cpus: 4.0,
        memory_mb: 4096,
        disk_mb: 10_000,
    };
    Registration {
        name: name.into(),
        instance: Uuid::new_v4(),
        address: format!("http://{name}"),
        capacity: capacity.clone(),
        tasks,
        stats: MachineStats {
            capacity,
            ..Default::default()
        },
    }
}

/// Applies and commits, as a successful batch of one.
fn run(s: &mut ClusterState, c: Command, now: Now) -> (Reply, Vec<Effect>) {
    let out = apply(s, c, now).expect("applies");
    s.take_staged();
    s.commit();
    out
}

/// Submits a task named "a" under `id`, committed.
fn submit(s: &mut ClusterState, id: Uuid, now: Now) {
    run(
        s,
        Command::Submit {
            id,
            spec: spec("a"),
            by: None,
        },
        now,
    );
}

/// Registers a worker holding nothing, committed.
fn register(s: &mut ClusterState, name: &str, now: Now) {
    run(
        s,
        Command::Register {
            registration: registration(name, vec![]),
            generation: 0,
        },
        now,
    );
}

fn status(id: Uuid, attempt: u32, node: &str, state: TaskState, seq: u64) -> TaskStatus {
    TaskStatus {
        task_id: id,
        attempt,
        node: node.into(),
        state,
        container_id: Some("c".into()),
        host_ports: Default::default(),
        container_ip: None,
        exit_code: None,
        error: None,
        at: Utc::now(),
        seq,
        restart_count: 0,
        started_at: None,
        next_restart_at: None,
        health: None,
    }
}

fn dispatched(effects: &[Effect]) -> Vec<(String, Uuid, u32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch { node, assignment } => {
                Some((node.clone(), assignment.task_id, assignment.attempt))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_submit_without_workers_stays_pending_in_one_write_saying_why() {
    let clock = Clock::new();
    let mut s = state();
    let id = Uuid::new_v4();
    let (reply, effects) = apply(
        &mut s,
        Command::Submit {
            id,
            spec: spec("a"),
            by: None,
        },
        clock.now(),
    )
    .unwrap();
    assert!(matches!(reply, Reply::Task(ref r) if r.id == id));
    assert!(effects.is_empty());
    let staged = s.take_staged();
    assert_eq!(staged.tasks.len(), 1, "one record, written once");
    assert_eq!(staged.tasks[0].state, TaskState::Pending);
    assert!(staged.tasks[0].error.is_some(), "the reason is recorded");
    assert_eq!(s.pending(), vec![id]);
}

#[test]
fn a_registering_worker_gets_the_pending_tasks_and_reports_run_them() {
    let clock = Clock::new();
    let mut s = state();
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        submit(&mut s, *id, clock.now());
    }
    let (reply, effects) = run(
        &mut s,
        Command::Register {
            registration: registration("w1", vec![]),
            generation: 0,
        },
        clock.now(),
    );
    assert!(matches!(reply, Reply::Registered(_)));
    let sent = dispatched(&effects);
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|(n, _, a)| n == "w1" && *a == 1));
    run(
        &mut s,
        Command::Report {
            status: status(ids[0], 1, "w1", TaskState::Running, 1),
        },
        clock.now(),
    );
    assert_eq!(s.task(&ids[0]).unwrap().state, TaskState::Running);
    assert_eq!(s.active_on("w1").len(), 3);
}

#[test]
fn a_running_copy_the_manager_does_not_count_is_told_to_stop() {
    let clock = Clock::new();
    let mut s = state();
    let id = Uuid::new_v4();
    register(&mut s, "w1", clock.now());
    submit(&mut s, id, clock.now());
    // attempt 1 is current on w1; a late copy of attempt 0 elsewhere:
    let stale = status(id, 7, "w2", TaskState::Running, 1);
    let (reply, _) = run(&mut s, Command::Report { status: stale }, clock.now());
    assert!(matches!(reply, Reply::Reported(ReportReply { stop: true })));
    // an ended stale copy needs nothing
    let ended = status(id, 7, "w2", TaskState::Completed, 2);
    let (reply, _) = run(&mut s, Command::Report { status: ended }, clock.now());
    assert!(matches!(
        reply,
        Reply::Reported(ReportReply { stop: false })
    ));
    // a task the manager does not know at all
    let unknown = status(Uuid::new_v4(), 1, "w1", TaskState::Running, 1);
    let (reply, _) = run(&mut s, Command::Report { status: unknown }, clock.now());
    assert!(matches!(reply, Reply::Reported(ReportReply { stop: true })));
    // the current attempt is untouched
    assert_eq!(s.task(&id).unwrap().state, TaskState::Scheduled);
}

#[test]
fn a_silent_worker_is_drained_onto_a_live_one() {
    let mut clock = Clock::new();
    let mut s = state();
    let w1 = registration("w1", vec![]);
    let w2 = registration("w2", vec![]);
    let w2_instance = w2.instance;
    run(
        &mut s,
        Command::Register {
            registration: w1,
            generation: 0,
        },
        clock.now(),
    );
    let id = Uuid::new_v4();
    submit(&mut s, id, clock.now());
    assert_eq!(s.task(&id).unwrap().node.as_deref(), Some("w1"));
    run(
        &mut s,
        Command::Register {
            registration: w2,
            generation: 0,
        },
        clock.now(),
    );
    // w2 keeps beating, w1 is silent past down_after.
    for _ in 0..40 {
        clock.advance(Duration::from_millis(100));
        let beat = Heartbeat {
            name: "w2".into(),
            instance: w2_instance,
            stats: MachineStats::default(),
        };
        run(&mut s, Command::Heartbeat { beat }, clock.now());
        let (_, effects) = run(&mut s, Command::Tick, clock.now());
        if !effects.is_empty() {
            assert_eq!(dispatched(&effects), vec![("w2".to_string(), id, 2)]);
            assert!(s.is_down("w1"));
            return;
        }
    }
    panic!("w1 was never drained");
}

#[test]
fn a_stop_names_the_worker_that_must_stop_the_container() {
    let clock = Clock::new();
    let mut s = state();
    register(&mut s, "w1", clock.now());
    let id = Uuid::new_v4();
    submit(&mut s, id, clock.now());
    let (reply, _) = run(&mut s, Command::Stop { id, by: None }, clock.now());
    match reply {
        Reply::Stopping { record, worker, .. } => {
            assert_eq!(worker.as_deref(), Some("w1"));
            assert_eq!(record.desired_state, crate::task::DesiredState::Stopped);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        apply(
            &mut s,
            Command::Stop {
                id: Uuid::new_v4(),
                by: None
            },
            clock.now()
        ),
        Err(CoreError::NotFound(_))
    ));
}

#[test]
fn a_failed_commit_leaves_memory_as_the_disk_has_it() {
    let clock = Clock::new();
    let mut s = state();
    let id = Uuid::new_v4();
    submit(&mut s, id, clock.now());
    // The stop is applied but its commit fails.
    apply(&mut s, Command::Stop { id, by: None }, clock.now()).unwrap();
    let _ = s.take_staged();
    s.rollback();
    let record = s.task(&id).unwrap();
    assert_eq!(record.state, TaskState::Pending);
    assert_eq!(record.desired_state, crate::task::DesiredState::Running);
    assert_eq!(s.pending(), vec![id]);
}

#[test]
fn ended_tasks_beyond_the_retention_are_removed_oldest_first() {
    let mut clock = Clock::new();
    let mut s = state();
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        submit(&mut s, *id, clock.now());
        clock.advance(Duration::from_secs(1));
        run(&mut s, Command::Stop { id: *id, by: None }, clock.now());
    }
    apply(&mut s, Command::Tick, clock.now()).unwrap();
    let staged = s.take_staged();
    s.commit();
    assert_eq!(staged.removed_tasks.len(), 2, "max_tasks is 2");
    assert!(s.task(&ids[0]).is_none() && s.task(&ids[1]).is_none());
    assert!(s.task(&ids[3]).is_some());
    // Past max_age every ended task goes.
    clock.advance(Duration::from_secs(3601));
    run(&mut s, Command::Tick, clock.now());
    assert_eq!(s.task_count(), 0);
}

#[test]
fn the_same_commands_give_the_same_state() {
    let clock = Clock::new();
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let reg = registration("w1", vec![]);
    let replay = || {
        let mut s = state();
        run(
            &mut s,
            Command::Register {
                registration: reg.clone(),
                generation: 0,
            },
            clock.now(),
        );
        for id in &ids {
            submit(&mut s, *id, clock.now());
        }
        run(
            &mut s,
            Command::Report {
                status: status(ids[1], 1, "w1", TaskState::Failed, 1),
            },
            clock.now(),
        );
        run(
            &mut s,
            Command::Stop {
                id: ids[2],
                by: None,
            },
            clock.now(),
        );
        s.tasks().cloned().collect::<Vec<_>>()
    };
    assert_eq!(replay(), replay());
}

#[test]
fn freed_room_retries_only_the_pending_tasks_that_may_fit_in_it() {
    let clock = Clock::new();
    let mut s = state();
    register(&mut s, "w1", clock.now()); // 4 cpus
    let sized = |name: &str, cpu: f64| {
        crate::task::spec::from_value(serde_json::json!({"name": name, "image": "i", "cpu": cpu}))
            .unwrap()
    };
    let submit_sized = |s: &mut ClusterState, name: &str, cpu: f64| {
        let id = Uuid::new_v4();
        run(
            s,
            Command::Submit {
                id,
                spec: sized(name, cpu),
                by: None,
            },
            clock.now(),
        );
        id
    };
    let small = submit_sized(&mut s, "small", 3.0);
    assert_eq!(s.task(&small).unwrap().state, TaskState::Scheduled);
    let big: Vec<Uuid> = (0..500).map(|_| submit_sized(&mut s, "big", 8.0)).collect();
    let mid = submit_sized(&mut s, "mid", 2.0);
    assert_eq!(s.pending_count(), 501);
    let big_reason = s.task(&big[0]).unwrap().error.clone();
    assert!(big_reason.is_some());

    // The small task ends: 4 cpus free. The mid task is placed; the big
    // ones need more than any node has free and are not even tried.
    let (_, effects) = apply(
        &mut s,
        Command::Report {
            status: status(small, 1, "w1", TaskState::Completed, 1),
        },
        clock.now(),
    )
    .unwrap();
    assert_eq!(dispatched(&effects), vec![("w1".to_string(), mid, 1)]);
    let staged = s.take_staged();
    s.commit();
    let written: Vec<Uuid> = staged.tasks.iter().map(|t| t.id).collect();
    assert_eq!(
        written.len(),
        2,
        "only the ended and the placed task: {written:?}"
    );
    assert!(written.contains(&small) && written.contains(&mid));
    assert_eq!(s.task(&big[0]).unwrap().error, big_reason);
    assert_eq!(s.pending_count(), 500);
}

#[test]
fn a_removed_node_is_no_member_its_tasks_move_and_its_old_certificates_are_refused() {
    let clock = Clock::new();
    let mut s = state();
    register(&mut s, "w1", clock.now());
    let id = Uuid::new_v4();
    submit(&mut s, id, clock.now());
    assert_eq!(s.task(&id).unwrap().node.as_deref(), Some("w1"));
    // A live name cannot be joined under; an unknown one can, at generation 0.
    assert!(matches!(s.admission("w1"), Err(CoreError::Conflict(_))));
    assert_eq!(s.admission("w9"), Ok(0));
    register(&mut s, "w2", clock.now());
    let (_, effects) = run(
        &mut s,
        Command::RemoveNode {
            name: "w1".into(),
            by: Some("admin".into()),
        },
        clock.now(),
    );
    // w1 is told to stop the task, and it goes to w2 as a new attempt.
    assert!(effects.contains(&Effect::StopOn {
        node: "w1".into(),
        task: id
    }));
    assert_eq!(dispatched(&effects), vec![("w2".to_string(), id, 2)]);
    assert_eq!(s.node_names(), vec!["w2".to_string()]);
    assert!(s.node_views().iter().all(|n| n.name != "w1"));
    assert!(s.snapshots(None).iter().all(|n| n.name != "w1"));
    // Its certificates of generation 0 are refused, at the routes and here.
    let generations = s.generations();
    assert!(!generations.accepts("w1", 0));
    assert!(generations.accepts("w1", 1));
    assert!(generations.accepts("w2", 0));
    let old = apply(
        &mut s,
        Command::Register {
            registration: registration("w1", vec![]),
            generation: 0,
        },
        clock.now(),
    );
    assert!(matches!(old, Err(CoreError::Revoked(_))));
    // Removing it twice, or a name never seen: 404.
    let again = apply(
        &mut s,
        Command::RemoveNode {
            name: "w1".into(),
            by: None,
        },
        clock.now(),
    );
    assert!(matches!(again, Err(CoreError::NoNode(_))));
    // It may join again, with a certificate of the new generation.
    assert_eq!(s.admission("w1"), Ok(1));
    run(
        &mut s,
        Command::Register {
            registration: registration("w1", vec![]),
            generation: 1,
        },
        clock.now(),
    );
    assert_eq!(s.node_names(), vec!["w1".to_string(), "w2".to_string()]);
    assert!(s.node("w1").unwrap().is_member());
}

#[test]
fn a_removal_survives_a_restart_of_the_manager() {
    let clock = Clock::new();
    let mut s = state();
    register(&mut s, "w1", clock.now());
    apply(
        &mut s,
        Command::RemoveNode {
            name: "w1".into(),
            by: None,
        },
        clock.now(),
    )
    .unwrap();
    let staged = s.take_staged();
    s.commit();
    // What the store would hold, loaded by a new manager.
    let restarted = ClusterState::new(
        vec![],
        staged.nodes,
        SchedulerKind::RoundRobin,
        Duration::from_secs(3),
        Retention {
            max_age: Duration::from_secs(3600),
            max_tasks: 2,
        },
        Instant::now(),
    );
    assert!(restarted.node_names().is_empty());
    assert!(
        restarted.life("w1").is_none(),
        "no liveness for a removed node"
    );
    assert!(!restarted.generations().accepts("w1", 0));
}

fn service_spec(replicas: u32, image: &str) -> crate::service::ServiceSpec {
    crate::service::spec::from_value(serde_json::json!({
        "name": "web", "replicas": replicas, "task": {"image": image},
        "update": {"monitor_s": 2}
    }))
    .unwrap()
}

/// Every registered node heartbeats (as its registered process).
fn beat_all(s: &mut ClusterState, clock: &Clock) {
    for name in s.node_names() {
        let instance = s.node(&name).unwrap().instance;
        let beat = Heartbeat {
            name,
            instance,
            stats: MachineStats::default(),
        };
        run(s, Command::Heartbeat { beat }, clock.now());
    }
}

/// Reports every Scheduled task of the service Running on its node.
fn run_all(s: &mut ClusterState, clock: &Clock) {
    let placed: Vec<(Uuid, u32, String)> = s
        .tasks()
        .filter(|t| t.service.is_some() && t.state == TaskState::Scheduled)
        .map(|t| (t.id, t.attempt, t.node.clone().unwrap()))
        .collect();
    for (id, attempt, node) in placed {
        let mut st = status(id, attempt, &node, TaskState::Running, 1);
        st.started_at = Some(clock.now().at);
        run(s, Command::Report { status: st }, clock.now());
    }
}

/// The loads kept as tasks change are the loads counted from scratch.
fn assert_loads_kept(s: &ClusterState) {
    let counted = super::nodes::loads(s.tasks());
    for name in s.node_names() {
        assert_eq!(
            s.load(&name),
            counted.get(&name).cloned().unwrap_or_default(),
            "{name}"
        );
    }
}

fn live_replicas(s: &ClusterState) -> Vec<(u32, u64, Option<String>)> {
    let mut out: Vec<_> = s
        .tasks()
        .filter(|t| t.service.is_some() && !t.state.is_terminal())
        .filter(|t| t.desired_state == crate::task::DesiredState::Running)
        .map(|t| (t.slot.unwrap(), t.service_version.unwrap(), t.node.clone()))
        .collect();
    out.sort();
    out
}

#[test]
fn a_service_keeps_one_replica_per_slot_apart_replaces_and_scales() {
    let mut clock = Clock::new();
    let mut s = state();
    for w in ["w1", "w2", "w3"] {
        register(&mut s, w, clock.now());
    }
    let (_, effects) = run(
        &mut s,
        Command::CreateService {
            id: Uuid::new_v4(),
            spec: service_spec(3, "i"),
            by: None,
        },
        clock.now(),
    );
    let mut nodes: Vec<String> = dispatched(&effects).into_iter().map(|d| d.0).collect();
    nodes.sort();
    assert_eq!(nodes, ["w1", "w2", "w3"], "one replica per node");
    let replica = s.tasks().find(|t| t.slot == Some(2)).unwrap().clone();
    assert_eq!(replica.name, "web.2");
    assert_eq!(replica.spec.env["CUBE_SLOT"], "2");
    assert_eq!(replica.spec.env["CUBE_TASK_ID"], replica.id.to_string());
    run_all(&mut s, &clock);

    // Slot 2's replica fails for good: after the back-off, a new one.
    let mut failed = status(
        replica.id,
        1,
        replica.node.as_deref().unwrap(),
        TaskState::Failed,
        2,
    );
    failed.exit_code = Some(1);
    run(&mut s, Command::Report { status: failed }, clock.now());
    assert_eq!(live_replicas(&s).len(), 2, "not at once: it backs off");
    clock.advance(Duration::from_millis(1100));
    run(&mut s, Command::Tick, clock.now());
    let live = live_replicas(&s);
    assert_eq!(live.len(), 3, "{live:?}");
    assert!(live.iter().any(|(slot, _, _)| *slot == 2));

    // Scale to 5, then to 2: the highest slots go.
    run(
        &mut s,
        Command::ScaleService {
            name: "web".into(),
            replicas: 5,
            by: None,
        },
        clock.now(),
    );
    assert_eq!(live_replicas(&s).len(), 5);
    run(
        &mut s,
        Command::ScaleService {
            name: "web".into(),
            replicas: 2,
            by: None,
        },
        clock.now(),
    );
    let slots: Vec<u32> = live_replicas(&s).iter().map(|r| r.0).collect();
    assert_eq!(slots, vec![1, 2]);

    // Removed: every replica stops.
    run(
        &mut s,
        Command::RemoveService {
            name: "web".into(),
            by: None,
        },
        clock.now(),
    );
    assert!(live_replicas(&s).is_empty());
    assert!(s.service("web").is_none());
    assert_loads_kept(&s);
}

#[test]
fn a_start_first_update_replaces_slot_by_slot_and_a_failing_one_rolls_back() {
    let mut clock = Clock::new();
    let mut s = state();
    for w in ["w1", "w2", "w3"] {
        register(&mut s, w, clock.now());
    }
    run(
        &mut s,
        Command::CreateService {
            id: Uuid::new_v4(),
            spec: service_spec(3, "v1"),
            by: None,
        },
        clock.now(),
    );
    run_all(&mut s, &clock);
    run(
        &mut s,
        Command::UpdateService {
            spec: service_spec(3, "v2"),
            by: None,
        },
        clock.now(),
    );
    // One slot at a time: a fourth replica (v2) beside the three of v1.
    let live = live_replicas(&s);
    assert_eq!(live.len(), 4, "{live:?}");
    assert_eq!(live.iter().filter(|r| r.1 == 2).count(), 1);
    // It runs; after monitor_s (no health check) it counts and the old one
    // of its slot stops; then the next slot.
    for _ in 0..3 {
        run_all(&mut s, &clock);
        clock.advance(Duration::from_millis(2100));
        beat_all(&mut s, &clock);
        run(&mut s, Command::Tick, clock.now());
        let live = live_replicas(&s);
        assert!(live.len() <= 4 && live.len() >= 3, "{live:?}");
    }
    run_all(&mut s, &clock);
    clock.advance(Duration::from_millis(2100));
    beat_all(&mut s, &clock);
    run(&mut s, Command::Tick, clock.now());
    let live = live_replicas(&s);
    assert_eq!(
        live.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{live:?}"
    );
    let update = s.service("web").unwrap().update.clone().unwrap();
    assert_eq!(update.state, crate::service::UpdateState::Completed);

    // v3's first replica exits: the update rolls back to v2, whose
    // replicas never stopped.
    run(
        &mut s,
        Command::UpdateService {
            spec: service_spec(3, "v3"),
            by: None,
        },
        clock.now(),
    );
    let bad = s
        .tasks()
        .find(|t| t.service_version == Some(3))
        .unwrap()
        .clone();
    let mut exited = status(
        bad.id,
        bad.attempt,
        bad.node.as_deref().unwrap(),
        TaskState::Failed,
        2,
    );
    exited.exit_code = Some(1);
    run(&mut s, Command::Report { status: exited }, clock.now());
    let svc = s.service("web").unwrap();
    assert_eq!(svc.version, 2);
    let update = svc.update.clone().unwrap();
    assert_eq!(
        update.state,
        crate::service::UpdateState::RolledBack,
        "{update:?}"
    );
    assert!(update.message.unwrap().contains("slot 1"));
    let live = live_replicas(&s);
    assert_eq!(live.iter().map(|r| r.1).collect::<Vec<_>>(), vec![2, 2, 2]);
    assert_loads_kept(&s);
}

#[test]
fn a_slot_that_keeps_failing_backs_off_longer_and_keeps_only_its_last_ended_replicas() {
    let mut clock = Clock::new();
    // Retention far above what the slot keeps.
    let mut s = ClusterState::new(
        vec![],
        vec![],
        SchedulerKind::RoundRobin,
        Duration::from_secs(3),
        Retention {
            max_age: Duration::from_secs(3600),
            max_tasks: 1000,
        },
        Instant::now(),
    );
    register(&mut s, "w1", clock.now());
    run(
        &mut s,
        Command::CreateService {
            id: Uuid::new_v4(),
            spec: service_spec(1, "i"),
            by: None,
        },
        clock.now(),
    );
    let mut waits = Vec::new();
    for _ in 0..6 {
        let t = s
            .tasks()
            .find(|t| t.service.is_some() && !t.state.is_terminal())
            .unwrap()
            .clone();
        let mut failed = status(t.id, t.attempt, "w1", TaskState::Failed, 2);
        failed.exit_code = Some(1);
        failed.at = clock.now().at;
        run(&mut s, Command::Report { status: failed }, clock.now());
        // Waits out the back-off in 100 ms steps, counting them.
        let mut steps = 0;
        while !s
            .tasks()
            .any(|t| t.service.is_some() && !t.state.is_terminal())
        {
            clock.advance(Duration::from_millis(100));
            beat_all(&mut s, &clock);
            run(&mut s, Command::Tick, clock.now());
            steps += 1;
            assert!(steps < 400, "never replaced");
        }
        waits.push(steps);
    }
    assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
    // 1 s, 2 s, 4 s, 8 s, 16 s, 16 s (in 100 ms ticks).
    assert_eq!(waits, vec![10, 20, 40, 80, 160, 160]);
    let ended = s
        .tasks()
        .filter(|t| t.service.is_some() && t.state.is_terminal())
        .count();
    assert_eq!(
        ended,
        crate::core::orchestrate::KEEP_ENDED,
        "older ones are forgotten"
    );
}

/// A service of `replicas` on w1..w3, running, with this update config.
fn running_service(update: serde_json::Value, clock: &Clock) -> ClusterState {
    let mut s = state();
    for w in ["w1", "w2", "w3"] {
        register(&mut s, w, clock.now());
    }
    let spec = crate::service::spec::from_value(serde_json::json!({
        "name": "web", "replicas": 3, "task": {"image": "v1"}, "update": update
    }))
    .unwrap();
    run(
        &mut s,
        Command::CreateService {
            id: Uuid::new_v4(),
            spec,
            by: None,
        },
        clock.now(),
    );
    run_all(&mut s, clock);
    s
}

fn update_to(s: &mut ClusterState, image: &str, update: serde_json::Value, clock: &Clock) {
    let spec = crate::service::spec::from_value(serde_json::json!({
        "name": "web", "replicas": 3, "task": {"image": image}, "update": update
    }))
    .unwrap();
    run(s, Command::UpdateService { spec, by: None }, clock.now());
}

#[test]
fn stop_first_stops_the_old_replica_before_its_slot_gets_the_new_one() {
    let clock = Clock::new();
    let update = serde_json::json!({"order": "stop-first", "parallelism": 2, "monitor_s": 2});
    let mut s = running_service(update.clone(), &clock);
    update_to(&mut s, "v2", update, &clock);
    let live = live_replicas(&s);
    // Two slots at a time: their old replicas asked to stop, new ones placed.
    assert_eq!(live.iter().filter(|r| r.1 == 1).count(), 1, "{live:?}");
    assert_eq!(live.iter().filter(|r| r.1 == 2).count(), 2, "{live:?}");
    assert_eq!(live.len(), 3, "never more than the replicas: {live:?}");
}

#[test]
fn pause_stops_a_failing_update_where_it_is_and_delay_spaces_the_slots() {
    let mut clock = Clock::new();
    let update = serde_json::json!({"failure_action": "pause", "monitor_s": 1, "delay_s": 5});
    let mut s = running_service(update.clone(), &clock);
    update_to(&mut s, "v2", update.clone(), &clock);
    // Slot 1's new replica counts after 1 s; slot 2 waits 5 s more.
    run_all(&mut s, &clock);
    clock.advance(Duration::from_millis(1100));
    beat_all(&mut s, &clock);
    run(&mut s, Command::Tick, clock.now());
    let v2 = |s: &ClusterState| live_replicas(s).iter().filter(|r| r.1 == 2).count();
    assert_eq!(v2(&s), 1, "{:?}", live_replicas(&s));
    clock.advance(Duration::from_millis(2000));
    beat_all(&mut s, &clock);
    run(&mut s, Command::Tick, clock.now());
    assert_eq!(v2(&s), 1, "the delay holds slot 2 back");
    clock.advance(Duration::from_millis(3100));
    beat_all(&mut s, &clock);
    run(&mut s, Command::Tick, clock.now());
    assert_eq!(v2(&s), 2, "{:?}", live_replicas(&s));
    // Slot 2's new replica never runs (no report comes): once `monitor_s`
    // has passed the update pauses, and nothing rolls back.
    clock.advance(Duration::from_millis(1100));
    beat_all(&mut s, &clock);
    run(&mut s, Command::Tick, clock.now());
    let svc = s.service("web").unwrap();
    let u = svc.update.clone().unwrap();
    assert_eq!(u.state, crate::service::UpdateState::Paused, "{u:?}");
    assert!(u.message.unwrap().contains("not running within 1 s"));
    assert_eq!(svc.version, 2, "paused, not rolled back");
    // Paused: slot 3 keeps its old replica.
    assert!(live_replicas(&s).iter().any(|r| r.0 == 3 && r.1 == 1));
}

#[test]
fn stop_first_waits_delay_s_between_slots_too() {
    let mut clock = Clock::new();
    let update = serde_json::json!({"order": "stop-first", "monitor_s": 1, "delay_s": 5});
    let mut s = running_service(update.clone(), &clock);
    update_to(&mut s, "v2", update, &clock);
    let v2 = |s: &ClusterState| live_replicas(s).iter().filter(|r| r.1 == 2).count();
    assert_eq!(v2(&s), 1);
    let step = |s: &mut ClusterState, clock: &mut Clock, ms: u64| {
        run_all(s, clock);
        clock.advance(Duration::from_millis(ms));
        beat_all(s, clock);
        run(s, Command::Tick, clock.now());
    };
    step(&mut s, &mut clock, 1100);
    assert_eq!(v2(&s), 1, "slot 1 proven; slot 2 waits");
    step(&mut s, &mut clock, 3000);
    assert_eq!(v2(&s), 1, "still within delay_s");
    step(&mut s, &mut clock, 2100);
    assert_eq!(v2(&s), 2, "{:?}", live_replicas(&s));
}
