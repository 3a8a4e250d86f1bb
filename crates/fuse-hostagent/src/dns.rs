//! The agent's resolver: every DNS query of a guest (UDP or TCP port 53 to any address) is
//! redirected here by the egress table ([`crate::net::egress`]), and judged by the rules of
//! the VM it comes from (found by its source address). A name the rules refuse is answered
//! `REFUSED`; an allowed one is forwarded to the upstream resolver, and in allowlist mode
//! the A/AAAA addresses of its answer are added to the VM's resolved sets, each for its
//! record's TTL, before the answer goes back. A query from an address that is no VM of this
//! agent is refused (the resolver is no open forwarder).
//!
//! Bounded: at most [`MAX_IN_FLIGHT`] queries at once (beyond, a UDP query is dropped and
//! a TCP connection closed), messages of at most 64 KiB, an upstream answer within
//! [`UPSTREAM_TIMEOUT`], a TCP connection idle at most [`TCP_IDLE`].

use crate::net::Net;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// Queries answered at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// How long the upstream resolver may take.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP connection may stay silent.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// The resolver's sockets, bound before the egress table is made (it names their port).
pub struct Resolver {
    udp: UdpSocket,
    tcp: TcpListener,
    upstream: SocketAddr,
}

/// The upstream from `FC_AGENT_DNS_UPSTREAM` (`ip` or `ip:port`), else the first
/// `nameserver` of `/etc/resolv.conf`, else `127.0.0.1:53`.
pub fn upstream(configured: &str) -> Result<SocketAddr, String> {
    let parse = |s: &str| -> Option<SocketAddr> {
        s.parse::<SocketAddr>()
            .ok()
            .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
    };
    if !configured.is_empty() {
        return parse(configured).ok_or_else(|| {
            format!("FC_AGENT_DNS_UPSTREAM: {configured:?} is not an address or address:port")
        });
    }
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    Ok(conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| parse(a.trim()))
        .next()
        .unwrap_or_else(|| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 53)))
}

impl Resolver {
    /// Binds UDP and TCP on `listen`; with port 0, one free port for both.
    pub async fn bind(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Resolver> {
        let mut last = None;
        for _ in 0..16 {
            let udp = UdpSocket::bind(listen).await?;
            let port = udp.local_addr()?.port();
            match TcpListener::bind(SocketAddr::new(listen.ip(), port)).await {
                Ok(tcp) => {
                    return Ok(Resolver { udp, tcp, upstream });
                }
                Err(e) if listen.port() == 0 => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free port for the resolver")))
    }

    /// The port both sockets listen on.
    pub fn port(&self) -> u16 {
        self.udp.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until the process ends.
    pub fn spawn(self, net: Arc<Net>) {
        let port = self.port();
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let udp = Arc::new(self.udp);
        let upstream = self.upstream;
        tracing::info!(port, %upstream, "resolver for the guests");
        {
            let (udp, net, limit) = (udp.clone(), net.clone(), limit.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_535];
                loop {
                    let (n, from) = match udp.recv_from(&mut buf).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "resolver: receiving");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        continue;
                    };
                    let query = buf[..n].to_vec();
                    let (udp, net) = (udp.clone(), net.clone());
                    tokio::spawn(async move {
                        if let Some(answer) =
                            answer(&net, from, &query, upstream, Transport::Udp).await
                        {
                            let _ = udp.send_to(&answer, from).await;
                        }
                        drop(permit);
                    });
                }
            });
        }
        let tcp = self.tcp;
        tokio::spawn(async move {
            loop {
                let (conn, from) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "resolver: accepting");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    continue;
                };
                let net = net.clone();
                tokio::spawn(async move {
                    let _ = serve_tcp(conn, from, &net, upstream).await;
                    drop(permit);
                });
            }
        });
    }
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

async fn read_frame(conn: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut len)).await {
        Err(_) => return Ok(None),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(r) => r?,
    };
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut msg))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(Some(msg))
}

async fn write_frame(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("message too long"))?;
    conn.write_all(&len.to_be_bytes()).await?;
    conn.write_all(msg).await
}

