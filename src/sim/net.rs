//! The one simulated network the unit tests and the fuzzers share: one
//! sans-IO [`Relay`], simulated [`ClientCore`]s at their own addresses, a
//! fake clock, the process-wide cached RSA key and fixed seeds.
//!
//! [`Net`] routes datagrams until the network is quiet; relay output for an
//! address that is no peer lands in [`Net::stray`], and every datagram in
//! either direction is kept in [`Net::trace`], so a test can read the bytes
//! back or compare two runs byte for byte.
//!
//! Time never comes from the OS after the start: `now` is a base `Instant`
//! plus durations. [`Net::advance`] moves it and fires the relay's timers
//! only at the instants `Relay::poll_timeout` names (like quinn-proto's test
//! `Pair`), so a timer that `poll_timeout` forgot would make a test fail.
//!
//! What is particular to one suite (the relay tests' hand-made clients, the
//! client tests' hand-carried datagrams, the fuzz program's op decoding and
//! invariant checks) stays with that suite, on top of this.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::client::{ClientCore, ClientEvent, ClientOptions};
use crate::relay::config::Config;
use crate::relay::stats::Stats;
use crate::relay::{ClientId, Event, Relay, Transmits};
use crate::session::key::ServerKey;

/// The wall clock the relay and the clients are started with (any value
/// works: no Fernet timestamp is checked).
pub const UNIX_START: u64 = 1_700_000_000;
/// Seeds of the cores' generators: fixed, so a failing test replays byte for byte.
pub const RELAY_SEED: [u8; 32] = [0x5e; 32];
/// The relay's own address in [`Net::trace`] (the relay core never learns it).
pub const RELAY_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    4000,
));

/// One RSA key per process: generating one takes a while in debug builds
/// (60–130 ms), and no test depends on which key it is.
pub fn server_key() -> &'static ServerKey {
    static KEY: OnceLock<ServerKey> = OnceLock::new();
    KEY.get_or_init(|| ServerKey::generate().expect("RSA key generation"))
}

