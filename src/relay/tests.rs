//! Unit tests of the sans-IO relay core ([`Relay`]) against protocol v1, driven
//! by a fake clock.
//!
//! [`Net`] wires one relay to simulated clients: [`ClientCore`]s, each at its
//! own `127.0.0.1:4000x` address, and hand-made [`Manual`] clients that build
//! the handshake and seal arbitrary plaintexts themselves, so tests can send
//! exactly the bytes they want. Datagrams are routed until the network is
//! quiet; relay output for an address that is no peer lands in `Net::stray`.
//!
//! Time never comes from the OS after the start: `now` is a base `Instant`
//! plus durations. [`Net::advance`] moves it and fires the relay's timers only
//! at the instants `Relay::poll_timeout` names (like quinn-proto's test
//! `Pair`), so a timer that `poll_timeout` forgot would make a test fail.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fernet::Fernet;
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::PublicKey;

use crate::client::{ClientCore, ClientEvent, ClientOptions};
use crate::reassembly::{DropReason, ReassemblyLimits};
use crate::relay::config::Config;
use crate::relay::drop::Drop;
use crate::relay::stats::Stats;
use crate::relay::{ClientId, Event, Relay, Transmits};
use crate::session::key::ServerKey;
use crate::wire::fragment;
use crate::wire::tlv::{self, Reader};
use crate::wire::{inner, outer, Inner, LeaveReason, RejectReason, MIN_HELLO_LEN};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// A simulated [`ClientCore`] and what it has reported.
struct Peer {
    addr: SocketAddr,
    core: ClientCore,
    events: Vec<ClientEvent>,
}

/// One relay, its clients and the fake clock.
struct Net {
    relay: Relay,
    start: Instant,
    now: Instant,
    peers: Vec<Peer>,
    /// Every datagram the relay sent, in order.
    sent: Vec<(SocketAddr, Vec<u8>)>,
    /// Relay output for addresses that are no peer (strangers, manual clients).
    stray: Vec<(SocketAddr, Vec<u8>)>,
    /// What the relay reported to its owner.
    events: Vec<Event>,
    tx: Transmits,
}

impl Net {
    fn new(config: Config) -> Self {
        let start = Instant::now();
        // One RSA key for all tests: generating one takes a while in debug builds.
        static KEY: OnceLock<ServerKey> = OnceLock::new();
        let key = KEY.get_or_init(|| ServerKey::generate().expect("key generation"));
        Net {
            relay: Relay::new(config, key.clone(), start),
            start,
            now: start,
            peers: Vec::new(),
            sent: Vec::new(),
            stray: Vec::new(),
            events: Vec::new(),
            tx: Transmits::new(),
        }
    }

    fn stats(&self) -> &Stats {
        self.relay.stats()
    }

    /// Adds a client at `127.0.0.1:40001`, `:40002`, … without connecting it.
    fn add(&mut self, opts: ClientOptions) -> usize {
        let port = 40001 + self.peers.len() as u16;
        self.add_at(addr(port), opts)
    }

    fn add_at(&mut self, addr: SocketAddr, opts: ClientOptions) -> usize {
        self.peers.push(Peer {
            addr,
            core: ClientCore::new(opts),
            events: Vec::new(),
        });
        self.peers.len() - 1
    }

    /// Sends the peer's HELLO and routes the handshake to its end.
    fn connect(&mut self, i: usize) {
        let hello = self.peers[i].core.hello();
        self.deliver(self.peers[i].addr, &hello);
    }

    /// Adds and connects a client; it must come out established.
    fn joined(&mut self, opts: ClientOptions) -> usize {
        let i = self.add(opts);
        self.connect(i);
        assert!(
            self.peers[i].core.is_established(),
            "{:?}",
            self.peers[i].events
        );
        self.peers[i].events.clear();
        i
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.peers[i].addr
    }

    fn id(&self, i: usize) -> String {
        self.peers[i].addr.to_string()
    }

    fn cid(&self, i: usize) -> ClientId {
        ClientId::new(self.peers[i].addr)
    }

    /// Delivers one datagram from `src` to the relay and routes until quiet.
    fn deliver(&mut self, src: SocketAddr, d: &[u8]) {
        self.deliver_all(src, [d.to_vec()]);
    }

    fn deliver_all(&mut self, src: SocketAddr, ds: impl IntoIterator<Item = Vec<u8>>) {
        let mut queue: VecDeque<_> = ds.into_iter().map(|d| (src, d)).collect();
        while let Some((src, d)) = queue.pop_front() {
            self.relay.handle_datagram(self.now, src, &d, &mut self.tx);
            self.route(&mut queue);
        }
    }

    /// Hands the relay's output to the peers; their replies join `queue`.
    fn route(&mut self, queue: &mut VecDeque<(SocketAddr, Vec<u8>)>) {
        for (dst, d) in self.tx.iter() {
            self.sent.push((dst, d.to_vec()));
            match self.peers.iter_mut().find(|p| p.addr == dst) {
                Some(p) => {
                    let mut out = Vec::new();
                    p.core
                        .handle_datagram(self.now, d, &mut out, &mut p.events)
                        .expect("client error");
                    queue.extend(out.into_iter().map(|o| (dst, o)));
                }
                None => self.stray.push((dst, d.to_vec())),
            }
        }
        self.tx.clear();
        self.events.extend(self.relay.drain_events());
    }

    /// Datagrams a peer produces (not delivered).
    fn outgoing(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut ClientCore, &mut Vec<Vec<u8>>) -> bool,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        assert!(f(&mut self.peers[i].core, &mut out), "peer {i} cannot send");
        out
    }

    fn send(&mut self, i: usize, body: &[u8]) {
        let ds = self.outgoing(i, |c, o| c.send(body, o));
        self.deliver_all(self.addr(i), ds);
    }

    fn keepalive(&mut self, i: usize) {
        let ds = self.outgoing(i, |c, o| c.keepalive(o));
        self.deliver_all(self.addr(i), ds);
    }

    /// Moves the clock by `d`, firing the relay's timers exactly at the
    /// deadlines `poll_timeout` reports on the way.
    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        let mut last_fired = None;
        while let Some(t) = self.relay.poll_timeout().filter(|&t| t <= target) {
            let t = t.max(self.now);
            assert_ne!(
                last_fired,
                Some(t),
                "poll_timeout stuck at {:?}",
                t - self.start
            );
            last_fired = Some(t);
            self.now = t;
            self.relay.handle_timeout(t, &mut self.tx);
            let mut queue = VecDeque::new();
            self.route(&mut queue);
            for (src, d) in queue {
                self.deliver(src, &d);
            }
        }
        self.now = target;
    }

    fn take_events(&mut self, i: usize) -> Vec<ClientEvent> {
        std::mem::take(&mut self.peers[i].events)
    }

    /// The (sender, body) pairs a peer received, taking its events.
    fn messages(&mut self, i: usize) -> Vec<(String, Vec<u8>)> {
        self.take_events(i)
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::Message { sender, body } => Some((sender, body)),
                _ => None,
            })
            .collect()
    }

    /// Takes the stray datagrams sent to `dst`.
    fn take_stray(&mut self, dst: SocketAddr) -> Vec<Vec<u8>> {
        let (mine, rest) = std::mem::take(&mut self.stray)
            .into_iter()
            .partition(|(a, _)| *a == dst);
        self.stray = rest;
        mine.into_iter().map(|(_, d)| d).collect()
    }

    /// Sends a HELLO from `src`; returns the SERVER_KEY DER and the COOKIE.
    fn hello_from(&mut self, src: SocketAddr) -> (Vec<u8>, Vec<u8>) {
        self.take_stray(src);
        let hello = ClientCore::new(ClientOptions::default()).hello();
        self.deliver(src, &hello);
        let replies = self.take_stray(src);
        assert_eq!(replies.len(), 1, "one SERVER_KEY+COOKIE reply");
        assert!(replies[0].len() <= 3 * hello.len(), "anti-amplification");
        let tlvs = parse(&replies[0]);
        assert_eq!(kinds(&replies[0]), [outer::SERVER_KEY, outer::COOKIE]);
        (tlvs[0].1.clone(), tlvs[1].1.clone())
    }

    /// A complete hand-made handshake from `src`.
    fn manual(&mut self, src: SocketAddr, access_token: &[u8]) -> Manual {
        let (der, cookie) = self.hello_from(src);
        let key = Fernet::generate_key();
        let mut plain = key.clone().into_bytes();
        plain.extend_from_slice(access_token);
        self.deliver(src, &session_key(&der, Some(&cookie), &plain));
        let m = Manual {
            addr: src,
            fernet: Fernet::new(&key).unwrap(),
            seq: 0,
        };
        let replies = self.take_stray(src);
        assert_eq!(replies.len(), 1, "one WELCOME");
        let plain = m.open(&replies[0], outer::WELCOME);
        let w = Inner::parse(&plain).unwrap();
        assert_eq!(w.seq, 1, "WELCOME starts the server's SEQ space");
        assert_eq!(w.client_id, Some(src.to_string().as_bytes()));
        m
    }
}

