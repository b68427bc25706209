//! The Worker in process, against the fake engine and a fake manager (an
//! HTTP server that records reports): kill -9 of the worker is stopping the
//! arbiter it runs on (its actors vanish, its LMDB and the engine's
//! containers stay), a restart is a new Worker over the records it left.
//! No Docker; each test takes well under a second.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_web::{App, HttpResponse, HttpServer, web};
use uuid::Uuid;

use common::wait_for;
use cube::client::Client;
use cube::config::WorkerConfig;
use cube::runtime::fake::FakeEngine;
use cube::security::identity::Identity;
use cube::security::pki::Ca;
use cube::security::tls::{ClientCerts, Expect, NodeTls};
use cube::store::{LoadAll, Store};
use cube::task::TaskState;
use cube::wire::{Assignment, HeartbeatReply, RegistrationReply, ReportReply, TaskStatus};
use cube::worker::Worker;
use cube::worker::actor::HEARTBEAT_TIMEOUT;
use cube::worker::actor::{Assign, ListStatuses, StopTask};
use cube::worker::record::WorkerTaskRecord;
use cube::worker::stats::{SAMPLE_EVERY, Stats};

const NODE: &str = "fake-worker";
const T: Duration = Duration::from_secs(10);

/// What the fake manager saw and how it answers reports.
#[derive(Default)]
struct Seen {
    reports: Vec<TaskStatus>,
    /// Reports of these (task, attempt) are answered `stop: true`.
    disowned: HashSet<(Uuid, u32)>,
}

#[derive(Clone)]
struct FakeManager {
    url: String,
    seen: Arc<Mutex<Seen>>,
    /// What the worker presents: a certificate of the fake manager's CA.
    worker_tls: NodeTls,
}

/// A CA and two certificates of it: the fake manager's and the worker's.
fn certificates() -> (NodeTls, NodeTls) {
    let ca = Ca::create().unwrap();
    let hour = Duration::from_secs(3600);
    let local = ["127.0.0.1".to_string()];
    let tls = |who: &Identity| {
        let issued = ca.issue(who, 0, &local, hour).unwrap();
        NodeTls::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
    };
    (
        tls(&Identity::manager("manager")),
        tls(&Identity::worker(NODE)),
    )
}

impl FakeManager {
    fn start() -> FakeManager {
        let (manager_tls, worker_tls) = certificates();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let data = web::Data::new(seen.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/workers/register",
                    web::post()
                        .to(|| async { HttpResponse::Ok().json(RegistrationReply::default()) }),
                )
                .route(
                    "/workers/heartbeat",
                    web::post().to(|| async { HttpResponse::Ok().json(HeartbeatReply::default()) }),
                )
                .route("/workers/reports", web::post().to(report))
        })
        .workers(1)
        .bind_rustls_0_23(
            "127.0.0.1:0",
            manager_tls.server(ClientCerts::Required).unwrap(),
        )
        .expect("cannot bind the fake manager");
        let url = format!("https://{}", server.addrs()[0]);
        actix_rt::spawn(server.run());
        FakeManager {
            url,
            seen,
            worker_tls,
        }
    }

    fn reports(&self) -> Vec<TaskStatus> {
        self.seen.lock().unwrap().reports.clone()
    }

    fn disown(&self, task: Uuid, attempt: u32) {
        self.seen.lock().unwrap().disowned.insert((task, attempt));
    }
}

async fn report(seen: web::Data<Arc<Mutex<Seen>>>, status: web::Json<TaskStatus>) -> HttpResponse {
    let status = status.into_inner();
    let mut seen = seen.lock().unwrap();
    let stop = seen.disowned.contains(&(status.task_id, status.attempt));
    seen.reports.push(status);
    HttpResponse::Ok().json(ReportReply { stop })
}

/// One worker process: its actors on an arbiter (thread) of their own.
struct WorkerProc {
    arbiter: Arbiter,
    addr: Addr<Worker>,
}

impl WorkerProc {
    /// `extra` is TOML for the `[worker]` section.
    fn start(
        dir: &Path,
        store: &Addr<Store>,
        engine: &Arc<FakeEngine>,
        manager: &FakeManager,
        records: Vec<WorkerTaskRecord>,
        extra: &str,
    ) -> WorkerProc {
        let config: WorkerConfig = toml::from_str(&format!(
            "name = \"{NODE}\"\nlisten = \"127.0.0.1:1\"\nmanager = \"{}\"\n{extra}\n\
             [restart_backoff]\nfirst_ms = 10\n",
            manager.url
        ))
        .unwrap();
        let stats = Stats::start(dir, SAMPLE_EVERY);
        let (fatal, _) = tokio::sync::mpsc::unbounded_channel();
        let (store, engine) = (store.clone(), engine.clone());
        let to_manager = manager.worker_tls.client(Expect::Manager).unwrap();
        let client = Client::new(&manager.url, &to_manager).unwrap();
        let beat = Client::with_timeout(&manager.url, &to_manager, HEARTBEAT_TIMEOUT).unwrap();
        let arbiter = Arbiter::new();
        let addr = Worker::start_in_arbiter(&arbiter.handle(), move |_| {
            Worker::new(&config, client, beat, store, stats, records, fatal, engine)
        });
        WorkerProc { arbiter, addr }
    }

