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

pub mod config;
pub mod cookie;
pub mod stats;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use slab::Slab;

use crate::ratelimit::{KeyedLimiter, TokenBucket};
use crate::reassembly::{DropReason as ReassemblyDrop, Outcome, Reassembler};
use crate::relay::config::Config;
use crate::relay::stats::{Refusal, Stats};
use crate::session::key::ServerKey;
use crate::session::{Direction, OpenError, Session, UnixClock};
use crate::timer::TimerWheel;
use crate::wire::fragment;
use crate::wire::tlv::{self, Reader};
use crate::wire::{self, inner, outer, Inner, LeaveReason, RejectReason};
use crate::wire::{COOKIE_LEN, FERNET_KEY_LEN, MIN_HELLO_LEN};
use cookie::{ct_eq, CookieJar};

/// Timer wheel resolution.
const TICK: Duration = Duration::from_millis(50);
/// Timer wheel size: 512 × 50 ms covers the default timeouts in one turn.
const SLOTS: usize = 512;
/// Slots of the per-source rate-limit tables (fixed memory).
const LIMITER_SLOTS: usize = 4096;
/// Debug lines about dropped input per second, so a flood cannot flood the log.
const DROP_LOG_RATE: u32 = 10;

/// Datagrams to send, packed into one reusable buffer.
#[derive(Default)]
pub struct Transmits {
    buf: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
}

impl Transmits {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues one datagram.
    pub fn push(&mut self, dst: SocketAddr, datagram: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(datagram);
        self.items.push((dst, start, datagram.len()));
    }

    /// The queued datagrams in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (SocketAddr, &[u8])> + '_ {
        self.items
            .iter()
            .map(|&(dst, start, len)| (dst, &self.buf[start..start + len]))
    }

    /// Number of queued datagrams.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }
}

/// What the relay core reports to its owner, besides datagrams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client completed a handshake (`rekeyed` when it was registered already).
    Joined {
        /// The client's id.
        id: String,
        /// True for a re-handshake of a registered address.
        rekeyed: bool,
    },
    /// A client left.
    Left {
        /// The client's id.
        id: String,
        /// Why.
        reason: LeaveReason,
    },
}

/// A registered client.
struct Client {
    addr: SocketAddr,
    id: String,
    session: Session,
    /// Distinguishes registrations that reuse a slab slot, so stale timers
    /// and fragment buffers never touch a newer client.
    generation: u64,
    last_seen: Instant,
    msgs_in: u64,
    bytes_in: u64,
    msgs_out: u64,
    bytes_out: u64,
}

/// A client as the admin channel shows it.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// `ip:port`.
    pub id: String,
    /// Time since its last authenticated datagram.
    pub idle: Duration,
    /// Tokens received from it.
    pub msgs_in: u64,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Tokens sent to it.
    pub msgs_out: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// Partial fragmented messages held for it.
    pub partials: usize,
}

#[derive(Clone, Copy, Debug)]
enum Timer {
    Idle { slot: usize, generation: u64 },
    FragmentGc,
}

/// SESSION_KEY ciphertexts that registered a client, kept for as long as
/// the cookie that came with them can be valid, so that a captured
/// COOKIE + SESSION_KEY cannot be replayed to re-key an address (which
/// resets its SEQ windows and lets old tokens through again) or to register
/// it again after it left. Two generations of at least two cookie epochs
/// each; entries are 8 bytes of SHA-256, so memory is bounded by the RSA
/// budget times four epochs.
struct SeenSessionKeys {
    current: HashSet<u64>,
    previous: HashSet<u64>,
    since: Instant,
}

impl SeenSessionKeys {
    /// A cookie is valid for at most two epochs after it was issued.
    const GENERATION: Duration = Duration::from_secs(2 * cookie::EPOCH.as_secs());

