//! The federation link against an in-memory NATS: links connect, publish
//! and hear each other through a fake server on a virtual clock, so
//! reconnects, keepalive and relay silence run in microseconds and
//! deterministically. (tests/federation_link.rs runs the real server.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::config::*;
use super::link::*;
use super::members::*;
use crate::session::fernet::FernetKey;

const SUBJECT: &str = "mcrelay.test.5007";
const PERIOD: Duration = Duration::from_secs(5);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One link and the fake server's view of its connection.
struct Node {
    link: Link,
    /// Connected to this (alive) server, CONNECT seen.
    at: Option<SocketAddr>,
    subscribed: bool,
    /// The fake server swallows this node's PINGs (a hung server).
    mute: bool,
    /// Bytes written by the link not yet parsed by the server.
    inbox: Vec<u8>,
    events: Vec<LinkEvent>,
    connects: Vec<(Duration, SocketAddr)>,
}

/// The fake NATS cluster: servers alive, all sharing one subject space.
struct Bus {
    nodes: Vec<Node>,
    alive: Vec<SocketAddr>,
    /// Sent in INFO as connect_urls.
    urls: Vec<String>,
    start: Instant,
    now: Instant,
    /// Drop the next published message of this kind (a lost message).
    lose_next_left: bool,
}

fn key() -> FernetKey {
    FernetKey::from_bytes(&[42; 32])
}

impl Bus {
    fn new() -> Bus {
        let now = Instant::now();
        Bus {
            nodes: Vec::new(),
            alive: vec![addr(4222), addr(4223)],
            urls: Vec::new(),
            start: now,
            now,
            lose_next_left: false,
        }
    }

    fn add(&mut self, name: &str, servers: &[u16], tweak: impl FnOnce(&mut LinkConfig)) -> usize {
        let mut cfg = LinkConfig::new(servers.iter().map(|&p| addr(p)).collect(), SUBJECT, name);
        cfg.announce_period = PERIOD;
        tweak(&mut cfg);
        let seed = [self.nodes.len() as u8; 32];
        let unix_ms = 1_700_000_000_000 + self.now.duration_since(self.start).as_millis() as u64;
        let link = Link::new(cfg, key(), self.now, unix_ms, seed).unwrap();
        self.nodes.push(Node {
            link,
            at: None,
            subscribed: false,
            mute: false,
            inbox: Vec::new(),
            events: Vec::new(),
            connects: Vec::new(),
        });
        self.settle();
        self.nodes.len() - 1
    }

    fn node(&mut self, i: usize) -> &mut Link {
        &mut self.nodes[i].link
    }

