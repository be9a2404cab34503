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
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::federation::msg::{self, Accepted, Inbox, Kind, Members, Refused, Sealer};
use crate::federation::nats::{self, Auth, Decoder, ServerInfo, ServerOp};
use crate::ratelimit::TokenBucket;
use crate::session::fernet::FernetKey;
use crate::session::UnixClock;
use crate::wire::tlv;

/// The REASON a member of a silent relay leaves with (protocol v2).
pub const REASON_UNREACHABLE: u8 = 6;
/// Silent announce periods after which a relay is gone.
pub const SILENT_PERIODS: u32 = 3;
/// Our keepalive PING interval.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered PINGs that end a connection.
pub const MAX_PINGS_OUT: u8 = 2;
/// Longest wait from asking for a connection to the handshake's PONG.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Delay before the second attempt in a row; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(2);
/// Servers kept (seeds first, then learned ones).
pub const MAX_SERVERS: usize = 32;
/// Plaintext budget of one announce part.
const ANNOUNCE_PART_BYTES: usize = 16 * 1024;
/// Output bytes queued for the socket above which publishes wait in the
/// buffer instead (so a stalled socket costs bounded memory).
const OUT_HIGH_WATER: usize = 1024 * 1024;
/// The one subscription id we use.
const SID: &str = "1";
/// Debug lines about drops per second.
const DROP_LOG_RATE: u32 = 10;

/// Settings of a link; [`LinkConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Seed servers, tried first and always kept.
    pub servers: Vec<SocketAddr>,
    /// The federation subject.
    pub subject: String,
    /// This relay's name, unique in the federation.
    pub relay_name: String,
    /// Credentials for CONNECT.
    pub auth: Auth,
    /// How often the member list is announced [default 5 s].
    pub announce_period: Duration,
    /// Messages kept while no server is up [default 4096].
    pub buffer_messages: usize,
    /// Bytes kept while no server is up [default 4 MiB].
    pub buffer_bytes: usize,
    /// Remote relays tracked [default 64].
    pub max_relays: usize,
    /// Remote members tracked, all relays together [default 100000].
    pub max_remote_members: usize,
    /// Largest payload buffered when received [default 1 MiB].
    pub max_payload: usize,
}

impl LinkConfig {
    /// A configuration with the defaults.
    pub fn new(servers: Vec<SocketAddr>, subject: &str, relay_name: &str) -> Self {
        LinkConfig {
            servers,
            subject: subject.to_owned(),
            relay_name: relay_name.to_owned(),
            auth: Auth::None,
            announce_period: Duration::from_secs(5),
            buffer_messages: 4096,
            buffer_bytes: 4 * 1024 * 1024,
            max_relays: 64,
            max_remote_members: 100_000,
            max_payload: nats::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// A configuration the link refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// No seed server.
    NoServers,
    /// The subject is not a plain NATS subject (`nats::valid_subject`).
    BadSubject(String),
    /// The relay name is not `[A-Za-z0-9._-]{1,64}`.
    BadRelayName(String),
    /// A zero announce period.
    BadPeriod,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoServers => f.write_str("no NATS server given"),
            ConfigError::BadSubject(s) => write!(
                f,
                "federation subject '{s}': use dot-separated letters, digits, '-' and '_'"
            ),
            ConfigError::BadRelayName(s) => {
                write!(
                    f,
                    "relay name '{s}': use 1-64 letters, digits, '.', '-' and '_'"
                )
            }
            ConfigError::BadPeriod => f.write_str("the announce period must be positive"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// What the shell must do with the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Drop any current connection and connect to this server.
    Connect(SocketAddr),
    /// Drop the current connection (the link already knows).
    Close,
}

/// What the relay learns from the federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A member of another relay sent a message.
    RemoteMessage {
        /// The relay it came through.
        relay: String,
        /// `RELAY/ID`: the SENDER_ID to relay it under.
        sender_id: String,
        /// The application bytes.
        body: Vec<u8>,
    },
    /// A member of another relay joined (or was first heard of).
    RemoteJoined {
        /// `RELAY/ID`.
        id: String,
    },
    /// A member of another relay left.
    RemoteLeft {
        /// `RELAY/ID`.
        id: String,
        /// REASON code; [`REASON_UNREACHABLE`] when its relay went silent,
        /// restarted, or stopped listing it.
        reason: u8,
    },
    /// A relay was silent for [`SILENT_PERIODS`] announce periods; the
    /// `RemoteLeft` events of its members came just before.
    RelayGone {
        /// Its name.
        relay: String,
    },
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
}

/// A remote relay as the admin channel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRelay {
    /// Its name.
    pub name: String,
    /// Members known.
    pub members: usize,
    /// Time since it was last heard.
    pub silent_for: Duration,
    /// Heard within the last two announce periods.
    pub alive: bool,
}

/// Counters since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Federation messages written to NATS.
    pub published: u64,
    /// Federation messages accepted from NATS.
    pub received: u64,
    /// Dropped: not a well-formed federation message.
    pub dropped_malformed: u64,
    /// Dropped: not sealed with the federation key.
    pub dropped_unsealed: u64,
    /// Dropped: replayed, too old, or from an earlier run of its relay.
    pub dropped_replayed: u64,
    /// Dropped: sent under our own name.
    pub dropped_own: u64,
    /// Dropped: the oldest buffered message, when the buffer was full.
    pub dropped_overflow: u64,
    /// Dropped: larger than a payload may be (sent or received), or a
    /// local id that is no valid member id.
    pub dropped_oversize: u64,
    /// Dropped: from a new relay while the relay table was full.
    pub dropped_too_many_relays: u64,
    /// Remote members not tracked because the member table was full.
    pub dropped_members_full: u64,
    /// Connections established after the first.
    pub reconnects: u64,
    /// -ERR lines from servers.
    pub server_errors: u64,
}