    /// kill -9: its actors stop where they are; nothing is cleaned up.
    fn kill(self) {
        self.arbiter.stop();
        self.arbiter.join().unwrap();
    }

    async fn statuses(&self) -> Vec<TaskStatus> {
        self.addr.send(ListStatuses).await.unwrap()
    }

    /// Waits for the task's status to pass `check`.
    async fn wait_status(
        &self,
        what: &str,
        task: Uuid,
        check: impl Fn(&TaskStatus) -> bool,
    ) -> TaskStatus {
        wait_for(what, T, || async {
            let statuses = self.statuses().await;
            statuses.into_iter().find(|s| s.task_id == task && check(s))
        })
        .await
    }
}

fn assignment(task_id: Uuid, attempt: u32) -> Assignment {
    Assignment {
        task_id,
        attempt,
        spec: serde_json::from_value(serde_json::json!({
            "name": "t", "image": "img", "restart": {"policy": "always"}
        }))
        .unwrap(),
    }
}

async fn records(store: &Addr<Store>) -> Vec<WorkerTaskRecord> {
    store
        .send(LoadAll::<WorkerTaskRecord>::new())
        .await
        .unwrap()
        .unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
    store: Addr<Store>,
    engine: Arc<FakeEngine>,
    manager: FakeManager,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::start(dir.path()).unwrap();
        Setup {
            store,
            engine: Arc::new(FakeEngine::new()),
            manager: FakeManager::start(),
            dir,
        }
    }

    async fn worker(&self) -> WorkerProc {
        self.worker_with("").await
    }

    /// A worker with `extra` TOML in its `[worker]` section.
    async fn worker_with(&self, extra: &str) -> WorkerProc {
        let records = records(&self.store).await;
        WorkerProc::start(
            self.dir.path(),
            &self.store,
            &self.engine,
            &self.manager,
            records,
            extra,
        )
    }
}

/// Waits until the store holds the task's record in `state`: a kill -9
/// after that cannot lose it.
async fn stored(store: &Addr<Store>, task: Uuid, state: TaskState) -> WorkerTaskRecord {
    let what = format!("the store to hold task {task} {state}");
    wait_for(&what, T, || async {
        let records = records(store).await;
        records
            .into_iter()
            .find(|r| r.assignment.task_id == task && r.status.state == state)
    })
    .await
}

async fn run(worker: &WorkerProc, task: Uuid, attempt: u32) -> TaskStatus {
    let accepted = worker
        .addr
        .send(Assign(assignment(task, attempt)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (accepted.attempt, accepted.state),
        (attempt, TaskState::Scheduled)
    );
    worker
        .wait_status("the task to run", task, |s| {
            s.attempt == attempt && s.state == TaskState::Running
        })
        .await
}

#[actix_rt::test]
async fn a_restarted_worker_readopts_its_container_as_it_was() {
    let s = Setup::new();
    let task = Uuid::new_v4();
    let w1 = s.worker().await;
    let first = run(&w1, task, 1).await;
    stored(&s.store, task, TaskState::Running).await;
    w1.kill();
    let w2 = s.worker().await;
    let again = w2
        .wait_status("the task to be re-adopted", task, |st| {
            st.state == TaskState::Running && st.seq > first.seq
        })
        .await;
    assert_eq!(again.container_id, first.container_id);
    assert_eq!(again.restart_count, 0);
    // The container's real start time, not the re-adoption's.
    assert_eq!(again.started_at, first.started_at);
    let creates = s
        .engine
        .calls()
        .iter()
        .filter(|c| c.starts_with("create "))
        .count();
    assert_eq!(creates, 1, "{:?}", s.engine.calls());
    assert_eq!(s.engine.containers_of(task).len(), 1);
    // Every report reached the manager; none said the worker waited for
    // the engine (its connection was merely being set up).
    let manager = s.manager.clone();
    let reports = wait_for("the re-adoption to be reported", T, || {
        let reports = manager.reports();
        let done = reports.iter().any(|r| r.seq == again.seq);
        async move { done.then_some(reports) }
    })
    .await;
    for r in &reports {
        assert!(
            !r.error
                .as_deref()
                .unwrap_or_default()
                .contains("waiting for the container engine"),
            "{r:?}"
        );
    }
}

#[actix_rt::test]
async fn a_task_that_comes_back_as_a_newer_attempt_survives_a_kill_of_its_worker() {
    let s = Setup::new();
    let task = Uuid::new_v4();
    let w1 = s.worker().await;
    // Attempt 1 ran here, then was stopped (the task moved away): its
    // record went through several versions.
    run(&w1, task, 1).await;
    let stopped = w1.addr.send(StopTask(task)).await.unwrap().unwrap();
    assert_eq!(stopped.state, TaskState::Completed);
    // It comes back as attempt 3: acknowledged means written.
    let accepted = w1
        .addr
        .send(Assign(assignment(task, 3)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.attempt, 3);
    let held = records(&s.store).await;
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].assignment.attempt, 3,
        "the worker acknowledged attempt 3 but its store holds {held:?}"
    );
    let third = w1
        .wait_status("attempt 3 to run", task, |st| {
            st.attempt == 3 && st.state == TaskState::Running
        })
        .await;
    let record = stored(&s.store, task, TaskState::Running).await;
    assert_eq!(record.assignment.attempt, 3);
    w1.kill();
    let w2 = s.worker().await;
    let again = w2
        .wait_status("attempt 3 to be re-adopted", task, |st| {
            st.state == TaskState::Running && st.seq > third.seq
        })
        .await;
    assert_eq!(again.attempt, 3);
    assert_eq!(again.container_id, third.container_id);
    assert_eq!(s.engine.containers_of(task).len(), 1);
}