    /// Runs timers due now and moves bytes until nothing changes.
    fn settle(&mut self) {
        for _ in 0..100 {
            let mut busy = false;
            let mut published: Vec<(usize, Vec<u8>)> = Vec::new();
            for i in 0..self.nodes.len() {
                let now = self.now;
                let n = &mut self.nodes[i];
                if n.link.poll_timeout().is_some_and(|t| t <= now) {
                    n.link.handle_timeout(now);
                }
                while let Some(a) = n.link.poll_action() {
                    busy = true;
                    n.at = None;
                    n.subscribed = false;
                    n.inbox.clear();
                    if let Action::Connect(server) = a {
                        n.connects.push((now.duration_since(self.start), server));
                        if self.alive.contains(&server) {
                            n.at = Some(server);
                            let urls: Vec<String> =
                                self.urls.iter().map(|u| format!("\"{u}\"")).collect();
                            let info = format!(
                                "INFO {{\"server_id\":\"S{}\",\"max_payload\":1048576,\
                                 \"connect_urls\":[{}]}} \r\n",
                                server.port(),
                                urls.join(",")
                            );
                            n.link.handle_read(now, info.as_bytes());
                        } else {
                            n.link.handle_disconnected(now);
                        }
                    }
                }
                let out = n.link.pending_output().to_vec();
                if !out.is_empty() {
                    busy = true;
                    n.link.consume_output(out.len());
                    if n.at.is_some() {
                        n.inbox.extend_from_slice(&out);
                    }
                }
                let mut reply = Vec::new();
                for op in client_ops(&mut n.inbox) {
                    match op {
                        ClientOp::Sub(subject) => n.subscribed = subject == SUBJECT,
                        ClientOp::Unsub => n.subscribed = false,
                        ClientOp::Ping if !n.mute => reply.extend_from_slice(b"PONG\r\n"),
                        ClientOp::Pub(subject, payload) if subject == SUBJECT => {
                            published.push((i, payload));
                        }
                        _ => {}
                    }
                }
                if !reply.is_empty() {
                    n.link.handle_read(now, &reply);
                }
                while let Some(e) = n.link.poll_event() {
                    n.events.push(e);
                }
            }
            for (from, payload) in published {
                busy = true;
                if self.lose_next_left && is_left(&payload) {
                    self.lose_next_left = false;
                    continue;
                }
                let msg = [
                    format!("MSG {SUBJECT} 1 {}\r\n", payload.len()).as_bytes(),
                    &payload,
                    b"\r\n",
                ]
                .concat();
                for (j, n) in self.nodes.iter_mut().enumerate() {
                    // NATS does not echo (CONNECT echo:false).
                    if j != from && n.at.is_some() && n.subscribed {
                        n.link.handle_read(self.now, &msg);
                    }
                }
            }
            if !busy {
                return;
            }
        }
        panic!("the fake bus did not settle");
    }

    /// Advances the clock by `d`, stopping at every timer on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.settle();
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.link.poll_timeout())
                .min();
            match next {
                Some(t) if t <= self.now => panic!("a timer stays due"),
                Some(t) if t <= end => self.now = t,
                _ => break,
            }
        }
        self.now = end;
        self.settle();
    }

    fn events(&mut self, i: usize) -> Vec<LinkEvent> {
        std::mem::take(&mut self.nodes[i].events)
    }

    /// The server `port` dies: its clients see their sockets close.
    fn kill(&mut self, port: u16) {
        self.alive.retain(|a| a.port() != port);
        let now = self.now;
        for n in &mut self.nodes {
            if n.at.is_some_and(|a| a.port() == port) {
                n.at = None;
                n.link.handle_disconnected(now);
            }
        }
        self.settle();
    }
}

/// Only for the lost-leave test: a LEFT is the only kind whose plaintext
/// we cannot see here, so every payload is opened with the test key.
fn is_left(payload: &[u8]) -> bool {
    let plain = key().open(payload).unwrap();
    super::msg::FedMsg::parse(&plain).is_ok_and(|m| matches!(m.kind, super::msg::Kind::Left { .. }))
}

enum ClientOp {
    Connect,
    Sub(String),
    Unsub,
    Ping,
    Pong,
    Pub(String, Vec<u8>),
}

/// Parses complete client ops off the front of `buf`.
fn client_ops(buf: &mut Vec<u8>) -> Vec<ClientOp> {
    let mut ops = Vec::new();
    while let Some(lf) = buf.windows(2).position(|w| w == b"\r\n") {
        let line = String::from_utf8(buf[..lf].to_vec()).unwrap();
        let mut f = line.split(' ');
        let (op, consumed) = match f.next().unwrap() {
            "CONNECT" => (ClientOp::Connect, lf + 2),
            "SUB" => (ClientOp::Sub(f.next().unwrap().to_owned()), lf + 2),
            "UNSUB" => (ClientOp::Unsub, lf + 2),
            "PING" => (ClientOp::Ping, lf + 2),
            "PONG" => (ClientOp::Pong, lf + 2),
            "PUB" => {
                let subject = f.next().unwrap().to_owned();
                let n: usize = f.next().unwrap().parse().unwrap();
                if buf.len() < lf + 2 + n + 2 {
                    break;
                }
                (
                    ClientOp::Pub(subject, buf[lf + 2..lf + 2 + n].to_vec()),
                    lf + 4 + n,
                )
            }
            other => panic!("unexpected client op {other}"),
        };
        buf.drain(..consumed);
        ops.push(op);
    }
    ops
}

