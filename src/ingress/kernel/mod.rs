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
mod session;

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

/// What the process changed on the host beside its forwarding table
/// (which goes with its session): its guard table, and the bridge whose
/// `route_localnet` it set (with what it was before). Both given back when
/// dropped (the node stopping), the bridge first, while the guard still
/// stands.
struct Owned {
    guard: String,
    localnet: Option<(String, bool)>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some((bridge, was)) = self.localnet.take() {
            nft::restore_route_localnet_now(&bridge, was);
        }
        nft::remove_now(&self.guard);
    }
}

impl Owned {
    /// Guards `bridge` and lets loopback packets out through it, giving
    /// any other bridge back what it had.
    async fn open_localnet(&mut self, bridge: &str) -> Result<(), nft::NftError> {
        match &self.localnet {
            Some((b, _)) if b == bridge => return Ok(()),
            _ => self.close_localnet().await,
        }
        nft::apply(&rules::guard(&self.guard, bridge)).await?;
        // Set by another living node that guards it too: theirs, not what
        // the bridge had.
        let was = nft::route_localnet(bridge).await? && !nft::guarded_by_others(bridge).await;
        nft::set_route_localnet(bridge, true).await?;
        self.localnet = Some((bridge.to_string(), was));
        Ok(())
    }

    /// Gives the bridge whose `route_localnet` was set what it had, unless
    /// another living node guards it and still needs it; then takes the
    /// guard away.
    async fn close_localnet(&mut self) {
        let Some((bridge, was)) = self.localnet.take() else {
            return;
        };
        if !nft::guarded_by_others(&bridge).await
            && let Err(e) = nft::set_route_localnet(&bridge, was).await
        {
            // Still open: the guard stays.
            log::warn!("ingress: {e}");
            return;
        }
        // Shut, or left to another node's guard: this guard goes, so that
        // no other node takes it for a node that still needs the bridge
        // open (and leaves the bridge open when that node stops).
        if let Err(e) = nft::apply(&rules::removal(&self.guard)).await {
            log::warn!("ingress: cannot remove the guard {}: {e}", self.guard);
        }
    }

    /// Whether the guard still guards the bridge while it is let
    /// open (someone's `nft flush ruleset` removes it, not the forwarding
    /// table, which is the session's); if not, the bridge is shut at once
    /// and the keeper guards and opens it again.
    async fn check_guard(&mut self) {
        let Some((bridge, _)) = &self.localnet else {
            return;
        };
        if !nft::guards(&self.guard, bridge).await {
            log::warn!("ingress: the guard of {bridge} is gone; it is shut and guarded again");
            self.close_localnet().await;
        }
    }
}

/// The places the node's balancer listens at: `ingress`, and the
/// container network's gateway unless `ingress` is every address already;
/// each with the ports open there.
fn places(ingress: IpAddr, network: Option<&ContainerNetwork>, open: &OpenPorts) -> Vec<Listen> {
    let open_at = |addr: &IpAddr| open.get(addr).cloned().unwrap_or_default();
    let mut places = vec![Listen {
        addr: ingress,
        allow: None,
        open: open_at(&ingress),
    }];
    if let Some(net) = network
        && !ingress.is_unspecified()
    {
        places.push(Listen {
            addr: net.gateway,
            allow: net.subnet,
            open: open_at(&net.gateway),
        });
    }
    places
}

/// What the table could forward now, from one look at the feeds.
struct Wanted {
    /// The node's bridge, when its interface is known.
    bridge: Option<String>,
    /// The forwards were the bridge letting loopback packets out.
    with_bridge: Vec<Forward>,
    /// The forwards were it not (its replicas then not near).
    without: Vec<Forward>,
}