/// A client whose handshake and tokens are built by hand.
struct Manual {
    addr: SocketAddr,
    fernet: Fernet,
    seq: u64,
}

impl Manual {
    /// An outer `kind` datagram carrying `plain` sealed under this key.
    fn datagram(&self, kind: u16, plain: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        tlv::put(&mut d, kind, self.fernet.encrypt(plain).as_bytes());
        d
    }

    /// A well-formed DATA with the next SEQ.
    fn data(&mut self, body: &[u8]) -> Vec<u8> {
        self.seq += 1;
        self.data_seq(self.seq, body)
    }

    fn data_seq(&self, seq: u64, body: &[u8]) -> Vec<u8> {
        let p = plain(&[(inner::SEQ, &seq.to_be_bytes()), (inner::BODY, body)]);
        self.datagram(outer::DATA, &p)
    }

    /// Decrypts a single-TLV datagram of type `kind` sent to this client.
    fn open(&self, d: &[u8], kind: u16) -> Vec<u8> {
        let tlvs = parse(d);
        assert_eq!(tlvs.len(), 1);
        assert_eq!(tlvs[0].0, kind);
        let token = std::str::from_utf8(&tlvs[0].1).unwrap();
        self.fernet.decrypt(token).expect("token under our key")
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn parse(d: &[u8]) -> Vec<(u16, Vec<u8>)> {
    Reader::new(d)
        .map(|t| t.map(|t| (t.kind, t.value.to_vec())))
        .collect::<Result<_, _>>()
        .expect("well-formed datagram")
}

fn kinds(d: &[u8]) -> Vec<u16> {
    parse(d).into_iter().map(|(k, _)| k).collect()
}

/// An inner (or outer) TLV stream.
fn plain(parts: &[(u16, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in parts {
        tlv::put(&mut v, *k, val);
    }
    v
}

/// COOKIE (if any) + SESSION_KEY with `plain` RSA-OAEP encrypted to `der`.
fn session_key(der: &[u8], cookie: Option<&[u8]>, plain: &[u8]) -> Vec<u8> {
    let public = PublicKey::from_public_key_der(der).unwrap();
    let ct = public.oaep_encrypt::<Sha256>(plain).unwrap();
    let mut d = Vec::new();
    if let Some(c) = cookie {
        tlv::put(&mut d, outer::COOKIE, c);
    }
    tlv::put(&mut d, outer::SESSION_KEY, &ct);
    d
}

/// Inputs dropped for any of `causes`.
fn dropped(s: &Stats, causes: &[Drop]) -> u64 {
    causes.iter().map(|&d| s.dropped(d)).sum()
}

/// Handshakes refused with REJECT 2.
const AUTH_FAILED: [Drop; 3] = [Drop::RsaDecrypt, Drop::BadFernetKey, Drop::BadAccessToken];

/// Messages dropped by reassembly for `r`.
fn reassembly(s: &Stats, r: DropReason) -> u64 {
    s.dropped(Drop::Reassembly(r))
}

fn reject(r: RejectReason) -> Vec<u8> {
    vec![0, 9, 0, 1, r as u8]
}

fn left(id: &str, reason: LeaveReason) -> ClientEvent {
    ClientEvent::PeerLeft {
        id: id.into(),
        reason: Some(reason),
    }
}

/// Deterministic test bytes.
fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn handshake_welcome_and_peer_joined() {
    let mut net = Net::new(Config::default());
    let a = net.add(ClientOptions::default());
    let hello = net.peers[a].core.hello();
    assert_eq!(hello.len(), MIN_HELLO_LEN);
    net.deliver(net.addr(a), &hello);

    let (dst, reply) = &net.sent[0];
    assert_eq!(*dst, net.addr(a));
    assert!(reply.len() <= 3 * hello.len(), "{} bytes", reply.len());
    assert_eq!(kinds(reply), [outer::SERVER_KEY, outer::COOKIE]);
    assert_eq!(parse(reply)[1].1.len(), 16);
    assert_eq!(kinds(&net.sent[1].1), [outer::WELCOME]);
    assert_eq!(
        net.take_events(a),
        [
            ClientEvent::ServerKey {
                fingerprint: net.relay.fingerprint()
            },
            ClientEvent::Welcome {
                id: "127.0.0.1:40001".into()
            },
        ]
    );
    assert_eq!(net.peers[a].core.id(), Some("127.0.0.1:40001"));
    assert_eq!(
        net.events,
        [Event::Joined {
            id: ClientId::new(addr(40001)),
            rekeyed: false
        }]
    );

    let b = net.joined(ClientOptions::default());
    assert_eq!(net.take_events(a), [ClientEvent::PeerJoined(net.id(b))]);
    let c = net.joined(ClientOptions::default());
    for i in [a, b] {
        assert_eq!(net.take_events(i), [ClientEvent::PeerJoined(net.id(c))]);
    }
    let s = net.stats();
    assert_eq!((s.hellos_answered, s.handshakes_completed), (3, 3));
    assert_eq!(s.dropped_total(), 0);
    assert_eq!(net.relay.client_count(), 3);
}

#[test]
fn short_or_wrong_version_hello_ignored() {
    let mut net = Net::new(Config::default());
    let src = addr(50001);
    let hello = |version: u8, len: usize| {
        let mut v = vec![0; len - tlv::HEADER_LEN];
        v[0] = version;
        plain(&[(outer::HELLO, &v)])
    };
    net.deliver(src, &hello(1, 255));
    assert!(net.sent.is_empty());
    assert_eq!(net.stats().dropped(Drop::ShortHello), 1);
    net.deliver(src, &hello(1, 4 + 1));
    net.deliver(src, &hello(2, 256));
    net.deliver(src, &hello(0, 256));
    // Long enough only thanks to padding outside the HELLO, which has no version byte.
    net.deliver(src, &plain(&[(outer::HELLO, b""), (0x7777, &[0; 248])]));
    assert!(net.sent.is_empty());
    let s = net.stats();
    let ignored = (s.dropped(Drop::ShortHello), s.dropped(Drop::BadVersion));
    assert_eq!((ignored, s.hellos_answered), ((2, 3), 0));
    assert_eq!(s.dropped(Drop::UnknownType), 1);

    net.deliver(src, &hello(1, 256));
    assert_eq!(net.sent.len(), 1);
    assert!(net.sent[0].1.len() <= 3 * 256);
    assert_eq!(net.stats().hellos_answered, 1);
}

#[test]
fn relays_to_every_other_client_once() {
    let mut net = Net::new(Config::default());
    let ids: Vec<usize> = (0..3)
        .map(|_| net.joined(ClientOptions::default()))
        .collect();
    for &i in &ids {
        net.take_events(i);
    }
    for &i in &ids {
        net.send(i, format!("from {i}").as_bytes());
    }
    for &i in &ids {
        let want: Vec<(String, Vec<u8>)> = ids
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| (net.id(j), format!("from {j}").into_bytes()))
            .collect();
        assert_eq!(net.messages(i), want, "receiver {i}");
    }
    let s = net.stats();
    assert_eq!((s.messages_relayed, s.deliveries), (3, 6));
    assert_eq!(s.dropped_total(), 0);
}

#[test]
fn anti_replay() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    let d: Vec<Vec<u8>> = (1..=3)
        .map(|n| net.outgoing(a, |c, o| c.send(format!("{n}").as_bytes(), o))[0].clone())
        .collect();
    net.deliver(net.addr(a), &d[0]);
    net.deliver(net.addr(a), &d[0]);
    assert_eq!(net.stats().dropped(Drop::Replay), 1);
    net.deliver(net.addr(a), &d[2]);
    net.deliver(net.addr(a), &d[1]);
    net.deliver(net.addr(a), &d[1]);
    let got: Vec<Vec<u8>> = net.messages(b).into_iter().map(|(_, m)| m).collect();
    assert_eq!(got, [b"1", b"3", b"2"]);
    let s = net.stats();
    assert_eq!(
        (s.dropped(Drop::Replay), s.messages_relayed, s.deliveries),
        (2, 3, 3)
    );

    // Older than the window (1024 here, ≥ 64 per the spec), and SEQ 0.
    let m = net.manual(addr(50001), b"");
    net.take_events(b);
    net.deliver(m.addr, &m.data_seq(5000, b"new"));
    net.deliver(m.addr, &m.data_seq(5000 - 1024, b"too old"));
    net.deliver(m.addr, &m.data_seq(0, b"zero"));
    net.deliver(m.addr, &m.data_seq(5000 - 1023, b"oldest in window"));
    let got: Vec<Vec<u8>> = net.messages(b).into_iter().map(|(_, m)| m).collect();
    assert_eq!(got, [&b"new"[..], b"oldest in window"]);
    assert_eq!(net.stats().dropped(Drop::Replay), 4);
}

#[test]
fn bad_tokens_malformed_and_unknown_types() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    let (aa, ba) = (net.addr(a), net.addr(b));

    // Not a token under the sender's key: random bytes, non-UTF-8, someone else's token.
    net.deliver(aa, &plain(&[(outer::DATA, &body(120, 7))]));
    net.deliver(aa, &plain(&[(outer::DATA, &[0xff, 0xfe, 0x80])]));
    let a_token = net.outgoing(a, |c, o| c.send(b"stolen", o)).remove(0);
    net.deliver(ba, &a_token);
    net.deliver(aa, &plain(&[(outer::KEEPALIVE, b"gAAAA")]));
    assert_eq!(net.stats().dropped(Drop::BadToken), 4);
    assert_eq!(net.stats().rejects_sent, 0);

    // Broken framing drops the whole datagram, before any decryption.
    let good = net.outgoing(a, |c, o| c.send(b"ok", o)).remove(0);
    let mut past_end = good.clone();
    past_end[3] = past_end[3].wrapping_add(1);
    net.deliver(aa, &past_end);
    for trail in 1..=3 {
        let mut d = good.clone();
        d.extend(std::iter::repeat_n(0, trail));
        net.deliver(aa, &d);
    }
    net.deliver(aa, &[0, 5, 0]);
    assert_eq!(net.stats().dropped(Drop::Framing), 5);
    assert!(net.messages(b).is_empty());
    // The intact datagram still works: the broken copies burnt no SEQ.
    net.deliver(aa, &good);
    assert_eq!(net.messages(b), [(net.id(a), b"ok".to_vec())]);

    // Unknown outer types (and server-to-client types) are skipped, the rest processed.
    let d = net.outgoing(a, |c, o| c.send(b"after junk", o)).remove(0);
    let mut mixed = plain(&[(0x7777, b"junk"), (outer::WELCOME, b"x")]);
    mixed.extend_from_slice(&d);
    mixed.extend(plain(&[(0x0f00, b""), (outer::REJECT, &[1])]));
    net.deliver(aa, &mixed);
    assert_eq!(net.messages(b), [(net.id(a), b"after junk".to_vec())]);
    let s = net.stats();
    let skipped = (
        s.dropped(Drop::UnknownType),
        s.dropped(Drop::ServerToClient),
    );
    assert_eq!(skipped, (2, 2));
    assert_eq!(
        (s.dropped(Drop::Framing), s.dropped(Drop::BadToken)),
        (5, 4)
    );
    assert_eq!(s.messages_relayed, 2);
    assert!(net.messages(a).is_empty(), "never echoed");
}

#[test]
fn strangers_get_one_rate_limited_reject() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let token = net.outgoing(a, |c, o| c.send(b"spoofed", o)).remove(0);
    let frag = plain(&[(outer::FRAGMENT, &[0, 0, 0, 9, 0, 0, 0, 3, 1, 2, 3, 4])]);
    let keepalive = plain(&[(outer::KEEPALIVE, &body(100, 1))]);
    let bye = plain(&[(outer::BYE, &body(100, 2))]);
    let mut all = token.clone();
    all.extend_from_slice(&keepalive);
    all.extend_from_slice(&frag);
    all.extend_from_slice(&bye);
    for (port, d) in (50001..).zip([&token, &keepalive, &bye, &frag, &all]) {
        net.deliver(addr(port), d);
        assert_eq!(net.take_stray(addr(port)), [[0, 9, 0, 1, 1]], "port {port}");
    }
    assert!(net.take_events(a).is_empty());
    assert_eq!(net.relay.reassembly_bytes(), 0);
    let s = net.stats();
    assert_eq!(
        (s.dropped(Drop::Stranger), s.rejects_sent, s.fragments_in),
        (5, 5, 0)
    );
    assert_eq!((s.messages_relayed, s.dropped_total()), (0, 5));

