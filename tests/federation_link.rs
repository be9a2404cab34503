//! The federation link and its NATS socket against real `nats-server`
//! processes (Debian package `nats-server`) on free loopback ports: each
//! test runs its links in its own mio loops, the way the relay's server
//! loop will, and kills its servers when done.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::nats::{cluster, Nats, Raw};
use common::DEADLINE;

use mcrelay::fernet::FernetKey;
use mcrelay::{Link, LinkConfig, LinkEvent, LinkState, NatsAuth, NatsSocket};
use mio::{Events, Poll, Token};

const SUBJECT: &str = "mcrelay.test.federation";
const KEY: [u8; 32] = [42; 32];
const NATS: Token = Token(0);

/// One link in its own mio loop, as the relay's server loop will run it.
struct Node {
    poll: Poll,
    events: Events,
    link: Link,
    sock: NatsSocket,
    got: Vec<LinkEvent>,
}

impl Node {
    fn new(name: &str, servers: &[SocketAddr], tweak: impl FnOnce(&mut LinkConfig)) -> Node {
        let mut cfg = LinkConfig::new(servers.to_vec(), SUBJECT, name);
        cfg.announce_period = Duration::from_millis(500);
        tweak(&mut cfg);
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let seed = [name.len() as u8; 32];
        let link = Link::new(
            cfg,
            FernetKey::from_bytes(&KEY),
            Instant::now(),
            unix_ms,
            seed,
        )
        .expect("link config");
        Node {
            poll: Poll::new().unwrap(),
            events: Events::with_capacity(16),
            link,
            sock: NatsSocket::new(NATS),
            got: Vec::new(),
        }
    }

    /// One loop turn, sleeping at most `max`.
    fn turn(&mut self, max: Duration) {
        let now = Instant::now();
        let mut wait = self
            .link
            .poll_timeout()
            .map_or(max, |t| t.saturating_duration_since(now).min(max));
        if self.sock.has_pending_read() {
            wait = Duration::ZERO;
        }
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("poll: {e}"),
        }
        let now = Instant::now();
        for ev in self.events.iter() {
            if ev.token() == NATS {
                self.sock
                    .handle_event(self.poll.registry(), ev, &mut self.link, now);
            }
        }
        if self.link.poll_timeout().is_some_and(|t| t <= now) {
            self.link.handle_timeout(now);
        }
        while let Some(e) = self.link.poll_event() {
            self.got.push(e);
        }
        self.sock.drive(self.poll.registry(), &mut self.link, now);
    }

    fn connected(&self) -> Option<SocketAddr> {
        match self.link.state() {
            LinkState::Connected { server } => Some(server),
            _ => None,
        }
    }

    fn messages(&self) -> Vec<(String, String)> {
        self.got
            .iter()
            .filter_map(|e| match e {
                LinkEvent::RemoteMessage {
                    sender_id, body, ..
                } => Some((
                    sender_id.clone(),
                    String::from_utf8_lossy(body).into_owned(),
                )),
                _ => None,
            })
            .collect()
    }

    fn publish(&mut self, sender: &str, body: &str) {
        self.link
            .publish_message(Instant::now(), sender, body.as_bytes());
    }
}

/// Turns every node until `cond` holds; returns how long that took.
fn run_until(nodes: &mut [&mut Node], what: &str, cond: impl Fn(&[&mut Node]) -> bool) -> Duration {
    let start = Instant::now();
    while !cond(nodes) {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        for n in nodes.iter_mut() {
            n.turn(Duration::from_millis(2));
        }
    }
    start.elapsed()
}

/// Turns every node for `d` (to let duplicates show up, if any would).
fn run_for(nodes: &mut [&mut Node], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for n in nodes.iter_mut() {
            n.turn(Duration::from_millis(2));
        }
    }
}

#[test]
fn two_links_exchange_a_message_exactly_once() {
    let s = Nats::start(&[], &[]);
    let mut a = Node::new("office", &[s.addr()], |_| {});
    let mut b = Node::new("home", &[s.addr()], |_| {});
    run_until(&mut [&mut a, &mut b], "both connected", |n| {
        n.iter().all(|n| n.connected().is_some())
    });
    a.publish("alice@10.0.0.5:4000", "hello");
    run_until(&mut [&mut a, &mut b], "delivery", |n| {
        !n[1].messages().is_empty()
    });
    run_for(&mut [&mut a, &mut b], Duration::from_millis(700));
    assert_eq!(
        b.messages(),
        [("office/alice@10.0.0.5:4000".to_owned(), "hello".to_owned())]
    );
    assert_eq!(a.messages(), [], "no echo");
    assert_eq!(
        a.link.stats().dropped_own,
        0,
        "the server did not echo either"
    );
    assert!(b.got.contains(&LinkEvent::RemoteJoined {
        id: "office/alice@10.0.0.5:4000".into()
    }));
    assert_eq!(a.link.remote_relays(Instant::now())[0].name, "home");
}

