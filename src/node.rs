//! Starts what a node config asks for: the Store, then the manager's actors
//! and HTTP server, and/or the worker's actors and HTTP server.

use actix::prelude::*;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use actix_web::web;
use anyhow::Context as _;

use crate::client::Client;
use crate::config::{ManagerConfig, NodeConfig, Role, WorkerConfig, default_client_file};
use crate::core::tokens::{Role as TokenRole, TokenRecord};
use crate::listener::divert::Divert;
use crate::manager::Manager;
use crate::manager::actor::Published;
use crate::manager::actor::Settled;
use crate::manager::auth::Tokens;
use crate::manager::client_file;
use crate::manager::consensus;
use crate::manager::forward::ToLeader;
use crate::manager::join::JoinAuthority;
use crate::manager::join_tokens::JoinTokens;
use crate::manager::joining;
use crate::manager::members::GenerationTable;
use crate::manager::replica::{Records, Shape};
use crate::manager::services::EndpointFeed;
use crate::runtime::docker::DockerEngine;
use crate::security::files::MANAGER_NAME;
use crate::security::files::{load_node_keys, manager_keys, save_node_keys};
use crate::security::identity::Identity;
use crate::security::renewal::Renewal;
use crate::security::secret::sha256_hex;
use crate::security::tls::{ClientCerts, Expect, NodeTls};
use crate::store::{LoadAll, Store};
use crate::wire::RenewRequest;
use crate::worker::Worker;
use crate::worker::actor::HEARTBEAT_TIMEOUT;
use crate::worker::endpoints::{EndpointFollower, EndpointView};
use crate::worker::join::{JoinError, join};
use crate::worker::record::WorkerTaskRecord;
use crate::worker::stats::{SAMPLE_EVERY, Stats};

/// How long a manager waits at start to lead or follow before it serves.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// The longest wait between tries to reach a manager to join.
const JOIN_RETRY_MAX: Duration = Duration::from_secs(5);

