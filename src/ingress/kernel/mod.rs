//! Published TCP ports forwarded by the kernel (nftables DNAT), not
//! carried through the balancer's process: a connection's bytes then move
//! as they would to the replica directly. One table per node process
//! (`cube_ingress_<pid>`), rewritten whole, in one transaction, whenever
//! the node's endpoints, running tasks, container network or open ports
//! change; removed when the process stops, and by the next node to start
//! on the machine when the process was killed.
//!
//! Only ports whose user-space listener is open are forwarded, so a port
//! another program holds is never taken from it, and a connection the
//! kernel does not take (a port with no replica, PROXY protocol, IPv6, a
//! client on loopback when a replica is on another host, `nft` missing)
//! reaches the user-space balancer as before. Connections already made
//! stay with their replica when the table changes (the kernel's
//! connection tracking keeps them), as they do in user space.

pub mod nft;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::runtime::ContainerNetwork;
use crate::worker::endpoints::{EndpointView, RunningView};
use rules::{Forward, Listen};

/// The ports each place's user-space listeners hold open, by address.
pub type OpenPorts = BTreeMap<IpAddr, BTreeSet<u16>>;

/// What the node's places say of their open ports, shared by them.
pub type OpenPortsTx = Arc<watch::Sender<OpenPorts>>;

/// One place's entry in [`OpenPorts`], taken out when the place stops
/// serving (its loop ended or aborted).
pub struct OpenAt {
    tx: OpenPortsTx,
    addr: IpAddr,
}

impl OpenAt {
    pub fn new(tx: OpenPortsTx, addr: IpAddr) -> Self {
        OpenAt { tx, addr }
    }

    /// The place holds `ports` open now (says so only on a change).
    pub fn set(&self, ports: BTreeSet<u16>) {
        self.tx.send_if_modified(|open| {
            if open.get(&self.addr) == Some(&ports) {
                return false;
            }
            open.insert(self.addr, ports);
            true
        });
    }
}

impl Drop for OpenAt {
    fn drop(&mut self) {
        let addr = self.addr;
        self.tx
            .send_if_modified(|open| open.remove(&addr).is_some());
    }
}

/// What the keeper follows.
pub struct Feeds {
    pub node: String,
    /// `[worker] ingress_addr`.
    pub ingress: IpAddr,
    pub endpoints: EndpointView,
    pub running: RunningView,
    pub network: watch::Receiver<Option<ContainerNetwork>>,
    pub open: watch::Receiver<OpenPorts>,
}

/// Removes the process's table when dropped (the node stopping).
struct Owned(String);

impl Drop for Owned {
    fn drop(&mut self) {
        nft::remove_now(&self.0);
    }
}

/// The places the node's balancer listens at: `ingress`, and the
/// container network's gateway unless `ingress` is every address already;
/// each with the ports open there.
fn places(ingress: IpAddr, network: Option<&ContainerNetwork>) -> Vec<Listen> {
    let mut places = vec![Listen {
        addr: ingress,
        allow: None,
    }];
    if let Some(net) = network
        && !ingress.is_unspecified()
    {
        places.push(Listen {
            addr: net.gateway,
            allow: net.subnet,
        });
    }
    places
}

/// What the table should forward now: the forwards of ports open at
/// their place, and the bridge to guard.
fn wanted(feeds: &mut Feeds) -> (Option<String>, Vec<Forward>) {
    let network = feeds.network.borrow_and_update().clone();
    let open = feeds.open.borrow_and_update().clone();
    let running = feeds.running.borrow_and_update().clone();
    let table = feeds.endpoints.borrow_and_update().clone();
    let bridge_net = match network.as_ref().and_then(|n| n.subnet) {
        Some(ipnet::IpNet::V4(net)) => Some(net),
        _ => None,
    };
    let places = places(feeds.ingress, network.as_ref());
    let forwards = rules::forwards(&table, &running, &feeds.node, &places, bridge_net)
        .into_iter()
        .filter(|f| {
            let addr = f.addr.map_or(feeds.ingress, IpAddr::V4);
            open.get(&addr).is_some_and(|ports| ports.contains(&f.port))
        })
        .collect();
    (network.and_then(|n| n.bridge), forwards)
}

/// Keeps the node's table true to its feeds until one of them ends (the
/// node stopping), then removes it. When `nft` cannot be run, says so
/// once and leaves every port to user space.
pub async fn run(mut feeds: Feeds) {
    match nft::remove_orphans().await {
        Ok(0) => {}
        Ok(n) => log::info!("ingress: removed {n} forwarding table(s) of Cube processes gone"),
        Err(e) => {
            log::warn!("ingress: TCP ports are carried in user space, not by the kernel: {e}");
            return;
        }
    }
    let name = rules::table_name(std::process::id());
    let _owned = Owned(name.clone());
    let mut applied: Option<(Option<String>, Vec<Forward>)> = None;
    let mut localnet: Option<String> = None;
    let mut complained = false;
    loop {
        let want = wanted(&mut feeds);
        if applied.as_ref() != Some(&want) {
            let (bridge, forwards) = &want;
            let told = async {
                if let Some(bridge) = bridge
                    && localnet.as_ref() != Some(bridge)
                {
                    nft::route_localnet(bridge).await?;
                    localnet = Some(bridge.clone());
                }
                nft::apply(&rules::script(&name, bridge.as_deref(), forwards)).await
            };
            match told.await {
                Ok(()) => {
                    log::debug!(
                        "ingress: the kernel forwards {} TCP port(s)",
                        forwards.len()
                    );
                    applied = Some(want);
                    complained = false;
                }
                Err(e) => {
                    if !complained {
                        log::error!(
                            "ingress: cannot have the kernel forward TCP ports ({e}); user space carries them"
                        );
                    }
                    complained = true;
                    // Removed, so that no outdated forwarding stays.
                    let _ = nft::apply(&rules::removal(&name)).await;
                    applied = None;
                }
            }
        }
        let ended = tokio::select! {
            r = feeds.endpoints.changed() => r.is_err(),
            r = feeds.running.changed() => r.is_err(),
            r = feeds.network.changed() => r.is_err(),
            r = feeds.open.changed() => r.is_err(),
        };
        if ended {
            return;
        }
    }
}
