//! The downlink of group mode (protocol v2 §4): the sockets that send each
//! GROUP_DATA the relay core queues for a multicast address once on every
//! served interface.
//!
//! The core names only the downlink group; which interfaces it goes out on
//! is the shell's business, like the uplink joins. The served interfaces of
//! a family are those `net::iface::Memberships` holds the uplink group on
//! (up, with an address of that family, re-read every `iface::RECHECK`),
//! so a downlink follows interfaces that come, go and come back exactly as
//! the uplink does.
//!
//! Why sockets of their own, one per family: sending on several interfaces
//! means setting IP_MULTICAST_IF / IPV6_MULTICAST_IF before each batch, and
//! the hop limit is the operator's `--ttl`; doing that on the uplink
//! sockets would change what the relay's other multicast sends do. These
//! sockets are bound to an ephemeral port, never read, and non-blocking: a
//! full buffer drops a datagram (counted as a send error) rather than
//! stalling the loop. Multicast loopback stays on (the default), so members
//! on the relay's own host hear the group too.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::net::batch;
use crate::net::iface::{IfaceInfo, JoinTarget};

/// The downlink sockets and the interfaces they send on.
#[derive(Debug, Default)]
pub struct Downlink {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// IPv4 interfaces by one of their addresses (0.0.0.0: the kernel's choice).
    ifs_v4: Vec<Ipv4Addr>,
    /// IPv6 interfaces by index (0: the kernel's choice).
    ifs_v6: Vec<u32>,
}

impl Downlink {
    /// Opens a send socket for each family among `downlinks`, with the
    /// multicast hop limit `ttl`. No downlinks: nothing is opened.
    ///
    /// # Errors
    /// One line naming what failed.
    pub fn open(downlinks: &[SocketAddr], ttl: u32) -> Result<Self, String> {
        let mut d = Downlink::default();
        for dst in downlinks {
            let sock = open_one(dst.is_ipv4(), ttl)
                .map_err(|e| format!("cannot open the downlink socket for {dst}: {e}"))?;
            if dst.is_ipv4() {
                d.v4 = Some(sock);
            } else {
                d.v6 = Some(sock);
            }
        }
        Ok(d)
    }

    /// Takes the interfaces to send on: the `joined` uplink targets,
    /// resolved in `snapshot` (an IPv4 interface is named by its first
    /// address, as IP_MULTICAST_IF takes it everywhere).
    pub fn set_interfaces(&mut self, joined: &[JoinTarget], snapshot: &[IfaceInfo]) {
        self.ifs_v4.clear();
        self.ifs_v6.clear();
        for t in joined {
            match *t {
                JoinTarget::V4(0) => self.ifs_v4.push(Ipv4Addr::UNSPECIFIED),
                JoinTarget::V4(i) => {
                    let addr = snapshot
                        .iter()
                        .find(|f| f.index == i)
                        .and_then(|f| f.v4.first());
                    self.ifs_v4.extend(addr);
                }
                JoinTarget::V6(i) => self.ifs_v6.push(i),
            }
        }
        self.ifs_v4.sort_unstable();
        self.ifs_v4.dedup();
        self.ifs_v6.sort_unstable();
        self.ifs_v6.dedup();
    }

    /// Interfaces each family goes out on, for logs: `(v4, v6)`.
    pub fn interfaces(&self) -> (usize, usize) {
        (self.ifs_v4.len(), self.ifs_v6.len())
    }

