//! The sans-IO relay core.
//!
//! [`Relay`] owns the client table, the handshake state and the timers, but
//! no socket, no clock and no OS randomness: the caller passes `now`, the
//! source address and the datagram, and gets back the datagrams to send in
//! a [`Transmits`]. Randomness (cookie secrets, message ids, Fernet IVs,
//! RSA blinding) comes from a generator seeded by the caller at
//! [`Relay::new`], and wall time (Fernet timestamps) from the Unix time the
//! caller gave there plus the `now`s since. The same seed and inputs give
//! the same datagrams, byte for byte, which is what lets unit tests and
//! fuzzers drive it with a fake clock and replay a failure exactly.
//!
//! # Calling it
//! Inputs: [`Relay::handle_datagram`] for each received datagram,
//! [`Relay::handle_timeout`] when [`Relay::poll_timeout`] has passed (early
//! or spurious calls are harmless), and the operator's [`Relay::kick`],
//! [`Relay::shutdown`] and [`Relay::set_access_token`]. After any input the
//! caller sends what the input queued in its [`Transmits`], takes the
//! [`Event`]s from [`Relay::drain_events`], and sleeps until
//! [`Relay::poll_timeout`] at the latest.
//!
//! # Inside
//! - `dispatch`: one datagram, parsed once, bounded in what it may cost
//!   and what it may be answered with.
//! - `handshake`: HELLO, SESSION_KEY and the bound SESSION_KEY2 (v2),
//!   cheap checks before RSA.
//! - `admission`: who may cost an RSA decryption, fairly between hosts.
//! - `seen`: the SESSION_KEYs that registered a session (no replays).
//! - `deliver`: tokens from members, fragments, fan-out, leaving.
//! - `group`: group mode (v2 §4): one signed GROUP_DATA for all members,
//!   rekeys on leaves, ratchets on joins, key requests and probes.
//! - `named`: named clients (v2 §5): clients-file reloads, kicks by
//!   name, the notice a client gets about its own session ending.
//! - [`bans`]: addresses, hosts and names kept out by the operator.
//! - `remote`: what members of other relays do (federation).
//! - `clients`: the client table.
//! - `transmit`: output framing and fragmenting.
//! - [`drop`]: why an input was dropped, counted in one place.
//! - [`cookie`], [`config`], [`stats`].

mod admission;
pub mod bans;
mod clients;
#[cfg(test)]
mod clock_tests;
pub mod config;
pub mod cookie;
mod deliver;
mod dispatch;
pub mod drop;
mod group;
mod handshake;
mod named;
mod remote;
mod seen;
pub mod stats;
#[cfg(test)]
mod tests;
mod transmit;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::info;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::ratelimit::{KeyedLimiter, TokenBucket};
use crate::reassembly::{DropReason as ReassemblyDrop, Reassembler};
use crate::relay::config::credentials::Credentials;
use crate::relay::config::Config;
use crate::relay::stats::Stats;
use crate::session::key::ServerKey;
use crate::session::UnixClock;
use crate::timer::TimerWheel;
use crate::wire::{inner, tlv, LeaveReason};
use admission::Admission;
use clients::ClientTable;
use cookie::CookieJar;
use dispatch::Turn;
use group::Group;
use seen::SeenSessionKeys;
use transmit::Emitter;

pub use clients::{ClientId, ClientIdError, ClientInfo};
pub use remote::RemoteInput;
pub use transmit::Transmits;

/// Timer wheel resolution.
const TICK: Duration = Duration::from_millis(50);
/// Timer wheel size: 512 × 50 ms covers the default timeouts in one turn.
const SLOTS: usize = 512;
/// Slots of each per-source rate-limit table (fixed memory).
const LIMITER_SLOTS: usize = 4096;
/// Debug lines about dropped input per second, so a flood cannot flood the log.
const DROP_LOG_RATE: u32 = 10;

/// What the relay core reports to its owner, besides datagrams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client completed a handshake (`rekeyed` when it was registered already).
    Joined {
        /// The client's id.
        id: ClientId,
        /// True for a re-handshake of a registered address.
        rekeyed: bool,
    },
    /// A client left.
    Left {
        /// The client's id.
        id: ClientId,
        /// Why.
        reason: LeaveReason,
    },
    /// A local member's message was relayed (only with `Config::federation`
    /// on): the shell publishes it to the other relays.
    Relayed {
        /// The sender's id as its SENDER_ID reads.
        sender: String,
        /// The application bytes.
        body: Vec<u8>,
    },
}

#[derive(Clone, Copy, Debug)]
enum Timer {
    Idle {
        slot: usize,
        generation: u64,
    },
    FragmentGc,
    /// A downlink probe waits for its turn (`group::PROBE_INTERVAL`).
    Probe,
}