fn joined(id: &str) -> LinkEvent {
    LinkEvent::RemoteJoined { id: id.into() }
}

fn left(id: &str, reason: u8) -> LinkEvent {
    LinkEvent::RemoteLeft {
        id: id.into(),
        reason,
    }
}

fn message(relay: &str, sender: &str, body: &[u8]) -> LinkEvent {
    LinkEvent::RemoteMessage {
        relay: relay.into(),
        sender_id: sender.into(),
        body: body.to_vec(),
    }
}

#[test]
fn handshake_bytes_then_connected() {
    let now = Instant::now();
    let cfg = LinkConfig::new(vec![addr(4222)], SUBJECT, "office");
    let mut a = Link::new(cfg, key(), now, 0, [1; 32]).unwrap();
    a.publish_message(now, "alice", b"early");
    assert_eq!(a.buffered(), 1);
    assert_eq!(a.poll_action(), None, "nothing before the first timer");
    assert!(
        a.poll_timeout().is_some_and(|t| t <= now),
        "first attempt due at once"
    );
    a.handle_timeout(now);
    assert_eq!(a.poll_action(), Some(Action::Connect(addr(4222))));
    assert!(a.pending_output().is_empty(), "nothing before INFO");
    a.handle_read(now, b"INFO {\"max_payload\":1048576} \r\n");
    let out = String::from_utf8(a.pending_output().to_vec()).unwrap();
    assert!(out.starts_with("CONNECT {\"verbose\":false"), "{out}");
    assert!(out.contains("\"name\":\"office\"") && out.contains("\"echo\":false"));
    assert!(
        out.ends_with(&format!("\r\nSUB {SUBJECT} 1\r\nPING\r\n")),
        "{out}"
    );
    a.consume_output(out.len());
    assert_eq!(a.state(), LinkState::Connecting { server: addr(4222) });
    a.handle_read(now, b"PING\r\nPONG\r\n");
    assert_eq!(a.state(), LinkState::Connected { server: addr(4222) });
    let out = a.pending_output().to_vec();
    let pubs = out.windows(4).filter(|w| w == b"PUB ").count();
    assert!(
        out.starts_with(b"PONG\r\nPUB mcrelay.test.5007 "),
        "answers PING first"
    );
    assert_eq!(pubs, 2, "the buffered message, then the announce");
    assert_eq!((a.buffered(), a.stats().published), (0, 2));
}

#[test]
fn messages_reach_every_other_relay_exactly_once() {
    let mut bus = Bus::new();
    let a = bus.add("office", &[4222], |_| {});
    let b = bus.add("home", &[4223], |_| {});
    let c = bus.add("lab", &[4222], |_| {});
    for i in [a, b, c] {
        assert!(matches!(bus.node(i).state(), LinkState::Connected { .. }));
        bus.events(i);
    }
    let now = bus.now;
    bus.node(a).publish_joined(now, "alice@10.0.0.5:4000");
    bus.node(a)
        .publish_message(now, "alice@10.0.0.5:4000", b"hello");
    bus.settle();
    let want = vec![
        joined("office/alice@10.0.0.5:4000"),
        message("office", "office/alice@10.0.0.5:4000", b"hello"),
    ];
    assert_eq!(bus.events(b), want);
    assert_eq!(bus.events(c), want);
    assert_eq!(bus.events(a), vec![], "no echo");
    bus.node(a).publish_left(now, "alice@10.0.0.5:4000", 1);
    bus.settle();
    assert_eq!(bus.events(b), vec![left("office/alice@10.0.0.5:4000", 1)]);
    assert_eq!(
        bus.node(b).stats().received,
        4,
        "lab's announce, joined, message, left"
    );
    assert_eq!(bus.node(a).stats().published, 4);
}

