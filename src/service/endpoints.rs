//! Where a service can be reached: its replicas that are running and
//! healthy (or running, without a health check) and not being stopped,
//! each with its node's address and the host port of each container port.
//! What the balancers and the DNS of issue 12 follow, and `GET
//! /services/{name}/endpoints` shows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::spec::Expose;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub task: Uuid,
    pub slot: u32,
    pub node: String,
    /// The node's host (name or IP address), where the host ports are.
    pub address: String,
    /// Container port -> host port.
    pub ports: BTreeMap<u16, u16>,
    /// The container's address on its node's network: the balancer of
    /// that node reaches the container ports there directly (no other
    /// node can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_ip: Option<std::net::IpAddr>,
}

/// One service's endpoints and the ports it exposes through the cluster,
/// as `GET /services/{name}/endpoints` answers (and each line of the
/// `?watch=true` streams; a service removed is a line with neither).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    pub service: String,
    #[serde(default)]
    pub expose: Vec<Expose>,
    pub endpoints: Vec<Endpoint>,
}

impl Endpoints {
    /// The line of a service that is gone.
    pub fn gone(service: &str) -> Self {
        Endpoints {
            service: service.to_string(),
            expose: Vec::new(),
            endpoints: Vec::new(),
        }
    }
}

/// A line of the workers' endpoint feed: the whole table when it starts
/// (`{"table": [...]}`), then one service at a time (`{"service": {...}}`).
/// Externally tagged: an untagged enum could not read the port maps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedLine {
    Table(Vec<Endpoints>),
    Service(Endpoints),
}

/// Every service's endpoints: what the Manager publishes after each commit
/// that changed a service or its replicas (each service's entry shared, so
/// that a follower sees which changed by pointer).
pub type EndpointTable = HashMap<String, Arc<Endpoints>>;

/// The host of a node's base URL (`https://10.0.0.5:5556` -> `10.0.0.5`).
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_string();
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_node_urls() {
        assert_eq!(host_of("https://10.0.0.5:5556"), "10.0.0.5");
        assert_eq!(host_of("https://w1.lan:5556/x"), "w1.lan");
        assert_eq!(host_of("https://[::1]:5556"), "::1");
        assert_eq!(host_of("https://w1"), "w1");
    }
}