#[test]
fn three_links_on_a_cluster_get_everything_once() {
    let servers = cluster(3);
    let names = ["office", "home", "lab"];
    let mut nodes: Vec<Node> = names
        .iter()
        .zip(&servers)
        .map(|(name, s)| Node::new(name, &[s.addr()], |_| {}))
        .collect();
    let mut refs: Vec<&mut Node> = nodes.iter_mut().collect();
    // Hearing each other's announces proves the subscriptions crossed the routes.
    run_until(&mut refs, "every relay to hear the others", |n| {
        n.iter()
            .all(|n| n.link.remote_relays(Instant::now()).len() == 2)
    });
    for (n, name) in refs.iter_mut().zip(names) {
        for i in 0..20 {
            n.publish("m", &format!("{name}-{i}"));
        }
    }
    run_until(&mut refs, "40 messages at each relay", |n| {
        n.iter().all(|n| n.messages().len() >= 40)
    });
    run_for(&mut refs, Duration::from_millis(700));
    for (n, me) in refs.iter().zip(names) {
        let mut got = n.messages();
        assert_eq!(got.len(), 40, "{me}: no duplicates");
        got.sort();
        let mut want: Vec<(String, String)> = names
            .iter()
            .filter(|&&other| other != me)
            .flat_map(|other| (0..20).map(move |i| (format!("{other}/m"), format!("{other}-{i}"))))
            .collect();
        want.sort();
        assert_eq!(got, want, "{me}: everyone else's, nothing of its own");
    }
}

#[test]
fn the_link_fails_over_to_another_server_of_the_cluster() {
    let mut servers = cluster(2);
    // x knows only the first server; it learns the second from INFO.
    let mut x = Node::new("office", &[servers[0].addr()], |_| {});
    let mut y = Node::new("home", &[servers[1].addr()], |_| {});
    let second = servers[1].addr();
    run_until(
        &mut [&mut x, &mut y],
        "x to learn the cluster and hear y",
        |n| {
            n[0].link.servers().contains(&second)
                && n.iter()
                    .all(|n| n.link.remote_relays(Instant::now()).len() == 1)
        },
    );
    assert_eq!(x.connected(), Some(servers[0].addr()));
    servers[0].kill();
    let took = run_until(&mut [&mut x, &mut y], "x to reconnect", |n| {
        n[0].connected() == Some(second)
    });
    println!("failover: reconnected to the other server {took:?} after the kill");
    assert!(took < Duration::from_secs(10), "reconnect took {took:?}");
    assert_eq!(x.link.stats().reconnects, 1);
    x.publish("alice", "from x after failover");
    y.publish("bob", "from y after failover");
    run_until(&mut [&mut x, &mut y], "messages both ways", |n| {
        !n[0].messages().is_empty() && !n[1].messages().is_empty()
    });
    assert_eq!(
        x.messages(),
        [("home/bob".into(), "from y after failover".into())]
    );
    assert_eq!(
        y.messages(),
        [("office/alice".into(), "from x after failover".into())]
    );
}

#[test]
fn messages_published_while_no_server_is_up_are_buffered_then_delivered() {
    let mut s = Nats::start(&[], &[]);
    let (port, cluster_port) = (s.port, s.cluster_port);
    let mut a = Node::new("office", &[s.addr()], |c| c.buffer_messages = 5);
    let mut b = Node::new("home", &[s.addr()], |_| {});
    run_until(&mut [&mut a, &mut b], "both connected", |n| {
        n.iter().all(|n| n.connected().is_some())
    });
    s.kill();
    run_until(&mut [&mut a, &mut b], "both to notice", |n| {
        n.iter().all(|n| n.connected().is_none())
    });
    for i in 0..10 {
        a.publish("alice", &format!("m{i}"));
    }
    assert_eq!(a.link.buffered(), 5);
    assert_eq!(a.link.stats().dropped_overflow, 5, "the oldest went");
    let _s = Nats::start_on(port, cluster_port, &[], &[]);
    let restarted = Instant::now();
    // b first, so its subscription is in place before a flushes.
    run_until(&mut [&mut b], "b to reconnect", |n| {
        n[0].connected().is_some()
    });
    run_until(&mut [&mut a, &mut b], "a to reconnect", |n| {
        n[0].connected().is_some()
    });
    println!(
        "buffer: both reconnected {:?} after the server came back",
        restarted.elapsed()
    );
    run_until(&mut [&mut a, &mut b], "the buffered messages", |n| {
        n[1].messages().len() >= 5
    });
    let bodies: Vec<String> = b.messages().into_iter().map(|m| m.1).collect();
    assert_eq!(bodies, ["m5", "m6", "m7", "m8", "m9"]);
    assert_eq!(a.link.buffered(), 0);
    assert_eq!(a.link.stats().reconnects, 1);
}

