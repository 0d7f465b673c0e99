//! Names to socket addresses, for every connection to a peer and for discovery.
//!
//! A name is resolved again every time it is connected to: a member known by a DNS name (a
//! Kubernetes pod's) that comes back at a new address is reached there at the next reconnect,
//! and a discovery round sees the name's current addresses. The system resolver answers
//! (`getaddrinfo`, so `/etc/hosts` and DNS as `nsswitch.conf` says), except for the names the
//! debug hook `LIGHTCHAIN_TEST_HOSTS=FILE` lists: a hosts-format file (`IP NAME...` per line),
//! read on every call, so tests decide what a name resolves to, and when, without touching
//! `/etc/hosts`. An IP address resolves to itself.
//!
//! [`Connector`] is the TCP connector of every channel to a peer (`peer::Channels`): tonic's
//! own resolves too, but only through the system resolver. TLS, when configured, is layered
//! on top by tonic. This module opens TCP connections and nothing else.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tonic::transport::Uri;

/// The addresses `host` (a name, an IP address, or an IPv6 address in brackets) resolves to at
/// `port`, in the resolver's order, without duplicates.
pub async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if let Some(file) = std::env::var_os("LIGHTCHAIN_TEST_HOSTS") {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let listed: Vec<SocketAddr> = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let ip = words.next()?.parse::<IpAddr>().ok()?;
                words.any(|w| w.eq_ignore_ascii_case(host)).then_some(SocketAddr::new(ip, port))
            })
            .collect();
        if !listed.is_empty() {
            return Ok(listed);
        }
    }
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in tokio::net::lookup_host((host, port)).await? {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    Ok(addrs)
}

/// Connects to the first address `host` resolves to that accepts, with `TCP_NODELAY` set.
pub async fn connect(host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let mut last =
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} resolves to no address"));
    for addr in resolve(host, port).await? {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects a channel's TCP stream to its URI's host, resolved again on every (re)connect.
#[derive(Clone, Copy, Debug, Default)]
pub struct Connector;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let bad = || {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("no host and port in {uri}"))
            };
            let host = uri.host().ok_or_else(bad)?;
            let port = uri.port_u16().ok_or_else(bad)?;
            Ok(TokioIo::new(connect(host, port).await?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_resolve_to_themselves() {
        assert_eq!(resolve("127.0.0.1", 7070).await.unwrap(), vec!["127.0.0.1:7070".parse().unwrap()]);
        assert_eq!(resolve("[::1]", 80).await.unwrap(), vec!["[::1]:80".parse().unwrap()]);
        assert!(!resolve("localhost", 80).await.unwrap().is_empty());
    }
}