async fn serve_tcp(
    mut conn: TcpStream,
    from: SocketAddr,
    net: &Net,
    upstream: SocketAddr,
) -> std::io::Result<()> {
    while let Some(query) = read_frame(&mut conn).await? {
        match answer(net, from, &query, upstream, Transport::Tcp).await {
            Some(a) => write_frame(&mut conn, &a).await?,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// An error answer to `q` (its id and question kept).
fn refuse(q: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(q.id(), q.op_code(), code);
    m.set_message_type(MessageType::Response)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true);
    for query in q.queries() {
        m.add_query(query.clone());
    }
    m.to_vec().ok()
}

/// The answer to one query from `from` (`None`: say nothing).
async fn answer(
    net: &Net,
    from: SocketAddr,
    query: &[u8],
    upstream: SocketAddr,
    transport: Transport,
) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.message_type() != MessageType::Query {
        return None;
    }
    let guest = match from.ip() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    let Some((vm_id, rules)) = guest.and_then(|g| net.guest(g)) else {
        return refuse(&q, ResponseCode::Refused);
    };
    let [question] = q.queries() else {
        return refuse(&q, ResponseCode::FormErr);
    };
    let name = fuse_types::egress::normalize_name(&question.name().to_ascii());
    if !rules.name_allowed(&name) {
        tracing::debug!(vm_id, name, "resolver: refused by the egress rules");
        return refuse(&q, ResponseCode::Refused);
    }
    let raw = match forward(query, upstream, transport).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(vm_id, name, error = %e, "resolver: upstream failed");
            return refuse(&q, ResponseCode::ServFail);
        }
    };
    if rules.mode == fuse_types::EgressMode::Allowlist {
        let Ok(resp) = Message::from_vec(&raw) else {
            return refuse(&q, ResponseCode::ServFail);
        };
        if resp.id() != q.id() {
            return refuse(&q, ResponseCode::ServFail);
        }
        let addrs: Vec<(IpAddr, Duration)> = resp
            .answers()
            .iter()
            .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
            .filter_map(|r| {
                let ttl = Duration::from_secs(u64::from(r.ttl()));
                match r.data() {
                    RData::A(a) => Some((IpAddr::V4(a.0), ttl)),
                    RData::AAAA(a) => Some((IpAddr::V6(a.0), ttl)),
                    _ => None,
                }
            })
            .collect();
        if !addrs.is_empty() {
            if let Some(g) = guest {
                // Never answer with an address the VM cannot reach yet.
                if let Err(e) = net.resolved_add(g, &name, &addrs).await {
                    tracing::warn!(vm_id, name, error = %e.report(), "resolver: allowing the answer's addresses");
                    return refuse(&q, ResponseCode::ServFail);
                }
            }
        }
    }
    Some(raw)
}

/// Sends `query` to the upstream resolver as it came (same id), by the same transport.
async fn forward(
    query: &[u8],
    upstream: SocketAddr,
    transport: Transport,
) -> std::io::Result<Vec<u8>> {
    let work = async {
        match transport {
            Transport::Udp => {
                let local: SocketAddr = if upstream.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let sock = UdpSocket::bind(local).await?;
                sock.connect(upstream).await?;
                sock.send(query).await?;
                let mut buf = vec![0u8; 65_535];
                let n = sock.recv(&mut buf).await?;
                buf.truncate(n);
                Ok(buf)
            }
            Transport::Tcp => {
                let mut c = TcpStream::connect(upstream).await?;
                write_frame(&mut c, query).await?;
                read_frame(&mut c)
                    .await?
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
            }
        }
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, work)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn upstream_is_configured_or_read() {
        assert_eq!(
            upstream("10.0.0.53").unwrap(),
            "10.0.0.53:53".parse().unwrap()
        );
        assert_eq!(
            upstream("10.0.0.53:5353").unwrap(),
            "10.0.0.53:5353".parse().unwrap()
        );
        assert!(upstream("nope")
            .unwrap_err()
            .contains("FC_AGENT_DNS_UPSTREAM"));
        assert!(upstream("").is_ok());
    }

    #[test]
    fn refusals_keep_id_and_question() {
        use hickory_proto::op::Query;
        use hickory_proto::rr::Name;
        let mut q = Message::new();
        q.set_id(4242).set_recursion_desired(true);
        q.add_query(Query::query(
            Name::from_ascii("a.test.").unwrap(),
            RecordType::A,
        ));
        let r = Message::from_vec(&refuse(&q, ResponseCode::Refused).unwrap()).unwrap();
        assert_eq!(r.id(), 4242);
        assert_eq!(r.response_code(), ResponseCode::Refused);
        assert_eq!(r.message_type(), MessageType::Response);
        assert_eq!(r.queries().len(), 1);
    }
}
