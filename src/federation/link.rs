//! One relay's link to the federation: the sans-IO state machine of its
//! NATS connection and of what it knows about the other relays.
//!
//! [`Link`] owns no socket and reads no clock. Its inputs are the caller's
//! `now`, the bytes read from the NATS socket ([`Link::handle_read`]), the
//! socket closing ([`Link::handle_disconnected`]), timers
//! ([`Link::handle_timeout`]) and what the local relay publishes
//! (`publish_*`). Its outputs are bytes to write ([`Link::pending_output`]),
//! requests to connect or close ([`Link::poll_action`]) and events for the
//! relay ([`Link::poll_event`]).
//!
//! Connection: the seed servers plus the `connect_urls` the current server
//! lists in INFO, tried in turn; the first retry after losing a working
//! connection is immediate, then 100 ms doubling to at most 2 s. A
//! handshake (TCP, INFO, CONNECT + SUB + PING, PONG) that takes more than
//! 2 s is abandoned. Keepalive: server PINGs are answered; we PING every
//! 10 s and give up on the connection when two are unanswered.
//!
//! What the relay publishes is sealed at once (so it keeps its place in
//! the sequence) and written, or, while no server is up or the socket is
//! backed up, kept in a bounded buffer that drops its oldest entry when
//! full (counted) and is flushed, in order, once a server has answered the
//! handshake's PING (so after SUB).
//!
//! Membership: every announce period the link lists its relay's members
//! (as told by `publish_joined`/`publish_left`) in one announce round. A
//! receiver that gets a whole round knows exactly who is there, so a lost
//! leave is repaired within one period. A relay not heard from for three
//! periods is gone: its members leave with REASON 6 (unreachable).

use std::collections::{BTreeSet, VecDeque};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::federation::config::*;
use crate::federation::inbox::Inbox;
use crate::federation::json::{self, Auth, ServerInfo};
use crate::federation::members::{Book, LinkEvent, LinkStats, Remote, RemoteRelay};
use crate::federation::msg::{self, Kind, Members, Sealer};
use crate::federation::nats::{self, Decoder, ServerOp};
use crate::ratelimit::TokenBucket;
use crate::session::fernet::FernetKey;
use crate::session::UnixClock;
use crate::wire::tlv;

/// The one subscription id we use.
const SID: &str = "1";
/// Debug lines about drops per second.
const DROP_LOG_RATE: u32 = 10;

/// What the shell must do with the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Drop any current connection and connect to this server.
    Connect(SocketAddr),
    /// Drop the current connection (the link already knows).
    Close,
}

/// The connection as the admin channel shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Waiting before the next attempt.
    Waiting {
        /// When it is made.
        retry_at: Instant,
    },
    /// Connecting or handshaking with this server.
    Connecting {
        /// The server.
        server: SocketAddr,
    },
    /// Subscribed; messages flow.
    Connected {
        /// The server.
        server: SocketAddr,
    },
    /// Shut down ([`Link::shutdown`]). A link shut down while connected
    /// says `Connected` until the connection ends, so its last bytes go out.
    Closed,
}

enum Conn {
    /// Next attempt at `at`.
    Idle { at: Instant },
    /// Shut down: never connects again.
    Closed,
    /// Asked for a connection; `got_info` once CONNECT went out.
    Handshake {
        server: SocketAddr,
        deadline: Instant,
        got_info: bool,
    },
    /// Subscribed.
    Up {
        server: SocketAddr,
        next_ping: Instant,
        pings_out: u8,
        next_announce: Instant,
    },
}

/// The federation link of one relay.
pub struct Link {
    config: LinkConfig,
    servers: Vec<SocketAddr>,
    next_server: usize,
    conn: Conn,
    /// Failed attempts since the last working connection.
    attempts: u32,
    /// [`Link::shutdown`] was called.
    closing: bool,
    ever_up: bool,
    decoder: Decoder,
    /// Max payload of the current server.
    server_max_payload: usize,
    out: Vec<u8>,
    written: usize,
    queue: VecDeque<Vec<u8>>,
    queue_bytes: usize,
    actions: VecDeque<Action>,
    sealer: Sealer,
    inbox: Inbox<Remote>,
    book: Book,
    local: BTreeSet<String>,
    round: u32,
    scratch: Vec<u8>,
    rng: StdRng,
    clock: UnixClock,
    drop_log: TokenBucket,
}

