//! What the kernel is told: from the node's endpoints, the published TCP
//! ports it forwards itself (`Forward`), and the nftables table that does
//! it (`table`). Plain functions over plain data.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use ipnet::{IpNet, Ipv4Net};

use crate::ingress::{Route, routes, target};
use crate::service::EndpointTable;
use crate::service::spec::Protocol;
use crate::worker::endpoints::Running;

/// The packet mark (one bit) of a connection the table forwarded: such a
/// connection leaves with the node's address as its source, so that the
/// replica's answers come back through the node.
pub const MARK: u32 = 0x0010_0000;

/// The prefix of every forwarding table Cube makes; the owning process's
/// id follows.
pub const TABLE_PREFIX: &str = "cube_ingress_";

/// The prefix of every guard table Cube makes; the process's id follows.
pub const GUARD_PREFIX: &str = "cube_guard_";

/// Where a node's balancer listens on its published ports, whom it
/// serves there beside loopback, and the ports its listeners hold open
/// there (only those may be forwarded: a port another program holds is
/// never taken from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: IpAddr,
    pub allow: Option<IpNet>,
    pub open: BTreeSet<u16>,
}

/// One published TCP port at one listening address, forwarded by the
/// kernel to its replicas in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// `None`: every address of the node.
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    /// Who may connect, beside loopback (`None`: anyone).
    pub allow: Option<Ipv4Net>,
    pub targets: Vec<SocketAddrV4>,
}

/// The TCP ports the kernel forwards: each one published with `tcp`,
/// without PROXY protocol (which only user space can write) and without an
/// `idle_timeout_s` of its own (the kernel cannot close an idle
/// connection: it can only forget it, and the client would never learn),
/// at each
/// IPv4 place that holds it open, to its IPv4 replicas as `target` reaches
/// them, when every one of them is near: on the node's bridge (`bridge`,
/// given when loopback clients can reach it: its interface is known and
/// lets them) or at a loopback address. A replica on another host keeps
/// the port in user space: a packet from 127.0.0.1 cannot leave by
/// another interface, and one from outside forwarded to another host
/// meets the engine's forwarding policy (drop). A port with no replica is
/// left to user space too (which refuses the connection).
pub fn forwards(
    table: &EndpointTable,
    running: &Running,
    node: &str,
    places: &[Listen],
    bridge: Option<Ipv4Net>,
) -> Vec<Forward> {
    let mut routes: Vec<(u16, Route)> = routes(table)
        .into_iter()
        .filter(|(_, r)| {
            r.expose.protocol == Protocol::Tcp
                && !r.expose.proxy_protocol
                && r.expose.idle_timeout_s.is_none()
        })
        .collect();
    routes.sort_by_key(|(port, _)| *port);
    let mut out = Vec::new();
    for (port, route) in routes {
        let Some(entry) = table.get(&route.service) else {
            continue;
        };
        let targets: Vec<SocketAddrV4> = entry
            .endpoints
            .iter()
            .filter_map(|e| target(e, route.expose.port, node, running))
            .filter_map(|t| match t {
                std::net::SocketAddr::V4(v4) => Some(v4),
                std::net::SocketAddr::V6(_) => None,
            })
            .collect();
        if targets.is_empty() {
            continue;
        }
        let near = |t: &SocketAddrV4| {
            t.ip().is_loopback() || bridge.is_some_and(|net| net.contains(t.ip()))
        };
        if !targets.iter().all(near) {
            continue;
        }
        for place in places.iter().filter(|p| p.open.contains(&port)) {
            let addr = match place.addr {
                IpAddr::V4(ip) if ip.is_unspecified() => None,
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => continue,
            };
            let allow = match place.allow {
                None => None,
                Some(IpNet::V4(net)) => Some(net),
                // Not expressible in an IPv4 table: user space serves it.
                Some(IpNet::V6(_)) => continue,
            };
            out.push(Forward {
                addr,
                port,
                allow,
                targets: targets.clone(),
            });
        }
    }
    out
}

/// The name of the forwarding table of the process `pid`.
pub fn table_name(pid: u32) -> String {
    format!("{TABLE_PREFIX}{pid}")
}