    fn digest(ciphertext: &[u8]) -> u64 {
        use rsa::sha2::{Digest, Sha256};
        let d = Sha256::digest(ciphertext);
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_be_bytes(b)
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.since);
        if age >= Self::GENERATION {
            self.previous = std::mem::take(&mut self.current);
            if age >= 2 * Self::GENERATION {
                self.previous.clear();
            }
            self.since = now;
        }
    }

    fn contains(&mut self, now: Instant, ciphertext: &[u8]) -> bool {
        self.rotate(now);
        let d = Self::digest(ciphertext);
        self.current.contains(&d) || self.previous.contains(&d)
    }

    fn insert(&mut self, now: Instant, ciphertext: &[u8]) {
        self.rotate(now);
        self.current.insert(Self::digest(ciphertext));
    }
}

/// Builds outer datagrams and fragments those that are too large.
struct Emitter {
    max_datagram: usize,
    next_msg_id: u32,
    datagram: Vec<u8>,
    plain: Vec<u8>,
}

impl Emitter {
    /// Wraps `token` in an outer TLV of type `kind` and queues it for `dst`,
    /// fragmenting as needed. Returns the bytes queued, or None if the token
    /// cannot be framed (longer than a TLV can carry).
    fn token(
        &mut self,
        dst: SocketAddr,
        kind: u16,
        token: &str,
        out: &mut Transmits,
        stats: &mut Stats,
    ) -> Option<usize> {
        if token.len() > tlv::MAX_VALUE_LEN {
            stats.oversize += 1;
            return None;
        }
        self.datagram.clear();
        tlv::put(&mut self.datagram, kind, token.as_bytes());
        let len = self.datagram.len();
        if len <= self.max_datagram {
            out.push(dst, &self.datagram);
            stats.datagrams_out += 1;
            stats.bytes_out += len as u64;
            return Some(len);
        }
        let msg_id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        let mut sent = 0usize;
        let n = fragment::split(&self.datagram, self.max_datagram, msg_id, |d| {
            out.push(dst, d);
            sent += d.len();
        });
        match n {
            Some(n) => {
                stats.datagrams_out += n as u64;
                stats.fragments_out += n as u64;
                stats.bytes_out += sent as u64;
                Some(sent)
            }
            None => {
                stats.oversize += 1;
                None
            }
        }
    }
}

/// The relay: client table, handshake, relay, fragments and timers.
pub struct Relay {
    config: Config,
    key: ServerKey,
    cookies: CookieJar,
    seen_session_keys: SeenSessionKeys,
    clients: Slab<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    next_generation: u64,
    reassembler: Reassembler,
    timers: TimerWheel<Timer>,
    fired: Vec<Timer>,
    gc_at: Option<Instant>,
    handshake_limiter: KeyedLimiter,
    rsa_budget: TokenBucket,
    reject_limiter: KeyedLimiter,
    reject_budget: TokenBucket,
    drop_log: TokenBucket,
    emitter: Emitter,
    /// The part of a plaintext after SEQ, shared by all receivers of one fan-out.
    tail: Vec<u8>,
    events: Vec<Event>,
    stats: Stats,
    started: Instant,
    /// Seeded by the caller: every random value the relay uses.
    rng: StdRng,
    /// Fernet timestamps.
    clock: UnixClock,
}