/// Runs a node until it is stopped (Ctrl-C / SIGTERM) or fails.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let map_size = config.store_map_mb.saturating_mul(1 << 20);
    let store = Store::start_with_map_size(&config.data_dir, map_size)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    let mut servers = Vec::new();
    // An actor that cannot go on says why here; the process then ends.
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::unbounded_channel::<String>();

    if let Some(mc) = &config.manager {
        let joining = mc
            .join
            .clone()
            .filter(|_| !joining::has_keys(&config.data_dir));
        if let Some(join) = &joining {
            let token = std::env::var("CUBE_MANAGER_JOIN_TOKEN")
                .ok()
                .or_else(|| mc.join_token.clone())
                .context(
                    "manager: to join a cluster it needs the manager join token \
                     ([manager] join_token or CUBE_MANAGER_JOIN_TOKEN; a manager wrote it to \
                     <its data_dir>/manager.token)",
                )?;
            joining::fetch_keys(&config.data_dir, join, &token).await?;
        }
        let keys = manager_keys(&config.data_dir, &mc.cert_hosts(), mc.node_cert_ttl())
            .context("manager: cannot set up its certificates and tokens")?;
        log_manager_keys(&config.data_dir, keys.new_cluster);
        let url = mc.advertise_url();
        let consensus =
            consensus::start(&store, &keys.tls, &url, mc.join.is_some(), mc.raft_timing()).await?;
        let join_later = mc
            .join
            .clone()
            .filter(|_| !consensus::is_member(&consensus.raft, consensus.id));
        consensus::first_admin(&consensus, &store, first_admin(&keys.admin_secret)).await?;
        let shape = Shape {
            scheduler: mc.scheduler,
            down_after: mc.down_after(),
            retention: (&mc.retain_ended).into(),
        };
        let (dump, applied) = crate::raft::state_machine::applied_records(&store)
            .await
            .context("manager: cannot read the store")?;
        let records = Records::from_dump(&dump).context("manager: cannot read the store")?;
        let state = shape.build(records, std::time::Instant::now());
        let (tokens_tx, tokens_rx) = watch::channel(Arc::new(state.token_table()));
        let (generations_tx, generations_rx) = watch::channel(Arc::new(state.generations()));
        let (join_tokens_tx, join_tokens_rx) = watch::channel(Arc::new(state.join_token_table()));
        actix_rt::spawn(crate::manager::join_tokens::keep_files(
            config.data_dir.clone(),
            join_tokens_rx.clone(),
        ));
        if let Some(wc) = config.worker.as_ref().filter(|_| config.role == Role::Dev) {
            // A dev node's worker joins its own manager: its certificate
            // comes straight from the CA (for its name's generation: a dev
            // worker removed comes back when the node restarts).
            let generation = state.node(&wc.name).map_or(0, |n| n.generation);
            let issued = keys
                .ca
                .issue(
                    &Identity::worker(&wc.name),
                    generation,
                    &[wc.advertise_host()],
                    mc.node_cert_ttl(),
                )
                .context("dev: cannot issue the worker's certificate")?;
            save_node_keys(
                &config.data_dir,
                keys.ca.cert_pem(),
                &issued.cert_pem,
                &issued.key_pem,
            )
            .context("dev: cannot save the worker's certificate")?;
        }
        let server_tls = keys
            .tls
            .server(ClientCerts::Optional)
            .context("manager: TLS set-up")?;
        if let Some(at) = client_file_at(mc, &config.data_dir, &keys.admin_secret) {
            client_file::write_first(&at, &url);
            actix_rt::spawn(client_file::keep(at, url.clone(), consensus.raft.clone()));
        }
        let own_tls = keys.tls.clone();
        let (endpoints_tx, endpoints_rx) =
            watch::channel(Arc::new(crate::core::services::endpoint_table(&state)));
        let (leader_tx, leader_rx) = watch::channel(None);
        let published = Published {
            tokens: tokens_tx,
            generations: generations_tx,
            join_tokens: join_tokens_tx,
            endpoints: endpoints_tx,
            leader: leader_tx,
        };
        let endpoints: web::Data<EndpointFeed> = web::Data::new(endpoints_rx);
        let raft = web::Data::new(consensus.raft.clone());
        let own_raft = consensus.raft.clone();
        let contacts: web::Data<crate::manager::managers::Contacts> =
            web::Data::new(consensus.contacts.clone());
        let id = consensus.id;
        let to_leader = ToLeader::new(
            leader_rx,
            keys.tls
                .client(Expect::Manager)
                .context("manager: TLS set-up")?,
            consensus.raft.clone(),
        )
        .context("manager: its client of the leader")?;
        let divert: web::Data<dyn Divert> = web::Data::from(Arc::new(to_leader) as Arc<dyn Divert>);
        let manager_tls = keys.tls.clone();
        let manager = Manager::new(
            store.clone(),
            consensus,
            shape,
            (state, applied),
            keys.tls,
            published,
        )
        .start();
        // Requests are taken once it leads (or knows whom it follows).
        if join_later.is_none()
            && tokio::time::timeout(LEADER_WAIT, manager.send(Settled))
                .await
                .is_err()
        {
            log::warn!("manager: no role yet after {LEADER_WAIT:?}; serving anyway");
        }
        let data = web::Data::new(manager);
        let tokens: web::Data<Tokens> = web::Data::new(tokens_rx);
        let generations: web::Data<GenerationTable> = web::Data::new(generations_rx);
        let authority = web::Data::new(JoinAuthority {
            ca: keys.ca,
            join: JoinTokens::new(keys.join_token, keys.manager_token, join_tokens_rx.clone()),
            admin_secret: keys.admin_secret.clone(),
            ttl: mc.node_cert_ttl(),
        });
        // The manager renews its own certificate with its CA.
        let (signer, hosts, lifetime) = (authority.clone(), mc.cert_hosts(), mc.node_cert_ttl());
        Renewal::new(
            own_tls,
            config.data_dir.clone(),
            "manager",
            Identity::manager(MANAGER_NAME),
            Box::new(move |csr| {
                let signed = signer
                    .ca
                    .sign_request(&csr, &Identity::manager(MANAGER_NAME), 0, &hosts, lifetime)
                    .map_err(|e| e.to_string());
                Box::pin(async move { signed })
            }),
        )
        .start();
        let listener = std::net::TcpListener::bind(mc.listen)
            .with_context(|| format!("manager: cannot listen on {}", mc.listen))?;
        let server = crate::listener::serve(listener, server_tls, move |cfg| {
            cfg.app_data(data.clone())
                .app_data(authority.clone())
                .app_data(tokens.clone())
                .app_data(generations.clone())
                .app_data(endpoints.clone())
                .app_data(raft.clone())
                .app_data(contacts.clone())
                .app_data(divert.clone());
            crate::manager::raft_rpc::configure(cfg);
            crate::manager::managers::configure(cfg);
            crate::manager::join::configure(cfg);
            crate::manager::tokens::configure(cfg);
            crate::manager::services::configure(cfg);
            crate::manager::routes::configure(cfg);
        })
        .with_context(|| format!("manager: cannot serve on {}", mc.listen))?;
        log::info!(
            "manager: listening on https://{} (scheduler {}, workers down after {} ms)",
            mc.listen,
            mc.scheduler,
            mc.down_after_ms
        );
        servers.push(server);
        if let Some(join) = join_later {
            actix_rt::spawn(consensus::ask_to_join(
                join,
                manager_tls,
                own_raft,
                id,
                url.clone(),
            ));
        }
    }

    if let Some(wc) = &config.worker {
        let manager_url = config
            .manager_url_for_worker()
            .context("the worker needs a manager URL")?;
        let records = store
            .send(LoadAll::<WorkerTaskRecord>::new())
            .await?
            .context("cannot load the worker's tasks")?;
        let tls = worker_keys(&config, wc, &manager_url).await?;
        let to_manager = tls.client(Expect::Manager).context("worker: TLS set-up")?;
        // The configured managers, then those a manager told it last.
        let managers_file = crate::worker::managers::file(&config.data_dir);
        let managers = crate::worker::managers::at_start(
            &manager_url,
            &crate::worker::managers::load(&managers_file),
        );
        let manager = Client::new(&managers, &to_manager)?;
        // Shares the managers' URLs with `manager`: what one learns, both ask.
        let beat = manager.alike(HEARTBEAT_TIMEOUT)?;
        let (renewer, hosts) = (manager.clone(), vec![wc.advertise_host()]);
        Renewal::new(
            tls.clone(),
            config.data_dir.clone(),
            "node",
            Identity::worker(&wc.name),
            Box::new(move |csr| {
                let (renewer, hosts) = (renewer.clone(), hosts.clone());
                Box::pin(async move {
                    renewer
                        .renew(&RenewRequest { hosts, csr })
                        .await
                        .map(|reply| reply.certificate)
                        .map_err(|e| e.to_string())
                })
            }),
        )
        .start();
        let server_tls = tls
            .server(ClientCerts::Required)
            .context("worker: TLS set-up")?;
        let stats = Stats::start(&config.data_dir, SAMPLE_EVERY);
        // Bind before the worker starts, so it registers a reachable address.
        let worker_addr = wc.listen;
        let listener = std::net::TcpListener::bind(worker_addr)
            .with_context(|| format!("worker: cannot listen on {worker_addr}"))?;
        let (follower, endpoint_view) = EndpointFollower::new(&wc.name, manager.clone());
        follower.start();
        let worker = Worker::new(
            wc,
            manager,
            beat,
            store.clone(),
            stats,
            records,
            fatal_tx.clone(),
            std::sync::Arc::new(DockerEngine::local()),
        )
        .with_certificate_files(crate::security::files::node_cert_paths(&config.data_dir))
        .with_managers_file(managers_file);
        let ingress = crate::ingress::Place {
            node: wc.name.clone(),
            addr: wc.ingress_addr,
            allow: None,
            threads: wc.ingress_threads,
            bodies: crate::ingress::budget::BodyBudget::new(crate::ingress::budget::BODY_BUDGET),
            running: worker.running_view(),
            open: Default::default(),
        };
        if wc.ingress_kernel_tcp {
            actix_rt::spawn(crate::ingress::kernel::run(crate::ingress::kernel::Feeds {
                node: wc.name.clone(),
                ingress: wc.ingress_addr,
                endpoints: endpoint_view.clone(),
                running: worker.running_view(),
                network: worker.network_view(),
                open: ingress.open.subscribe(),
            }));
        }
        actix_rt::spawn(crate::ingress::run(ingress.clone(), endpoint_view.clone()));
        if let Some(at) = wc.dns_listen {
            let listen = crate::dns::Listen {
                at,
                balancer: host_balancer(wc.ingress_addr, at.ip()),
                // The host asking its own address comes from that address.
                allow: (!at.ip().is_unspecified()).then(|| ipnet::IpNet::from(at.ip())),
            };
            actix_rt::spawn(crate::dns::run(listen, endpoint_view.clone()));
        }
        actix_rt::spawn(serve_containers(
            worker.network_view(),
            ingress,
            endpoint_view.clone(),
        ));
        let endpoint_view: web::Data<EndpointView> = web::Data::new(endpoint_view);
        let worker = worker.start();
        let data = web::Data::new(worker);
        let server = crate::listener::serve(listener, server_tls, move |cfg| {
            cfg.app_data(data.clone()).app_data(endpoint_view.clone());
            crate::worker::routes::configure(cfg);
        })
        .with_context(|| format!("worker: cannot serve on {worker_addr}"))?;
        log::info!(
            "worker {}: listening on https://{worker_addr}, manager {manager_url}",
            wc.name
        );
        servers.push(server);
    }

    if config.role == Role::Dev {
        log::info!("dev node: manager and worker in one process");
    }
    let fatal = async move { fatal_rx.recv().await };
    tokio::select! {
        served = futures_util::future::try_join_all(servers) => {
            served?;
            Ok(())
        }
        Some(why) = fatal => Err(anyhow::anyhow!(why)),
    }
}