/// The relay: client table, handshake, relay, fragments and timers.
pub struct Relay {
    config: Config,
    key: ServerKey,
    cookies: CookieJar,
    seen_session_keys: SeenSessionKeys,
    /// The SESSION_KEY2 ciphertexts seen, kept while their cookie lives.
    seen_bound: SeenSessionKeys,
    clients: ClientTable,
    group: Group,
    reassembler: Reassembler,
    timers: TimerWheel<Timer>,
    fired: Vec<Timer>,
    gc_at: Option<Instant>,
    admission: Admission,
    reject_limiter: KeyedLimiter,
    reject_budget: TokenBucket,
    drop_log: TokenBucket,
    emitter: Emitter,
    /// The part of a plaintext after SEQ, shared by all receivers of one fan-out.
    tail: Vec<u8>,
    /// The raw token being sealed for one receiver.
    sealed: Vec<u8>,
    events: Vec<Event>,
    stats: Stats,
    started: Instant,
    /// The time the latest input brought. Drop logging and the REJECT
    /// limits run on it, so a drop outside a datagram (during a kick or a
    /// shutdown) needs no time of its own.
    clock: Instant,
    /// Seeded by the caller: every random value the relay uses.
    rng: StdRng,
    /// Fernet timestamps (informational: no receiver checks them).
    unix: UnixClock,
    /// Whether the IPv4 and IPv6 downlinks reach an interface (the shell says).
    downlink_up: [bool; 2],
    /// SERVER_CLOSING is being sent: it goes to every client, even those
    /// that may not subscribe (v2 §5).
    closing: bool,
    /// What the operator keeps out (`ban`).
    bans: bans::Bans,
}

impl Relay {
    /// Creates a relay that starts at `now`, when the wall clock reads
    /// `unix_secs`. `rng_seed` seeds every random value the relay uses
    /// (cookie secrets, message ids, Fernet IVs, RSA blinding): the shell
    /// passes 32 bytes from the OS generator, tests a fixed value.
    pub fn new(
        config: Config,
        key: ServerKey,
        now: Instant,
        unix_secs: u64,
        rng_seed: [u8; 32],
    ) -> Self {
        let mut rng = StdRng::from_seed(rng_seed);
        let cookies = CookieJar::new(now, &mut rng);
        let next_msg_id = rng.random();
        let group = Group::new(&mut rng, config.downlinks.len(), now);
        let mut relay = Relay {
            cookies,
            seen_session_keys: SeenSessionKeys::new(now),
            seen_bound: SeenSessionKeys::bound(now),
            clients: ClientTable::new(),
            group,
            reassembler: Reassembler::new(config.reassembly.clone()),
            timers: TimerWheel::new(now, TICK, SLOTS),
            fired: Vec::new(),
            gc_at: None,
            admission: Admission::new(&config, now, [rng.random(), rng.random()]),
            reject_limiter: KeyedLimiter::new(
                LIMITER_SLOTS,
                config.reject_rate,
                config.reject_rate.max(1) * 2,
                rng.random(),
            ),
            reject_budget: TokenBucket::new(
                config.reject_global_rate,
                config.reject_global_rate,
                now,
            ),
            drop_log: TokenBucket::new(DROP_LOG_RATE, DROP_LOG_RATE, now),
            emitter: Emitter {
                max_datagram: config.max_datagram,
                next_msg_id,
                datagram: Vec::with_capacity(2048),
            },
            tail: Vec::with_capacity(2048),
            sealed: Vec::with_capacity(2048),
            events: Vec::new(),
            stats: Stats::default(),
            started: now,
            clock: now,
            downlink_up: [true; 2],
            closing: false,
            bans: bans::Bans::default(),
            rng,
            unix: UnixClock::new(now, unix_secs),
            config,
            key,
        };
        relay.stats.group_epoch = u64::from(relay.group.sender.epoch());
        relay
    }

    /// Input from the shell (a configuration reload): the limits that apply
    /// from now on: the idle timeout (armed timers re-arm from it), and the
    /// table sizes checked at each new handshake. Sessions over a lowered
    /// cap stay.
    pub fn set_limits(&mut self, client_timeout: Duration, max_clients: usize, per_ip: usize) {
        self.config.client_timeout = client_timeout;
        self.config.max_clients = max_clients;
        self.config.max_clients_per_ip = per_ip;
    }

    /// Input from the shell: whether each family's downlink (IPv4, IPv6)
    /// goes out on at least one interface now. A client of a family whose
    /// downlink reaches no interface is not granted group mode: it would
    /// hear nothing until its probes gave up. Both start true.
    pub fn set_downlink_up(&mut self, v4: bool, v6: bool) {
        self.downlink_up = [v4, v6];
    }

    /// Where GROUP_DATA goes (none with group mode off): the shell sends
    /// what is queued for each of these once per served interface.
    pub fn downlinks(&self) -> &[SocketAddr] {
        if self.config.group_mode {
            &self.config.downlinks
        } else {
            &[]
        }
    }