impl Link {
    /// A link that starts at `now`, when the wall clock reads `unix_ms`
    /// (which also dates this run, so a restart is told apart), with every
    /// random value drawn from `rng_seed`. The first connection attempt is
    /// due at once ([`Link::handle_timeout`]).
    ///
    /// # Errors
    /// [`ConfigError`] for an unusable configuration.
    pub fn new(
        config: LinkConfig,
        key: FernetKey,
        now: Instant,
        unix_ms: u64,
        rng_seed: [u8; 32],
    ) -> Result<Self, ConfigError> {
        if config.servers.is_empty() {
            return Err(ConfigError::NoServers);
        }
        if !nats::valid_subject(&config.subject) {
            return Err(ConfigError::BadSubject(config.subject));
        }
        if !msg::valid_relay_name(&config.relay_name) {
            return Err(ConfigError::BadRelayName(config.relay_name));
        }
        if config.announce_period.is_zero() {
            return Err(ConfigError::BadPeriod);
        }
        let mut rng = StdRng::from_seed(rng_seed);
        let instance = rng.random();
        let mut servers = config.servers.clone();
        servers.truncate(MAX_SERVERS);
        Ok(Link {
            servers,
            next_server: 0,
            conn: Conn::Idle { at: now },
            attempts: 0,
            closing: false,
            ever_up: false,
            decoder: Decoder::new(config.max_payload),
            server_max_payload: config.max_payload,
            out: Vec::new(),
            written: 0,
            queue: VecDeque::new(),
            queue_bytes: 0,
            actions: VecDeque::new(),
            sealer: Sealer::new(key.clone(), &config.relay_name, instance, unix_ms),
            inbox: Inbox::new(key, &config.relay_name, config.max_relays),
            book: Book::new(config.max_remote_members),
            local: BTreeSet::new(),
            round: 0,
            scratch: Vec::with_capacity(2048),
            rng,
            clock: UnixClock::new(now, unix_ms / 1000),
            drop_log: TokenBucket::new(DROP_LOG_RATE, DROP_LOG_RATE, now),
            config,
        })
    }

    /// Counters since start.
    pub fn stats(&self) -> &LinkStats {
        &self.book.stats
    }

