//! Protocol v1 end to end against the real `mcrelay serve` process, over
//! loopback UDP (unicast and the multicast group pinned to 127.0.0.1).

mod common;

use std::time::Duration;

use common::*;
use mcrelay::wire::{LeaveReason, RejectReason};
use mcrelay::{ClientEvent, ClientOptions};

const QUIET: Duration = Duration::from_millis(500);

#[test]
fn handshake_over_unicast_gives_ip_port_id() {
    let server = Server::start(&[]);
    let mut c = server.client_with(ClientOptions::default());
    let id = c.connect(DEADLINE).unwrap();
    assert_eq!(id, format!("127.0.0.1:{}", c.local_addr().unwrap().port()));
    let fp = server.find_log("fingerprint (sha256)").unwrap();
    assert!(fp.ends_with(c.fingerprint().unwrap()), "{fp}");
}

#[test]
fn handshake_over_the_group_then_relay() {
    let server = Server::start(&[]);
    let mut g = server.group_client();
    g.connect(DEADLINE)
        .expect("handshake through the multicast group");
    let mut u = server.client();
    expect_event(&mut g, "join notice", |e| {
        matches!(e, ClientEvent::PeerJoined(_))
    });
    g.send(b"via group").unwrap();
    assert_eq!(expect_message(&mut u, b"via group"), g.id().unwrap());
}

#[test]
fn three_clients_each_message_once_to_each_other_never_echoed() {
    let server = Server::start(&[]);
    let mut cs: Vec<_> = (0..3).map(|_| server.client()).collect();
    // Wait until every join notice went out, so the relay phase is clean.
    let last = cs[2].id().unwrap().to_string();
    expect_event(&mut cs[0], "last join", |e| {
        *e == ClientEvent::PeerJoined(last.clone())
    });
    drain_all(&mut cs);
    for (i, c) in cs.iter_mut().enumerate() {
        for n in 0..5 {
            c.send(format!("m{i}-{n}").as_bytes()).unwrap();
        }
    }
    let ids: Vec<String> = cs.iter().map(|c| c.id().unwrap().to_string()).collect();
    for (i, c) in cs.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < 10 {
            let e = expect_event(c, "relayed message", |e| {
                matches!(e, ClientEvent::Message { .. })
            });
            if let ClientEvent::Message { sender, body } = e {
                got.push((sender, String::from_utf8(body).unwrap()));
            }
        }
        got.extend(
            messages(&drain(c, QUIET))
                .into_iter()
                .map(|(s, b)| (s, String::from_utf8(b).unwrap())),
        );
        got.sort();
        let mut want = Vec::new();
        for (j, id) in ids.iter().enumerate().filter(|(j, _)| *j != i) {
            for n in 0..5 {
                want.push((id.clone(), format!("m{j}-{n}")));
            }
        }
        want.sort();
        assert_eq!(
            got, want,
            "client {i} gets each other's messages exactly once, never its own"
        );
    }
}

fn drain_all(cs: &mut [mcrelay::UdpClient]) {
    for c in cs {
        drain(c, QUIET);
    }
}

#[test]
fn join_and_leave_notices() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    let b_id = b.id().unwrap().to_string();
    expect_event(&mut a, "PEER_JOINED", |e| {
        *e == ClientEvent::PeerJoined(b_id.clone())
    });
    b.bye().unwrap();
    expect_event(&mut a, "PEER_LEFT bye", |e| {
        *e == ClientEvent::PeerLeft {
            id: b_id.clone(),
            reason: Some(LeaveReason::Bye),
        }
    });
}

/// A client served one by one (outside group mode), connected.
fn unicast_client(server: &Server) -> mcrelay::UdpClient {
    let mut c = server.client_with(mcrelay::ClientOptions {
        group: false,
        ..mcrelay::ClientOptions::default()
    });
    c.connect(DEADLINE).expect("handshake");
    c
}

#[test]
fn twenty_kib_both_ways_in_datagrams_of_at_most_1200_bytes() {
    let server = Server::start(&[]);
    let mut a = unicast_client(&server);
    let mut b = unicast_client(&server);
    drain(&mut a, QUIET);
    let big_a: Vec<u8> = (0..20 * 1024).map(|i| (i % 251) as u8).collect();
    let big_b: Vec<u8> = (0..20 * 1024).map(|i| (i % 241) as u8).collect();
    assert!(
        a.prepare(&big_a).iter().all(|d| d.len() <= 1200),
        "client fragments too"
    );
    a.send(&big_a).unwrap();
    assert_eq!(expect_message(&mut b, &big_a), a.id().unwrap());
    b.send(&big_b).unwrap();
    assert_eq!(expect_message(&mut a, &big_b), b.id().unwrap());
    assert!(a.largest_received() <= 1200 && b.largest_received() <= 1200);
    assert!(a.largest_received() > 1000, "the server did fragment");
}