    /// The Ed25519 public key that signs this run's GROUP_DATA (made at
    /// start, never stored).
    pub fn group_signer(&self) -> [u8; 32] {
        self.group.sender.signer_public()
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Mutable counters, for the IO layer's own (send errors).
    pub fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// When the relay started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The server key's fingerprint.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint()
    }

    /// Replaces the access token (SIGHUP re-reads the token file).
    pub fn set_access_token(&mut self, token: Option<Vec<u8>>) {
        self.config.access_token = token;
    }

    /// The shared access token, if set.
    pub fn access_token(&self) -> Option<&[u8]> {
        self.config.access_token.as_deref()
    }

    /// The clients file's table, if one is loaded.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.config.credentials.as_deref()
    }

    /// Number of registered clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Bytes held by fragment reassembly.
    pub fn reassembly_bytes(&self) -> usize {
        self.reassembler.total_bytes()
    }

    /// A snapshot of every client, for the admin channel.
    pub fn clients(&self, now: Instant) -> Vec<ClientInfo> {
        self.clients
            .iter()
            .map(|(_, c)| ClientInfo {
                id: c.id.clone(),
                idle: now.saturating_duration_since(c.last_seen),
                msgs_in: c.msgs_in,
                bytes_in: c.bytes_in,
                msgs_out: c.msgs_out,
                bytes_out: c.bytes_out,
                partials: self.reassembler.owner_usage(c.generation).0,
                mode: c.mode(),
                perms: c.perms,
            })
            .collect()
    }

    /// Takes the events produced since the last call.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    /// The next time [`Relay::handle_timeout`] has work (possibly early).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let wheel = self.timers.next_deadline();
        let rotate = Some(self.cookies.next_rotation());
        wheel.into_iter().chain(rotate).min()
    }

    /// Runs the timers due at `now`. Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Transmits) {
        self.clock = now;
        self.unix.advance(now);
        self.rotate_cookies(now);
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(now, &mut fired);
        for t in fired.drain(..) {
            match t {
                Timer::Idle { slot, generation } => self.check_idle(now, slot, generation),
                Timer::FragmentGc => {
                    self.gc_at = None;
                    let n = self.reassembler.expire(now);
                    self.dropped(None, ReassemblyDrop::Expired.into(), n, out);
                    self.schedule_gc();
                }
                Timer::Probe => self.probe_due(now, out),
            }
        }
        self.fired = fired;
        // Timeouts of this turn share one rekey.
        self.settle(out);
    }

    fn check_idle(&mut self, now: Instant, slot: usize, generation: u64) {
        let Some(c) = self.clients.get(slot) else {
            return;
        };
        if c.generation != generation {
            return;
        }
        // Activity does not touch the wheel; the timer re-arms itself from
        // last_seen instead, so a busy client costs nothing per datagram.
        let deadline = c.last_seen + self.config.client_timeout;
        if deadline <= now {
            self.remove(slot, LeaveReason::Timeout);
        } else {
            self.timers
                .insert(deadline, Timer::Idle { slot, generation });
        }
    }

    fn schedule_gc(&mut self) {
        if let Some(at) = self.reassembler.next_expiry() {
            if self.gc_at.is_none_or(|g| at < g) {
                self.gc_at = Some(at);
                self.timers.insert(at, Timer::FragmentGc);
            }
        }
    }

    /// Rotates the cookie secret when its epoch is over; checked per
    /// datagram, so the common case is one comparison and no RNG handle.
    fn rotate_cookies(&mut self, now: Instant) {
        if now >= self.cookies.next_rotation() {
            self.cookies.rotate(now, &mut self.rng);
        }
    }

    /// Handles one datagram from `src`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
        out: &mut Transmits,
    ) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        self.clock = now;
        self.unix.advance(now);
        self.rotate_cookies(now);
        let mut turn = Turn::new(src);
        self.handle_payload(now, &mut turn, data, false, out);
        self.settle(out);
    }

    /// Removes the client with this id (`ip:port` or `NAME@ip:port`; a
    /// name must match); it and the others get PEER_LEFT(kicked). False if
    /// no such client.
    pub fn kick(&mut self, id: &ClientId, out: &mut Transmits) -> bool {
        let Some(slot) = self.clients.lookup(&id.addr()) else {
            return false;
        };
        let named = self.clients.get(slot).and_then(|c| c.id.name());
        if id.name().is_some() && id.name() != named {
            return false;
        }
        self.end_session(slot, LeaveReason::Kicked, out);
        self.settle(out);
        true
    }

    /// Tells every client the server is closing and forgets them all.
    pub fn shutdown(&mut self, out: &mut Transmits) {
        self.settle(out);
        self.tail.clear();
        tlv::put(&mut self.tail, inner::SERVER_CLOSING, &[]);
        self.closing = true;
        self.notify(None, out);
        self.closing = false;
        let n = self.clients.len();
        let reassembler = &mut self.reassembler;
        self.clients
            .clear(|c| reassembler.remove_owner(c.generation));
        self.group.clear();
        self.stats.members_group = 0;
        info!("server closing: {n} clients told");
    }
}
