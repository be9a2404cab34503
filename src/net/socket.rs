//! The relay's UDP sockets: one per address family, on the same port.
//!
//! Why two sockets rather than one dual-stack socket: an `AF_INET6` socket
//! with `IPV6_V6ONLY` off sees IPv4 peers as `::ffff:a.b.c.d`, which would
//! leak into client ids, cookies and logs unless every path unmapped them;
//! IPv4 multicast options on an IPv6 socket are a Linux peculiarity; and a
//! host with IPv6 disabled would lose IPv4 too. Two sockets keep each
//! family plain, and a family the host lacks is simply absent (logged).
//! Memberships are joined and left later, per interface, by
//! `net::iface::Memberships` through the [`Joiner`] implemented here.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use log::warn;
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockRef, Socket, Type};

use crate::net::iface::{IfaceSpec, JoinTarget, Joiner};

/// The relay's default IPv4 group (administratively scoped, RFC 2365).
pub const DEFAULT_GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 77);
/// The relay's default IPv6 group (link-local scope).
pub const DEFAULT_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x77);

/// Where and how the server listens.
#[derive(Clone, Debug)]
pub struct Listen {
    /// UDP port (0 picks a free one, for tests).
    pub port: u16,
    /// IPv4 multicast group to join, if any.
    pub group_v4: Option<Ipv4Addr>,
    /// IPv6 multicast group to join, if any.
    pub group_v6: Option<Ipv6Addr>,
    /// Interfaces to join the groups on ([`IfaceSpec::Any`]: the kernel's choice).
    pub ifaces: Vec<IfaceSpec>,
    /// SO_RCVBUF, if set.
    pub recv_buffer: Option<usize>,
    /// Multicast TTL (IPv4) and hop limit (IPv6) of the group mode downlink.
    pub downlink_ttl: u32,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            port: 5007,
            group_v4: Some(DEFAULT_GROUP_V4),
            group_v6: Some(DEFAULT_GROUP_V6),
            ifaces: vec![IfaceSpec::Any],
            recv_buffer: None,
            downlink_ttl: 1,
        }
    }
}

/// The opened sockets; at least one is present.
#[derive(Debug)]
pub struct UdpSockets {
    /// `0.0.0.0:port`.
    pub v4: Option<std::net::UdpSocket>,
    /// `[::]:port`, IPv6 only.
    pub v6: Option<std::net::UdpSocket>,
}

/// Opens one socket per family on `listen.port` (SO_REUSEADDR, non-blocking).
/// A family the host does not support is logged and left out; the IPv4
/// socket is required unless IPv6 works. With port 0, the IPv6 socket takes
/// the port the kernel gave the IPv4 one.
///
/// # Errors
/// One line naming what failed.
pub fn open_udp(listen: &Listen) -> Result<UdpSockets, String> {
    let v4 = open_one(
        listen,
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), listen.port),
    );
    let port = match &v4 {
        Ok(s) => s.local_addr().map_err(|e| e.to_string())?.port(),
        Err(_) => listen.port,
    };
    let v6 = open_one(listen, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port));
    match (v4, v6) {
        (Err(e), _) => Err(e),
        (Ok(v4), Ok(v6)) => Ok(UdpSockets {
            v4: Some(v4),
            v6: Some(v6),
        }),
        (Ok(v4), Err(e)) => {
            warn!("{e}; serving IPv4 only");
            Ok(UdpSockets {
                v4: Some(v4),
                v6: None,
            })
        }
    }
}

fn open_one(listen: &Listen, addr: SocketAddr) -> Result<std::net::UdpSocket, String> {
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let domain = Domain::for_address(addr);
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| format!("cannot create {family} UDP socket: {e}"))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)
            .map_err(|e| format!("cannot set IPV6_V6ONLY: {e}"))?;
    }
    sock.set_reuse_address(true)
        .map_err(|e| format!("cannot set SO_REUSEADDR: {e}"))?;
    if let Some(size) = listen.recv_buffer {
        sock.set_recv_buffer_size(size)
            .map_err(|e| format!("cannot set SO_RCVBUF to {size}: {e}"))?;
    }
    sock.bind(&addr.into())
        .map_err(|e| format!("cannot bind {family} UDP port {}: {e}", addr.port()))?;
    sock.set_nonblocking(true)
        .map_err(|e| format!("cannot make the {family} UDP socket non-blocking: {e}"))?;
    Ok(sock.into())
}

/// Joins and leaves on the socket of the group's family.
pub struct SocketJoiner<'a> {
    /// The IPv4 socket, if open.
    pub v4: Option<&'a mio::net::UdpSocket>,
    /// The IPv6 socket, if open.
    pub v6: Option<&'a mio::net::UdpSocket>,
}

fn no_socket() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "no socket of this family")
}

impl Joiner for SocketJoiner<'_> {
    fn join(&mut self, group: IpAddr, at: JoinTarget) -> io::Result<()> {
        match (group, at) {
            (IpAddr::V4(g), JoinTarget::V4(i)) => SockRef::from(self.v4.ok_or_else(no_socket)?)
                .join_multicast_v4_n(&g, &InterfaceIndexOrAddress::Index(i)),
            (IpAddr::V6(g), JoinTarget::V6(i)) => {
                self.v6.ok_or_else(no_socket)?.join_multicast_v6(&g, i)
            }
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }

    fn leave(&mut self, group: IpAddr, at: JoinTarget) -> io::Result<()> {
        match (group, at) {
            (IpAddr::V4(g), JoinTarget::V4(i)) => SockRef::from(self.v4.ok_or_else(no_socket)?)
                .leave_multicast_v4_n(&g, &InterfaceIndexOrAddress::Index(i)),
            (IpAddr::V6(g), JoinTarget::V6(i)) => {
                self.v6.ok_or_else(no_socket)?.leave_multicast_v6(&g, i)
            }
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }
}
