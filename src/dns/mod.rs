//! The DNS server on every worker (hickory's server does the protocol):
//! names in `cube.` are answered from the node's copy of the endpoints
//! (`zone.rs`), so they follow the endpoint feed as it changes; other
//! names are asked of the host's resolvers (`/etc/resolv.conf`).
//!
//! It answers on the gateway of the node's container network, port 53
//! (the containers' name server: `web.cube` is the gateway, where the
//! node's balancer serves them), and on `[worker] dns_listen` for the host
//! (`web.cube` is `ingress_addr` there). UDP and TCP on each.
//!
//! Only the node's containers (the network's subnet) and the host itself
//! (loopback) are answered: anyone else is refused, so that the gateway's
//! port 53, which the host's other interfaces reach too, is no open
//! resolver. Forwarding is bounded: at most [`MAX_FORWARDS`] at once (more
//! are refused), only for queries that ask for recursion, never `ANY`.

pub mod zone;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{Name, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::worker::endpoints::EndpointView;
use zone::Answer;

/// A connection that sends no query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Answers queued per TCP connection.
const TCP_BUFFER: usize = 32;
/// Between tries to bind an address that could not be bound, or to serve
/// it again after its server stopped.
const BIND_RETRY: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once, per listener.
pub const MAX_FORWARDS: usize = 256;

/// One address the DNS server answers on, and where askers there reach
/// the node's load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub at: SocketAddr,
    pub balancer: IpAddr,
    /// Who may ask, beside loopback: the node's container subnet.
    pub allow: Option<IpNet>,
}

struct Handler {
    view: EndpointView,
    balancer: IpAddr,
    /// The host's resolvers; `None` when they could not be read.
    forward: Option<TokioResolver>,
    /// Places for forwarded queries in flight.
    forwards: tokio::sync::Semaphore,
}

/// The records of an answer and its code.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Reply {
    fn code(code: ResponseCode) -> Self {
        Reply {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

impl Handler {
    async fn reply(&self, request: &Request) -> Reply {
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return Reply::code(ResponseCode::NotImp);
        }
        let [query] = request.queries.queries() else {
            return Reply::code(ResponseCode::FormErr);
        };
        let qname: Name = query.name().clone().into();
        let rtype = query.query_type();
        // The table as it is now (an Arc: the borrow ends here).
        let table = self.view.borrow().clone();
        match zone::answer(&table, &qname, rtype, self.balancer) {
            Answer::Found {
                answers,
                additionals,
            } => Reply {
                code: ResponseCode::NoError,
                authoritative: true,
                // No data: the SOA says how long to remember that.
                authorities: if answers.is_empty() {
                    vec![zone::soa()]
                } else {
                    Vec::new()
                },
                answers,
                additionals,
            },
            Answer::NxDomain => Reply {
                authorities: vec![zone::soa()],
                authoritative: true,
                ..Reply::code(ResponseCode::NXDomain)
            },
            Answer::Elsewhere
                if !request.metadata.recursion_desired || rtype == RecordType::ANY =>
            {
                Reply::code(ResponseCode::Refused)
            }
            Answer::Elsewhere => self.forward(qname, rtype).await,
        }
    }

    async fn forward(&self, qname: Name, rtype: RecordType) -> Reply {
        let Some(resolver) = &self.forward else {
            return Reply::code(ResponseCode::ServFail);
        };
        let Ok(_place) = self.forwards.try_acquire() else {
            return Reply::code(ResponseCode::Refused);
        };
        match resolver.lookup(qname, rtype).await {
            Ok(lookup) => Reply {
                answers: lookup.answers().to_vec(),
                ..Reply::code(ResponseCode::NoError)
            },
            Err(e) if e.is_nx_domain() => Reply::code(ResponseCode::NXDomain),
            Err(e) if e.is_no_records_found() => Reply::code(ResponseCode::NoError),
            Err(e) => {
                log::debug!("dns: forwarding failed: {e}");
                Reply::code(ResponseCode::ServFail)
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let reply = self.reply(request).await;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.code;
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = true;
        // Answer as large as the asker takes over UDP (EDNS), not 512 bytes.
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().max(512));
            edns.set_version(0);
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let message = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                log::debug!("dns: cannot answer {}: {e}", request.src());
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                Header {
                    metadata,
                    counts: HeaderCounts::default(),
                }
                .into()
            }
        }
    }
}

/// The host's resolvers, as `/etc/resolv.conf` names them.
fn host_resolver() -> Option<TokioResolver> {
    match TokioResolver::builder_tokio().and_then(|b| b.build()) {
        Ok(resolver) => Some(resolver),
        Err(e) => {
            log::warn!("dns: cannot read the host's resolvers ({e}); only cube. is answered");
            None
        }
    }
}

/// Serves `listen` for as long as the node runs; an address that cannot
/// be bound yet (the network's gateway not up, another server on it) is
/// tried again, as is one whose server stopped.
pub async fn run(listen: Listen, view: EndpointView) {
    let forward = host_resolver();
    let mut complained = false;
    loop {
        match bind(listen.at).await {
            Ok((udp, tcp)) => {
                complained = false;
                let served = serve(listen, udp, tcp, view.clone(), forward.clone()).await;
                if let Err(e) = served {
                    log::error!(
                        "dns: the server on {} stopped: {e}; starting again",
                        listen.at
                    );
                }
            }
            Err(e) if !complained => {
                log::error!("dns: cannot listen on {}: {e}; trying again", listen.at);
                complained = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(BIND_RETRY).await;
    }
}

async fn bind(at: SocketAddr) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let udp = tokio::net::UdpSocket::bind(at).await?;
    let tcp = tokio::net::TcpListener::bind(at).await?;
    Ok((udp, tcp))
}

/// Answers on `udp` and `tcp` until the server stops.
async fn serve(
    listen: Listen,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    view: EndpointView,
    forward: Option<TokioResolver>,
) -> Result<(), hickory_server::net::NetError> {
    let handler = Handler {
        view,
        balancer: listen.balancer,
        forward,
        forwards: tokio::sync::Semaphore::new(MAX_FORWARDS),
    };
    let everyone = [
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0)),
        IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 0)),
    ];
    let mut allowed = vec![
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::LOCALHOST, 8)),
        IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
    ];
    allowed.extend(listen.allow);
    let mut server = Server::with_access(handler, everyone, allowed);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, TCP_BUFFER);
    log::info!(
        "dns: answering on {} (udp, tcp); the balancer is {} there",
        listen.at,
        listen.balancer
    );
    server.block_until_done().await
}