#[test]
fn malformed_unsealed_and_replayed_messages_are_dropped_and_counted() {
    let s = Nats::start(&[], &[]);
    let mut a = Node::new("office", &[s.addr()], |c| {
        c.announce_period = Duration::from_secs(60)
    });
    let mut b = Node::new("home", &[s.addr()], |_| {});
    run_until(&mut [&mut a, &mut b], "both connected", |n| {
        n.iter().all(|n| n.connected().is_some())
    });
    let mut raw = Raw::connect(s.addr(), SUBJECT);
    a.publish("alice", "original");
    run_until(&mut [&mut a, &mut b], "delivery", |n| {
        !n[1].messages().is_empty()
    });
    // The raw client holds the key here only to pick the message out of
    // the announces; what it replays is the captured ciphertext as is.
    let key = FernetKey::from_bytes(&KEY);
    let captured = loop {
        let p = raw.next_payload();
        let plain = key.open(&p).expect("only sealed traffic on the subject");
        if plain.windows(8).any(|w| w == b"original") {
            break p;
        }
    };
    for plain in [&b"original"[..], b"alice", b"office"] {
        assert!(
            !captured.windows(plain.len()).any(|w| w == plain),
            "NATS sees ciphertext only"
        );
    }
    raw.publish(b"plain text, no token");
    let mut wrong_key = Vec::new();
    FernetKey::from_bytes(&[1; 32]).seal_into(1, [0; 16], b"anything", &mut wrong_key);
    raw.publish(&wrong_key);
    let mut not_tlv = Vec::new();
    FernetKey::from_bytes(&KEY).seal_into(1, [0; 16], b"\x03\x01\x00", &mut not_tlv);
    raw.publish(&not_tlv);
    raw.publish(&captured);
    run_until(&mut [&mut a, &mut b], "four drops at b", |n| {
        let s = n[1].link.stats();
        s.dropped_unsealed + s.dropped_malformed + s.dropped_replayed >= 4
    });
    run_for(&mut [&mut a, &mut b], Duration::from_millis(300));
    let st = b.link.stats();
    assert_eq!(
        (
            st.dropped_unsealed,
            st.dropped_malformed,
            st.dropped_replayed
        ),
        (2, 1, 1)
    );
    assert_eq!(b.messages(), [("office/alice".into(), "original".into())]);
}

