//! Three managers' Rafts, each on its own Store (a real LMDB file) and its
//! own HTTPS listener on a loopback port, speaking Raft's RPCs over mutual
//! TLS with certificates from one cluster CA: they elect a leader and
//! replicate, a new leader is elected when the leader's listener and Raft
//! stop, and a worker's certificate is refused at the Raft route. In one
//! process (the managers' processes come with the manager's integration),
//! over real sockets and real TLS.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cube::manager::raft_rpc::{self, Https};
use cube::raft::{self, Change, Member, NodeId, Raft, Record, Timing};
use cube::security::identity::Identity;
use cube::security::pki::Ca;
use cube::security::tls::{ClientCerts, Expect, NodeTls};
use cube::store::{DumpRecords, Store};
use serde_json::value::RawValue;

const LIFETIME: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(15);

struct Manager {
    raft: Raft,
    store: actix::Addr<Store>,
    server: actix_server::ServerHandle,
    url: String,
    _dir: tempfile::TempDir,
}

fn tls(ca: &Ca, who: &Identity) -> NodeTls {
    let cert = ca
        .issue(who, 0, &["127.0.0.1".to_string()], LIFETIME)
        .expect("a certificate");
    NodeTls::from_pem(ca.cert_pem(), &cert.cert_pem, &cert.key_pem).expect("TLS")
}

async fn manager(ca: &Ca, id: NodeId) -> Manager {
    let tls = tls(ca, &Identity::manager(&format!("m{id}")));
    let dir = tempfile::tempdir().expect("a data dir");
    let store = Store::start(dir.path()).expect("the store opens");
    let transport = Https::new(tls.client(Expect::Manager).expect("client TLS")).expect("client");
    let raft = raft::start(
        id,
        Timing::default(),
        store.clone(),
        transport,
        Default::default(),
    )
    .await
    .expect("raft starts");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let url = format!("https://{}", listener.local_addr().expect("bound"));
    let served = raft.clone();
    let server = cube::listener::serve(
        listener,
        tls.server(ClientCerts::Required).expect("server TLS"),
        move |cfg| {
            cfg.app_data(actix_web::web::Data::new(served.clone()));
            raft_rpc::configure(cfg)
        },
    )
    .expect("serving");
    let handle = server.handle();
    actix_rt::spawn(server);
    Manager {
        raft,
        store,
        server: handle,
        url,
        _dir: dir,
    }
}

fn change(key: &str) -> Change {
    Change {
        records: vec![Record {
            table: "tokens".into(),
            key: key.into(),
            value: Some(RawValue::from_string(format!("{{\"name\":\"{key}\"}}")).unwrap()),
        }],
    }
}

async fn keys(store: &actix::Addr<Store>) -> Vec<String> {
    let (records, _) = store
        .send(DumpRecords { meta: vec![] })
        .await
        .unwrap()
        .unwrap();
    records.into_iter().map(|r| r.key).collect()
}

async fn leader(of: &Manager, not: Option<NodeId>) -> NodeId {
    of.raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a leader",
        )
        .await
        .expect("a leader in time")
        .current_leader
        .expect("a leader")
}

async fn applied(on: &Manager, index: u64) {
    on.raft
        .wait(Some(WAIT))
        .applied_index_at_least(Some(index), "applied")
        .await
        .expect("applied in time");
}

#[actix_rt::test]
async fn managers_elect_replicate_and_fail_over_over_mutual_tls() {
    let ca = Ca::create().expect("a CA");
    let mut managers = Vec::new();
    for id in 1..=3 {
        managers.push(manager(&ca, id).await);
    }
    let members: BTreeMap<NodeId, Member> = managers
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let id = i as NodeId + 1;
            (
                id,
                Member {
                    name: format!("m{id}"),
                    url: m.url.clone(),
                },
            )
        })
        .collect();
    managers[0]
        .raft
        .initialize(members)
        .await
        .expect("initialized");
    let first = leader(&managers[0], None).await;
    let at = |id: NodeId| &managers[(id - 1) as usize];
    let written = at(first)
        .raft
        .client_write(change("one"))
        .await
        .expect("written");
    for m in &managers {
        applied(m, written.log_id.index).await;
        assert_eq!(keys(&m.store).await, ["one"]);
    }

    // The leader's listener and Raft stop: the other two elect a leader
    // and go on.
    at(first).server.stop(false).await;
    at(first).raft.shutdown().await.expect("shut down");
    let since = Instant::now();
    let others: Vec<&Manager> = (1..=3).filter(|&id| id != first).map(at).collect();
    let second = leader(others[0], Some(first)).await;
    println!(
        "a new leader {:?} after the leader stopped",
        since.elapsed()
    );
    let written = at(second)
        .raft
        .client_write(change("two"))
        .await
        .expect("written by the new leader");
    for m in &others {
        applied(m, written.log_id.index).await;
        assert_eq!(keys(&m.store).await, ["one", "two"]);
    }

    // A worker's certificate does not get into the Raft route.
    let worker = tls(&ca, &Identity::worker("w1"));
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(worker.client(Expect::Manager).expect("client TLS"))
        .build()
        .expect("client");
    let answer = http
        .post(format!("{}/raft/vote", others[0].url))
        .body("{}")
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 403);
    for m in others {
        m.raft.shutdown().await.expect("shut down");
        m.server.stop(false).await;
    }
}