    // A flood from one source earns only a few REJECTs; other sources are unaffected.
    let flooder = addr(50100);
    for _ in 0..20 {
        net.deliver(flooder, &keepalive);
    }
    let n = net.take_stray(flooder).len() as u64;
    assert!((1..20).contains(&n), "{n} REJECTs for 20 datagrams");
    assert_eq!(net.stats().rejects_suppressed, 20 - n);
    net.deliver(addr(50101), &keepalive);
    assert_eq!(net.take_stray(addr(50101)).len(), 1);
    net.deliver(flooder, &keepalive);
    assert!(net.take_stray(flooder).is_empty());
    net.advance(SEC);
    net.deliver(flooder, &keepalive);
    assert_eq!(
        net.take_stray(flooder),
        [reject(RejectReason::UnknownSession)]
    );
    assert_eq!(net.stats().dropped(Drop::Stranger), 5 + 20 + 3);
    assert_eq!(net.stats().rejects_suppressed, 21 - n);
}

#[test]
fn cookie_checked_before_rsa() {
    // One RSA decryption in the budget: the bad cookies must not spend it.
    let mut net = Net::new(Config {
        rsa_rate: 1,
        reject_rate: 100,
        ..Config::default()
    });
    // On two hosts: one host's share of the budget would stop m2 first.
    let other = hosts_apart(&net, &[[127, 0, 0, 1]], 1)[0];
    let (m1, m2) = (addr(50001), at(other, 50002));
    let (der, cookie) = net.hello_from(m1);
    let (_, cookie2) = net.hello_from(m2);
    let key = Fernet::generate_key();
    let wrong = {
        let mut c = cookie.clone();
        c[0] ^= 1;
        c
    };
    for c in [
        Some(&wrong[..]),
        None,
        Some(&cookie[..15]),
        Some(&cookie2[..]),
    ] {
        net.deliver(m1, &session_key(&der, c, key.as_bytes()));
        assert_eq!(net.take_stray(m1), [reject(RejectReason::BadCookie)]);
    }
    // A garbage ciphertext with a bad cookie is refused for the cookie, not the RSA.
    net.deliver(m1, &plain(&[(outer::SESSION_KEY, &[7; 256])]));
    assert_eq!(net.take_stray(m1), [reject(RejectReason::BadCookie)]);
    let s = net.stats();
    assert_eq!(s.dropped(Drop::BadCookie), 5);
    assert_eq!(s.dropped_total(), 5);
    assert_eq!(net.relay.client_count(), 0);

    net.deliver(m1, &session_key(&der, Some(&cookie), key.as_bytes()));
    assert_eq!(kinds(&net.take_stray(m1)[0]), [outer::WELCOME]);
    // The budget really was one decryption.
    net.deliver(m2, &session_key(&der, Some(&cookie2), key.as_bytes()));
    assert!(net.take_stray(m2).is_empty());
    assert_eq!(net.stats().dropped(Drop::RsaBudget), 1);

    // Age: issued at t=0, a cookie works at 60 s and is stale after 120 s.
    let (m3, m4) = (addr(50003), addr(50004));
    let (_, c3) = net.hello_from(m3);
    let (_, c4) = net.hello_from(m4);
    net.advance(60 * SEC);
    let k4 = Fernet::generate_key();
    net.deliver(m4, &session_key(&der, Some(&c4), k4.as_bytes()));
    assert_eq!(kinds(&net.take_stray(m4)[0]), [outer::WELCOME]);
    net.advance(61 * SEC);
    net.deliver(m3, &session_key(&der, Some(&c3), key.as_bytes()));
    assert_eq!(net.take_stray(m3), [reject(RejectReason::BadCookie)]);
    let s = net.stats();
    assert_eq!(s.dropped(Drop::BadCookie), 6);
    assert_eq!((s.handshakes_completed, dropped(s, &AUTH_FAILED)), (2, 0));
}

