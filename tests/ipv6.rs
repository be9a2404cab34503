//! Dual stack over real sockets: IPv4 and IPv6 clients on one relay, each
//! known by its own address form, relayed to each other: the library, the
//! `mcrelay` CLI and the Python client over `::1`, and IPv6 multicast over
//! a link-local group between two network namespaces the test builds.

#[path = "support/cli.rs"]
mod cli;
mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use cli::*;
use common::netns::{admin_in, command, if_index, link_local, Hosts};
use common::*;
use mcrelay::{ClientEvent, ClientOptions, Target, UdpClient, MAX_BODY_LEN};

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

/// `[::1]:PORT` as a `--server` value.
fn v6_server(server: &Server) -> String {
    format!("[::1]:{}", server.port)
}

/// Waits for the next PEER_JOINED and returns the id.
fn joined(c: &mut UdpClient) -> String {
    match expect_event(c, "PEER_JOINED", |e| {
        matches!(e, ClientEvent::PeerJoined(_))
    }) {
        ClientEvent::PeerJoined(id) => id,
        _ => unreachable!(),
    }
}

#[test]
fn cli_send_and_listen_over_ipv6_talk_with_an_ipv4_client() {
    let server = Server::start(&[]);
    let mut v4 = server.client();
    let id4 = v4.id().unwrap().to_string();
    let target = v6_server(&server);

    let mut listener = Cli::mcrelay(&["listen", "--server", &target]);
    let listen_id = listener.connected_id();
    assert!(listen_id.starts_with("[::1]:"), "{listen_id}");
    assert_eq!(joined(&mut v4), listen_id);
    v4.send(b"four to the six listener").unwrap();
    listener.expect_line(&format!("[{id4}] four to the six listener"));

    let out = Command::new(bin())
        .args(["send", "--server", &target, "six to four"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sender = expect_message(&mut v4, b"six to four");
    assert!(
        sender.starts_with("[::1]:") && sender != listen_id,
        "{sender}"
    );
    listener.expect_line(&format!("[{sender}] six to four"));
}

#[test]
fn python_client_over_ipv6_unicast_relays_both_ways_with_fragments() {
    let server = Server::start(&[]);
    let mut v4 = server.client();
    let id4 = v4.id().unwrap().to_string();
    let target = v6_server(&server);
    let mut py = Cli::python(&["listen", "--server", &target]);
    let py_id = joined(&mut v4);
    assert!(py_id.starts_with("[::1]:"), "{py_id}");

    v4.send(b"to python over six").unwrap();
    py.expect_line(&format!("[{id4}] to python over six"));
    // 20 KiB: fragmented by the server towards Python's IPv6 address.
    let big = "b".repeat(20 * 1024);
    v4.send(big.as_bytes()).unwrap();
    py.expect_line(&format!("[{id4}] {big}"));

    // Python → IPv4, small and 20 KiB (fragmented by Python over IPv6).
    for msg in ["from python over six".to_string(), "q".repeat(20 * 1024)] {
        let out = python()
            .args(["-m", "mcrelay_client", "send", "--server", &target, &msg])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sender = expect_message(&mut v4, msg.as_bytes());
        assert!(sender.starts_with("[::1]:") && sender != py_id, "{sender}");
    }
    // An IPv6 address without brackets is ambiguous: refused, one line.
    let out = python()
        .args(["-m", "mcrelay_client", "send", "--server"])
        .arg(format!("::1:{}", server.port))
        .arg("x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("brackets"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_interface_that_does_not_exist_is_a_one_line_error() {
    for group in ["ff02::77", "239.255.0.77"] {
        let out = Command::new(bin())
            .args(["send", "--group", group, "--iface", "nosuch0", "x"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{group}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{group}: {err}");
        assert!(err.contains("no interface named nosuch0"), "{group}: {err}");
    }
    let out = python()
        .args(["-m", "mcrelay_client", "send", "--server", "127.0.0.1:5007"])
        .args(["--group", "ff02::77", "--iface", "nosuch0", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no interface named nosuch0"), "{err}");
    // A scope by name in --server is resolved, or refused the same way.
    let out = Command::new(bin())
        .args(["send", "--server", "[fe80::1%nosuch0]:5007", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no interface named nosuch0"), "{err}");
}

/// Two network namespaces joined by a veth pair, both ends up with
/// link-local addresses only (duplicate address detection off, so they are
/// usable at once): the relay's host (`v0`) and a client host (`v1`).
/// Loopback is no help here: Linux does not deliver IPv6 multicast sent
/// on `lo` even with its multicast flag set.
fn link() -> Hosts {
    Hosts::create("v6", "v0", "v1", &["net.ipv6.conf.default.accept_dad=0"])
}

/// The relay serves `ff02::77` on `v0`; on the other host, `mcrelay listen`
/// (interface by name), `mcrelay send` (by index) and the Python client
/// (by name, and by address) reach it through the group, leave it for
/// unicast to the relay's link-local address, and are known by their
/// link-local ids scoped with the relay's interface index.
#[test]
fn ipv6_multicast_clients_reach_the_relay_through_a_link_local_group() {
    let link = link();
    let mut cmd = command(&link.relay, bin());
    cmd.args(["serve", "--port", "0", "--admin-port", "0"])
        .args(["--group", "ff02::77", "--iface", "v0"]);
    let mut server = Server::spawn(cmd);
    server.wait_log("member of ff02::77 on v0", DEADLINE);
    let port = server.port.to_string();
    let scope = if_index(&link.relay, "v0");
    let v1 = if_index(&link.peer, "v1").to_string();
    let v1_addr = link_local(&link.peer, "v1");
    let id_prefix = format!("[{v1_addr}%{scope}]:");
    let group = ["--group", "ff02::77", "--port", &port];

    let mut cmd = command(&link.peer, bin());
    cmd.arg("listen").args(group).args(["--iface", "v1"]);
    let mut rust = Cli::spawn(cmd);
    let rust_id = rust.connected_id();
    assert!(rust_id.starts_with(&id_prefix), "{rust_id} vs {id_prefix}");

    let mut cmd = command(&link.peer, "python3");
    cmd.env(
        "PYTHONPATH",
        concat!(env!("CARGO_MANIFEST_DIR"), "/interop/python"),
    )
    .args(["-m", "mcrelay_client", "listen", "--server"])
    .arg(format!("127.0.0.1:{port}"))
    .args(["--group", "ff02::77", "--iface", "v1", "--ttl", "1"]);
    let mut py = Cli::spawn(cmd);
    let py_joined = rust.expect("python's join", |l| l.ends_with(" joined"));
    let py_id = &py_joined["* ".len()..py_joined.len() - " joined".len()];
    assert!(py_id.starts_with(&id_prefix), "{py_id} vs {id_prefix}");

    // `mcrelay send` by interface index, with the largest body: its
    // relayed copy carries a link-local id, longer than any IPv4 one, and
    // still fits the text token the Python listener gets.
    let mut child = command(&link.peer, bin())
        .args(["send", "--ttl", "1", "--iface", &v1])
        .args(group)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let largest = "L".repeat(MAX_BODY_LEN);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(largest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = rust.expect("the largest message", |l| l.ends_with(&largest));
    let sender = line[1..].split_once("] ").unwrap().0;
    assert!(sender.starts_with(&id_prefix), "{sender}");
    py.expect_line(&format!("[{sender}] {largest}"));

    // The Python client's one-shot send, by the interface's address.
    let out = command(&link.peer, "python3")
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/interop/python"),
        )
        .args(["-m", "mcrelay_client", "send", "--server"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--group", "ff02::77", "--iface", &v1_addr, "--ttl", "1"])
        .arg("python through ff02::77")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = rust.expect("python's message", |l| {
        l.ends_with("] python through ff02::77")
    });
    assert!(line.starts_with(&format!("[{id_prefix}")), "{line}");
    py.expect("python's message", |l| l == line);

    // The relay lists every one of them under the same ids.
    let clients = admin_in(&link.relay, server.admin_port.unwrap(), "clients");
    assert!(
        clients.iter().any(|l| l.starts_with(&rust_id)),
        "{clients:?}"
    );
    assert!(clients.iter().any(|l| l.starts_with(py_id)), "{clients:?}");
}