/// The name of the guard table of the process `pid`.
pub fn guard_name(pid: u32) -> String {
    format!("{GUARD_PREFIX}{pid}")
}

/// The process whose table (forwarding or guard) `name` is, if it is one
/// of Cube's.
pub fn owner(name: &str) -> Option<u32> {
    name.strip_prefix(TABLE_PREFIX)
        .or_else(|| name.strip_prefix(GUARD_PREFIX))?
        .parse()
        .ok()
}

/// A command (one line, one transaction) that replaces the forwarding
/// table `name` with one that forwards `forwards`. The table is the
/// session's that made it (`flags owner`): the kernel removes it when
/// that session ends, with the process or not. Its DNAT comes after every
/// other (priority -99, after `dstnat`): a port that the engine or another
/// program forwards itself stays theirs.
pub fn forwarding(name: &str, forwards: &[Forward]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "delete table ip {name}");
    let _ = writeln!(s, "table ip {name} {{");
    let _ = writeln!(s, "  flags owner");
    for hook in ["prerouting", "output"] {
        let _ = writeln!(
            s,
            "  chain {hook} {{\n    type nat hook {hook} priority -99; policy accept;\n    jump ports\n  }}"
        );
    }
    let _ = writeln!(s, "  chain ports {{");
    for f in forwards {
        let _ = writeln!(s, "    {}", rule(f));
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain postrouting {{\n    type nat hook postrouting priority 99; policy accept;\n    \
         meta mark & {MARK:#x} == {MARK:#x} masquerade\n  }}"
    );
    let _ = writeln!(s, "}}");
    one_line(&s)
}

/// The command that makes the (empty) forwarding table `name`, owned by
/// the session that runs it.
pub fn owned_table(name: &str) -> String {
    format!("table ip {name} {{ flags owner; }}")
}

/// A script that replaces the guard table `name` with one that drops
/// packets from `bridge` to or from loopback addresses (the bridge lets
/// them out, `route_localnet`, so that loopback clients reach its
/// replicas; a container must not reach the host's loopback services).
/// It outlives the process (it is harmless alone) until the process
/// stops, or the next node sweeps it and shuts the bridge again.
pub fn guard(name: &str, bridge: &str) -> String {
    let mut s = removal(name);
    if crate::runtime::interface_name(bridge) {
        let _ = writeln!(
            s,
            "table ip {name} {{\n  chain guard {{\n    type filter hook prerouting priority -300; policy accept;\n    \
             iifname \"{bridge}\" ip saddr 127.0.0.0/8 drop\n    \
             iifname \"{bridge}\" ip daddr 127.0.0.0/8 drop\n  }}\n}}"
        );
    }
    s
}

/// `script` as one line (what an interactive `nft` takes as one
/// transaction).
fn one_line(script: &str) -> String {
    let mut line = String::new();
    for part in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        line.push_str(part);
        line.push_str(if part.ends_with('{') { " " } else { "; " });
    }
    line
}

/// The script that removes the table `name`, if it is there.
pub fn removal(name: &str) -> String {
    format!("table ip {name} {{}}\ndelete table ip {name}\n")
}

fn rule(f: &Forward) -> String {
    let mut r = String::new();
    // Only to this host: an address that moved to another machine is
    // routed through, not taken.
    r.push_str("fib daddr type local ");
    if let Some(ip) = f.addr {
        let _ = write!(r, "ip daddr {ip} ");
    }
    let _ = write!(r, "tcp dport {} ", f.port);
    if let Some(net) = f.allow {
        let _ = write!(r, "ip saddr {{ 127.0.0.0/8, {net} }} ");
    }
    let _ = write!(r, "meta mark set meta mark | {MARK:#x} counter dnat to ");
    if let [only] = f.targets.as_slice() {
        let _ = write!(r, "{}:{}", only.ip(), only.port());
        return r;
    }
    let map: Vec<String> = f
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{i} : {} . {}", t.ip(), t.port()))
        .collect();
    let _ = write!(
        r,
        "numgen inc mod {} map {{ {} }}",
        f.targets.len(),
        map.join(", ")
    );
    r
}

/// The packet counts of the forwarding rules in `listing` (what `nft list
/// table` printed), by published port.
pub fn counted(listing: &str) -> HashMap<u16, u64> {
    let mut counts = HashMap::new();
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
        };
        let port = after("dport").and_then(|p| p.parse::<u16>().ok());
        let packets = after("packets").and_then(|p| p.parse::<u64>().ok());
        if let (Some(port), Some(packets), true) = (port, packets, line.contains("dnat")) {
            *counts.entry(port).or_insert(0) += packets;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::spec::Expose;
    use crate::service::{Endpoint, Endpoints};
    use std::sync::Arc;

    fn endpoint(node: &str, address: &str, host_port: u16) -> Endpoint {
        Endpoint {
            task: uuid::Uuid::new_v4(),
            slot: 1,
            node: node.into(),
            address: address.into(),
            ports: [(7777, host_port)].into(),
            container_ip: None,
        }
    }

    fn table(protocol: Protocol, proxy: bool, endpoints: Vec<Endpoint>) -> EndpointTable {
        EndpointTable::from([(
            "db".to_string(),
            Arc::new(Endpoints {
                service: "db".into(),
                expose: vec![Expose {
                    port: 7777,
                    publish: 9000,
                    protocol,
                    balance: Default::default(),
                    proxy_protocol: proxy,
                    idle_timeout_s: None,
                }],
                endpoints,
            }),
        )])
    }

    fn host(addr: &str) -> Listen {
        Listen {
            addr: addr.parse().unwrap(),
            allow: None,
            open: [9000].into(),
        }
    }

    #[test]
    fn a_tcp_port_is_forwarded_at_each_place_to_each_replica() {
        let here = endpoint("w1", "127.0.0.2", 32001);
        let there = endpoint("w2", "127.0.0.3", 32002);
        let running = Running::from([(here.task, Some("172.18.0.5".parse().unwrap()))]);
        let t = table(Protocol::Tcp, false, vec![here, there]);
        let gateway = Listen {
            addr: "172.18.0.1".parse().unwrap(),
            allow: Some("172.18.0.0/16".parse().unwrap()),
            open: [9000].into(),
        };
        let bridge = Some("172.18.0.0/16".parse().unwrap());
        let got = forwards(&t, &running, "w1", &[host("127.0.0.2"), gateway], bridge);
        assert_eq!(got.len(), 2);
        let targets: Vec<SocketAddrV4> = vec![
            "172.18.0.5:7777".parse().unwrap(),
            "127.0.0.3:32002".parse().unwrap(),
        ];
        assert_eq!(got[0].addr, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(got[0].allow, None);
        assert_eq!(got[0].targets, targets);
        assert_eq!(got[1].addr, Some("172.18.0.1".parse().unwrap()));
        assert_eq!(got[1].allow, Some("172.18.0.0/16".parse().unwrap()));
        // A place that does not hold the port open (another program
        // does) gets no forwarding of it.
        let mut held = host("127.0.0.2");
        held.open.clear();
        assert!(forwards(&t, &running, "w1", &[held], bridge).is_empty());
    }

    #[test]
    fn http_proxy_protocol_and_replicaless_ports_stay_in_user_space() {
        let e = endpoint("w2", "10.0.0.3", 32002);
        let places = [host("0.0.0.0")];
        for t in [
            table(Protocol::Http, false, vec![e.clone()]),
            table(Protocol::Tcp, true, vec![e]),
            table(Protocol::Tcp, false, Vec::new()),
        ] {
            assert!(forwards(&t, &Running::new(), "w1", &places, None).is_empty());
        }
        // A port with an idle timeout of its own: only user space closes
        // idle connections.
        let mut idle = table(Protocol::Tcp, false, vec![endpoint("w2", "10.0.0.3", 1)]);
        if let Some(entry) = idle.get_mut("db") {
            Arc::make_mut(entry).expose[0].idle_timeout_s = Some(30);
        }
        assert!(forwards(&idle, &Running::new(), "w1", &places, None).is_empty());
        // IPv6 places are user space's too.
        let t = table(Protocol::Tcp, false, vec![endpoint("w2", "10.0.0.3", 1)]);
        assert!(forwards(&t, &Running::new(), "w1", &[host("::")], None).is_empty());
    }

    #[test]
    fn a_replica_on_another_host_keeps_the_port_in_user_space() {
        let far = endpoint("w2", "10.0.0.3", 32002);
        let here = endpoint("w1", "10.0.0.1", 32001);
        let running = Running::from([(here.task, Some("172.18.0.5".parse().unwrap()))]);
        let bridge = Some("172.18.0.0/16".parse().unwrap());
        let t = table(Protocol::Tcp, false, vec![here.clone(), far]);
        assert!(forwards(&t, &running, "w1", &[host("0.0.0.0")], bridge).is_empty());
        // The bridge unknown (or not letting loopback out): its replicas
        // are not near either.
        let t = table(Protocol::Tcp, false, vec![here]);
        assert!(forwards(&t, &running, "w1", &[host("0.0.0.0")], None).is_empty());
        let got = forwards(&t, &running, "w1", &[host("0.0.0.0")], bridge);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].addr, None);
        let text = rule(&got[0]);
        assert_eq!(
            text,
            "fib daddr type local tcp dport 9000 meta mark set meta mark | 0x100000 \
             counter dnat to 172.18.0.5:7777"
        );
        let mut at = got[0].clone();
        at.addr = Some("10.0.0.1".parse().unwrap());
        assert!(rule(&at).starts_with("fib daddr type local ip daddr 10.0.0.1 tcp dport 9000 "));
    }

    #[test]
    fn the_script_replaces_the_table_and_balances_in_turn() {
        let f = Forward {
            addr: Some("172.18.0.1".parse().unwrap()),
            port: 9000,
            allow: Some("172.18.0.0/16".parse().unwrap()),
            targets: vec![
                "172.18.0.5:7777".parse().unwrap(),
                "127.0.0.3:32002".parse().unwrap(),
            ],
        };
        let s = forwarding("cube_ingress_7", &[f]);
        assert!(!s.contains('\n'), "one line, one transaction: {s}");
        assert!(s.starts_with(
            "delete table ip cube_ingress_7; table ip cube_ingress_7 { flags owner; chain prerouting { "
        ));
        assert!(s.contains(
            "fib daddr type local ip daddr 172.18.0.1 tcp dport 9000 ip saddr { 127.0.0.0/8, 172.18.0.0/16 } \
             meta mark set meta mark | 0x100000 counter \
             dnat to numgen inc mod 2 map { 0 : 172.18.0.5 . 7777, 1 : 127.0.0.3 . 32002 }; "
        ));
        assert!(s.contains("meta mark & 0x100000 == 0x100000 masquerade; "));
        let g = guard("cube_guard_7", "br-abc");
        assert!(g.starts_with("table ip cube_guard_7 {}\ndelete table ip cube_guard_7\n"));
        assert!(g.contains("iifname \"br-abc\" ip saddr 127.0.0.0/8 drop"));
        assert!(g.contains("iifname \"br-abc\" ip daddr 127.0.0.0/8 drop"));
        // No interface of that name can be: no guard written for it.
        assert_eq!(guard("g", "a\" drop"), removal("g"));
    }

    #[test]
    fn tables_are_named_by_their_process() {
        assert_eq!(owner(&table_name(4242)), Some(4242));
        assert_eq!(owner(&guard_name(4243)), Some(4243));
        assert_eq!(owner("nat"), None);
        assert_eq!(owner("cube_ingress_x"), None);
    }

    #[test]
    fn counts_are_read_by_port() {
        let listing = "table ip cube_ingress_1 {\n\tchain ports {\n\t\tip daddr 127.0.0.2 tcp dport 9000 \
            meta mark set meta mark | 0x00100000 counter packets 12 bytes 720 \
            dnat ip to 172.18.0.5:7777\n\t}\n}\n";
        assert_eq!(counted(listing).get(&9000), Some(&12));
        assert!(counted("table ip nat {}").is_empty());
    }
}