#[test]
fn access_token_and_bad_session_keys() {
    let mut net = Net::new(Config {
        access_token: Some(b"sesame".to_vec()),
        ..Config::default()
    });
    let with = |t: Option<&[u8]>| ClientOptions {
        access_token: t.map(<[u8]>::to_vec),
        ..ClientOptions::default()
    };
    let a = net.joined(with(Some(&b"sesame"[..])));
    for t in [
        Some(&b"sesamE"[..]),
        None,
        Some(&b"sesame!"[..]),
        Some(&b"sesam"[..]),
    ] {
        let i = net.add(with(t));
        net.connect(i);
        assert!(!net.peers[i].core.is_established());
        assert_eq!(
            net.take_events(i).last(),
            Some(&ClientEvent::Rejected(RejectReason::AuthFailed)),
            "{t:?}"
        );
        assert_eq!(net.sent.last().unwrap().1, reject(RejectReason::AuthFailed));
    }
    assert!(net.take_events(a).is_empty(), "nobody else joined");

    // Not a Fernet key, or not decryptable at all.
    let m = addr(50001);
    let (der, cookie) = net.hello_from(m);
    let mut not_a_key = vec![b'!'; 44];
    not_a_key.extend_from_slice(b"sesame");
    net.deliver(m, &session_key(&der, Some(&cookie), &not_a_key));
    assert_eq!(net.take_stray(m), [reject(RejectReason::AuthFailed)]);
    let mut d = plain(&[(outer::COOKIE, &cookie)]);
    d.extend(plain(&[(outer::SESSION_KEY, &[7; 256])]));
    net.deliver(m, &d);
    assert_eq!(net.take_stray(m), [reject(RejectReason::AuthFailed)]);

    let s = net.stats();
    assert_eq!(s.dropped(Drop::BadAccessToken), 4);
    assert_eq!(s.dropped(Drop::BadFernetKey), 1);
    assert_eq!(s.dropped(Drop::RsaDecrypt), 1);
    assert_eq!((s.handshakes_completed, net.relay.client_count()), (1, 1));
    net.manual(addr(50002), b"sesame");
}

#[test]
fn server_full() {
    let mut net = Net::new(Config {
        max_clients: 2,
        ..Config::default()
    });
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    let c = net.add(ClientOptions::default());
    net.connect(c);
    assert_eq!(
        net.take_events(c).last(),
        Some(&ClientEvent::Rejected(RejectReason::ServerFull))
    );
    assert_eq!(net.sent.last().unwrap().1, [0, 9, 0, 1, 3]);
    assert_eq!(net.stats().dropped(Drop::ServerFull), 1);
    assert_eq!(net.relay.client_count(), 2);
    // A registered client may still re-handshake while the table is full.
    net.connect(a);
    assert!(net.peers[a].core.is_established());
    // Once someone leaves, there is room.
    let bye = net.outgoing(b, |c, o| c.bye(o));
    net.deliver_all(net.addr(b), bye);
    net.connect(c);
    assert!(net.peers[c].core.is_established());
    let s = net.stats();
    assert_eq!(
        (s.dropped(Drop::ServerFull), s.handshakes_completed),
        (1, 4)
    );
}

#[test]
fn handshake_rate_limit_per_source() {
    let mut net = Net::new(Config {
        handshake_rate: 1,
        handshake_burst: 2,
        ..Config::default()
    });
    // Two handshakes from one source (a join and a re-key) use the burst up.
    let a = net.joined(ClientOptions::default());
    net.connect(a);
    assert!(net.peers[a].core.is_established());
    net.take_events(a);
    let mark = net.sent.len();
    net.connect(a);
    assert!(!net.peers[a].core.is_established());
    assert!(matches!(
        &net.take_events(a)[..],
        [ClientEvent::ServerKey { .. }]
    ));
    assert_eq!(
        net.sent.len(),
        mark + 1,
        "SERVER_KEY only: no WELCOME, no REJECT"
    );
    assert_eq!(net.stats().dropped(Drop::RateLimitedAddr), 1);
    // Other sources have their own buckets (the project keys them by ip:port).
    net.joined(ClientOptions::default());
    net.add_at("127.0.0.2:40001".parse().unwrap(), ClientOptions::default());
    net.connect(2);
    assert!(net.peers[2].core.is_established());

    net.advance(SEC);
    net.connect(a);
    assert!(net.peers[a].core.is_established());
    let s = net.stats();
    assert_eq!(
        (s.dropped(Drop::RateLimitedAddr), s.handshakes_completed),
        (1, 5)
    );
}