fn wanted(feeds: &mut Feeds) -> Wanted {
    let network = feeds.network.borrow_and_update().clone();
    let open = feeds.open.borrow_and_update().clone();
    let running = feeds.running.borrow_and_update().clone();
    let table = feeds.endpoints.borrow_and_update().clone();
    let bridge = network
        .as_ref()
        .and_then(|n| n.bridge.clone())
        .filter(|b| crate::runtime::interface_name(b));
    let bridge_net = match network.as_ref().and_then(|n| n.subnet) {
        Some(ipnet::IpNet::V4(net)) if bridge.is_some() => Some(net),
        _ => None,
    };
    let places = places(feeds.ingress, network.as_ref(), &open);
    let forwards = |net| rules::forwards(&table, &running, &feeds.node, &places, net);
    Wanted {
        with_bridge: forwards(bridge_net),
        without: forwards(None),
        bridge,
    }
}

/// How often a node looks for tables of Cube processes gone (killed on
/// this machine without restarting).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps the node's table true to its feeds until one of them ends (the
/// node stopping). When `nft` cannot be run, says so once and leaves
/// every port to user space.
pub async fn run(mut feeds: Feeds) {
    match nft::remove_orphans(true).await {
        Ok(0) => {}
        Ok(n) => log::info!("ingress: removed {n} forwarding table(s) of Cube processes gone"),
        Err(e) => {
            log::warn!("ingress: TCP ports are carried in user space, not by the kernel: {e}");
            return;
        }
    }
    let pid = std::process::id();
    let name = rules::table_name(pid);
    let mut owned = Owned {
        guard: rules::guard_name(pid),
        localnet: None,
    };
    let mut session: Option<session::Session> = None;
    let mut applied: Option<Vec<Forward>> = None;
    // The bridge that could not be made to let loopback packets out.
    let mut unlet: Option<String> = None;
    let mut complained = false;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // What could be forwarded were the bridge let open: then it is
        // guarded and let open first (meanwhile user space serves its
        // loopback clients), else given back what it had.
        let Wanted {
            bridge,
            with_bridge,
            without,
        } = wanted(&mut feeds);
        if unlet.is_some() && unlet != bridge {
            // Another bridge now: it may let them.
            unlet = None;
        }
        match bridge.as_deref() {
            Some(bridge) if !with_bridge.is_empty() && unlet.is_none() => {
                if let Err(e) = owned.open_localnet(bridge).await {
                    log::warn!(
                        "ingress: loopback clients of the replicas on {bridge} stay in user space: {e}"
                    );
                    owned.close_localnet().await;
                    unlet = Some(bridge.to_string());
                }
            }
            _ => owned.close_localnet().await,
        }
        let forwards = match owned.localnet {
            Some(_) => with_bridge,
            None => without,
        };
        if applied.as_ref() != Some(&forwards) {
            if session.as_ref().is_some_and(session::Session::worn) {
                // Its table goes with it, before the next one's is made.
                if let Some(worn) = session.take() {
                    worn.close().await;
                }
            }
            let told = async {
                let open = match &mut session {
                    Some(open) => open,
                    None => session.insert(session::Session::open(&name).await?),
                };
                open.run(&rules::forwarding(&name, &forwards)).await
            };
            match told.await {
                Ok(_) => {
                    log::debug!(
                        "ingress: the kernel forwards {} TCP port(s)",
                        forwards.len()
                    );
                    applied = Some(forwards);
                    complained = false;
                }
                Err(e) => {
                    if !complained {
                        log::error!(
                            "ingress: cannot have the kernel forward TCP ports ({e}); user space carries them"
                        );
                    }
                    complained = true;
                    // Its table goes with it; the next change starts
                    // another.
                    session = None;
                    applied = None;
                }
            }
        }
        let ended = tokio::select! {
            r = feeds.endpoints.changed() => r.is_err(),
            r = feeds.running.changed() => r.is_err(),
            r = feeds.network.changed() => r.is_err(),
            r = feeds.open.changed() => r.is_err(),
            _ = sweep.tick() => {
                if let Err(e) = nft::remove_orphans(false).await {
                    log::warn!("ingress: cannot look for forwarding tables of processes gone: {e}");
                }
                owned.check_guard().await;
                false
            }
        };
        if ended {
            return;
        }
    }
}
