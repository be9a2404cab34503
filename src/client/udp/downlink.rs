//! The group downlink socket of [`UdpClient`]: joined on the right interface
//! while group mode is on, closed (leaving the group) when it ends.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Instant;

use super::sockets::{join_downlink, local_route, OutIface};
use super::UdpClient;
use crate::client::ClientEvent;
use crate::net::iface::snapshot;

/// The second socket of group mode, member of the downlink group.
pub(super) struct JoinedDownlink {
    pub(super) sock: UdpSocket,
    pub(super) addr: SocketAddr,
}

impl UdpClient {
    /// Makes the downlink socket follow the core: joined while group mode
    /// is on, closed (which leaves the group) when it ends. A downlink that
    /// cannot be joined ends group mode.
    pub(super) fn sync_downlink(&mut self) -> io::Result<()> {
        let want = self.core.downlink();
        if self.downlink.as_ref().map(|d| d.addr) == want {
            return Ok(());
        }
        self.downlink = None;
        let Some(addr) = want else { return Ok(()) };
        match join_downlink(addr, self.join_iface(), self.join_index()) {
            Ok(sock) => self.downlink = Some(JoinedDownlink { sock, addr }),
            Err(_) => {
                // Nothing can arrive there: ask to be served per recipient.
                if let Some(hello) = self.core.leave_group() {
                    self.out.push(hello);
                    self.flush()?;
                    self.events.push_back(ClientEvent::DownlinkSilent(addr));
                    self.quiet_recovery(Instant::now());
                }
            }
        }
        Ok(())
    }

    /// The interface to join an IPv4 downlink on: the target's, else the
    /// local address that routes to the server.
    pub(super) fn join_iface(&self) -> Ipv4Addr {
        if let Some(OutIface::V4(ip)) = self.out_iface {
            if !ip.is_unspecified() {
                return ip;
            }
        }
        match self.server.and_then(local_route) {
            Some(IpAddr::V4(ip)) => ip,
            _ => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// The interface index to join an IPv6 downlink on: the target's, else
    /// the server's scope (a link-local server), else the interface that
    /// holds the local address routing to the server, else 0 (the kernel's
    /// choice).
    pub(super) fn join_index(&self) -> u32 {
        if let Some(OutIface::V6(index)) = self.out_iface {
            if index != 0 {
                return index;
            }
        }
        let Some(SocketAddr::V6(server)) = self.server else {
            return 0;
        };
        if server.scope_id() != 0 {
            return server.scope_id();
        }
        let Some(IpAddr::V6(local)) = local_route(SocketAddr::V6(server)) else {
            return 0;
        };
        snapshot()
            .ok()
            .and_then(|now| now.into_iter().find(|i| i.v6.contains(&local)))
            .map_or(0, |i| i.index)
    }
}