impl LinkStats {
    /// Calls `f` with each counter's name and value.
    pub fn for_each(&self, mut f: impl FnMut(&str, u64)) {
        f("published", self.published);
        f("received", self.received);
        f("dropped_malformed", self.dropped_malformed);
        f("dropped_unsealed", self.dropped_unsealed);
        f("dropped_replayed", self.dropped_replayed);
        f("dropped_own", self.dropped_own);
        f("dropped_overflow", self.dropped_overflow);
        f("dropped_oversize", self.dropped_oversize);
        f("dropped_too_many_relays", self.dropped_too_many_relays);
        f("dropped_members_full", self.dropped_members_full);
        f("reconnects", self.reconnects);
        f("server_errors", self.server_errors);
    }
}

enum Conn {
    /// Next attempt at `at`.
    Idle { at: Instant },
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

/// A remote relay's members, and the announce round being received.
#[derive(Default, Debug)]
pub struct Remote {
    members: BTreeSet<String>,
    round: Option<Round>,
}

#[derive(Debug)]
struct Round {
    round: u32,
    next_part: u16,
    parts: u16,
    members: BTreeSet<String>,
}

/// The parts of the link that handle accepted messages, apart from the
/// decoder so both can be borrowed at once.
struct Book {
    events: VecDeque<LinkEvent>,
    stats: LinkStats,
    remote_total: usize,
    max_remote: usize,
}

/// The federation link of one relay.
pub struct Link {
    config: LinkConfig,
    servers: Vec<SocketAddr>,
    next_server: usize,
    conn: Conn,
    /// Failed attempts since the last working connection.
    attempts: u32,
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
            book: Book {
                events: VecDeque::new(),
                stats: LinkStats::default(),
                remote_total: 0,
                max_remote: config.max_remote_members,
            },
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
                    members: o.data.members.len(),
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
            .flat_map(|(name, o)| o.data.members.iter().map(move |m| format!("{name}/{m}")))
            .collect();
        v.sort();
        v
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
        }
        self.pump();
    }

    /// The next time [`Link::handle_timeout`] has work (possibly early).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = match self.conn {
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
        if matches!(self.conn, Conn::Idle { .. }) {
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
            Conn::Idle { .. } => return,
            Conn::Handshake { server, .. } => server,
            Conn::Up { server, .. } => {
                self.attempts = 0;
                server
            }
        };
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
        self.out.clear();
        self.written = 0;
        self.decoder.reset();
        if close {
            self.actions.push_back(Action::Close);
        }
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
                nats::write_connect(&mut self.out, &self.config.relay_name, &self.config.auth);
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
        let mut blocks = vec![Vec::new()];
        for id in &self.local {
            let block = blocks.last_mut().unwrap_or_else(|| unreachable!());
            if !block.is_empty() && block.len() + id.len() + tlv::HEADER_LEN > ANNOUNCE_PART_BYTES {
                if blocks.len() == usize::from(msg::MAX_ANNOUNCE_PARTS) {
                    warn!("federation: too many members to announce; list truncated");
                    break;
                }
                blocks.push(Vec::new());
            }
            let block = blocks.last_mut().unwrap_or_else(|| unreachable!());
            Members::push(block, id);
        }
        self.round = self.round.wrapping_add(1);
        // At most MAX_ANNOUNCE_PARTS, checked above.
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
        if up && self.queue.is_empty() && self.out.len() < OUT_HIGH_WATER {
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
                info!(
                    "federation: relay {relay} silent for {silence:?}; its {} members are unreachable",
                    o.data.members.len()
                );
                self.book.drop_members(&relay, o.data.members);
                self.book.events.push_back(LinkEvent::RelayGone { relay });
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

impl Book {
    fn refused(&mut self, r: Refused) {
        let s = &mut self.stats;
        match r {
            Refused::Unsealed => s.dropped_unsealed += 1,
            Refused::Malformed(_) => s.dropped_malformed += 1,
            Refused::Own => s.dropped_own += 1,
            Refused::Replayed => s.dropped_replayed += 1,
            Refused::TooManyOrigins => s.dropped_too_many_relays += 1,
        }
    }

    /// Every member in `members` leaves as unreachable.
    fn drop_members(&mut self, relay: &str, members: BTreeSet<String>) {
        self.remote_total -= members.len();
        for m in members {
            self.events.push_back(LinkEvent::RemoteLeft {
                id: format!("{relay}/{m}"),
                reason: REASON_UNREACHABLE,
            });
        }
    }

    /// Adds a member unless known; reports the join.
    fn join(&mut self, relay: &str, remote: &mut Remote, id: &str) {
        if remote.members.contains(id) {
            return;
        }
        if self.remote_total >= self.max_remote {
            self.stats.dropped_members_full += 1;
            return;
        }
        self.remote_total += 1;
        remote.members.insert(id.to_owned());
        self.events.push_back(LinkEvent::RemoteJoined {
            id: format!("{relay}/{id}"),
        });
    }

    fn apply(&mut self, acc: Accepted<'_, Remote>) {
        let Accepted {
            msg,
            origin,
            new_origin,
            restarted,
        } = acc;
        self.stats.received += 1;
        let relay = msg.header.origin;
        if new_origin {
            info!("federation: hearing relay {relay}");
        }
        if let Some(old) = restarted {
            info!("federation: relay {relay} restarted");
            self.drop_members(relay, old.members);
        }
        let remote = &mut origin.data;
        match msg.kind {
            Kind::Message { sender_id, body } => {
                // A sender not yet announced is a member from now on.
                self.join(relay, remote, sender_id);
                self.events.push_back(LinkEvent::RemoteMessage {
                    relay: relay.to_owned(),
                    sender_id: format!("{relay}/{sender_id}"),
                    body: body.to_vec(),
                });
            }
            Kind::Joined { id } => self.join(relay, remote, id),
            Kind::Left { id, reason } => {
                if remote.members.remove(id) {
                    self.remote_total -= 1;
                    self.events.push_back(LinkEvent::RemoteLeft {
                        id: format!("{relay}/{id}"),
                        reason,
                    });
                }
            }
            Kind::Announce {
                round,
                part,
                parts,
                members,
            } => {
                if part == 0 {
                    remote.round = Some(Round {
                        round,
                        next_part: 0,
                        parts,
                        members: BTreeSet::new(),
                    });
                }
                let Some(r) = remote.round.as_mut() else {
                    return;
                };
                if (r.round, r.next_part, r.parts) != (round, part, parts) {
                    // A part went missing: wait for the next whole round.
                    remote.round = None;
                    return;
                }
                let room = self.max_remote - (self.remote_total - remote.members.len());
                for id in members.iter() {
                    if r.members.len() >= room {
                        self.stats.dropped_members_full += 1;
                        break;
                    }
                    r.members.insert(id.to_owned());
                }
                r.next_part += 1;
                if r.next_part == r.parts {
                    let listed = remote.round.take().map(|r| r.members).unwrap_or_default();
                    self.reconcile(relay, remote, listed);
                }
            }
        }
    }

    /// A whole announce round: whoever it lists is there, nobody else.
    fn reconcile(&mut self, relay: &str, remote: &mut Remote, listed: BTreeSet<String>) {
        for gone in remote.members.difference(&listed) {
            self.events.push_back(LinkEvent::RemoteLeft {
                id: format!("{relay}/{gone}"),
                reason: REASON_UNREACHABLE,
            });
        }
        for new in listed.difference(&remote.members) {
            self.events.push_back(LinkEvent::RemoteJoined {
                id: format!("{relay}/{new}"),
            });
        }
        self.remote_total = self.remote_total - remote.members.len() + listed.len();
        remote.members = listed;
    }
}
