//! Where a service can be reached: its replicas that are running and
//! healthy (or running, without a health check) and not being stopped,
//! each with its node's address and the host port of each container port.
//! What the balancers and the DNS of issue 12 follow, and `GET
//! /services/{name}/endpoints` shows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
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
}

/// One service's endpoints, as `GET /services/{name}/endpoints` answers
/// (and each line of its `?watch=true` stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    pub service: String,
    pub endpoints: Vec<Endpoint>,
}

/// Every service's endpoints: what the Manager publishes after each commit
/// that changed a service or its replicas (each service's list shared, so
/// that a follower sees which lists changed by pointer).
pub type EndpointTable = HashMap<String, Arc<Vec<Endpoint>>>;

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