#[test]
fn a_silent_relay_is_gone_after_three_announce_periods() {
    let period = Duration::from_millis(300);
    let s = Nats::start(&[], &[]);
    let mut a = Node::new("office", &[s.addr()], |c| c.announce_period = period);
    let mut b = Node::new("home", &[s.addr()], |c| c.announce_period = period);
    run_until(&mut [&mut a, &mut b], "both connected", |n| {
        n.iter().all(|n| n.connected().is_some())
    });
    a.link.publish_joined(Instant::now(), "alice");
    run_until(&mut [&mut a, &mut b], "the join", |n| {
        n[1].link.remote_members() == ["office/alice"]
    });
    // a stops: its socket stays open, but it says nothing more.
    b.got.clear();
    let took = run_until(&mut [&mut b], "RelayGone", |n| {
        n[0].got
            .iter()
            .any(|e| matches!(e, LinkEvent::RelayGone { .. }))
    });
    println!("relay gone {took:?} after it fell silent (announce period {period:?})");
    assert!(took >= period * 2 - Duration::from_millis(50), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(
        b.got,
        [
            LinkEvent::RemoteLeft {
                id: "office/alice".into(),
                reason: mcrelay::REASON_UNREACHABLE
            },
            LinkEvent::RelayGone {
                relay: "office".into()
            }
        ]
    );
    assert!(b.link.remote_relays(Instant::now()).is_empty());
}

#[test]
fn credentials_are_presented_and_a_wrong_password_never_connects() {
    let s = Nats::start(&[], &["--user", "relay", "--pass", "s3cret"]);
    let auth = |pass: &str| NatsAuth::UserPass {
        user: "relay".into(),
        pass: pass.into(),
    };
    let mut good = Node::new("office", &[s.addr()], |c| c.auth = auth("s3cret"));
    let mut bad = Node::new("home", &[s.addr()], |c| c.auth = auth("wrong"));
    run_until(
        &mut [&mut good, &mut bad],
        "the right password to connect",
        |n| n[0].connected().is_some() && n[1].link.stats().server_errors > 0,
    );
    run_for(&mut [&mut good, &mut bad], Duration::from_millis(500));
    assert_eq!(bad.connected(), None);
}

/// Latency at 1,000 messages/s and a 50,000-message burst between two
/// links through one server, each link in its own thread as each relay
/// has its own process. Asserts no loss and no duplicate; the timings are
/// printed (`--release --nocapture` for real numbers), not asserted.
#[test]
fn fifty_thousand_messages_cross_without_loss() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};

    const PACED: usize = 1_000;
    const BURST: usize = 50_000;
    let s = Nats::start(&[], &[]);
    let server = s.addr();
    let (ready, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (tx, rx) = mpsc::channel::<(usize, Instant)>();
    let receiver = {
        let (ready, stop) = (ready.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut b = Node::new("home", &[server], |c| {
                c.announce_period = Duration::from_secs(60)
            });
            while !stop.load(Ordering::Relaxed) {
                b.turn(Duration::from_millis(1));
                ready.store(b.connected().is_some(), Ordering::Relaxed);
                for e in b.got.drain(..) {
                    if let LinkEvent::RemoteMessage { body, .. } = e {
                        let i = String::from_utf8_lossy(&body[..10]).parse().unwrap();
                        tx.send((i, Instant::now())).unwrap();
                    }
                }
            }
            b.link.stats().clone()
        })
    };
    let mut a = Node::new("office", &[server], |c| {
        c.announce_period = Duration::from_secs(60)
    });
    run_until(&mut [&mut a], "both connected", |n| {
        n[0].connected().is_some() && ready.load(Ordering::Relaxed)
    });
    let body = |i: usize| format!("{i:010}{}", "x".repeat(90));
    let mut sent = vec![None; PACED + BURST];
    let mut got = vec![None; PACED + BURST];
    let take = |got: &mut Vec<Option<Instant>>| {
        for (i, at) in rx.try_iter() {
            assert!(got[i].replace(at).is_none(), "message {i} twice");
        }
    };
    // Paced: one message per millisecond.
    let start = Instant::now();
    for (i, sent_at) in sent.iter_mut().enumerate().take(PACED) {
        let due = start + Duration::from_millis(i as u64);
        while Instant::now() < due {
            a.turn(due.saturating_duration_since(Instant::now()));
        }
        *sent_at = Some(Instant::now());
        a.publish("alice", &body(i));
        a.sock.drive(a.poll.registry(), &mut a.link, Instant::now());
        take(&mut got);
    }
    // Burst: as fast as the socket takes them.
    let burst = Instant::now();
    let mut publishing = Duration::ZERO;
    let mut next = PACED;
    while got.iter().any(Option::is_none) {
        assert!(burst.elapsed() < DEADLINE * 3, "timed out: messages lost");
        if next < PACED + BURST && a.link.pending_output().len() < 256 * 1024 {
            let t = Instant::now();
            let end = (next + 500).min(PACED + BURST);
            for (i, sent_at) in sent.iter_mut().enumerate().take(end).skip(next) {
                *sent_at = Some(t);
                a.publish("alice", &body(i));
            }
            publishing += t.elapsed();
            next = end;
        }
        a.turn(Duration::from_millis(1));
        take(&mut got);
    }
    let burst_time = burst.elapsed();
    stop.store(true, Ordering::Relaxed);
    let b_stats = receiver.join().unwrap();
    let mut lat: Vec<Duration> = (0..PACED)
        .map(|i| got[i].unwrap() - sent[i].unwrap())
        .collect();
    lat.sort();
    println!(
        "paced {PACED} msg at 1000/s: latency p50 {:?} p99 {:?} max {:?}",
        lat[PACED / 2],
        lat[PACED * 99 / 100],
        lat[PACED - 1]
    );
    println!(
        "burst {BURST} msg of 100 B: {:?}, {:.0} msg/s; publish (seal + PUB) {:.2} us/msg",
        burst_time,
        BURST as f64 / burst_time.as_secs_f64(),
        publishing.as_secs_f64() * 1e6 / BURST as f64
    );
    assert_eq!(a.link.stats().dropped_overflow, 0);
    assert_eq!(b_stats.dropped_replayed + b_stats.dropped_malformed, 0);
}