/// Logs a dropped input at debug level, within the drop-log budget.
macro_rules! drop_debug {
    ($self:ident, $now:expr, $($arg:tt)+) => {
        if log::log_enabled!(log::Level::Debug) && $self.drop_log.try_take($now) {
            debug!($($arg)+);
        }
    };
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
        Relay {
            cookies: CookieJar::new(now, &mut rng),
            seen_session_keys: SeenSessionKeys {
                current: HashSet::new(),
                previous: HashSet::new(),
                since: now,
            },
            clients: Slab::new(),
            by_addr: HashMap::new(),
            next_generation: 1,
            reassembler: Reassembler::new(config.reassembly.clone()),
            timers: TimerWheel::new(now, TICK, SLOTS),
            fired: Vec::new(),
            gc_at: None,
            handshake_limiter: KeyedLimiter::new(
                LIMITER_SLOTS,
                config.handshake_rate,
                config.handshake_burst,
            ),
            rsa_budget: TokenBucket::new(config.rsa_rate, config.rsa_rate.max(1), now),
            reject_limiter: KeyedLimiter::new(
                LIMITER_SLOTS,
                config.reject_rate,
                config.reject_rate.max(1) * 2,
            ),
            reject_budget: TokenBucket::new(
                config.reject_global_rate,
                config.reject_global_rate,
                now,
            ),
            drop_log: TokenBucket::new(DROP_LOG_RATE, DROP_LOG_RATE, now),
            emitter: Emitter {
                max_datagram: config.max_datagram,
                next_msg_id: rng.random(),
                datagram: Vec::with_capacity(2048),
                plain: Vec::with_capacity(2048),
            },
            tail: Vec::with_capacity(2048),
            events: Vec::new(),
            stats: Stats::default(),
            started: now,
            rng,
            clock: UnixClock::new(now, unix_secs),
            config,
            key,
        }
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
        self.clock.advance(now);
        self.rotate_cookies(now);
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(now, &mut fired);
        for t in fired.drain(..) {
            match t {
                Timer::Idle { slot, generation } => self.check_idle(now, slot, generation, out),
                Timer::FragmentGc => {
                    self.gc_at = None;
                    let n = self.reassembler.expire(now);
                    if n > 0 {
                        self.stats
                            .reassembly_drop(ReassemblyDrop::Expired, n as u64);
                        drop_debug!(self, now, "reassembly: {n} stale partial messages dropped");
                    }
                    self.schedule_gc();
                }
            }
        }
        self.fired = fired;
    }

    fn check_idle(&mut self, now: Instant, slot: usize, generation: u64, out: &mut Transmits) {
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
            self.remove(slot, LeaveReason::Timeout, out);
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
        self.clock.advance(now);
        self.rotate_cookies(now);
        self.handle_payload(now, src, data, false, out);
    }

    fn handle_payload(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
        reassembled: bool,
        out: &mut Transmits,
    ) {
        if tlv::validate(data).is_err() {
            self.stats.malformed += 1;
            drop_debug!(
                self,
                now,
                "malformed datagram ({} bytes) from {src}",
                data.len()
            );
            return;
        }
        let mut stranger_rejected = false;
        for t in Reader::new(data).flatten() {
            match t.kind {
                outer::HELLO => self.handle_hello(now, src, t.value, data.len(), out),
                outer::SESSION_KEY => {
                    let cookie = Reader::new(data)
                        .flatten()
                        .find(|c| c.kind == outer::COOKIE);
                    self.handle_session_key(now, src, cookie.map(|c| c.value), t.value, out);
                }
                outer::COOKIE => {} // read together with SESSION_KEY
                outer::DATA | outer::KEEPALIVE | outer::BYE | outer::FRAGMENT => {
                    let Some(&slot) = self.by_addr.get(&src) else {
                        if !stranger_rejected {
                            stranger_rejected = true;
                            self.stats.strangers += 1;
                            drop_debug!(self, now, "datagram from unregistered {src}");
                            self.reject(now, src, RejectReason::UnknownSession, out);
                        }
                        continue;
                    };
                    if t.kind == outer::FRAGMENT {
                        if reassembled {
                            // A fragment inside a reassembled message would let one message recurse.
                            self.stats.malformed += 1;
                            continue;
                        }
                        self.handle_fragment(now, src, slot, t.value, out);
                    } else if self
                        .handle_token(now, slot, t.kind, t.value, out)
                        .is_break()
                    {
                        return; // the client left: the rest of the datagram has no session
                    }
                }
                outer::SERVER_KEY | outer::WELCOME | outer::REJECT => {
                    self.stats.unknown_types += 1; // server-to-client types are not for us
                }
                _ => self.stats.unknown_types += 1,
            }
        }
    }

    fn handle_hello(
        &mut self,
        now: Instant,
        src: SocketAddr,
        value: &[u8],
        datagram_len: usize,
        out: &mut Transmits,
    ) {
        if datagram_len < MIN_HELLO_LEN || value.first() != Some(&wire::VERSION) {
            self.stats.hellos_ignored += 1;
            drop_debug!(self, now, "HELLO from {src} ignored ({datagram_len} bytes)");
            return;
        }
        let d = &mut self.emitter.datagram;
        d.clear();
        tlv::put(d, outer::SERVER_KEY, self.key.public_der());
        tlv::put(d, outer::COOKIE, &self.cookies.issue(src));
        // Anti-amplification: never more than 3× what an unvalidated address sent.
        if d.len() > datagram_len.saturating_mul(3) {
            self.stats.hellos_ignored += 1;
            return;
        }
        out.push(src, d);
        self.stats.hellos_answered += 1;
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += d.len() as u64;
    }

    fn refuse(
        &mut self,
        now: Instant,
        src: SocketAddr,
        why: Refusal,
        reply: Option<RejectReason>,
        out: &mut Transmits,
    ) {
        self.stats.refuse(why);
        drop_debug!(self, now, "handshake from {src} refused: {}", why.name());
        if let Some(r) = reply {
            self.reject(now, src, r, out);
        }
    }

    fn handle_session_key(
        &mut self,
        now: Instant,
        src: SocketAddr,
        cookie: Option<&[u8]>,
        ciphertext: &[u8],
        out: &mut Transmits,
    ) {
        // Cheap checks first; RSA (~2 ms) only for validated, rate-limited sources.
        if !cookie.is_some_and(|c| c.len() == COOKIE_LEN && self.cookies.check(src, c)) {
            return self.refuse(
                now,
                src,
                Refusal::BadCookie,
                Some(RejectReason::BadCookie),
                out,
            );
        }
        // A SESSION_KEY is accepted once: a replay would re-key (both SEQ
        // windows restart, so old tokens pass again) or re-register a client
        // that left. Silent, and before RSA.
        if self.seen_session_keys.contains(now, ciphertext) {
            self.stats.replays += 1;
            drop_debug!(self, now, "SESSION_KEY from {src} replayed");
            return;
        }
        if !self.handshake_limiter.try_take(now, &src) {
            return self.refuse(now, src, Refusal::RateLimited, None, out);
        }
        let existing = self.by_addr.get(&src).copied();
        if existing.is_none() && self.clients.len() >= self.config.max_clients {
            return self.refuse(
                now,
                src,
                Refusal::ServerFull,
                Some(RejectReason::ServerFull),
                out,
            );
        }
        if !self.rsa_budget.try_take(now) {
            return self.refuse(now, src, Refusal::RsaBudget, None, out);
        }
        let Some(plain) = self.key.decrypt(&mut self.rng, ciphertext) else {
            return self.refuse(
                now,
                src,
                Refusal::AuthFailed,
                Some(RejectReason::AuthFailed),
                out,
            );
        };
        let session = plain
            .get(..FERNET_KEY_LEN)
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(Session::new);
        let token = plain.get(FERNET_KEY_LEN..).unwrap_or_default();
        let token_ok = match &self.config.access_token {
            Some(want) => ct_eq(want, token),
            None => true,
        };
        let (Some(session), true) = (session, token_ok) else {
            return self.refuse(
                now,
                src,
                Refusal::AuthFailed,
                Some(RejectReason::AuthFailed),
                out,
            );
        };
        self.seen_session_keys.insert(now, ciphertext);
        self.register(now, src, session, existing, out);
    }

    fn register(
        &mut self,
        now: Instant,
        src: SocketAddr,
        session: Session,
        existing: Option<usize>,
        out: &mut Transmits,
    ) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let (slot, rekeyed) = match existing {
            Some(slot) => {
                let c = &mut self.clients[slot];
                self.reassembler.remove_owner(c.generation);
                c.session = session;
                c.generation = generation;
                c.last_seen = now;
                (slot, true)
            }
            None => {
                let slot = self.clients.insert(Client {
                    addr: src,
                    id: src.to_string(),
                    session,
                    generation,
                    last_seen: now,
                    msgs_in: 0,
                    bytes_in: 0,
                    msgs_out: 0,
                    bytes_out: 0,
                });
                self.by_addr.insert(src, slot);
                (slot, false)
            }
        };
        self.timers.insert(
            now + self.config.client_timeout,
            Timer::Idle { slot, generation },
        );
        self.stats.handshakes_completed += 1;
        let c = &mut self.clients[slot];
        let Emitter { plain, .. } = &mut self.emitter;
        let (unix_secs, iv) = (self.clock.unix_secs(), self.rng.random());
        let token = c.session.seal(unix_secs, iv, plain, |p| {
            tlv::put(p, inner::CLIENT_ID, c.id.as_bytes())
        });
        let id = c.id.clone();
        if let Some(n) = self
            .emitter
            .token(src, outer::WELCOME, &token, out, &mut self.stats)
        {
            let c = &mut self.clients[slot];
            c.msgs_out += 1;
            c.bytes_out += n as u64;
        }
        info!(
            "client {id} {}",
            if rekeyed { "re-keyed" } else { "joined" }
        );
        if !rekeyed {
            self.tail.clear();
            tlv::put(&mut self.tail, inner::PEER_JOINED, id.as_bytes());
            self.fan_out(Some(slot), outer::DATA, out);
        }
        self.events.push(Event::Joined { id, rekeyed });
    }

    fn handle_token(
        &mut self,
        now: Instant,
        slot: usize,
        kind: u16,
        token: &[u8],
        out: &mut Transmits,
    ) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow::{Break, Continue};
        let c = &mut self.clients[slot];
        let plain = match c.session.open(token, Direction::ToServer) {
            Ok(p) => p,
            Err(e) => {
                match e {
                    OpenError::BadToken => self.stats.bad_tokens += 1,
                    OpenError::Malformed(_) => self.stats.malformed += 1,
                    OpenError::Replay | OpenError::Reflected => self.stats.replays += 1,
                }
                let id = &self.clients[slot].id;
                drop_debug!(self, now, "token from {id} dropped: {e:?}");
                return Continue(());
            }
        };
        c.last_seen = now;
        c.msgs_in += 1;
        c.bytes_in += token.len() as u64;
        match kind {
            outer::DATA => {
                let Ok(Inner {
                    body: Some(body), ..
                }) = Inner::parse(&plain)
                else {
                    self.stats.malformed += 1;
                    return Continue(());
                };
                self.tail.clear();
                tlv::put(&mut self.tail, inner::SENDER_ID, c.id.as_bytes());
                if body.len() + self.tail.len() + tlv::HEADER_LEN > tlv::MAX_VALUE_LEN {
                    self.stats.oversize += 1;
                    return Continue(());
                }
                tlv::put(&mut self.tail, inner::BODY, body);
                self.stats.messages_relayed += 1;
                let n = self.fan_out(Some(slot), outer::DATA, out);
                self.stats.deliveries += n as u64;
                Continue(())
            }
            outer::BYE => {
                self.remove(slot, LeaveReason::Bye, out);
                Break(())
            }
            _ => Continue(()), // KEEPALIVE: last_seen is all it does
        }
    }

    fn handle_fragment(
        &mut self,
        now: Instant,
        src: SocketAddr,
        slot: usize,
        value: &[u8],
        out: &mut Transmits,
    ) {
        let Some(frag) = fragment::parse_fragment(value) else {
            self.stats.malformed += 1;
            return;
        };
        self.stats.fragments_in += 1;
        let owner = self.clients[slot].generation;
        let outcome = self.reassembler.insert(now, owner, &frag);
        for (r, n) in self.reassembler.take_evictions() {
            self.stats.reassembly_drop(r, n);
        }
        match outcome {
            Outcome::Incomplete => self.schedule_gc(),
            Outcome::Dropped(r) => {
                self.stats.reassembly_drop(r, 1);
                drop_debug!(self, now, "fragment from {src} dropped: {}", r.name());
            }
            Outcome::Complete(payload) => {
                self.stats.reassembled += 1;
                self.handle_payload(now, src, &payload, true, out);
            }
        }
    }

    /// Seals `self.tail` (after a fresh SEQ) for every client but `skip`
    /// and queues it as an outer `kind`. Returns how many were queued.
    fn fan_out(&mut self, skip: Option<usize>, kind: u16, out: &mut Transmits) -> usize {
        let mut n = 0;
        let Relay {
            clients,
            emitter,
            tail,
            stats,
            rng,
            clock,
            ..
        } = self;
        for (slot, c) in clients.iter_mut() {
            if Some(slot) == skip {
                continue;
            }
            let token = c
                .session
                .seal(clock.unix_secs(), rng.random(), &mut emitter.plain, |p| {
                    p.extend_from_slice(tail)
                });
            if let Some(bytes) = emitter.token(c.addr, kind, &token, out, stats) {
                c.msgs_out += 1;
                c.bytes_out += bytes as u64;
                n += 1;
            }
        }
        n
    }

    fn reject(&mut self, now: Instant, dst: SocketAddr, reason: RejectReason, out: &mut Transmits) {
        // Both limits: per source so one address cannot farm REJECTs, and
        // global so many spoofed sources cannot turn us into a reflector.
        if self.reject_limiter.try_take(now, &dst) && self.reject_budget.try_take(now) {
            out.push(dst, &wire::reject_datagram(reason));
            self.stats.rejects_sent += 1;
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += 5;
        } else {
            self.stats.rejects_suppressed += 1;
        }
    }

    fn remove(&mut self, slot: usize, reason: LeaveReason, out: &mut Transmits) {
        let c = self.clients.remove(slot);
        self.by_addr.remove(&c.addr);
        self.reassembler.remove_owner(c.generation);
        match reason {
            LeaveReason::Bye => self.stats.clients_left += 1,
            LeaveReason::Timeout => self.stats.clients_timed_out += 1,
            LeaveReason::Kicked => self.stats.clients_kicked += 1,
            LeaveReason::Shutdown => {}
        }
        info!("client {} left ({})", c.id, reason.name());
        self.tail.clear();
        tlv::put(&mut self.tail, inner::PEER_LEFT, c.id.as_bytes());
        tlv::put_u8(&mut self.tail, inner::REASON, reason as u8);
        self.fan_out(None, outer::DATA, out);
        self.events.push(Event::Left { id: c.id, reason });
    }

    /// Removes the client with this id (`ip:port`); the others get
    /// PEER_LEFT(kicked). False if no such client.
    pub fn kick(&mut self, id: &str, out: &mut Transmits) -> bool {
        let Some(&slot) = id
            .parse::<SocketAddr>()
            .ok()
            .and_then(|a| self.by_addr.get(&a))
        else {
            return false;
        };
        self.remove(slot, LeaveReason::Kicked, out);
        true
    }

    /// Tells every client the server is closing and forgets them all.
    pub fn shutdown(&mut self, out: &mut Transmits) {
        self.tail.clear();
        tlv::put(&mut self.tail, inner::SERVER_CLOSING, &[]);
        self.fan_out(None, outer::DATA, out);
        let n = self.clients.len();
        for c in self.clients.drain() {
            self.reassembler.remove_owner(c.generation);
        }
        self.by_addr.clear();
        info!("server closing: {n} clients told");
    }
}