    /// Sends every multicast datagram of `items` once per interface of its
    /// family; `on_error` hears of each send that failed, and of each
    /// datagram of a family with no socket or no interface (nowhere to go).
    /// Returns the datagrams sent (counting each interface).
    pub fn send<'a, I>(&self, items: I, mut on_error: impl FnMut(SocketAddr, &io::Error)) -> usize
    where
        I: Iterator<Item = (SocketAddr, &'a [u8])> + Clone,
    {
        let nowhere = || io::Error::new(io::ErrorKind::NotConnected, "no interface to send on");
        let mut sent = 0;
        let v4 = items.clone().filter(|(d, _)| d.is_ipv4());
        let v6 = items.filter(|(d, _)| d.is_ipv6());
        match &self.v4 {
            Some(sock) if !self.ifs_v4.is_empty() => {
                for ifa in &self.ifs_v4 {
                    if let Err(e) = socket2::SockRef::from(sock).set_multicast_if_v4(ifa) {
                        v4.clone().for_each(|(d, _)| on_error(d, &e));
                        continue;
                    }
                    sent += batch::send_all(sock, v4.clone(), &mut on_error);
                }
            }
            _ => v4.for_each(|(d, _)| on_error(d, &nowhere())),
        }
        match &self.v6 {
            Some(sock) if !self.ifs_v6.is_empty() => {
                for &ifi in &self.ifs_v6 {
                    if let Err(e) = socket2::SockRef::from(sock).set_multicast_if_v6(ifi) {
                        v6.clone().for_each(|(d, _)| on_error(d, &e));
                        continue;
                    }
                    sent += batch::send_all(sock, v6.clone(), &mut on_error);
                }
            }
            _ => v6.for_each(|(d, _)| on_error(d, &nowhere())),
        }
        sent
    }
}

/// A non-blocking UDP socket on an ephemeral port of one family, with the
/// multicast hop limit `ttl` and multicast loopback on.
fn open_one(v4: bool, ttl: u32) -> io::Result<UdpSocket> {
    let (domain, any) = if v4 {
        (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    } else {
        (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if v4 {
        sock.set_multicast_ttl_v4(ttl)?;
        sock.set_multicast_loop_v4(true)?;
    } else {
        sock.set_only_v6(true)?;
        sock.set_multicast_hops_v6(ttl)?;
        sock.set_multicast_loop_v6(true)?;
    }
    sock.bind(&SocketAddr::new(any, 0).into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn interfaces_resolve_by_address_and_index_once_each() {
        let lo = IfaceInfo {
            name: "lo".into(),
            index: 1,
            up: true,
            multicast: true,
            v4: vec![Ipv4Addr::LOCALHOST],
            v6: vec![Ipv6Addr::LOCALHOST],
        };
        let mut d = Downlink::default();
        d.set_interfaces(
            &[
                JoinTarget::V4(1),
                JoinTarget::V4(1),
                JoinTarget::V4(7),
                JoinTarget::V6(1),
                JoinTarget::V4(0),
            ],
            &[lo],
        );
        assert_eq!(d.ifs_v4, [Ipv4Addr::UNSPECIFIED, Ipv4Addr::LOCALHOST]);
        assert_eq!(d.ifs_v6, [1]);
        assert_eq!(d.interfaces(), (2, 1));
    }

    #[test]
    fn a_datagram_goes_out_once_per_interface_and_nowhere_without_one() {
        // A member of 239.255.0.79 on loopback hears one copy per
        // interface the downlink sends on (loopback, once).
        let group = Ipv4Addr::new(239, 255, 0, 79);
        let member = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        member.set_reuse_address(true).unwrap();
        member
            .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
            .unwrap();
        member
            .join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
            .unwrap();
        member
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let member: UdpSocket = member.into();
        let dst = SocketAddr::from((group, member.local_addr().unwrap().port()));
        let mut d = Downlink::open(&[dst], 0).unwrap();
        let mut errors = Vec::new();
        let items = [(dst, &b"group data"[..])];
        assert_eq!(d.send(items.iter().copied(), |a, _| errors.push(a)), 0);
        assert_eq!(errors, [dst], "no interface yet: counted, not sent");
        let now = crate::net::iface::snapshot().unwrap();
        let lo = now.iter().find(|i| i.name == "lo").expect("lo listed");
        d.set_interfaces(&[JoinTarget::V4(lo.index)], &now);
        errors.clear();
        assert_eq!(d.send(items.iter().copied(), |a, _| errors.push(a)), 1);
        assert!(errors.is_empty());
        let mut buf = [0u8; 64];
        let (n, _) = member.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"group data");
    }
}