#[test]
fn re_handshake_replaces_key_and_resets_seq() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.send(a, b"one");
    net.send(a, b"two");
    let stale = net.outgoing(a, |c, o| c.send(b"stale", o));
    net.take_events(a);
    net.take_events(b);
    net.events.clear();

    net.connect(a);
    assert!(matches!(
        &net.take_events(a)[..],
        [ClientEvent::ServerKey { .. }, ClientEvent::Welcome { id }] if *id == net.id(a)
    ));
    assert_eq!(
        net.events,
        [Event::Joined {
            id: net.cid(a),
            rekeyed: true
        }]
    );
    assert!(net.take_events(b).is_empty(), "no second PEER_JOINED");
    assert_eq!(net.relay.client_count(), 2);
    // The old key is gone; the new session starts again at SEQ 1.
    net.deliver_all(net.addr(a), stale);
    assert!(net.messages(b).is_empty());
    assert_eq!(net.stats().dropped(Drop::BadToken), 1);
    net.send(a, b"fresh");
    assert_eq!(net.messages(b), [(net.id(a), b"fresh".to_vec())]);

    // The same by hand, to see the SEQs: WELCOME has SEQ 1 and the next
    // token to us SEQ 2.
    let mut m = net.manual(addr(50001), b"");
    for _ in 0..3 {
        let d = m.data(b"old key");
        net.deliver(m.addr, &d);
    }
    let old = m.data(b"old key, late");
    let mut m2 = net.manual(m.addr, b"");
    net.deliver(m.addr, &old);
    assert_eq!(net.stats().dropped(Drop::BadToken), 2);
    net.deliver(m2.addr, &m2.data(b"new key"));
    net.send(b, b"to m");
    let to_m = net.take_stray(m.addr);
    assert_eq!(to_m.len(), 1);
    let p = m2.open(&to_m[0], outer::DATA);
    let msg = Inner::parse(&p).unwrap();
    assert_eq!((msg.seq, msg.body), (2, Some(&b"to m"[..])));
    let s = net.stats();
    let replays = dropped(s, &[Drop::Replay, Drop::ReplayedSessionKey]);
    assert_eq!((replays, s.handshakes_completed), (0, 5));
    let from_m: Vec<_> = net.messages(b).into_iter().map(|(_, m)| m).collect();
    assert_eq!(from_m.last().unwrap(), b"new key");
    assert_eq!(from_m.len(), 4);
}

#[test]
fn idle_clients_time_out() {
    let timeout = 2 * SEC;
    let mut net = Net::new(Config {
        client_timeout: timeout,
        ..Config::default()
    });
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    let c = net.joined(ClientOptions::default()); // sends only forged tokens
    net.take_events(a);
    net.take_events(b);
    let t0 = net.now;
    assert!(net.relay.poll_timeout().is_some_and(|t| t <= t0 + timeout));

    net.advance(SEC);
    net.keepalive(a);
    net.deliver(net.addr(c), &plain(&[(outer::KEEPALIVE, &body(100, 3))]));
    net.advance(timeout - SEC - MS);
    assert_eq!(net.relay.client_count(), 3);
    net.advance(MS);
    assert_eq!(net.relay.client_count(), 1, "removed at 2 s, not later");
    let mut got = net.take_events(a);
    got.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        got,
        [
            left(&net.id(b), LeaveReason::Timeout),
            left(&net.id(c), LeaveReason::Timeout)
        ]
    );
    assert_eq!(
        (
            net.stats().clients_timed_out,
            net.stats().dropped(Drop::BadToken)
        ),
        (2, 1)
    );

    // A keeps itself alive; the removed client is a stranger now.
    net.keepalive(a);
    for _ in 0..3 {
        net.advance(SEC);
        net.keepalive(a);
    }
    assert_eq!(net.relay.client_count(), 1);
    net.keepalive(b);
    assert_eq!(
        net.take_events(b).last(),
        Some(&ClientEvent::Rejected(RejectReason::UnknownSession))
    );
    assert_eq!(net.stats().dropped(Drop::Stranger), 1);

    // Then A falls silent: gone exactly one timeout after its last datagram.
    let last = net.now;
    assert!(net
        .relay
        .poll_timeout()
        .is_some_and(|t| t <= last + timeout));
    net.advance(timeout - MS);
    assert_eq!(net.relay.client_count(), 1);
    net.advance(MS);
    assert_eq!(net.relay.client_count(), 0);
    assert_eq!(
        net.events.last(),
        Some(&Event::Left {
            id: net.cid(a),
            reason: LeaveReason::Timeout
        })
    );
    assert_eq!(net.stats().clients_timed_out, 3);
}

#[test]
fn bye_kick_and_shutdown() {
    let mut net = Net::new(Config::default());
    let ids: Vec<usize> = (0..3)
        .map(|_| net.joined(ClientOptions::default()))
        .collect();
    let [a, b, c] = ids[..] else { unreachable!() };
    for i in [a, b] {
        net.take_events(i);
    }

    let bye = net.outgoing(a, |cl, o| cl.bye(o));
    net.deliver_all(net.addr(a), bye);
    for i in [b, c] {
        assert_eq!(net.take_events(i), [left(&net.id(a), LeaveReason::Bye)]);
    }
    assert!(net.take_events(a).is_empty());
    assert_eq!(net.stats().clients_left, 1);

    assert!(net.relay.kick(&net.cid(b), &mut net.tx));
    net.route(&mut VecDeque::new());
    assert_eq!(net.take_events(c), [left(&net.id(b), LeaveReason::Kicked)]);
    assert!(
        net.take_events(b).is_empty(),
        "the kicked client is not told"
    );
    net.keepalive(b);
    assert_eq!(
        net.take_events(b),
        [ClientEvent::Rejected(RejectReason::UnknownSession)]
    );
    assert!(!net.relay.kick(&ClientId::new(addr(1)), &mut net.tx));
    assert!(net.tx.is_empty());
    let s = net.stats();
    assert_eq!(
        (
            s.clients_kicked,
            s.dropped(Drop::Stranger),
            net.relay.client_count()
        ),
        (1, 1, 1)
    );
    assert_eq!(
        net.events[3..],
        [
            Event::Left {
                id: net.cid(a),
                reason: LeaveReason::Bye
            },
            Event::Left {
                id: net.cid(b),
                reason: LeaveReason::Kicked
            }
        ]
    );

    net.connect(a);
    net.connect(b);
    for i in [a, b, c] {
        net.take_events(i);
    }
    let late = net.outgoing(c, |cl, o| cl.send(b"anyone?", o));
    net.relay.shutdown(&mut net.tx);
    net.route(&mut VecDeque::new());
    for i in [a, b, c] {
        assert_eq!(
            net.take_events(i),
            [ClientEvent::ServerClosing],
            "client {i}"
        );
    }
    assert_eq!(net.relay.client_count(), 0);
    net.deliver_all(net.addr(c), late);
    assert_eq!(
        net.take_events(c),
        [ClientEvent::Rejected(RejectReason::UnknownSession)]
    );
}