/// Where the host reaches the balancer that listens on `ingress`: there,
/// unless it listens on every address, then at the DNS listener's address
/// (or loopback).
fn host_balancer(ingress: IpAddr, dns: IpAddr) -> IpAddr {
    match (ingress.is_unspecified(), dns.is_unspecified()) {
        (false, _) => ingress,
        (true, false) => dns,
        (true, true) => std::net::Ipv4Addr::LOCALHOST.into(),
    }
}

/// Once the engine has made the node's container network: the DNS server
/// on its gateway (port 53: the containers' name server) and, unless the
/// balancer (at `ingress`) listens on every address already, the balancer
/// there too; both answer only the network's containers (and the host).
/// Served again on the new gateway if the network is made anew.
async fn serve_containers(
    mut network: tokio::sync::watch::Receiver<Option<crate::runtime::ContainerNetwork>>,
    ingress: crate::ingress::Place,
    view: EndpointView,
) {
    let mut serving: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut served: Option<crate::runtime::ContainerNetwork> = None;
    loop {
        let now = network.borrow_and_update().clone();
        if now.is_some() && now != served {
            for task in serving.drain(..) {
                task.abort();
            }
            if let Some(net) = &now {
                let listen = crate::dns::Listen {
                    at: SocketAddr::new(net.gateway, 53),
                    balancer: net.gateway,
                    allow: net.subnet,
                };
                serving.push(actix_rt::spawn(crate::dns::run(listen, view.clone())));
                if !ingress.addr.is_unspecified() {
                    let place = crate::ingress::Place {
                        addr: net.gateway,
                        allow: net.subnet,
                        ..ingress.clone()
                    };
                    serving.push(actix_rt::spawn(crate::ingress::run(place, view.clone())));
                }
            }
            served = now;
        }
        if network.changed().await.is_err() {
            return;
        }
    }
}

