//! The service orchestrator in memory (no engine, no store: the core state
//! machine alone, as the Manager actor drives it): 10,000 services of 10
//! replicas on 100 simulated nodes. Prints commands per second for
//! creating them (each places its 10 replicas), for the 100,000 reports of
//! their replicas running (each converges its service), for one look at
//! every service after a manager restart, and for starting an update of
//! every service.
//!
//! `cargo bench --bench services` (`SERVICES=n` for another count).

use std::time::{Duration, Instant};

use chrono::Utc;
use cube::config::SchedulerKind;
use cube::core::{ClusterState, Command, Now, Retention, apply};
use cube::task::TaskState;
use cube::wire::{Capacity, MachineStats, Registration, TaskStatus};
use uuid::Uuid;

const NODES: usize = 100;
const REPLICAS: u32 = 10;

fn run(state: &mut ClusterState, command: Command, now: Now) {
    apply(state, command, now).expect("applies");
    state.take_staged();
    state.commit();
}

fn spec(i: usize, image: &str) -> cube::service::ServiceSpec {
    cube::service::spec::from_value(serde_json::json!({
        "name": format!("s{i}"), "replicas": REPLICAS,
        "task": {"image": image, "cpu": 0.01, "memory_mb": 8}
    }))
    .expect("a good spec")
}

fn rate(what: &str, count: usize, took: Duration) {
    println!(
        "| {what} | {count} | {:.2} s | {:.0}/s |",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    );
}

fn main() {
    let services: usize = std::env::var("SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let now = Now::read();
    let mut state = ClusterState::new(
        vec![],
        vec![],
        SchedulerKind::Spread,
        Duration::from_secs(3600),
        Retention {
            max_age: Duration::from_secs(86_400),
            max_tasks: 1_000_000,
        },
        now.mono,
    );
    let capacity = Capacity {
        cpus: 10_000.0,
        memory_mb: 10_000_000,
        disk_mb: 10_000_000,
    };
    for n in 0..NODES {
        let registration = Registration {
            name: format!("node-{n:03}"),
            instance: Uuid::new_v4(),
            address: format!("https://10.0.0.{n}:5556"),
            capacity: capacity.clone(),
            tasks: vec![],
            stats: MachineStats {
                capacity: capacity.clone(),
                ..Default::default()
            },
        };
        run(
            &mut state,
            Command::Register {
                registration,
                generation: 0,
            },
            now,
        );
    }
    println!("{services} services of {REPLICAS} replicas on {NODES} simulated nodes, in memory\n");
    println!("| step | commands | time | per second |");
    println!("|---|---:|---:|---:|");

    let start = Instant::now();
    for i in 0..services {
        let command = Command::CreateService {
            id: Uuid::new_v4(),
            spec: spec(i, "v1"),
            by: None,
        };
        run(&mut state, command, now);
    }
    rate(
        "create (10 replicas placed each)",
        services,
        start.elapsed(),
    );

    let placed: Vec<(Uuid, u32, String)> = state
        .tasks()
        .filter(|t| t.state == TaskState::Scheduled)
        .map(|t| (t.id, t.attempt, t.node.clone().unwrap_or_default()))
        .collect();
    assert_eq!(placed.len(), services * REPLICAS as usize);
    let start = Instant::now();
    for (id, attempt, node) in &placed {
        let status = TaskStatus {
            task_id: *id,
            attempt: *attempt,
            node: node.clone(),
            state: TaskState::Running,
            container_id: Some("c".into()),
            host_ports: Default::default(),
            container_ip: None,
            exit_code: None,
            error: None,
            at: Utc::now(),
            seq: 1,
            restart_count: 0,
            started_at: Some(Utc::now()),
            next_restart_at: None,
            health: None,
        };
        run(&mut state, Command::Report { status }, now);
    }
    rate(
        "report Running (its service converged)",
        placed.len(),
        start.elapsed(),
    );

    // A restarted manager looks at every service once.
    let records: Vec<_> = state.services().cloned().collect();
    let tasks: Vec<_> = state.tasks().cloned().collect();
    let nodes: Vec<_> = state
        .node_names()
        .iter()
        .filter_map(|n| state.node(n).cloned())
        .collect();
    let mut restarted = ClusterState::new(
        tasks,
        nodes,
        SchedulerKind::Spread,
        Duration::from_secs(3600),
        Retention {
            max_age: Duration::from_secs(86_400),
            max_tasks: 1_000_000,
        },
        now.mono,
    )
    .with_services(records);
    let start = Instant::now();
    run(&mut restarted, Command::Retry, now);
    rate(
        "converge every service after a restart",
        services,
        start.elapsed(),
    );

    let start = Instant::now();
    for i in 0..services {
        let command = Command::UpdateService {
            spec: spec(i, "v2"),
            by: None,
        };
        run(&mut state, command, now);
    }
    rate(
        "start an update (first new replica placed)",
        services,
        start.elapsed(),
    );
}