#[test]
fn fragmentation() {
    let mut net = Net::new(Config {
        max_datagram: 1200,
        reassembly: ReassemblyLimits {
            max_message_bytes: 32 * 1024,
            ..ReassemblyLimits::default()
        },
        ..Config::default()
    });
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    let aa = net.addr(a);

    let big = body(20 * 1024, 1);
    let ds = net.outgoing(a, |c, o| c.send(&big, o));
    assert!(ds.len() > 20 && ds.iter().all(|d| d.len() <= 1200));
    let n = ds.len() as u64;
    let mark = net.sent.len();
    net.deliver_all(aa, ds);
    assert_eq!(net.messages(b), [(net.id(a), big)]);
    let out = &net.sent[mark..];
    assert!(out.len() > 20 && out.iter().all(|(dst, _)| *dst == net.addr(b)));
    let s = net.stats();
    assert_eq!(
        (s.fragments_in, s.reassembled, s.messages_relayed),
        (n, 1, 1)
    );
    assert_eq!(s.fragments_out, out.len() as u64);

    // Shuffled.
    let big2 = body(20 * 1024, 2);
    let mut ds = net.outgoing(a, |c, o| c.send(&big2, o));
    let mut x = 0x2545_f491_u64;
    for i in (1..ds.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ds.swap(i, (x % (i as u64 + 1)) as usize);
    }
    net.deliver_all(aa, ds);
    assert_eq!(net.messages(b), [(net.id(a), big2)]);

    // Each broken rule drops its message, frees its bytes and is counted.
    let header = |d: &[u8], at: usize| u16::from_be_bytes([d[at], d[at + 1]]);
    let tamper = |net: &mut Net, rule: DropReason, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut ds = net.outgoing(a, |c, o| c.send(&body(5000, 3), o));
        edit(&mut ds[1]);
        net.deliver_all(aa, ds[..2].to_vec());
        assert_eq!(reassembly(net.stats(), rule), 1, "{rule}");
        assert_eq!(net.relay.reassembly_bytes(), 0, "{rule}");
    };
    tamper(&mut net, DropReason::Duplicate, &|d| {
        d[8..10].copy_from_slice(&0u16.to_be_bytes())
    });
    tamper(&mut net, DropReason::IndexOutOfRange, &|d| {
        let count = header(d, 10);
        d[8..10].copy_from_slice(&count.to_be_bytes());
    });
    tamper(&mut net, DropReason::CountMismatch, &|d| {
        let count = header(d, 10);
        d[10..12].copy_from_slice(&(count + 1).to_be_bytes());
    });
    // Over the 32 KiB reassembly limit: dropped as soon as it cannot fit.
    let ds = net.outgoing(a, |c, o| c.send(&body(30 * 1024, 4), o));
    for d in ds {
        net.deliver(aa, &d);
        if reassembly(net.stats(), DropReason::TooLarge) == 1 {
            break;
        }
    }
    assert_eq!(reassembly(net.stats(), DropReason::TooLarge), 1);
    assert_eq!(net.relay.reassembly_bytes(), 0);
    assert!(net.messages(b).is_empty());
    // A fragment inside a reassembled message is refused, not recursed into.
    let inner_frag = net.outgoing(a, |c, o| c.send(&body(3000, 5), o)).remove(0);
    let mut nested = Vec::new();
    fragment::split(&inner_frag, 300, 77, |d| nested.push(d.to_vec()));
    net.deliver_all(aa, nested);
    assert_eq!(net.stats().dropped(Drop::NestedFragment), 1);
    assert_eq!(net.relay.reassembly_bytes(), 0);

    // The next message still works.
    let big3 = body(20 * 1024, 6);
    net.send(a, &big3);
    assert_eq!(net.messages(b), [(net.id(a), big3)]);

    // A partial message expires after the reassembly age, driven by poll_timeout.
    let ds = net.outgoing(a, |c, o| c.send(&body(5000, 7), o));
    net.deliver_all(aa, ds[..3].to_vec());
    assert!(net.relay.reassembly_bytes() > 0);
    assert_eq!(net.relay.clients(net.now)[0].partials, 1);
    let age = ReassemblyLimits::default().max_age;
    assert!(net.relay.poll_timeout().is_some_and(|t| t <= net.now + age));
    net.advance(age - MS);
    assert_eq!(reassembly(net.stats(), DropReason::Expired), 0);
    net.advance(MS);
    assert_eq!(reassembly(net.stats(), DropReason::Expired), 1);
    assert_eq!(net.relay.reassembly_bytes(), 0);
    assert!(net.messages(b).is_empty());

    assert!(net.sent.iter().all(|(_, d)| d.len() <= 1200));
    let s = net.stats();
    let all: u64 = DropReason::ALL.iter().map(|&r| reassembly(s, r)).sum();
    assert_eq!(all, 5);
    assert_eq!(s.messages_relayed, 3);
}

#[test]
fn inner_rules() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let m = net.manual(addr(50001), b"");
    net.take_events(a);
    let seq = |n: u64| n.to_be_bytes();
    let bad: [(u16, Vec<u8>, Drop); 8] = [
        (
            outer::DATA,
            plain(&[(inner::BODY, b"no seq")]),
            Drop::InnerBadField,
        ),
        (
            outer::DATA,
            plain(&[
                (inner::SEQ, &seq(1)),
                (inner::BODY, b"a"),
                (inner::BODY, b"b"),
            ]),
            Drop::InnerDuplicate,
        ),
        (
            outer::DATA,
            plain(&[
                (inner::SEQ, &seq(2)),
                (inner::SEQ, &seq(3)),
                (inner::BODY, b"x"),
            ]),
            Drop::InnerDuplicate,
        ),
        (
            outer::DATA,
            plain(&[(inner::SEQ, &[0, 0, 0, 4]), (inner::BODY, b"short seq")]),
            Drop::InnerBadField,
        ),
        (
            outer::DATA,
            {
                let mut p = plain(&[(inner::SEQ, &seq(5)), (inner::BODY, b"trailing")]);
                p.push(0);
                p
            },
            Drop::InnerFraming,
        ),
        (outer::DATA, plain(&[(inner::SEQ, &seq(6))]), Drop::NoBody),
        (
            outer::KEEPALIVE,
            plain(&[(inner::BODY, b"no seq")]),
            Drop::InnerBadField,
        ),
        (
            outer::BYE,
            plain(&[(inner::SEQ, &seq(7)), (inner::SEQ, &seq(8))]),
            Drop::InnerDuplicate,
        ),
    ];
    for (i, (kind, p, why)) in bad.iter().enumerate() {
        let before = net.stats().dropped(*why);
        net.deliver(m.addr, &m.datagram(*kind, p));
        assert_eq!(net.stats().dropped(*why), before + 1, "case {i}");
        assert_eq!(net.stats().dropped_total(), i as u64 + 1, "case {i}");
    }
    assert!(net.take_events(a).is_empty());
    assert_eq!(
        net.relay.client_count(),
        2,
        "the malformed BYE removed nobody"
    );
    let s = net.stats();
    assert_eq!((s.messages_relayed, s.dropped_total()), (0, 8));

    // SEQs of refused plaintexts were not burnt (except 6, whose token was
    // valid but useless); unknown inner types are skipped.
    let ok = plain(&[
        (inner::SEQ, &seq(1)),
        (0x01ff, b"future"),
        (inner::BODY, b"fine"),
    ]);
    net.deliver(m.addr, &m.datagram(outer::DATA, &ok));
    net.deliver(m.addr, &m.data_seq(7, b"seven"));
    net.deliver(m.addr, &m.data_seq(6, b"six again"));
    let got: Vec<_> = net.messages(a).into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, [&b"fine"[..], b"seven"]);
    let s = net.stats();
    assert_eq!((s.messages_relayed, s.dropped(Drop::Replay)), (2, 1));
    assert_eq!(s.dropped_total(), 9);
}

#[test]
fn replayed_session_key_and_reflected_tokens_are_refused() {
    let mut net = Net::new(Config::default());
    let b = net.joined(ClientOptions::default());
    let src = addr(50002);
    let (der, cookie) = net.hello_from(src);
    let key = Fernet::generate_key();
    let sk = session_key(&der, Some(&cookie), key.as_bytes());
    net.deliver(src, &sk);
    let welcome = net.take_stray(src);
    assert_eq!(welcome.len(), 1, "WELCOME");
    let m = Manual {
        addr: src,
        fernet: Fernet::new(&key).unwrap(),
        seq: 0,
    };
    let old = m.data_seq(1, b"once");
    net.deliver(src, &old);
    net.take_events(b);

    // The same COOKIE+SESSION_KEY again from its address (a lost WELCOME,
    // or a replay): never a re-key, which would restart the SEQ window and
    // let `old` pass again. Within a second of the WELCOME, nothing at all.
    let before = net.stats().handshakes_completed;
    net.deliver(src, &sk);
    assert!(
        net.take_stray(src).is_empty(),
        "at most one WELCOME a second"
    );
    // A second later, the same WELCOME again, byte for byte.
    net.advance(SEC - MS);
    net.deliver(src, &sk);
    assert!(net.take_stray(src).is_empty());
    net.advance(MS);
    net.deliver(src, &sk);
    assert_eq!(net.take_stray(src), welcome);
    net.deliver(src, &sk);
    assert!(net.take_stray(src).is_empty());
    assert_eq!(net.stats().handshakes_completed, before);
    net.deliver(src, &old);
    assert!(net.messages(b).is_empty(), "old DATA is still a replay");
    let s = net.stats();
    assert_eq!(s.welcomes_resent, 1);
    assert_eq!(
        (
            s.dropped(Drop::WelcomeResendLimited),
            s.dropped(Drop::Replay)
        ),
        (3, 1)
    );
    // The session goes on where it was: SEQ 2 is fresh.
    net.deliver(src, &m.data_seq(2, b"twice"));
    assert_eq!(net.messages(b), [(src.to_string(), b"twice".to_vec())]);
    // From another address, under a cookie valid there: silence.
    let elsewhere = addr(50003);
    let (_, cookie2) = net.hello_from(elsewhere);
    let mut d = plain(&[(outer::COOKIE, &cookie2)]);
    d.extend_from_slice(&sk[sk.len() - 4 - 256..]);
    net.deliver(elsewhere, &d);
    assert!(net.take_stray(elsewhere).is_empty());
    assert_eq!(net.stats().dropped(Drop::ReplayedSessionKey), 1);

    // A relayed token sent back from its receiver's address is refused: it
    // carries SENDER_ID, which only the server sends.
    let peer_b = net.addr(b);
    net.deliver(src, &m.data_seq(3, b"to b"));
    let relayed = net
        .sent
        .iter()
        .rev()
        .find(|(dst, _)| *dst == peer_b)
        .unwrap()
        .1
        .clone();
    net.take_stray(src);
    net.deliver(peer_b, &relayed);
    assert_eq!(net.stats().dropped(Drop::Reflected), 1);
    assert!(net.take_stray(src).is_empty(), "not relayed as b's message");
}

