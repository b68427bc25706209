//! The zone `cube.`, read off the node's copy of the endpoints: plain
//! functions from a name and a record type to an answer.
//!
//! - `web.cube` A (or AAAA): the address where this node's load balancer
//!   serves the service (the listener's own: the host's for the host, the
//!   network gateway for the containers);
//! - `_web._tcp.cube` SRV: one record per healthy replica and container
//!   port, its node's address and host port (the target `<node>.node.cube`,
//!   whose A record rides along as an additional record);
//! - `<node>.node.cube` A: a node that runs replicas;
//! - anything else in `cube.`: NXDOMAIN, with the zone's SOA, whose minimum
//!   keeps negative answers cached no longer than a positive one.

use std::net::IpAddr;

use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

use crate::service::EndpointTable;

/// The zone Cube answers for.
pub const ZONE: &str = "cube.";
/// How long the balancer's address may be cached: it changes only with
/// the node's configuration.
pub const TTL_BALANCER: u32 = 5;
/// How long the replicas' records may be cached: they follow the
/// endpoints, which change as replicas start, fail and drain.
pub const TTL_REPLICAS: u32 = 1;

/// What the zone says to one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The name is not in `cube.`: the host's resolvers answer it.
    Elsewhere,
    /// The name exists; these are its records of the asked type (none is
    /// a "no data" answer).
    Found {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// No such name in the zone.
    NxDomain,
}

impl Answer {
    fn records(answers: Vec<Record>) -> Self {
        Answer::Found {
            answers,
            additionals: Vec::new(),
        }
    }
}

fn zone() -> Name {
    // A fixed, valid name: parsing it cannot fail.
    Name::from_ascii(ZONE).unwrap_or_else(|_| Name::root())
}

fn name(text: &str) -> Option<Name> {
    Name::from_ascii(text).ok()
}

/// The zone's SOA record, sent with negative answers.
pub fn soa() -> Record {
    let zone = zone();
    let mname = name("ns.cube.").unwrap_or_else(|| zone.clone());
    let rname = name("hostmaster.cube.").unwrap_or_else(|| zone.clone());
    Record::from_rdata(
        zone,
        TTL_REPLICAS,
        RData::SOA(SOA::new(mname, rname, 1, 60, 10, 600, TTL_REPLICAS)),
    )
}

/// An address record for `owner` when `ip` is of the asked family (ANY
/// takes both).
fn address(owner: &Name, ip: IpAddr, rtype: RecordType, ttl: u32) -> Option<Record> {
    let data = match (ip, rtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(owner.clone(), ttl, data))
}