#[actix_rt::test]
async fn a_stop_right_after_a_restart_is_answered_once_the_container_is_gone() {
    let s = Setup::new();
    let task = Uuid::new_v4();
    let w1 = s.worker().await;
    run(&w1, task, 1).await;
    stored(&s.store, task, TaskState::Running).await;
    w1.kill();
    // The worker comes back before its engine does.
    s.engine.set_up(false);
    let connects = s.engine.connects();
    let w2 = s.worker().await;
    let stop = actix_rt::spawn(w2.addr.send(StopTask(task)));
    let engine = s.engine.clone();
    wait_for("the new worker to try the engine", T, || {
        let tried = engine.connects() > connects;
        async move { tried.then_some(()) }
    })
    .await;
    s.engine.set_up(true);
    let answer = stop.await.unwrap().unwrap().unwrap();
    assert_eq!(answer.state, TaskState::Completed, "{answer:?}");
    assert!(
        s.engine.containers_of(task).is_empty(),
        "the stop was answered while the container is still there: {answer:?} {:?} {:?}",
        s.engine.containers_of(task),
        s.engine.calls()
    );
}

#[actix_rt::test]
async fn an_attempt_the_manager_disowns_is_stopped_removed_and_forgotten() {
    let s = Setup::new();
    let task = Uuid::new_v4();
    let w1 = s.worker().await;
    s.manager.disown(task, 1);
    w1.addr
        .send(Assign(assignment(task, 1)))
        .await
        .unwrap()
        .unwrap();
    let engine = s.engine.clone();
    let started = format!("create cube-{task}-1");
    wait_for("the disowned attempt to be stopped and removed", T, || {
        let created = engine.calls().contains(&started);
        let gone = engine.containers_of(task).is_empty();
        async move { (created && gone).then_some(()) }
    })
    .await;
    let reports = s.manager.reports();
    assert!(
        reports
            .iter()
            .any(|r| r.task_id == task && r.state == TaskState::Running),
        "{reports:?}"
    );
    wait_for("the worker to forget the attempt", T, || async {
        let statuses = w1.statuses().await;
        statuses.iter().all(|st| st.task_id != task).then_some(())
    })
    .await;
    // A restart of the worker would finish the stop, never revive it.
    let stored = records(&s.store).await;
    assert!(stored[0].stop_requested, "{stored:?}");
    // A newer attempt of the task is still welcome here.
    let s3 = run(&w1, task, 2).await;
    assert_eq!(s3.attempt, 2);
}

#[actix_rt::test]
async fn containers_are_made_hardened_as_the_spec_and_the_config_say() {
    let s = Setup::new();
    let w = s.worker_with("publish_addr = \"127.0.0.1\"").await;
    let (plain, tight) = (Uuid::new_v4(), Uuid::new_v4());
    run(&w, plain, 1).await;
    let spec = serde_json::json!({
        "name": "t", "image": "img", "ports": [7777],
        "pids_limit": 32, "user": "1000:1000", "read_only": true,
    });
    let tight_assignment = Assignment {
        task_id: tight,
        attempt: 1,
        spec: cube::task::spec::from_value(spec).unwrap(),
    };
    w.addr
        .send(Assign(tight_assignment))
        .await
        .unwrap()
        .unwrap();
    w.wait_status("the task to run", tight, |st| {
        st.state == TaskState::Running
    })
    .await;

    let made = |task: Uuid| {
        let containers = s.engine.containers_of(task);
        assert_eq!(containers.len(), 1, "{containers:?}");
        containers[0].spec.clone()
    };
    let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let c = made(plain);
    assert!(c.no_new_privileges);
    assert_eq!(c.pids_limit, 1024);
    assert_eq!((c.user, c.read_only), (None, false));
    assert_eq!(c.publish_addr, loopback);
    let c = made(tight);
    assert!(c.no_new_privileges);
    assert_eq!(c.pids_limit, 32);
    assert_eq!((c.user.as_deref(), c.read_only), (Some("1000:1000"), true));
    assert_eq!(c.publish_addr, loopback);
}