/// The seed of the `i`-th client core of a test.
pub fn client_seed(i: usize) -> [u8; 32] {
    let mut seed = [0xc1; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    seed
}

/// `127.0.0.1:port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A simulated [`ClientCore`] and what it has reported.
pub struct Peer {
    /// Where the relay sees it.
    pub addr: SocketAddr,
    /// The client core under simulation.
    pub core: ClientCore,
    /// Its events, in order, until a test takes them.
    pub events: Vec<ClientEvent>,
}

/// One relay, its clients and the fake clock.
pub struct Net {
    /// The relay core under simulation.
    pub relay: Relay,
    /// The instant the network started.
    pub start: Instant,
    /// The fake clock.
    pub now: Instant,
    /// The simulated clients, by index.
    pub peers: Vec<Peer>,
    /// Every datagram the relay sent, in order.
    pub sent: Vec<(SocketAddr, Vec<u8>)>,
    /// Relay output for addresses that are no peer (strangers, manual clients).
    pub stray: Vec<(SocketAddr, Vec<u8>)>,
    /// Every datagram in order, both ways: (from, to, bytes), the relay
    /// being [`RELAY_ADDR`].
    pub trace: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// What the relay reported to its owner.
    pub events: Vec<Event>,
    /// The relay's output buffer.
    pub tx: Transmits,
}

impl Net {
    /// A relay with `config`, the shared key, [`UNIX_START`] and [`RELAY_SEED`].
    pub fn new(config: Config) -> Self {
        Self::seeded(config, RELAY_SEED)
    }

    /// A relay with `config`, the shared key, [`UNIX_START`] and `seed`.
    pub fn seeded(config: Config, seed: [u8; 32]) -> Self {
        let start = Instant::now();
        Net {
            relay: Relay::new(config, server_key().clone(), start, UNIX_START, seed),
            start,
            now: start,
            peers: Vec::new(),
            sent: Vec::new(),
            stray: Vec::new(),
            trace: Vec::new(),
            events: Vec::new(),
            tx: Transmits::new(),
        }
    }

    /// The relay's counters.
    pub fn stats(&self) -> &Stats {
        self.relay.stats()
    }

    /// Adds a client at `127.0.0.1:40001`, `:40002`, … without connecting it.
    pub fn add(&mut self, opts: ClientOptions) -> usize {
        let port = 40001 + self.peers.len() as u16;
        self.add_at(addr(port), opts)
    }

    /// Adds a client at `addr` without connecting it: its wall clock reads
    /// [`UNIX_START`] plus the time simulated so far, its seed is
    /// [`client_seed`] of its index.
    pub fn add_at(&mut self, addr: SocketAddr, opts: ClientOptions) -> usize {
        // These peers are served one by one: this harness delivers unicast
        // only (group mode has its own tests with hand-made v2 members).
        let opts = ClientOptions {
            group: false,
            ..opts
        };
        let core = ClientCore::new(
            opts,
            self.now,
            UNIX_START + (self.now - self.start).as_secs(),
            client_seed(self.peers.len()),
        );
        self.add_core(addr, core)
    }

    /// Adds a client core built by the caller (its own clock and seed) at
    /// `addr`, without connecting it.
    pub fn add_core(&mut self, addr: SocketAddr, core: ClientCore) -> usize {
        self.peers.push(Peer {
            addr,
            core,
            events: Vec::new(),
        });
        self.peers.len() - 1
    }

    /// Sends the peer's HELLO and routes the handshake to its end.
    pub fn connect(&mut self, i: usize) {
        let hello = self.peers[i].core.hello();
        self.deliver(self.peers[i].addr, &hello);
    }

    /// Adds and connects a client; it must come out established.
    pub fn joined(&mut self, opts: ClientOptions) -> usize {
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

    /// The address of peer `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.peers[i].addr
    }

    /// The id the relay gives peer `i`.
    pub fn id(&self, i: usize) -> String {
        self.peers[i].addr.to_string()
    }

    /// The relay's [`ClientId`] of peer `i`.
    pub fn cid(&self, i: usize) -> ClientId {
        ClientId::new(self.peers[i].addr)
    }

    /// Delivers one datagram from `src` to the relay and routes until quiet.
    pub fn deliver(&mut self, src: SocketAddr, d: &[u8]) {
        self.deliver_all(src, [d.to_vec()]);
    }

    /// Delivers datagrams from `src` to the relay and routes until quiet.
    pub fn deliver_all(&mut self, src: SocketAddr, ds: impl IntoIterator<Item = Vec<u8>>) {
        let mut queue: VecDeque<_> = ds.into_iter().map(|d| (src, d)).collect();
        while let Some((src, d)) = queue.pop_front() {
            self.trace.push((src, RELAY_ADDR, d.clone()));
            self.relay.handle_datagram(self.now, src, &d, &mut self.tx);
            self.route(&mut queue);
        }
    }

    /// Hands the relay's output to the peers; their replies join `queue`.
    pub fn route(&mut self, queue: &mut VecDeque<(SocketAddr, Vec<u8>)>) {
        for (dst, d) in self.tx.iter() {
            self.sent.push((dst, d.to_vec()));
            self.trace.push((RELAY_ADDR, dst, d.to_vec()));
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
    pub fn outgoing(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut ClientCore, &mut Vec<Vec<u8>>) -> bool,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        assert!(f(&mut self.peers[i].core, &mut out), "peer {i} cannot send");
        out
    }

    /// Peer `i` sends `body`, routed until quiet.
    pub fn send(&mut self, i: usize, body: &[u8]) {
        let ds = self.outgoing(i, |c, o| c.send(body, o));
        self.deliver_all(self.addr(i), ds);
    }

    /// Peer `i` sends a KEEPALIVE, routed until quiet.
    pub fn keepalive(&mut self, i: usize) {
        let ds = self.outgoing(i, |c, o| c.keepalive(o));
        self.deliver_all(self.addr(i), ds);
    }

    /// Moves the clock by `d`, firing the relay's timers exactly at the
    /// deadlines `poll_timeout` reports on the way.
    pub fn advance(&mut self, d: Duration) {
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

    /// Takes the events peer `i` reported.
    pub fn take_events(&mut self, i: usize) -> Vec<ClientEvent> {
        std::mem::take(&mut self.peers[i].events)
    }

    /// The (sender, body) pairs a peer received, taking its events.
    pub fn messages(&mut self, i: usize) -> Vec<(String, Vec<u8>)> {
        self.take_events(i)
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::Message { sender, body } => Some((sender, body)),
                _ => None,
            })
            .collect()
    }

    /// Takes the stray datagrams sent to `dst`.
    pub fn take_stray(&mut self, dst: SocketAddr) -> Vec<Vec<u8>> {
        let (mine, rest) = std::mem::take(&mut self.stray)
            .into_iter()
            .partition(|(a, _)| *a == dst);
        self.stray = rest;
        mine.into_iter().map(|(_, d)| d).collect()
    }
}
