//! Socket setup for [`UdpClient`]: the multicast interface as
//! the user names it and as resolved per family, waiting on the session and
//! downlink sockets, reading one datagram, the local route to the server,
//! and opening and joining multicast sockets.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

#[cfg(doc)]
use super::{Target, UdpClient};
use crate::net::iface::snapshot;

/// The interface a [`Target::Multicast`] sends from and joins the group
/// downlink on, as the user named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MulticastIface {
    /// The kernel's choice (the route to the group).
    Any,
    /// The interface that holds this address. An IPv4 address is used as
    /// it is for an IPv4 group, without looking it up.
    Addr(IpAddr),
    /// An interface by name (`eth0`, `br-lan`).
    Name(String),
    /// An interface by index (as `ip link` numbers them).
    Index(u32),
}

impl MulticastIface {
    /// Reads an interface the way `--iface` takes it: an address (`::`
    /// and `0.0.0.0` are [`MulticastIface::Any`]), an index (digits
    /// only), or else a name.
    ///
    /// # Errors
    /// A one-line message when `s` is none of these (a name is 1 to 15
    /// printable characters without spaces or `/`).
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(ip.into());
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u32>() {
                Ok(i) if i > 0 => Ok(MulticastIface::Index(i)),
                _ => Err(format!("interface index {s} is outside 1..=4294967295")),
            };
        }
        // IFNAMSIZ is 16 with the NUL; the kernel refuses '/' and spaces.
        let ok =
            !s.is_empty() && s.len() < 16 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
        if ok {
            Ok(MulticastIface::Name(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is neither an address, an interface index nor an interface name"
            ))
        }
    }
}

impl std::str::FromStr for MulticastIface {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        MulticastIface::parse(s)
    }
}

impl From<IpAddr> for MulticastIface {
    fn from(ip: IpAddr) -> Self {
        if ip.is_unspecified() {
            MulticastIface::Any
        } else {
            MulticastIface::Addr(ip)
        }
    }
}

impl From<Ipv4Addr> for MulticastIface {
    fn from(ip: Ipv4Addr) -> Self {
        IpAddr::V4(ip).into()
    }
}

impl From<Ipv6Addr> for MulticastIface {
    fn from(ip: Ipv6Addr) -> Self {
        IpAddr::V6(ip).into()
    }
}

impl fmt::Display for MulticastIface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MulticastIface::Any => f.write_str("any"),
            MulticastIface::Addr(a) => write!(f, "{a}"),
            MulticastIface::Name(n) => f.write_str(n),
            MulticastIface::Index(i) => write!(f, "index {i}"),
        }
    }
}

/// A [`MulticastIface`] resolved for one family, once, at
/// [`UdpClient::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OutIface {
    /// IPv4: the interface's address (unspecified: the kernel's choice).
    V4(Ipv4Addr),
    /// IPv6: the interface's index (0: the kernel's choice).
    V6(u32),
}

/// Waits until the session socket or the downlink socket is readable, or
/// `timeout` passed; says which are.
pub(super) fn wait_readable(
    session: &UdpSocket,
    downlink: Option<&UdpSocket>,
    timeout: Duration,
) -> io::Result<(bool, bool)> {
    let fd = |s: &UdpSocket| libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [fd(session), downlink.map_or(fd(session), fd)];
    let n: libc::nfds_t = if downlink.is_some() { 2 } else { 1 };
    // Rounded up: a wait of 0 ms with time left would spin.
    let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    // SAFETY: `fds` is a live array of at least `n` pollfd structs, whose
    // descriptors belong to sockets borrowed for the whole call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        // EINTR: the caller's loop looks at the clock and waits again.
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok((false, false))
        } else {
            Err(e)
        };
    }
    // POLLERR (an ICMP error queued) is read, and ignored, by recv_from.
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLERR) != 0;
    Ok((ready(&fds[0]), downlink.is_some() && ready(&fds[1])))
}

/// One datagram from a socket poll(2) found readable; None when there was
/// nothing after all, or an error that only concerns an earlier datagram.
pub(super) fn recv_datagram(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<Option<(usize, SocketAddr)>> {
    match sock.recv_from(buf) {
        Ok(x) => Ok(Some(x)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        // EINTR, or an ICMP error some systems report for an earlier
        // datagram to a server that is down: keep waiting, the retry and
        // recovery timers deal with a dead server.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `addr` as the server's answers will come from: the kernel gives a
/// scope (and the flow label) only to link-local sources, and answers are
/// matched to the server's address exactly.
pub(super) fn unscoped_unless_link_local(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) if !a.ip().is_unicast_link_local() => {
            SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, 0))
        }
        SocketAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, a.scope_id())),
        v4 => v4,
    }
}

/// The local address the system would send from to reach `server` (a
/// route lookup: connecting a UDP socket sends nothing).
pub(super) fn local_route(server: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = UdpSocket::bind(bind).ok()?;
    probe.connect(server).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

pub(super) fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

pub(super) fn not_found(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, msg)
}