#[test]
fn a_late_relay_learns_members_from_the_announce() {
    let mut bus = Bus::new();
    let a = bus.add("office", &[4222], |_| {});
    let now = bus.now;
    bus.node(a).publish_joined(now, "alice");
    bus.node(a).publish_joined(now, "bob");
    let c = bus.add("lab", &[4223], |_| {});
    bus.advance(PERIOD);
    assert_eq!(
        bus.events(c),
        vec![joined("office/alice"), joined("office/bob")]
    );
    assert_eq!(bus.node(c).remote_members(), ["office/alice", "office/bob"]);
    assert_eq!(bus.node(c).remote_member_count(), 2);
    let first = bus.node(c).remote_members_first(1);
    assert_eq!(first, [("office".to_string(), "alice".to_string())]);
    let relays = bus.node(c).remote_relays(now + PERIOD);
    assert_eq!(relays.len(), 1);
    assert_eq!(
        (relays[0].name.as_str(), relays[0].members, relays[0].alive),
        ("office", 2, true)
    );
    // The office also heard the lab's announce (empty), and knows it.
    assert_eq!(bus.nodes[a].link.remote_relays(bus.now)[0].name, "lab");
}

#[test]
fn a_lost_leave_is_repaired_by_the_next_announce() {
    let mut bus = Bus::new();
    let a = bus.add("office", &[4222], |_| {});
    let b = bus.add("home", &[4222], |_| {});
    let now = bus.now;
    bus.node(a).publish_joined(now, "alice");
    bus.settle();
    bus.lose_next_left = true;
    bus.node(a).publish_left(now, "alice", 1);
    bus.settle();
    assert_eq!(bus.events(b), vec![joined("office/alice")]);
    bus.advance(PERIOD);
    assert_eq!(
        bus.events(b),
        vec![left("office/alice", REASON_UNREACHABLE)]
    );
}

#[test]
fn a_silent_relay_is_gone_after_three_periods() {
    let mut bus = Bus::new();
    let a = bus.add("office", &[4222], |_| {});
    let b = bus.add("home", &[4222], |_| {});
    let now = bus.now;
    bus.node(a).publish_joined(now, "alice");
    bus.node(a).publish_joined(now, "bob");
    bus.settle();
    bus.events(b);
    // The office stops: its node leaves the bus without a word.
    bus.nodes[a].at = None;
    bus.nodes[a].mute = true;
    bus.advance(PERIOD * 2);
    assert_eq!(bus.events(b), vec![]);
    assert!(!bus.nodes[b].link.remote_relays(bus.now)[0].alive);
    bus.advance(PERIOD + Duration::from_millis(10));
    assert_eq!(
        bus.events(b),
        vec![
            left("office/alice", 6),
            left("office/bob", 6),
            LinkEvent::RelayGone {
                relay: "office".into()
            }
        ]
    );
    assert!(bus.nodes[b].link.remote_relays(bus.now).is_empty());
}

#[test]
fn a_restarted_relay_is_a_new_sequence_space() {
    let mut bus = Bus::new();
    let a = bus.add("office", &[4222], |_| {});
    let b = bus.add("home", &[4222], |_| {});
    let now = bus.now;
    bus.node(a).publish_joined(now, "alice");
    bus.settle();
    bus.events(b);
    bus.nodes[a].at = None;
    bus.advance(Duration::from_millis(1));
    // The new run starts at SEQ 1 again: accepted, and alice is gone.
    let a2 = bus.add("office", &[4222], |_| {});
    let now = bus.now;
    bus.node(a2).publish_joined(now, "carol");
    bus.settle();
    assert_eq!(
        bus.events(b),
        vec![left("office/alice", 6), joined("office/carol")]
    );
    assert_eq!(bus.node(b).stats().dropped_replayed, 0);
}

