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
//!
//! One scenario per test, grouped by what they exercise: `handshake`,
//! `fairness`, `replay`, `members` (tokens, inner rules, strangers),
//! `fragments`, `leaving`, `one_answer` (many TLVs in one datagram), and
//! protocol v2: `group` (the bound handshake, group fan-out, mixed groups)
//! and `group_keys` (rekeys, ratchets, key requests, probes), with the
//! hand-made v2 clients of `v2`.

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

mod fairness;
mod fragments;
mod group;
mod group_keys;
mod handshake;
mod leaving;
mod members;
mod one_answer;
mod remote;
mod replay;
mod v2;

/// The wall clock the relay and the clients are started with (any value
/// works: no Fernet timestamp is checked).
pub(super) const UNIX_START: u64 = 1_700_000_000;
/// Seeds of the cores' generators: fixed, so a failing test replays byte for byte.
pub(super) const RELAY_SEED: [u8; 32] = [0x5e; 32];

/// The seed of the `i`-th client core of a test.
fn client_seed(i: usize) -> [u8; 32] {
    let mut seed = [0xc1; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    seed
}

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
            relay: Relay::new(config, key.clone(), start, UNIX_START, RELAY_SEED),
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
        // These peers are served one by one: this harness delivers unicast
        // only (group mode has its own tests with hand-made v2 members).
        let opts = ClientOptions {
            group: false,
            ..opts
        };
        self.peers.push(Peer {
            addr,
            core: ClientCore::new(
                opts,
                self.now,
                UNIX_START + (self.now - self.start).as_secs(),
                client_seed(self.peers.len()),
            ),
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
        let hello =
            ClientCore::new(ClientOptions::default(), self.now, UNIX_START, [0; 32]).hello();
        self.deliver(src, &hello);
        let replies = self.take_stray(src);
        assert_eq!(replies.len(), 1, "one SERVER_KEY+COOKIE reply");
        assert!(replies[0].len() <= 3 * hello.len(), "anti-amplification");
        let tlvs = parse(&replies[0]);
        assert_eq!(
            kinds(&replies[0]),
            [outer::SERVER_KEY, outer::COOKIE, outer::VERSIONS]
        );
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