/// The answer to `qname` `rtype` from `table`; `balancer` is where this
/// listener's askers reach the node's load balancer.
pub fn answer(table: &EndpointTable, qname: &Name, rtype: RecordType, balancer: IpAddr) -> Answer {
    let zone = zone();
    if !zone.zone_of(qname) {
        return Answer::Elsewhere;
    }
    let labels: Vec<String> = qname
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    match labels.as_slice() {
        ["cube"] => Answer::records(match rtype {
            RecordType::SOA | RecordType::ANY => vec![soa()],
            _ => Vec::new(),
        }),
        [service, "cube"] => match table.get(*service) {
            Some(_) => Answer::records(
                address(qname, balancer, rtype, TTL_BALANCER)
                    .into_iter()
                    .collect(),
            ),
            // Names exist below these two (empty non-terminals): no data,
            // not NXDOMAIN, which would deny everything under them.
            None if matches!(*service, "_tcp" | "node") => Answer::records(Vec::new()),
            None => Answer::NxDomain,
        },
        [srv_service, "_tcp", "cube"] => {
            let Some(entry) = srv_service
                .strip_prefix('_')
                .and_then(|service| table.get(service))
            else {
                return Answer::NxDomain;
            };
            if !matches!(rtype, RecordType::SRV | RecordType::ANY) {
                return Answer::records(Vec::new());
            }
            let mut answers = Vec::new();
            let mut additionals: Vec<Record> = Vec::new();
            for endpoint in &entry.endpoints {
                let Some(target) = name(&format!("{}.node.cube.", endpoint.node)) else {
                    log::debug!("dns: node {:?} makes no DNS name", endpoint.node);
                    continue;
                };
                // The exposed ports' host ports (all of them if none is).
                let ports = endpoint.ports.iter().filter(|(port, _)| {
                    entry.expose.is_empty() || entry.expose.iter().any(|e| e.port == **port)
                });
                for (_, host_port) in ports {
                    answers.push(Record::from_rdata(
                        qname.clone(),
                        TTL_REPLICAS,
                        RData::SRV(SRV::new(0, 1, *host_port, target.clone())),
                    ));
                }
                if let Ok(ip) = endpoint.address.parse::<IpAddr>() {
                    let glue = address(&target, ip, RecordType::ANY, TTL_REPLICAS);
                    if let Some(glue) = glue.filter(|g| !additionals.contains(g)) {
                        additionals.push(glue);
                    }
                }
            }
            Answer::Found {
                answers,
                additionals,
            }
        }
        [node @ .., "node", "cube"] if !node.is_empty() => {
            // A node's name may hold dots: it is every label before `node`.
            let node = node.join(".");
            let found = table
                .values()
                .flat_map(|entry| &entry.endpoints)
                .find(|e| e.node.eq_ignore_ascii_case(&node));
            match found {
                Some(endpoint) => Answer::records(
                    endpoint
                        .address
                        .parse::<IpAddr>()
                        .ok()
                        .and_then(|ip| address(qname, ip, rtype, TTL_REPLICAS))
                        .into_iter()
                        .collect(),
                ),
                None => Answer::NxDomain,
            }
        }
        _ => Answer::NxDomain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::endpoints::{Endpoint, Endpoints};
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use uuid::Uuid;

    const LB: &str = "172.18.0.1";

    fn table() -> EndpointTable {
        let endpoint = |slot: u32, node: &str, address: &str, port: u16| Endpoint {
            task: Uuid::new_v4(),
            slot,
            node: node.into(),
            address: address.into(),
            ports: BTreeMap::from([(7777, port)]),
            container_ip: None,
        };
        let web = Endpoints {
            service: "web".into(),
            expose: Vec::new(),
            endpoints: vec![
                endpoint(1, "w1", "10.0.0.1", 32001),
                endpoint(2, "w2", "10.0.0.2", 32002),
                endpoint(3, "w1", "10.0.0.1", 32003),
            ],
        };
        let idle = Endpoints {
            service: "idle".into(),
            expose: Vec::new(),
            endpoints: Vec::new(),
        };
        [web, idle]
            .into_iter()
            .map(|e| (e.service.clone(), Arc::new(e)))
            .collect()
    }

    fn ask(qname: &str, rtype: RecordType) -> Answer {
        answer(
            &table(),
            &Name::from_ascii(qname).unwrap(),
            rtype,
            LB.parse().unwrap(),
        )
    }

    fn no_data() -> Answer {
        Answer::Found {
            answers: vec![],
            additionals: vec![],
        }
    }

    fn data(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn a_service_name_is_the_balancers_address_whatever_its_replicas() {
        for qname in ["web.cube.", "WEB.Cube.", "idle.cube."] {
            let Answer::Found { answers, .. } = ask(qname, RecordType::A) else {
                panic!("{qname}: no answer");
            };
            assert_eq!(data(&answers), vec![LB], "{qname}");
            assert_eq!(answers[0].ttl, TTL_BALANCER);
        }
        // The balancer has no IPv6 address here: no data, not NXDOMAIN.
        assert_eq!(ask("web.cube.", RecordType::AAAA), no_data());
    }

    #[test]
    fn srv_lists_each_replica_at_its_node_and_host_port_with_glue() {
        let Answer::Found {
            answers,
            additionals,
        } = ask("_web._tcp.cube.", RecordType::SRV)
        else {
            panic!("no answer");
        };
        let mut srv = data(&answers);
        srv.sort();
        assert_eq!(
            srv,
            vec![
                "0 1 32001 w1.node.cube.",
                "0 1 32002 w2.node.cube.",
                "0 1 32003 w1.node.cube.",
            ]
        );
        assert!(answers.iter().all(|r| r.ttl == TTL_REPLICAS));
        let mut glue: Vec<String> = additionals
            .iter()
            .map(|r| format!("{} {}", r.name, r.data))
            .collect();
        glue.sort();
        assert_eq!(
            glue,
            vec!["w1.node.cube. 10.0.0.1", "w2.node.cube. 10.0.0.2"]
        );
        // A service with no healthy replica has no SRV record (but exists).
        assert_eq!(ask("_idle._tcp.cube.", RecordType::SRV), no_data());
    }

    #[test]
    fn srv_lists_only_the_exposed_ports_when_some_are() {
        let mut table = table();
        let mut web = (*table["web"]).clone();
        for e in &mut web.endpoints {
            e.ports.insert(9000, 40000 + u16::try_from(e.slot).unwrap());
        }
        web.expose = vec![
            serde_json::from_value(serde_json::json!({"port": 9000, "publish": 8080})).unwrap(),
        ];
        table.insert("web".into(), Arc::new(web));
        let got = answer(
            &table,
            &Name::from_ascii("_web._tcp.cube.").unwrap(),
            RecordType::SRV,
            LB.parse().unwrap(),
        );
        let Answer::Found { answers, .. } = got else {
            panic!("no answer");
        };
        let mut srv = data(&answers);
        srv.sort();
        assert_eq!(
            srv,
            vec![
                "0 1 40001 w1.node.cube.",
                "0 1 40002 w2.node.cube.",
                "0 1 40003 w1.node.cube.",
            ]
        );
    }

    #[test]
    fn names_with_names_below_them_exist() {
        assert_eq!(ask("_tcp.cube.", RecordType::A), no_data());
        assert_eq!(ask("node.cube.", RecordType::A), no_data());
    }

    #[test]
    fn nodes_running_replicas_have_addresses() {
        let Answer::Found { answers, .. } = ask("w2.node.cube.", RecordType::A) else {
            panic!("no answer");
        };
        assert_eq!(data(&answers), vec!["10.0.0.2"]);
        assert_eq!(ask("w9.node.cube.", RecordType::A), Answer::NxDomain);
    }

    #[test]
    fn unknown_names_in_the_zone_do_not_exist_and_others_are_not_ours() {
        for qname in [
            "nope.cube.",
            "_nope._tcp.cube.",
            "web._tcp.cube.",
            "_web._udp.cube.",
            "a.web.cube.",
        ] {
            assert_eq!(ask(qname, RecordType::A), Answer::NxDomain, "{qname}");
        }
        for qname in ["example.com.", "cube.example.com.", "notcube."] {
            assert_eq!(ask(qname, RecordType::A), Answer::Elsewhere, "{qname}");
        }
        let Answer::Found { answers, .. } = ask("cube.", RecordType::SOA) else {
            panic!("no SOA");
        };
        assert_eq!(answers, vec![soa()]);
    }
}