/// The same in group mode: the relay sends one fragmented GROUP_DATA to
/// the downlink, and every member reassembles and verifies it.
#[test]
fn twenty_kib_in_group_mode_arrive_through_the_downlink_in_fragments() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    let mut c = server.client();
    assert!(
        b.downlink().is_some() && c.downlink().is_some(),
        "group mode"
    );
    drain(&mut a, QUIET);
    let big: Vec<u8> = (0..20 * 1024).map(|i| (i % 239) as u8).collect();
    a.send(&big).unwrap();
    assert_eq!(expect_message(&mut b, &big), a.id().unwrap());
    assert_eq!(expect_message(&mut c, &big), a.id().unwrap());
    let mut admin = server.admin();
    // One signed message, sent once in fragments for both members.
    assert_eq!(admin.stat("messages_relayed"), 1);
    assert!(
        admin.stat("group_data_sent") > 1,
        "fragments on the downlink"
    );
}

#[test]
fn shuffled_fragments_reassemble_and_a_duplicate_drops_the_message() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    drain(&mut a, QUIET);
    let body = vec![7u8; 5000];
    let mut frags = a.prepare(&body);
    assert!(frags.len() >= 4);
    frags.reverse();
    frags.swap(0, 2);
    for f in &frags {
        a.send_raw(f).unwrap();
    }
    expect_message(&mut b, &body);

    let dup_body = vec![9u8; 5000];
    let frags = a.prepare(&dup_body);
    a.send_raw(&frags[0]).unwrap();
    a.send_raw(&frags[0]).unwrap(); // duplicate index: the whole message is dropped
    for f in &frags[1..] {
        a.send_raw(f).unwrap();
    }
    a.send(b"after").unwrap();
    let got = expect_event(&mut b, "next message", |e| {
        matches!(e, ClientEvent::Message { .. })
    });
    assert!(matches!(got, ClientEvent::Message { body, .. } if body == b"after"));
    server_debug_contains(&server, "duplicate");
}