/// COOKIE (valid for `src`) + SESSION_KEY of 256 garbage bytes: passes the
/// cookie check, costs an RSA decryption, fails it.
fn garbage_session_key(net: &mut Net, src: SocketAddr) -> Vec<u8> {
    let (_, cookie) = net.hello_from(src);
    plain(&[(outer::COOKIE, &cookie), (outer::SESSION_KEY, &[7; 256])])
}

fn at(host: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((host, port))
}

/// `n` hosts (10.9.k.1) whose per-IP buckets differ from each other and
/// from those of `taken`: the bucket table is hashed with a per-run key, so
/// fixed addresses could share a bucket.
fn hosts_apart(net: &Net, taken: &[[u8; 4]], n: usize) -> Vec<[u8; 4]> {
    let mut all = taken.to_vec();
    for k in 0..=u8::MAX {
        let h = [10, 9, k, 1];
        let apart = |c: &[u8; 4]| !net.relay.admission.hosts_collide(&at(*c, 1), &at(h, 1));
        if all.iter().all(apart) {
            all.push(h);
            if all.len() == taken.len() + n {
                return all.split_off(taken.len());
            }
        }
    }
    panic!("no {n} hosts apart");
}

#[test]
fn one_host_on_many_ports_gets_a_quarter_of_the_rsa_budget() {
    // Default limits: 200 RSA/s, so one host gets 50, each port 10 at once.
    let mut net = Net::new(Config::default());
    let [host, other] = hosts_apart(&net, &[], 2)[..] else {
        unreachable!()
    };
    let flood: Vec<(SocketAddr, Vec<u8>)> = (0..100)
        .map(|p| {
            let src = at(host, 2000 + p);
            (src, garbage_session_key(&mut net, src))
        })
        .collect();
    for _ in 0..10 {
        for (src, d) in &flood {
            net.deliver(*src, d);
        }
    }
    let s = net.stats();
    assert_eq!(s.dropped(Drop::RsaDecrypt), 50, "one host's share");
    // Ports whose per-address buckets collide are held by those first.
    let limited = dropped(s, &[Drop::RateLimitedIp, Drop::RateLimitedAddr]);
    assert_eq!(limited, 1000 - 50);
    // Another host is served at once; the flooding host's new port is not.
    let newcomer = net.add_at(at(other, 3000), ClientOptions::default());
    net.connect(newcomer);
    assert!(net.peers[newcomer].core.is_established());
    let same_host = net.add_at(at(host, 3000), ClientOptions::default());
    net.connect(same_host);
    assert!(!net.peers[same_host].core.is_established());
    let s = net.stats();
    let limited = dropped(s, &[Drop::RateLimitedIp, Drop::RateLimitedAddr]);
    assert_eq!(limited, 1000 - 50 + 1);
    // A second later its share has refilled.
    net.advance(SEC);
    net.connect(same_host);
    assert!(net.peers[same_host].core.is_established());
}

#[test]
fn under_load_the_reserve_goes_to_clients_that_re_key() {
    // 8 RSA/s: 2 per host, and the last 2 kept for registered addresses.
    let mut net = Net::new(Config {
        rsa_rate: 8,
        ..Config::default()
    });
    let hosts = hosts_apart(&net, &[], 5);
    let a = net.add_at(at(hosts[0], 1000), ClientOptions::default());
    net.connect(a);
    assert!(net.peers[a].core.is_established());
    // Three hosts flood: 2 + 2 + 1 decryptions, then only the reserve is left.
    for &host in &hosts[1..4] {
        for port in 0..2 {
            let src = at(host, 1000 + port);
            let d = garbage_session_key(&mut net, src);
            net.deliver(src, &d);
        }
    }
    let s = net.stats();
    assert_eq!(s.dropped(Drop::RsaDecrypt), 5);
    assert_eq!(s.dropped(Drop::UnderLoad), 1);
    let b = net.add_at(at(hosts[4], 1000), ClientOptions::default());
    net.connect(b);
    assert!(!net.peers[b].core.is_established(), "a newcomer waits");
    assert_eq!(net.stats().dropped(Drop::UnderLoad), 2);
    net.connect(a);
    assert!(net.peers[a].core.is_established(), "a session re-keys");
    assert_eq!(net.stats().handshakes_completed, 2);
    net.advance(SEC);
    net.connect(b);
    assert!(net.peers[b].core.is_established());
}

#[test]
fn sessions_per_host_are_capped() {
    let mut net = Net::new(Config {
        max_clients_per_ip: 2,
        ..Config::default()
    });
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    let c = net.add(ClientOptions::default());
    net.connect(c);
    assert_eq!(
        net.take_events(c).last(),
        Some(&ClientEvent::Rejected(RejectReason::ServerFull))
    );
    assert_eq!(net.stats().dropped(Drop::IpFull), 1);
    // Other hosts are not affected; registered addresses may re-key.
    let d = net.add_at(at([127, 0, 0, 2], 40001), ClientOptions::default());
    net.connect(d);
    assert!(net.peers[d].core.is_established());
    net.connect(a);
    assert!(net.peers[a].core.is_established());
    // A leave frees a place for that host.
    let bye = net.outgoing(b, |cl, o| cl.bye(o));
    net.deliver_all(net.addr(b), bye);
    net.connect(c);
    assert!(net.peers[c].core.is_established());
    assert_eq!(net.relay.client_count(), 3);
}

#[test]
fn a_captured_session_key_stays_refused_for_a_day() {
    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    let mut net = Net::new(Config::default());
    let src = addr(50002);
    let (der, cookie) = net.hello_from(src);
    let key = Fernet::generate_key();
    let captured = session_key(&der, Some(&cookie), key.as_bytes());
    net.deliver(src, &captured);
    assert_eq!(kinds(&net.take_stray(src)[0]), [outer::WELCOME]);
    let ciphertext = parse(&captured)[1].1.clone();
    // The captured ciphertext under a fresh cookie of the sender's address.
    let replay = |net: &mut Net, from: SocketAddr| {
        let (_, cookie) = net.hello_from(from);
        let d = plain(&[(outer::COOKIE, &cookie), (outer::SESSION_KEY, &ciphertext)]);
        net.deliver(from, &d);
        net.take_stray(from)
    };
    // Five minutes on (past what the relay used to remember), from another
    // address; and from its own, now that its session timed out.
    net.advance(5 * MIN);
    assert_eq!(net.relay.client_count(), 0);
    assert!(replay(&mut net, addr(50003)).is_empty());
    assert!(replay(&mut net, src).is_empty());
    // 23 hours on, still refused.
    net.advance(23 * HOUR);
    assert!(replay(&mut net, addr(50004)).is_empty());
    let s = net.stats();
    assert_eq!(
        (s.dropped(Drop::ReplayedSessionKey), s.handshakes_completed),
        (3, 1)
    );
    assert_eq!(net.relay.client_count(), 0);
    // A day after it was accepted it is forgotten: the residual v1 risk
    // PROTOCOL.md states.
    net.advance(HOUR);
    let answer = replay(&mut net, addr(50005));
    assert_eq!(kinds(&answer[0]), [outer::WELCOME]);
}