#[test]
fn reconnects_to_the_next_server_at_once_then_backs_off() {
    let mut bus = Bus::new();
    let a = bus.add("office", &[4222, 4223], |_| {});
    let b = bus.add("home", &[4223], |_| {});
    let t0 = bus.now.duration_since(bus.start);
    bus.kill(4222);
    assert_eq!(
        bus.node(a).state(),
        LinkState::Connected { server: addr(4223) }
    );
    assert_eq!(bus.node(a).stats().reconnects, 1);
    assert_eq!(
        bus.nodes[a].connects.last(),
        Some(&(t0, addr(4223))),
        "no delay"
    );
    bus.events(b);
    let now = bus.now;
    bus.node(a).publish_message(now, "alice", b"after");
    bus.settle();
    assert_eq!(
        bus.events(b),
        vec![
            joined("office/alice"),
            message("office", "office/alice", b"after")
        ]
    );
    // Everything dies: the next server at once, then 100 ms doubling to 2 s.
    bus.nodes[a].connects.clear();
    let t1 = bus.now.duration_since(bus.start);
    bus.kill(4223);
    bus.advance(Duration::from_secs(8));
    let connects = &bus.nodes[a].connects;
    assert_eq!(connects[0], (t1, addr(4222)));
    let gaps: Vec<u128> = connects
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_millis())
        .collect();
    assert_eq!(gaps, [100, 200, 400, 800, 1600, 2000, 2000]);
    bus.alive.push(addr(4222));
    bus.advance(Duration::from_secs(2));
    assert_eq!(
        bus.node(a).state(),
        LinkState::Connected { server: addr(4222) }
    );
}

