//! Dual stack over real loopback sockets: IPv4 and IPv6 clients on one
//! relay, each known by its own address form, relayed to each other.

mod common;

use std::net::SocketAddr;

use common::*;
use mcrelay::{ClientEvent, ClientOptions, Target, UdpClient};

/// A connected client reaching the relay at `[::1]:port`.
fn v6_client(server: &Server) -> UdpClient {
    let addr: SocketAddr = format!("[::1]:{}", server.port).parse().unwrap();
    let mut c = UdpClient::new(Target::Unicast(addr), ClientOptions::default()).unwrap();
    c.connect(DEADLINE).expect("IPv6 handshake");
    c
}

#[test]
fn ipv4_and_ipv6_clients_relay_to_each_other_under_their_own_ids() {
    let server = Server::start(&[]);
    let mut v4 = server.client();
    let mut v6 = v6_client(&server);
    let id4 = v4.id().unwrap().to_string();
    let id6 = v6.id().unwrap().to_string();
    assert!(id4.starts_with("127.0.0.1:"), "{id4}");
    assert!(id6.starts_with("[::1]:"), "{id6}");
    assert_eq!(id6, format!("[::1]:{}", v6.local_addr().unwrap().port()));

    // The IPv4 member hears of the IPv6 one under its bracketed id.
    expect_event(
        &mut v4,
        "PEER_JOINED",
        |e| matches!(e, ClientEvent::PeerJoined(id) if *id == id6),
    );
    v4.send(b"from four").unwrap();
    assert_eq!(expect_message(&mut v6, b"from four"), id4);
    v6.send(b"from six").unwrap();
    assert_eq!(expect_message(&mut v4, b"from six"), id6);

    // The operator sees both and can kick the IPv6 one by its id.
    let mut admin = server.admin();
    let clients = admin.ok("clients");
    assert!(clients.iter().any(|l| l.starts_with(&id4)), "{clients:?}");
    assert!(clients.iter().any(|l| l.starts_with(&id6)), "{clients:?}");
    admin.ok(&format!("kick {id6}"));
    expect_event(
        &mut v4,
        "PEER_LEFT",
        |e| matches!(e, ClientEvent::PeerLeft { id, .. } if *id == id6),
    );
}

#[test]
fn a_group_of_one_family_still_serves_unicast_of_both() {
    let server = Server::start(&["--group", "239.255.0.77"]);
    assert!(
        server.find_log("group 239.255.0.77 on").is_some(),
        "{}",
        server.log_text()
    );
    let mut v6 = v6_client(&server);
    let mut v4 = server.client();
    v4.send(b"still both").unwrap();
    expect_message(&mut v6, b"still both");
}

#[test]
fn two_groups_of_one_family_are_refused() {
    let out = std::process::Command::new(bin())
        .args([
            "serve",
            "--group",
            "239.255.0.77",
            "--group",
            "239.255.0.78",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("at most one group per address family"),
        "{err}"
    );
}