    /// Messages waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.queue.len()
    }

    /// The connection's state.
    pub fn state(&self) -> LinkState {
        match self.conn {
            Conn::Idle { at } => LinkState::Waiting { retry_at: at },
            Conn::Closed => LinkState::Closed,
            Conn::Handshake { server, .. } => LinkState::Connecting { server },
            Conn::Up { server, .. } => LinkState::Connected { server },
        }
    }

    /// The servers tried in turn (seeds, then those learned from INFO).
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The remote relays known, by name.
    pub fn remote_relays(&self, now: Instant) -> Vec<RemoteRelay> {
        let mut v: Vec<RemoteRelay> = self
            .inbox
            .origins()
            .map(|(name, o)| {
                let silent_for = now.saturating_duration_since(o.last_heard);
                RemoteRelay {
                    name: name.to_owned(),
                    members: o.data.members().len(),
                    silent_for,
                    alive: silent_for < self.config.announce_period * 2,
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every remote member, as `RELAY/ID`.
    pub fn remote_members(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inbox
            .origins()
            .flat_map(|(name, o)| o.data.members().iter().map(move |m| format!("{name}/{m}")))
            .collect();
        v.sort();
        v
    }

    /// At most `limit` remote members as (relay, id), by relay name then
    /// id: what an admin reply of bounded size can show, without building
    /// the whole list of a large federation first.
    pub fn remote_members_first(&self, limit: usize) -> Vec<(String, String)> {
        let mut origins: Vec<_> = self.inbox.origins().collect();
        origins.sort_by(|a, b| a.0.cmp(b.0));
        origins
            .into_iter()
            .flat_map(|(name, o)| o.data.members().iter().map(move |m| (name, m)))
            .take(limit)
            .map(|(name, m)| (name.to_owned(), m.clone()))
            .collect()
    }

    /// How many members the other relays have in all.
    pub fn remote_member_count(&self) -> usize {
        self.inbox
            .origins()
            .map(|(_, o)| o.data.members().len())
            .sum()
    }

    /// The next connect or close the shell must carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the relay.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.book.events.pop_front()
    }

    /// Bytes to write to the socket, oldest first.
    pub fn pending_output(&self) -> &[u8] {
        &self.out[self.written..]
    }

    /// The shell wrote the first `n` bytes of [`Link::pending_output`];
    /// buffered messages move up into the output as it drains.
    pub fn consume_output(&mut self, n: usize) {
        self.written = (self.written + n).min(self.out.len());
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        } else if self.written >= OUT_HIGH_WATER / 16 {
            // A socket that only ever takes part of the output must not
            // leave an ever longer written prefix behind.
            self.out.drain(..self.written);
            self.written = 0;
        }
        self.pump();
    }

    /// The next time [`Link::handle_timeout`] has work (possibly early).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = match self.conn {
            Conn::Closed => return None,
            Conn::Idle { at } => at,
            Conn::Handshake { deadline, .. } => deadline,
            Conn::Up {
                next_ping,
                next_announce,
                ..
            } => next_ping.min(next_announce),
        };
        let silence = self.config.announce_period * SILENT_PERIODS;
        let gone = self
            .inbox
            .origins()
            .map(|(_, o)| o.last_heard + silence)
            .min();
        Some(gone.map_or(conn, |g| g.min(conn)))
    }

    /// Runs what is due at `now`: connection attempts and timeouts,
    /// keepalive, the announce, and relays gone silent. Spurious calls are
    /// harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock.advance(now);
        if self.closing {
            return;
        }
        match self.conn {
            Conn::Idle { at } if now >= at => self.connect(now),
            Conn::Handshake { deadline, .. } if now >= deadline => {
                self.fail(now, "handshake timed out", true);
            }
            Conn::Up {
                next_ping,
                pings_out,
                ..
            } if now >= next_ping && pings_out >= MAX_PINGS_OUT => {
                self.fail(now, "no PONG to two PINGs", true);
            }
            Conn::Up {
                ref mut next_ping,
                ref mut pings_out,
                ..
            } if now >= *next_ping => {
                *pings_out += 1;
                *next_ping = now + PING_INTERVAL;
                nats::write_ping(&mut self.out);
            }
            _ => {}
        }
        if let Conn::Up {
            ref mut next_announce,
            ..
        } = self.conn
        {
            if now >= *next_announce {
                *next_announce = now + self.config.announce_period;
                self.announce(now);
            }
        }
        self.expire_relays(now);
    }

    /// The socket closed (EOF, error, or the connect failed).
    pub fn handle_disconnected(&mut self, now: Instant) {
        self.fail(now, "connection closed", false);
    }

    /// Bytes read from the socket.
    pub fn handle_read(&mut self, now: Instant, data: &[u8]) {
        if matches!(self.conn, Conn::Idle { .. } | Conn::Closed) {
            return;
        }
        self.clock.advance(now);
        self.decoder.feed(data);
        loop {
            let ctl = match self.decoder.next() {
                Ok(None) => break,
                Err(e) => {
                    self.fail(now, &format!("NATS protocol error: {e}"), true);
                    return;
                }
                Ok(Some(ServerOp::Msg { sid, payload, .. })) => {
                    if sid == SID.as_bytes() {
                        match self.inbox.open(now, payload) {
                            Ok(acc) => self.book.apply(acc),
                            Err(r) => {
                                self.book.refused(r);
                                if self.drop_log.try_take(now) {
                                    debug!("federation: dropped a message: {r}");
                                }
                            }
                        }
                    }
                    continue;
                }
                Ok(Some(ServerOp::Oversize { size })) => {
                    self.book.stats.dropped_oversize += 1;
                    if self.drop_log.try_take(now) {
                        debug!("federation: skipped a {size}-byte message");
                    }
                    continue;
                }
                Ok(Some(ServerOp::Ok)) => continue,
                Ok(Some(ServerOp::Ping)) => {
                    nats::write_pong(&mut self.out);
                    continue;
                }
                Ok(Some(ServerOp::Pong)) => Ctl::Pong,
                Ok(Some(ServerOp::Info(info))) => Ctl::Info(info),
                Ok(Some(ServerOp::Err(text))) => Ctl::Err(String::from_utf8_lossy(text).into()),
            };
            match ctl {
                Ctl::Pong => self.pong(now),
                Ctl::Info(info) => self.info(info),
                Ctl::Err(text) => {
                    self.book.stats.server_errors += 1;
                    warn!("federation: NATS server says: {text}");
                }
            }
        }
    }

    /// Publishes a message a local member sent. A body over 65535 bytes or
    /// an id that is no valid member id (`msg::valid_member_id`) is
    /// dropped and counted as oversize.
    pub fn publish_message(&mut self, now: Instant, sender_id: &str, body: &[u8]) {
        if body.len() > tlv::MAX_VALUE_LEN {
            self.book.stats.dropped_oversize += 1;
            return;
        }
        if !self.sendable(sender_id) {
            return;
        }
        self.send(now, Kind::Message { sender_id, body });
    }

    /// Publishes that a local member joined (and lists it in announces).
    pub fn publish_joined(&mut self, now: Instant, id: &str) {
        if self.sendable(id) {
            self.local.insert(id.to_owned());
            self.send(now, Kind::Joined { id });
        }
    }

    /// Publishes that a local member left with REASON `reason`.
    pub fn publish_left(&mut self, now: Instant, id: &str, reason: u8) {
        if self.sendable(id) {
            self.local.remove(id);
            self.send(now, Kind::Left { id, reason });
        }
    }

    /// Counts a local id that cannot be carried.
    fn sendable(&mut self, id: &str) -> bool {
        let ok = msg::valid_member_id(id);
        if !ok {
            self.book.stats.dropped_oversize += 1;
        }
        ok
    }

    /// Leaves the federation, for a relay shutting down (after publishing
    /// its members' leaves): UNSUB, so nothing more comes in, and no
    /// reconnect ever again. If a server is up, what is queued still goes
    /// out: the shell writes [`Link::pending_output`] until it is empty (or
    /// its own deadline passes) and then drops the socket.
    pub fn shutdown(&mut self, now: Instant) {
        self.closing = true;
        match self.conn {
            Conn::Up { .. } => nats::write_unsub(&mut self.out, SID),
            Conn::Handshake { .. } => self.fail(now, "shut down", true),
            Conn::Idle { .. } | Conn::Closed => self.conn = Conn::Closed,
        }
    }

    fn connect(&mut self, now: Instant) {
        // Taken modulo only here: the list may grow (INFO) before the next use.
        let i = self.next_server % self.servers.len();
        let server = self.servers[i];
        self.next_server = i + 1;
        self.out.clear();
        self.written = 0;
        self.decoder.reset();
        self.decoder.set_max_payload(self.config.max_payload);
        self.conn = Conn::Handshake {
            server,
            deadline: now + HANDSHAKE_TIMEOUT,
            got_info: false,
        };
        debug!("federation: connecting to NATS at {server}");
        self.actions.push_back(Action::Connect(server));
    }

    /// Ends the connection; `close` when the shell must drop the socket.
    fn fail(&mut self, now: Instant, why: &str, close: bool) {
        let server = match self.conn {
            Conn::Idle { .. } | Conn::Closed => return,
            Conn::Handshake { server, .. } if self.closing => {
                debug!("federation: NATS at {server}: {why}");
                server
            }
            Conn::Handshake { server, .. } => server,
            Conn::Up { server, .. } => {
                self.attempts = 0;
                server
            }
        };
        self.out.clear();
        self.written = 0;
        self.decoder.reset();
        if close {
            self.actions.push_back(Action::Close);
        }
        if self.closing {
            self.conn = Conn::Closed;
            return;
        }
        let delay = match self.attempts {
            0 => Duration::ZERO,
            n => RETRY_FIRST
                .saturating_mul(1 << (n - 1).min(16))
                .min(RETRY_MAX),
        };
        // One warning per outage; the attempts that follow log at debug.
        if self.attempts == 0 {
            warn!("federation: NATS at {server}: {why}; next attempt in {delay:?}");
        } else {
            debug!("federation: NATS at {server}: {why}; next attempt in {delay:?}");
        }
        self.attempts = self.attempts.saturating_add(1);
        self.conn = Conn::Idle { at: now + delay };
    }

    fn info(&mut self, info: ServerInfo) {
        let mut servers: Vec<SocketAddr> = self.config.servers.clone();
        for url in &info.connect_urls {
            match url.parse::<SocketAddr>() {
                Ok(a) if !servers.contains(&a) => servers.push(a),
                Ok(_) => {}
                Err(_) => debug!("federation: ignoring connect URL {url:?} (not IP:port)"),
            }
        }
        servers.truncate(MAX_SERVERS);
        if servers != self.servers {
            debug!("federation: NATS servers now {servers:?}");
            self.servers = servers;
        }
        let max = info
            .max_payload
            .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        self.server_max_payload = max.min(self.config.max_payload);
        self.decoder.set_max_payload(self.server_max_payload);
        if let Conn::Handshake {
            server,
            ref mut got_info,
            ..
        } = self.conn
        {
            if !*got_info {
                *got_info = true;
                if info.auth_required && self.config.auth == Auth::None {
                    warn!("federation: NATS at {server} wants credentials and none are set");
                }
                json::write_connect(&mut self.out, &self.config.relay_name, &self.config.auth);
                nats::write_sub(&mut self.out, &self.config.subject, SID);
                nats::write_ping(&mut self.out);
            }
        }
    }

    fn pong(&mut self, now: Instant) {
        match self.conn {
            Conn::Handshake {
                server,
                got_info: true,
                ..
            } => {
                info!("federation: connected to NATS at {server}");
                if self.ever_up {
                    self.book.stats.reconnects += 1;
                }
                self.ever_up = true;
                self.attempts = 0;
                self.conn = Conn::Up {
                    server,
                    next_ping: now + PING_INTERVAL,
                    pings_out: 0,
                    next_announce: now + self.config.announce_period,
                };
                // Buffered messages first: the announce reflects what they did.
                self.pump();
                self.announce(now);
            }
            Conn::Up {
                ref mut pings_out, ..
            } => *pings_out = pings_out.saturating_sub(1),
            _ => {}
        }
    }

    /// Sends one announce round listing the local members.
    fn announce(&mut self, now: Instant) {
        let blocks = Members::split(self.local.iter().map(String::as_str), ANNOUNCE_PART_BYTES);
        self.round = self.round.wrapping_add(1);
        // `split` makes at most MAX_ANNOUNCE_PARTS blocks.
        let parts = blocks.len() as u16;
        for (part, block) in blocks.iter().enumerate() {
            let kind = Kind::Announce {
                round: self.round,
                part: part as u16,
                parts,
                members: Members::from_block(block),
            };
            self.send(now, kind);
        }
    }

    /// Seals a message and writes it, or buffers it while it cannot go.
    fn send(&mut self, now: Instant, kind: Kind<'_>) {
        self.clock.advance(now);
        let iv = self.rng.random();
        self.scratch.clear();
        self.sealer
            .seal(self.clock.unix_secs(), iv, kind, &mut self.scratch);
        if self.scratch.len() > self.server_max_payload {
            self.book.stats.dropped_oversize += 1;
            return;
        }
        let up = matches!(self.conn, Conn::Up { .. });
        if up && self.queue.is_empty() && self.out.len() - self.written < OUT_HIGH_WATER {
            nats::write_pub(&mut self.out, &self.config.subject, &self.scratch);
            self.book.stats.published += 1;
            return;
        }
        while !self.queue.is_empty()
            && (self.queue.len() >= self.config.buffer_messages
                || self.queue_bytes + self.scratch.len() > self.config.buffer_bytes)
        {
            if let Some(old) = self.queue.pop_front() {
                self.queue_bytes -= old.len();
                self.book.stats.dropped_overflow += 1;
            }
        }
        if self.config.buffer_messages == 0 || self.scratch.len() > self.config.buffer_bytes {
            self.book.stats.dropped_overflow += 1;
            return;
        }
        self.queue_bytes += self.scratch.len();
        self.queue.push_back(self.scratch.clone());
    }

    /// Moves buffered messages into the output while connected and the
    /// output is below its high-water mark.
    fn pump(&mut self) {
        if !matches!(self.conn, Conn::Up { .. }) {
            return;
        }
        while self.out.len() - self.written < OUT_HIGH_WATER {
            let Some(token) = self.queue.pop_front() else {
                break;
            };
            self.queue_bytes -= token.len();
            nats::write_pub(&mut self.out, &self.config.subject, &token);
            self.book.stats.published += 1;
        }
    }

    /// Declares relays silent for too long gone.
    fn expire_relays(&mut self, now: Instant) {
        let silence = self.config.announce_period * SILENT_PERIODS;
        let gone: Vec<String> = self
            .inbox
            .origins()
            .filter(|(_, o)| o.last_heard + silence <= now)
            .map(|(name, _)| name.to_owned())
            .collect();
        for relay in gone {
            if let Some(o) = self.inbox.remove(&relay) {
                self.book.relay_gone(relay, o.data);
            }
        }
    }
}

/// A control op taken out of the decoder's buffer.
enum Ctl {
    Pong,
    Info(ServerInfo),
    Err(String),
}
