//! Interface resolution and multicast joins of [`UdpClient`](super::UdpClient)
//! against the host's loopback interface.

use std::net::SocketAddrV6;

use super::sockets::join_downlink;
use super::*;
use crate::net::iface::snapshot;

/// Loopback's index and name, as every Linux host has it.
fn lo() -> (u32, String) {
    let now = snapshot().unwrap();
    let lo = now.iter().find(|i| i.v4.contains(&Ipv4Addr::LOCALHOST));
    let lo = lo.expect("an interface holding 127.0.0.1");
    (lo.index, lo.name.clone())
}

#[test]
fn iface_parses_as_address_index_or_name() {
    use MulticastIface::*;
    for (text, want) in [
        ("::", Ok(Any)),
        ("0.0.0.0", Ok(Any)),
        ("10.0.0.1", Ok(Addr("10.0.0.1".parse().unwrap()))),
        ("fe80::1", Ok(Addr("fe80::1".parse().unwrap()))),
        ("3", Ok(Index(3))),
        ("eth0", Ok(Name("eth0".into()))),
        ("lan0.20", Ok(Name("lan0.20".into()))),
        ("br-lan", Ok(Name("br-lan".into()))),
    ] {
        assert_eq!(MulticastIface::parse(text), want, "{text}");
    }
    for bad in [
        "",
        "0",
        "99999999999",
        "a/b",
        "two words",
        "sixteen-chars-xx",
    ] {
        assert!(MulticastIface::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn an_iface_resolves_to_an_index_for_ipv6_and_an_address_for_ipv4() {
    let (index, name) = lo();
    for iface in [
        MulticastIface::Name(name.clone()),
        MulticastIface::Index(index),
        MulticastIface::Addr(Ipv6Addr::LOCALHOST.into()),
        MulticastIface::Addr(Ipv4Addr::LOCALHOST.into()),
    ] {
        assert_eq!(
            resolve_iface(&iface, true).unwrap(),
            OutIface::V6(index),
            "{iface}"
        );
        assert_eq!(
            resolve_iface(&iface, false).unwrap(),
            OutIface::V4(Ipv4Addr::LOCALHOST),
            "{iface}"
        );
    }
    assert_eq!(
        resolve_iface(&MulticastIface::Any, true).unwrap(),
        OutIface::V6(0)
    );
    let missing = MulticastIface::Name("nosuch0".into());
    for v6 in [true, false] {
        let e = resolve_iface(&missing, v6).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "no interface named nosuch0");
    }
    let e = resolve_iface(&MulticastIface::Index(u32::MAX), true).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
}

#[test]
fn an_ipv6_group_target_sends_by_index_with_the_ttl_as_hop_limit() {
    let (index, name) = lo();
    let target = Target::Multicast {
        group: "ff02::77".parse().unwrap(),
        port: 5007,
        iface: MulticastIface::Name(name),
        ttl: 7,
    };
    let c = UdpClient::new(target, ClientOptions::default()).unwrap();
    let sock = socket2::SockRef::from(&c.sock);
    assert_eq!(sock.multicast_if_v6().unwrap(), index);
    assert_eq!(sock.multicast_hops_v6().unwrap(), 7);
    assert!(sock.multicast_loop_v6().unwrap());
    let want = SocketAddrV6::new("ff02::77".parse().unwrap(), 5007, 0, index);
    assert_eq!(c.group_dest, Some(SocketAddr::V6(want)));
    // The downlink is joined where the group is sent.
    assert_eq!(c.join_index(), index);

    let target = Target::Multicast {
        group: "239.255.0.77".parse().unwrap(),
        port: 5007,
        iface: MulticastIface::Index(index),
        ttl: 3,
    };
    let c = UdpClient::new(target, ClientOptions::default()).unwrap();
    let sock = socket2::SockRef::from(&c.sock);
    assert_eq!(sock.multicast_if_v4().unwrap(), Ipv4Addr::LOCALHOST);
    assert_eq!(sock.multicast_ttl_v4().unwrap(), 3);
    assert_eq!(c.join_iface(), Ipv4Addr::LOCALHOST);

    for (group, ttl) in [("10.0.0.1", 1), ("ff02::77", 256)] {
        let target = Target::Multicast {
            group: group.parse().unwrap(),
            port: 5007,
            iface: MulticastIface::Any,
            ttl,
        };
        let e = UdpClient::new(target, ClientOptions::default()).err();
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
    }
}

#[test]
fn an_ipv6_unicast_client_joins_on_the_interface_routing_to_the_server() {
    let (index, _) = lo();
    let server = SocketAddr::from((Ipv6Addr::LOCALHOST, 5007));
    let c = UdpClient::new(Target::Unicast(server), ClientOptions::default()).unwrap();
    // Known once a server answered; the target's is used until then.
    let c = UdpClient {
        server: Some(server),
        ..c
    };
    assert_eq!(c.join_index(), index);
    // A link-local server names its interface itself.
    let scoped = SocketAddrV6::new("fe80::1".parse().unwrap(), 5007, 0, 42);
    let c = UdpClient {
        server: Some(SocketAddr::V6(scoped)),
        ..c
    };
    assert_eq!(c.join_index(), 42);
    // Answers from a global address carry no scope: none is kept.
    let target = "[::1%7]:5007".parse().unwrap();
    let c = UdpClient::new(Target::Unicast(target), ClientOptions::default()).unwrap();
    assert_eq!(c.server, Some(server));
}

/// The memberships of interface `index` in /proc/net/igmp6, as group hex.
fn igmp6(index: u32) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/igmp6").unwrap();
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first()?.parse::<u32>().ok()? == index).then(|| f.get(2).map(|g| g.to_string()))?
        })
        .collect()
}

#[test]
fn an_ipv6_downlink_is_joined_on_the_interface_index_and_left_on_close() {
    let (index, _) = lo();
    let port = UdpSocket::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A group of this test's own, so that parallel tests cannot mix in.
    let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x6d63, port);
    let hex: String = group.octets().iter().map(|b| format!("{b:02x}")).collect();
    let addr = SocketAddr::from((group, port));
    let sock = join_downlink(addr, Ipv4Addr::UNSPECIFIED, index).unwrap();
    assert!(igmp6(index).contains(&hex), "{:?}", igmp6(index));
    drop(sock);
    assert!(!igmp6(index).contains(&hex), "left with the socket");
}