/// Resolves `iface` for a group of one family: an IPv4 group needs the
/// interface's IPv4 address (IP_MULTICAST_IF, and the IPv4 join, take
/// one), an IPv6 group its index (IPv6 multicast is per interface).
///
/// # Errors
/// `NotFound`, with a one-line message, when no interface matches or an
/// IPv4 group's interface has no IPv4 address.
pub(super) fn resolve_iface(iface: &MulticastIface, v6: bool) -> io::Result<OutIface> {
    match (iface, v6) {
        (MulticastIface::Any, false) => return Ok(OutIface::V4(Ipv4Addr::UNSPECIFIED)),
        (MulticastIface::Any, true) => return Ok(OutIface::V6(0)),
        // As IPv4 clients always did: the kernel checks the address.
        (MulticastIface::Addr(IpAddr::V4(a)), false) => return Ok(OutIface::V4(*a)),
        (MulticastIface::Name(name), true) => {
            let index = CString::new(name.as_str())
                // SAFETY: a valid NUL-terminated string, read only.
                .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
                .unwrap_or(0);
            return match index {
                0 => Err(not_found(format!("no interface named {name}"))),
                i => Ok(OutIface::V6(i)),
            };
        }
        _ => {}
    }
    // An address to find, an index to check, or an IPv4 group's interface
    // by name or index, which needs its address.
    let now = snapshot()?;
    let found = now.iter().find(|i| match iface {
        MulticastIface::Any => false,
        MulticastIface::Addr(IpAddr::V4(a)) => i.v4.contains(a),
        MulticastIface::Addr(IpAddr::V6(a)) => i.v6.contains(a),
        MulticastIface::Name(n) => i.name == *n,
        MulticastIface::Index(x) => i.index == *x,
    });
    let Some(found) = found else {
        return Err(not_found(match iface {
            MulticastIface::Addr(a) => format!("no interface has the address {a}"),
            MulticastIface::Name(n) => format!("no interface named {n}"),
            other => format!("no interface of {other}"),
        }));
    };
    if v6 {
        return Ok(OutIface::V6(found.index));
    }
    match found.v4.first() {
        Some(a) => Ok(OutIface::V4(*a)),
        None => Err(not_found(format!(
            "interface {} has no IPv4 address to send an IPv4 group from",
            found.name
        ))),
    }
}

/// The socket of a group target, sending out of `out` with `ttl` (TTL or
/// hop limit), looped back so that a relay on this host hears it; and the
/// destination, which for IPv6 carries the interface as its scope.
pub(super) fn open_multicast(
    group: IpAddr,
    port: u16,
    out: OutIface,
    ttl: u32,
) -> io::Result<(UdpSocket, SocketAddr)> {
    match (group, out) {
        (IpAddr::V4(group), OutIface::V4(iface)) => {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_multicast_if_v4(&iface)?;
            s.set_multicast_ttl_v4(ttl)?;
            s.set_multicast_loop_v4(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
            Ok((s.into(), SocketAddr::from((group, port))))
        }
        (IpAddr::V6(group), OutIface::V6(index)) => {
            let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_only_v6(true)?;
            if index != 0 {
                s.set_multicast_if_v6(index)?;
            }
            s.set_multicast_hops_v6(ttl)?;
            s.set_multicast_loop_v6(true)?;
            s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
            // A link-local group (ff02::) means nothing without its link;
            // the kernel ignores the scope of wider groups.
            let dest = SocketAddrV6::new(group, port, 0, index);
            Ok((s.into(), SocketAddr::V6(dest)))
        }
        _ => Err(invalid(format!("{group}: interface of the other family"))),
    }
}

/// A socket on the downlink's port, member of its group on `iface` (IPv4)
/// or on the interface of index `index` (IPv6; 0: the system's choice).
/// SO_REUSEADDR lets several clients of one host bind the port; each gets
/// its own copy of every group datagram.
pub(super) fn join_downlink(
    addr: SocketAddr,
    iface: Ipv4Addr,
    index: u32,
) -> io::Result<UdpSocket> {
    if !addr.ip().is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("downlink {addr} is not a multicast group"),
        ));
    }
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    match addr.ip() {
        IpAddr::V4(group) => {
            // Only this socket's own groups, not every group some other
            // socket of the host joined on this port (Linux's default).
            #[cfg(target_os = "linux")]
            s.set_multicast_all_v4(false)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())).into())?;
            s.join_multicast_v4(&group, &iface)?;
        }
        IpAddr::V6(group) => {
            s.set_only_v6(true)?;
            #[cfg(target_os = "linux")]
            s.set_multicast_all_v6(false)?;
            s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, addr.port())).into())?;
            s.join_multicast_v6(&group, index)?;
        }
    }
    Ok(s.into())
}