#[test]
fn buffered_while_down_bounded_and_flushed_in_order() {
    let mut bus = Bus::new();
    let b = bus.add("home", &[4223], |_| {});
    bus.alive.retain(|s| s.port() != 4222);
    let a = bus.add("office", &[4222], |c| c.buffer_messages = 3);
    let now = bus.now;
    for i in 0..5 {
        bus.node(a)
            .publish_message(now, "alice", format!("m{i}").as_bytes());
    }
    assert_eq!(bus.node(a).buffered(), 3);
    assert_eq!(bus.node(a).stats().dropped_overflow, 2);
    bus.events(b);
    bus.alive.push(addr(4222));
    bus.advance(Duration::from_secs(3));
    let bodies: Vec<Vec<u8>> = bus
        .events(b)
        .into_iter()
        .filter_map(|e| match e {
            LinkEvent::RemoteMessage { body, .. } => Some(body),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, [b"m2".to_vec(), b"m3".to_vec(), b"m4".to_vec()]);
    assert_eq!(bus.node(a).buffered(), 0);
}

#[test]
fn keepalive_answers_pings_and_drops_a_hung_server() {
    let mut bus = Bus::new();
    let a = bus.add("office", &[4222, 4223], |_| {});
    bus.nodes[a].mute = true;
    bus.advance(PING_INTERVAL * 2);
    assert_eq!(
        bus.node(a).state(),
        LinkState::Connected { server: addr(4222) }
    );
    bus.advance(PING_INTERVAL);
    assert_eq!(
        bus.node(a).state(),
        LinkState::Connecting { server: addr(4223) }
    );
    // The handshake's PING goes unanswered too: after 2 s, the next server.
    bus.nodes[a].mute = false;
    bus.advance(HANDSHAKE_TIMEOUT + RETRY_FIRST);
    assert_eq!(
        bus.node(a).state(),
        LinkState::Connected { server: addr(4222) }
    );
    let tried: Vec<u16> = bus.nodes[a].connects.iter().map(|c| c.1.port()).collect();
    assert_eq!(tried, [4222, 4223, 4222]);
}

#[test]
fn learns_servers_from_info_and_survives_protocol_errors() {
    let mut bus = Bus::new();
    bus.urls = vec![
        "127.0.0.1:4223".into(),
        "nats.example:4222".into(),
        "[::1]:4224".into(),
    ];
    let a = bus.add("office", &[4222], |_| {});
    assert_eq!(
        bus.node(a).servers(),
        [addr(4222), addr(4223), "[::1]:4224".parse().unwrap()]
    );
    let now = bus.now;
    bus.node(a).handle_read(now, b"GARBAGE\r\n");
    assert_eq!(bus.node(a).poll_action(), Some(Action::Close));
    bus.nodes[a].at = None;
    bus.settle();
    assert_eq!(
        bus.node(a).state(),
        LinkState::Connected { server: addr(4223) }
    );
}

#[test]
fn oversize_and_hostile_input_are_counted() {
    let mut bus = Bus::new();
    let a = bus.add("office", &[4222], |_| {});
    let now = bus.now;
    bus.node(a).publish_message(now, "alice", &vec![0; 70_000]);
    bus.node(a).publish_joined(now, &"x".repeat(300));
    assert_eq!(bus.node(a).stats().dropped_oversize, 2);
    let mut junk = Vec::new();
    for payload in [&b"not a token"[..], &[0x80; 90][..]] {
        junk.extend_from_slice(format!("MSG {SUBJECT} 1 {}\r\n", payload.len()).as_bytes());
        junk.extend_from_slice(payload);
        junk.extend_from_slice(b"\r\n");
    }
    junk.extend_from_slice(b"MSG other 2 1\r\nx\r\n");
    bus.node(a).handle_read(now, &junk);
    assert_eq!(bus.node(a).stats().dropped_unsealed, 2);
    assert_eq!(bus.node(a).poll_event(), None);
    assert!(matches!(bus.node(a).state(), LinkState::Connected { .. }));
}

#[test]
fn bad_configs_are_refused() {
    let now = Instant::now();
    let cfg = |f: fn(&mut LinkConfig)| {
        let mut c = LinkConfig::new(vec![addr(1)], SUBJECT, "r");
        f(&mut c);
        Link::new(c, key(), now, 0, [0; 32]).err()
    };
    assert_eq!(cfg(|_| {}), None);
    assert_eq!(cfg(|c| c.servers.clear()), Some(ConfigError::NoServers));
    assert!(matches!(
        cfg(|c| c.subject = "a.*".into()),
        Some(ConfigError::BadSubject(_))
    ));
    assert!(matches!(
        cfg(|c| c.relay_name = "a/b".into()),
        Some(ConfigError::BadRelayName(_))
    ));
    assert_eq!(
        cfg(|c| c.announce_period = Duration::ZERO),
        Some(ConfigError::BadPeriod)
    );
}

#[test]
fn shutdown_unsubscribes_flushes_and_never_reconnects() {
    let mut bus = Bus::new();
    let a = bus.add("office", &[4222, 4223], |_| {});
    let b = bus.add("home", &[4222], |_| {});
    let now = bus.now;
    bus.node(a).publish_joined(now, "alice");
    bus.settle();
    bus.events(b);
    bus.node(a).publish_left(now, "alice", 4);
    bus.node(a).shutdown(now);
    let out = bus.node(a).pending_output().to_vec();
    assert!(out.starts_with(b"PUB ") && out.ends_with(b"\r\nUNSUB 1\r\n"));
    bus.settle();
    assert_eq!(bus.events(b), vec![left("office/alice", 4)]);
    bus.kill(4222);
    bus.advance(Duration::from_secs(60));
    assert_eq!(bus.node(a).state(), LinkState::Closed);
    assert_eq!(bus.node(a).poll_timeout(), None);
    let tried: Vec<u16> = bus.nodes[a].connects.iter().map(|c| c.1.port()).collect();
    assert_eq!(tried, [4222], "no reconnect after shutdown");
    // Shut down while down: closed at once.
    let now = bus.now;
    bus.node(b).shutdown(now);
    assert_eq!(bus.node(b).state(), LinkState::Closed);
}