/// The first admin token, `admin`, of a new cluster: its secret is the
/// one the manager wrote to `admin.token`.
fn first_admin(admin_secret: &str) -> TokenRecord {
    TokenRecord {
        name: "admin".into(),
        role: TokenRole::Admin,
        hash: sha256_hex(admin_secret.as_bytes()),
        created_at: chrono::Utc::now(),
        expires_at: None,
        created_by: None,
    }
}

/// A worker's certificate: the one it holds, or one it gets by joining.
async fn worker_keys(
    config: &NodeConfig,
    wc: &WorkerConfig,
    manager_url: &str,
) -> anyhow::Result<NodeTls> {
    if let Some(tls) =
        load_node_keys(&config.data_dir).context("worker: cannot read its certificate")?
    {
        let holder = tls.identity()?;
        if holder != Identity::worker(&wc.name) {
            anyhow::bail!(
                "worker: {} holds the certificate of {holder}, not of worker {}; give this worker its own data_dir",
                config.data_dir.display(),
                wc.name
            );
        }
        return Ok(tls);
    }
    let token = std::env::var("CUBE_JOIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| wc.join_token.clone());
    // A manager not up yet is waited for; a refusal ends the process.
    let mut wait = Duration::from_millis(100);
    let tls = loop {
        match join(
            &config.data_dir,
            &wc.name,
            &[wc.advertise_host()],
            manager_url,
            token.as_deref(),
        )
        .await
        {
            Err(JoinError::Manager { source, .. }) if source.is_unreachable() => {
                log::warn!(
                    "worker {}: cannot reach the manager at {manager_url} to join ({source}); trying again in {wait:?}",
                    wc.name
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(JOIN_RETRY_MAX);
            }
            joined => break joined.with_context(|| format!("worker {} cannot join", wc.name))?,
        }
    };
    log::info!(
        "worker {}: joined the cluster of {manager_url}; certificate saved in {}",
        wc.name,
        crate::security::files::pki_dir(&config.data_dir).display()
    );
    Ok(tls)
}

fn log_manager_keys(data_dir: &Path, new_cluster: bool) {
    if new_cluster {
        log::info!("manager: a new cluster: its CA was made");
    }
    log::info!(
        "manager: CA certificate {}; worker join token in {}; admin token in {}",
        crate::security::files::ca_path(data_dir).display(),
        crate::security::files::worker_token_path(data_dir).display(),
        crate::security::files::admin_token_path(data_dir).display()
    );
}

/// Where the CLI's client file goes (`[manager] client_file`, or
/// `~/.cube/client.toml`) and what it holds beside the managers' URLs.
fn client_file_at(
    mc: &ManagerConfig,
    data_dir: &Path,
    admin_secret: &str,
) -> Option<client_file::ClientFileAt> {
    let Some(path) = mc.client_file.clone().or_else(default_client_file) else {
        log::warn!("manager: no home directory; no client file written");
        return None;
    };
    let ca = crate::security::files::ca_path(data_dir);
    Some(client_file::ClientFileAt {
        path,
        ca: std::path::absolute(&ca).unwrap_or(ca),
        token: admin_secret.to_string(),
    })
}