/// `n` HELLO TLVs of version 1 in one datagram, the first padded so that
/// the datagram is at least the minimum HELLO size.
fn hellos(n: usize) -> Vec<u8> {
    let pad = MIN_HELLO_LEN.saturating_sub(n * (tlv::HEADER_LEN + 1));
    let mut first = vec![0; 1 + pad];
    first[0] = crate::wire::VERSION;
    let mut d = plain(&[(outer::HELLO, &first)]);
    for _ in 1..n {
        tlv::put(&mut d, outer::HELLO, &[crate::wire::VERSION]);
    }
    d
}

/// As many TLVs of `kind` with `value` as fit in the largest UDP datagram.
fn many(kind: u16, value: &[u8]) -> Vec<u8> {
    const MAX_UDP: usize = 65_507;
    let n = MAX_UDP / (tlv::HEADER_LEN + value.len());
    let mut d = Vec::with_capacity(MAX_UDP);
    for _ in 0..n {
        tlv::put(&mut d, kind, value);
    }
    d
}

#[test]
fn many_hellos_in_one_datagram_get_one_answer() {
    let mut net = Net::new(Config::default());
    for (port, n) in (50001..).zip([1, 2, 51, 13_101]) {
        let src = addr(port);
        let d = hellos(n);
        net.deliver(src, &d);
        let answers = net.take_stray(src);
        assert_eq!(answers.len(), 1, "{n} HELLOs");
        assert_eq!(kinds(&answers[0]), [outer::SERVER_KEY, outer::COOKIE]);
        assert!(answers[0].len() <= 3 * d.len(), "{n} HELLOs");
    }
    assert_eq!(hellos(51).len(), 256);
    let s = net.stats();
    assert_eq!(s.hellos_answered, 4);
    assert_eq!(s.dropped(Drop::Repeated), 1 + 50 + 13_100);
}

#[test]
fn hello_and_session_key_mixes_get_one_answer_of_each_kind() {
    let mut net = Net::new(Config::default());
    // HELLO + a valid COOKIE + SESSION_KEY, in either order: one
    // SERVER_KEY+COOKIE and one WELCOME.
    for (port, session_key_first) in [(50001, false), (50002, true)] {
        let src = addr(port);
        let (der, cookie) = net.hello_from(src);
        let key = Fernet::generate_key();
        let sk = session_key(&der, Some(&cookie), key.as_bytes());
        let mut d = if session_key_first {
            sk.clone()
        } else {
            Vec::new()
        };
        d.extend_from_slice(&hellos(1));
        if !session_key_first {
            d.extend_from_slice(&sk);
        }
        net.deliver(src, &d);
        let answers: Vec<Vec<u16>> = net.take_stray(src).iter().map(|a| kinds(a)).collect();
        assert_eq!(
            answers,
            [vec![outer::SERVER_KEY, outer::COOKIE], vec![outer::WELCOME]]
        );
    }
    // Thousands of cookieless SESSION_KEYs and HELLOs, interleaved: one
    // SERVER_KEY+COOKIE and one REJECT 4, whatever the order.
    let src = addr(50003);
    let mut d = Vec::new();
    for _ in 0..2000 {
        tlv::put(&mut d, outer::SESSION_KEY, &[]);
        d.extend_from_slice(&hellos(1));
    }
    net.deliver(src, &d);
    let answers = net.take_stray(src);
    assert_eq!(answers.len(), 2);
    assert_eq!(kinds(&answers[0]), [outer::SERVER_KEY, outer::COOKIE]);
    assert_eq!(answers[1], reject(RejectReason::BadCookie));
    // Two good SESSION_KEYs in one datagram: only the first is tried.
    let src = addr(50004);
    let (der, cookie) = net.hello_from(src);
    let mut d = session_key(&der, Some(&cookie), Fernet::generate_key().as_bytes());
    d.extend_from_slice(&session_key(&der, None, Fernet::generate_key().as_bytes()));
    let before = net.stats().dropped(Drop::RsaDecrypt);
    net.deliver(src, &d);
    assert_eq!(net.take_stray(src).len(), 1, "one WELCOME");
    let s = net.stats();
    assert_eq!(
        (s.handshakes_completed, s.dropped(Drop::RsaDecrypt)),
        (3, before)
    );
}

#[test]
fn thousands_of_tiny_tokens_from_a_member_cost_a_few_decryptions() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    let aa = net.addr(a);
    for kind in [outer::DATA, outer::KEEPALIVE, outer::BYE] {
        let d = many(kind, &[]);
        assert_eq!(d.len(), 65_504);
        net.deliver(aa, &d);
    }
    let s = net.stats();
    let items = outer::MAX_ITEMS as u64;
    assert_eq!(s.dropped(Drop::BadToken), 3 * items);
    assert_eq!(s.dropped(Drop::TooManyItems), 3 * (16_376 - items));
    assert!(net.stray.is_empty() && net.messages(b).is_empty());
    // The session is untouched: a real message first, junk after it.
    let mut d = net.outgoing(a, |c, o| c.send(b"first", o)).remove(0);
    d.extend_from_slice(&many(outer::DATA, &[])[..60_000]);
    net.deliver(aa, &d);
    assert_eq!(net.messages(b), [(net.id(a), b"first".to_vec())]);
    // Reassembled from fragments, the same: one REJECT for it all.
    let payload = many(outer::SESSION_KEY, &[]);
    let mut frags = Vec::new();
    fragment::split(&payload, 1200, 7, |f| frags.push(f.to_vec()));
    let mark = net.sent.len();
    net.deliver_all(aa, frags);
    assert_eq!(net.stats().reassembled, 1);
    let to_a: Vec<_> = net.sent[mark..].iter().filter(|(d, _)| *d == aa).collect();
    assert_eq!(to_a.len(), 1);
    assert_eq!(to_a[0].1, reject(RejectReason::BadCookie));
    assert_eq!(net.relay.client_count(), 2);
}

#[test]
fn a_hello_in_a_reassembled_payload_shares_its_datagram_s_one_answer() {
    let mut net = Net::new(Config::default());
    let aa = net.manual(addr(50001), b"").addr;
    // HELLO + a one-fragment payload holding another HELLO.
    let mut frag = Vec::new();
    fragment::split(&hellos(1), 1200, 9, |f| frag = f.to_vec());
    let mut d = hellos(1);
    d.extend_from_slice(&frag);
    net.deliver(aa, &d);
    let answers = net.take_stray(aa);
    assert_eq!(answers.len(), 1);
    assert_eq!(kinds(&answers[0]), [outer::SERVER_KEY, outer::COOKIE]);
    assert_eq!(net.stats().dropped(Drop::HelloRepeated), 1);
    // A fragment nested in it is refused, whatever else the payload holds.
    let mut inner = hellos(1);
    inner.extend_from_slice(&frag);
    let mut nested = Vec::new();
    fragment::split(&inner, 1200, 10, |f| nested = f.to_vec());
    net.deliver(aa, &nested);
    assert_eq!(net.take_stray(aa).len(), 1, "its own HELLO is answered");
    assert_eq!(net.stats().dropped(Drop::NestedFragment), 1);
}