fn server_debug_contains(server: &Server, needle: &str) {
    let end = std::time::Instant::now() + DEADLINE;
    while server.find_log(needle).is_none() {
        assert!(
            std::time::Instant::now() < end,
            "no {needle:?} in the log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn replayed_data_is_relayed_once() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    drain(&mut a, QUIET);
    let d = a.prepare(b"once");
    assert_eq!(d.len(), 1);
    a.send_raw(&d[0]).unwrap();
    a.send_raw(&d[0]).unwrap();
    a.send(b"marker").unwrap();
    let got = messages(&{
        let mut v = vec![expect_event(
            &mut b,
            "marker",
            |e| matches!(e, ClientEvent::Message { body, .. } if body == b"marker"),
        )];
        v.extend(drain(&mut b, QUIET));
        v
    });
    assert_eq!(got.iter().filter(|(_, m)| m == b"marker").count(), 1);
    server_debug_contains(&server, "token_replay");
}

#[test]
fn replay_received_before_marker_counts_once() {
    // Order check: the replayed copy must not arrive before the marker either.
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    drain(&mut a, QUIET);
    let d = a.prepare(b"x");
    for _ in 0..3 {
        a.send_raw(&d[0]).unwrap();
    }
    a.send(b"end").unwrap();
    let mut seen = Vec::new();
    loop {
        match expect_event(&mut b, "message", |e| {
            matches!(e, ClientEvent::Message { .. })
        }) {
            ClientEvent::Message { body, .. } if body == b"end" => break,
            ClientEvent::Message { body, .. } => seen.push(body),
            _ => {}
        }
    }
    assert_eq!(seen, vec![b"x".to_vec()]);
}

#[test]
fn idle_client_times_out_and_then_gets_reject_unknown_session() {
    let server = Server::start(&["--client-timeout", "2"]);
    let mut a = server.client();
    let mut b = server.client();
    let b_id = b.id().unwrap().to_string();
    let deadline = std::time::Instant::now() + DEADLINE;
    // a keeps itself alive; b goes silent.
    loop {
        a.keepalive().unwrap();
        match a.recv(Duration::from_millis(500)).unwrap() {
            Some(ClientEvent::PeerLeft { id, reason }) if id == b_id => {
                assert_eq!(reason, Some(LeaveReason::Timeout));
                break;
            }
            _ => assert!(std::time::Instant::now() < deadline, "no timeout notice"),
        }
    }
    b.send(b"anyone?").unwrap();
    expect_event(&mut b, "REJECT 1", |e| {
        *e == ClientEvent::Rejected(RejectReason::UnknownSession)
    });
}

#[test]
fn re_handshake_replaces_the_key_and_restarts_seq() {
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    drain(&mut a, QUIET);
    let old = a.prepare(b"old key");
    for n in 0..3 {
        a.send(format!("before {n}").as_bytes()).unwrap();
    }
    let id = a.connect(DEADLINE).unwrap(); // same socket: a re-key, SEQs start at 1 again
    assert_eq!(id, a.id().unwrap());
    a.send(b"after rekey").unwrap();
    expect_message(&mut b, b"after rekey");
    a.send_raw(&old[0]).unwrap(); // sealed under the replaced key
    a.send(b"last").unwrap();
    let rest = messages(&{
        let mut v = vec![expect_event(
            &mut b,
            "last",
            |e| matches!(e, ClientEvent::Message { body, .. } if body == b"last"),
        )];
        v.extend(drain(&mut b, QUIET));
        v
    });
    assert!(rest.iter().all(|(_, m)| m != b"old key"));
    let joins = drain(&mut b, QUIET)
        .iter()
        .filter(|e| matches!(e, ClientEvent::PeerJoined(_)))
        .count();
    assert_eq!(joins, 0, "a re-key is not a new join");
}

#[test]
fn access_token_accepted_and_refused() {
    let dir = tempdir();
    let token = dir.join("token");
    std::fs::write(&token, "sesame\n").unwrap();
    let server = Server::start(&["--token-file", token.to_str().unwrap()]);
    let good = ClientOptions {
        access_token: Some(b"sesame".to_vec()),
        ..Default::default()
    };
    let mut ok = server.client_with(good);
    ok.connect(DEADLINE).expect("right token");
    for bad in [None, Some(b"sesam".to_vec()), Some(b"sesame\n".to_vec())] {
        let mut c = server.client_with(ClientOptions {
            access_token: bad.clone(),
            ..Default::default()
        });
        match c.connect(DEADLINE) {
            Err(mcrelay::ConnectError::Rejected(RejectReason::AuthFailed)) => {}
            other => panic!("token {bad:?}: expected REJECT 2, got {other:?}"),
        }
    }
}

#[test]
fn stranger_gets_reject_unknown_session_and_nothing_else() {
    let server = Server::start(&[]);
    let mut member = server.client();
    let mut s = server.client_with(ClientOptions::default());
    // A DATA TLV with a junk token from an address that never shook hands.
    s.send_raw(&[0, 5, 0, 4, b'j', b'u', b'n', b'k']).unwrap();
    expect_event(&mut s, "REJECT 1", |e| {
        *e == ClientEvent::Rejected(RejectReason::UnknownSession)
    });
    s.send_raw(&[0, 6, 0, 9, 0, 0, 0, 1, 0, 0, 0, 2, b'x'])
        .unwrap(); // a fragment
    let later = drain(&mut s, QUIET);
    assert!(later
        .iter()
        .all(|e| matches!(e, ClientEvent::Rejected(RejectReason::UnknownSession))));
    assert!(messages(&drain(&mut member, QUIET)).is_empty());
}

#[test]
fn short_hello_gets_no_answer() {
    let server = Server::start(&[]);
    let c = server.client_with(ClientOptions::default());
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut short = vec![0u8, 1, 0, 251, 1];
    short.resize(255, 0);
    sock.send_to(&short, server.addr()).unwrap();
    let mut buf = [0u8; 2048];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "a 255-byte HELLO must get silence"
    );
    short.push(0);
    short[3] = 252;
    sock.send_to(&short, server.addr()).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("a 256-byte HELLO gets SERVER_KEY + COOKIE");
    assert!(n <= 3 * 256, "anti-amplification: {n} bytes");
    assert_eq!(&buf[..2], &[0, 2]);
    drop(c);
}

#[test]
fn shutdown_by_sigterm_sends_server_closing_and_exits_0() {
    let mut server = Server::start(&[]);
    let mut a = server.client();
    signal(&server, 15);
    expect_event(&mut a, "SERVER_CLOSING", |e| {
        *e == ClientEvent::ServerClosing
    });
    let status = server.wait_exit(DEADLINE).expect("server exits");
    assert!(status.success(), "{status}");
}

pub fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mcrelay-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
