//! The Rust client: [`UdpClient`], a blocking client on a std UDP socket.
//! It puts the sans-IO [`ClientCore`] (handshake, Fernet sessions,
//! fragmentation both ways, the anti-replay window on receive) on a socket
//! and adds retries, timeouts, optional automatic keepalives and optional
//! automatic recovery after the server forgot the session (a restart, a
//! timeout, SERVER_CLOSING). Used by `mcrelay chat/send/listen`, the
//! examples and the tests.
//!
//! # Recovery and forged datagrams
//!
//! The core treats a REJECT as a hint (see [`crate::client`]); this shell
//! decides when to act, with these rules:
//!
//! - Only datagrams from the server's address reach the core (for a group
//!   target, once a server answered): another socket cannot even deliver
//!   a hint; forging one takes forging the server's address.
//! - A hint (REJECT 1 or 2 while established) starts a re-handshake in the
//!   background 200 ms later, and never sooner than a second after the
//!   previous HELLO; then one HELLO a second until welcomed. An authentic
//!   token under the established session before the new SESSION_KEY goes
//!   out cancels it: the hint was false (a busy session is never re-keyed
//!   by forged hints). So forged hints cost the server at most one
//!   handshake a second, and the session keeps working meanwhile.
//! - The interval never grows. A backoff would let a stranger who forges
//!   hints push a real recovery minutes away; and since the server's own
//!   REJECTs share a budget that strangers can spend, each keepalive
//!   answered by a REJECT 1 may be the only one the client gets.
//! - A background handshake not welcomed within the handshake timeout (the
//!   one given to [`UdpClient::connect`]) means the session is gone: the
//!   old session is dropped and HELLOs go out from scratch (to the group
//!   again when the target is one).
//! - Recovery stops for good only when two handshakes in a row were
//!   refused with REJECT 2 and not welcomed: [`UdpClient::recv`] returns
//!   [`ConnectError::Rejected`]. REJECT 3 (server full) is reported and
//!   retried. A SERVER_KEY that does not match the pin is ignored; only
//!   when no other key was accepted for a whole handshake timeout does
//!   `recv` return [`ConnectError::Pin`].
//! - [`UdpClient::connect`] follows the same rules for a first handshake:
//!   a refusal counts only if no WELCOME overtakes it within 250 ms, two
//!   refused attempts in a row fail, a wrong key is waited out until the
//!   timeout.
//!
//! ```no_run
//! use std::time::Duration;
//! use mcrelay::{ClientEvent, ClientOptions, Target, UdpClient};
//!
//! let target = Target::Unicast("127.0.0.1:5007".parse().unwrap());
//! let mut c = UdpClient::new(target, ClientOptions::default())?;
//! c.set_keepalive(Some(Duration::from_secs(20)));
//! c.set_auto_reconnect(Some(Duration::from_secs(1)));
//! let id = c.connect(Duration::from_secs(5))?;
//! println!("connected as {id}, server key {}", c.fingerprint().unwrap());
//! c.send(b"hello")?;
//! while let Some(ev) = c.recv(Duration::from_secs(30))? {
//!     if let ClientEvent::Message { sender, body } = ev {
//!         println!("[{sender}] {}", String::from_utf8_lossy(&body));
//!     }
//! }
//! c.bye()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};

use crate::client::{ClientCore, ClientError, ClientEvent, ClientOptions};
use crate::wire::RejectReason;

/// How long to wait for an answer before sending HELLO again.
const RETRY: Duration = Duration::from_millis(700);

/// How long a refusal waits for a WELCOME racing it before it counts.
const REFUSAL_GRACE: Duration = Duration::from_millis(250);

/// Handshake attempts in a row refused (and not welcomed) that end it.
const REFUSALS_TO_STOP: u32 = 2;

/// How long a hint waits for the established session to prove it false
/// before the re-handshake goes out.
const HINT_GRACE: Duration = Duration::from_millis(200);

/// A keepalive interval well inside the server's default 60 s client timeout.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(20);

/// Largest message body [`UdpClient::send`] accepts (49,046 bytes): the
/// relay's copy of it (SEQ, the longest SENDER_ID `255.255.255.255:65535`,
/// BODY) must still fit in one TLV once sealed as a Fernet token.
pub const MAX_BODY_LEN: usize = {
    // A Fernet token is the padded base64url of version (1) + timestamp (8)
    // + IV (16) + AES-CBC ciphertext + HMAC (32) = 57 bytes + ciphertext.
    let raw = crate::wire::tlv::MAX_VALUE_LEN / 4 * 3;
    // PKCS#7 always adds 1..=16 bytes, up to a multiple of 16.
    let plain = (raw - 57) / 16 * 16 - 1;
    let (seq, sender_id, body_header) = (4 + 8, 4 + 21, 4);
    plain - seq - sender_id - body_header
};

/// Where the client sends.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The server's unicast address.
    Unicast(SocketAddr),
    /// The multicast group the server joined.
    Multicast {
        /// Group address.
        group: Ipv4Addr,
        /// Port.
        port: u16,
        /// Interface to send from (IP_MULTICAST_IF).
        iface: Ipv4Addr,
        /// Multicast TTL: 0 keeps datagrams on this host.
        ttl: u32,
    },
}

/// Why a client call failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Socket error.
    Io(io::Error),
    /// Only keys other than the pinned one answered before the timeout.
    Pin(ClientError),
    /// The server refused the session (two handshakes in a row).
    Rejected(RejectReason),
    /// No answer in time.
    Timeout,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "socket error: {e}"),
            ConnectError::Pin(e) => write!(f, "{e}"),
            ConnectError::Rejected(r) => write!(f, "server refused the session: {r:?}"),
            ConnectError::Timeout => write!(f, "no answer from the server"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Io(e)
    }
}

/// A client session on its own UDP socket.
///
/// Call [`UdpClient::connect`] once, then [`UdpClient::send`] and
/// [`UdpClient::recv`]; [`UdpClient::bye`] to leave. `recv` is also where
/// the timers run: call it regularly (a short timeout in a loop is fine).
pub struct UdpClient {
    sock: UdpSocket,
    target: Target,
    dest: SocketAddr,
    /// Where answers come from; learnt from the first SERVER_KEY when
    /// sending to a group.
    server: Option<SocketAddr>,
    core: ClientCore,
    out: Vec<Vec<u8>>,
    events: VecDeque<ClientEvent>,
    scratch_events: Vec<ClientEvent>,
    buf: Vec<u8>,
    fingerprint: Option<String>,
    largest_received: usize,
    /// When the last datagram went out: a KEEPALIVE is only needed after
    /// silence, since any authenticated datagram refreshes the server's timer.
    last_sent: Instant,
    keepalive_every: Option<Duration>,
    reconnect_every: Option<Duration>,
    /// The automatic recovery under way, if any.
    recovery: Option<Recovery>,
    /// When the last HELLO went out: hints never make them more frequent
    /// than `reconnect_every`.
    last_hello: Option<Instant>,
    /// The timeout of the last [`UdpClient::connect`]; recoveries use it too.
    handshake_timeout: Duration,
    /// The last SERVER_KEY refused because of the pin, for the error.
    pin_mismatch: Option<ClientError>,
}

/// An automatic recovery: from a hint or a loss until a new WELCOME.
struct Recovery {
    /// When it started.
    since: Instant,
    /// When the next HELLO goes out.
    next_hello: Instant,
    /// [`ClientCore::authentic`] when a hint started it: if that grows
    /// before the first HELLO, the hint was false. None after a real loss.
    authentic_at_hint: Option<u64>,
    /// The event that tells the caller, once the first HELLO goes out.
    report: Option<ClientEvent>,
    /// A SERVER_KEY matching the pin (or any, unpinned) was accepted.
    key_accepted: bool,
    /// [`ClientCore::pin_mismatches`] when it started.
    pins_at_start: u64,
    tries: Tries,
}

/// The attempts of one handshake (first connection or recovery).
#[derive(Default)]
struct Tries {
    /// When the current attempt's HELLO went out.
    started: Option<Instant>,
    /// When its refusal was first seen.
    refused_at: Option<Instant>,
    /// Attempts in a row refused and not welcomed.
    refused: u32,
}

impl Tries {
    /// Ends the current attempt, which got `refusal` (and no WELCOME):
    /// the reason to stop, once attempts in a row were refused for `stop_on`.
    fn conclude(
        &mut self,
        refusal: Option<RejectReason>,
        stop_on: &[RejectReason],
    ) -> Option<RejectReason> {
        self.refused_at = None;
        match refusal {
            Some(r) if stop_on.contains(&r) => {
                self.refused += 1;
                (self.refused >= REFUSALS_TO_STOP).then_some(r)
            }
            _ => {
                self.refused = 0;
                None
            }
        }
    }
}

impl UdpClient {
    /// Opens a socket for `target` (nothing is sent yet). Keepalives and
    /// automatic recovery start switched off.
    pub fn new(target: Target, opts: ClientOptions) -> io::Result<Self> {
        let (sock, dest, server) = match target {
            Target::Unicast(addr) => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                (UdpSocket::bind(bind)?, addr, Some(addr))
            }
            Target::Multicast {
                group,
                port,
                iface,
                ttl,
            } => {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                s.set_multicast_if_v4(&iface)?;
                s.set_multicast_ttl_v4(ttl)?;
                s.set_multicast_loop_v4(true)?;
                s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).into())?;
                (s.into(), SocketAddr::from((group, port)), None)
            }
        };
        Ok(UdpClient {
            sock,
            target,
            dest,
            server,
            // The shell's part of a sans-IO core: the OS's entropy and clock.
            core: ClientCore::new(opts, Instant::now(), unix_now(), rand::random()),
            out: Vec::new(),
            events: VecDeque::new(),
            scratch_events: Vec::new(),
            buf: vec![0; 65536],
            fingerprint: None,
            largest_received: 0,
            last_sent: Instant::now(),
            keepalive_every: None,
            reconnect_every: None,
            recovery: None,
            last_hello: None,
            handshake_timeout: Duration::from_secs(5),
            pin_mismatch: None,
        })
    }

    /// Makes [`UdpClient::recv`] send a KEEPALIVE whenever nothing was sent
    /// for `every` while a session is established (None: never). Pick it
    /// well inside the server's client timeout (60 s by default), e.g.
    /// [`DEFAULT_KEEPALIVE`].
    pub fn set_keepalive(&mut self, every: Option<Duration>) {
        self.keepalive_every = every;
    }

    /// Makes the client recover by itself (None: never). A REJECT 1 or 2
    /// while established is taken as a hint and answered by a handshake in
    /// the background (the session keeps working meanwhile); after
    /// SERVER_CLOSING, HELLOs go out from scratch. Either way one HELLO
    /// every `every` (at most; a second is right) until a new WELCOME,
    /// following the rules of the module doc. The events of the new
    /// handshake (`ServerKey`, `Welcome`) come out of [`UdpClient::recv`]
    /// so the caller can tell the user, preceded by the `Rejected` hint
    /// that started it; a pinned key is still checked.
    pub fn set_auto_reconnect(&mut self, every: Option<Duration>) {
        self.reconnect_every = every;
        if every.is_none() {
            self.recovery = None;
        }
    }

    /// True while an automatic recovery is waiting for a new WELCOME.
    pub fn is_reconnecting(&self) -> bool {
        self.recovery.is_some()
    }

    /// The local address the server will know us by (port part).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Our id, once welcomed.
    pub fn id(&self) -> Option<&str> {
        self.core.id()
    }

    /// The fingerprint of the server key seen last (hex SHA-256).
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Datagrams the core dropped.
    pub fn dropped(&self) -> u64 {
        self.core.dropped
    }

    /// SERVER_KEYs ignored because they did not match the pin.
    pub fn pin_mismatches(&self) -> u64 {
        self.core.pin_mismatches()
    }

    /// True while a session is established.
    pub fn is_established(&self) -> bool {
        self.core.is_established()
    }

    /// The largest datagram received from the server so far.
    pub fn largest_received(&self) -> usize {
        self.largest_received
    }

    /// Seals a message into the datagrams that would carry it, without
    /// sending them (tests reorder, duplicate or replay them).
    pub fn prepare(&mut self, body: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.core.send(body, &mut out);
        out
    }

    /// Sends raw bytes to the server (for tests and tools).
    pub fn send_raw(&self, datagram: &[u8]) -> io::Result<()> {
        self.sock.send_to(datagram, self.dest).map(drop)
    }

    fn flush(&mut self) -> io::Result<()> {
        for d in self.out.drain(..) {
            self.sock.send_to(&d, self.dest)?;
            self.last_sent = Instant::now();
        }
        Ok(())
    }

    /// Sends a HELLO. `fresh` starts from scratch (aimed at the group
    /// again when the target is one, so that whichever server now answers
    /// there is found); otherwise the handshake runs in the background of
    /// the established session, with the server it has.
    fn send_hello(&mut self, fresh: bool) -> io::Result<()> {
        let hello = if fresh {
            if let Target::Multicast { group, port, .. } = self.target {
                self.dest = SocketAddr::from((group, port));
                self.server = None;
            }
            self.core.hello()
        } else {
            self.core.rehandshake()
        };
        self.last_hello = Some(Instant::now());
        self.send_raw(&hello)
    }

    /// Runs the handshake until WELCOME; returns our id. Events that arrive
    /// meanwhile are kept for [`UdpClient::recv`]. Calling it again starts
    /// a new session (the server replaces the old key). Forged answers are
    /// waited out (module doc): a wrong key until `timeout`, a refusal for
    /// 250 ms.
    pub fn connect(&mut self, timeout: Duration) -> Result<String, ConnectError> {
        let deadline = Instant::now() + timeout;
        self.handshake_timeout = timeout;
        self.recovery = None;
        self.pin_mismatch = None;
        let pins_before = self.core.pin_mismatches();
        let mut key_accepted = false;
        let mut last_refusal = None;
        let mut tries = Tries::default();
        let stop_on = [RejectReason::AuthFailed, RejectReason::ServerFull];
        let mut retry_at = Instant::now();
        loop {
            while let Some(i) = self.events.iter().position(is_handshake_event) {
                match self.events.remove(i) {
                    Some(ClientEvent::Welcome { id }) => return Ok(id),
                    Some(ClientEvent::ServerKey { .. }) => key_accepted = true,
                    _ => {} // refusals are read from the core, with their timing
                }
            }
            let now = Instant::now();
            if let Some(r) = self.core.refusal() {
                last_refusal = Some(r);
                let at = *tries.refused_at.get_or_insert(now);
                // No WELCOME overtook it: this attempt is over.
                retry_at = retry_at.min(at + REFUSAL_GRACE);
            }
            if now >= retry_at {
                if tries.started.is_some() {
                    if let Some(r) = tries.conclude(self.core.refusal(), &stop_on) {
                        return Err(ConnectError::Rejected(r));
                    }
                }
                // Lost HELLO, answer or SESSION_KEY, or a stale cookie: start
                // over; the server treats a repeated handshake as a re-key.
                self.send_hello(true)?;
                tries.started = Some(now);
                retry_at = now + RETRY;
            }
            if now >= deadline {
                return Err(match (last_refusal, self.pin_mismatch.take()) {
                    (Some(r), _) if stop_on.contains(&r) => ConnectError::Rejected(r),
                    (_, Some(e)) if !key_accepted && self.core.pin_mismatches() > pins_before => {
                        ConnectError::Pin(e)
                    }
                    _ => ConnectError::Timeout,
                });
            }
            self.pump(retry_at.min(deadline))?;
        }
    }

    /// Reads datagrams until `until` or until at least one event is queued.
    fn pump(&mut self, until: Instant) -> Result<(), ConnectError> {
        while self.events.is_empty() {
            let now = Instant::now();
            let Some(wait) = until.checked_duration_since(now).filter(|d| !d.is_zero()) else {
                return Ok(());
            };
            self.sock.set_read_timeout(Some(wait))?;
            let (n, from) = match self.sock.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(())
                }
                // EINTR, or an ICMP error some systems report for an
                // earlier datagram to a server that is down: keep waiting,
                // the retry and recovery timers deal with a dead server.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            if self.server.is_some_and(|s| s != from) {
                continue;
            }
            self.largest_received = self.largest_received.max(n);
            let r = self.core.handle_datagram(
                Instant::now(),
                &self.buf[..n],
                &mut self.out,
                &mut self.scratch_events,
            );
            if let Err(e) = r {
                // Someone else's key: ignored, the handshake waits on.
                self.pin_mismatch = Some(e);
            }
            if self.server.is_none() && !self.out.is_empty() {
                // Answered a SERVER_KEY sent to the group: talk unicast from now on.
                self.server = Some(from);
                self.dest = from;
            }
            self.flush()?;
            self.after_datagram();
        }
        Ok(())
    }

    /// Files the core's events and hint after a datagram.
    fn after_datagram(&mut self) {
        let now = Instant::now();
        // With recovery on, REJECTs are this shell's business: it reports
        // the hints it acts on, and refusals of its own handshakes.
        let filter = self.reconnect_every.is_some()
            && (self.core.is_established() || self.recovery.is_some());
        for e in self.scratch_events.drain(..) {
            match &e {
                ClientEvent::ServerKey { fingerprint } => {
                    self.fingerprint = Some(fingerprint.clone());
                    if let Some(rec) = &mut self.recovery {
                        rec.key_accepted = true;
                    }
                }
                ClientEvent::Welcome { .. }
                    if self.core.is_established() && !self.core.is_rehandshaking() =>
                {
                    self.recovery = None
                }
                ClientEvent::ServerClosing if self.reconnect_every.is_some() => {
                    self.recovery = Some(Recovery::new(now, now, None, &self.core));
                }
                ClientEvent::Rejected(r)
                    if filter
                        && !(*r == RejectReason::ServerFull && self.core.refusal() == Some(*r)) =>
                {
                    continue
                }
                _ => {}
            }
            self.events.push_back(e);
        }
        let hint = self.core.take_hint();
        if let (Some(r), Some(every), None) = (hint, self.reconnect_every, &self.recovery) {
            let mut at = now + HINT_GRACE;
            if let Some(last) = self.last_hello {
                at = at.max(last + every);
            }
            let mut rec = Recovery::new(now, at, Some(self.core.authentic()), &self.core);
            rec.report = Some(ClientEvent::Rejected(r));
            self.recovery = Some(rec);
        }
    }

    /// Runs the recovery: HELLOs when due, and the end of it (welcomed,
    /// proven false, or refused for good). Returns when it next needs
    /// attention.
    fn run_recovery(&mut self, now: Instant) -> Result<Option<Instant>, ConnectError> {
        let (Some(rec), Some(every)) = (&mut self.recovery, self.reconnect_every) else {
            return Ok(None);
        };
        let established = self.core.is_established();
        let welcomed = established && !self.core.is_rehandshaking() && rec.tries.started.is_some();
        let refuted = rec.tries.started.is_none()
            && rec
                .authentic_at_hint
                .is_some_and(|a| self.core.authentic() > a);
        if welcomed || refuted {
            // Ended without a WELCOME (the established session proved the
            // hint false): a caller told of the hint hears that all is well.
            let told = rec.authentic_at_hint.is_some() && rec.report.is_none();
            if let (true, Some(id)) = (told, self.core.id()) {
                let id = id.to_owned();
                self.events.push_back(ClientEvent::Welcome { id });
            }
            self.recovery = None;
            return Ok(None);
        }
        if now < rec.next_hello {
            return Ok(Some(rec.next_hello));
        }
        if rec.tries.started.is_some() {
            let refusal = self.core.refusal();
            if let Some(r) = rec.tries.conclude(refusal, &[RejectReason::AuthFailed]) {
                self.recovery = None;
                return Err(ConnectError::Rejected(r));
            }
        }
        let lost = now.saturating_duration_since(rec.since) >= self.handshake_timeout;
        if lost && !rec.key_accepted && self.core.pin_mismatches() > rec.pins_at_start {
            if let Some(e) = self.pin_mismatch.take() {
                self.recovery = None;
                return Err(ConnectError::Pin(e));
            }
        }
        if let Some(e) = rec.report.take() {
            self.events.push_back(e);
        }
        rec.tries.started = Some(now);
        rec.next_hello = now + every;
        let next = rec.next_hello;
        // A background handshake not welcomed within the timeout: the
        // session is gone, start from scratch.
        self.send_hello(lost || !established)?;
        Ok(Some(next))
    }

    /// Sends what the keepalive and recovery timers ask for; returns when
    /// they next need attention.
    fn run_timers(&mut self, now: Instant) -> Result<Option<Instant>, ConnectError> {
        let recovery_at = self.run_recovery(now)?;
        let keepalive_at = match self.keepalive_every {
            Some(every) if self.core.is_established() => {
                if now >= self.last_sent + every {
                    self.keepalive()?;
                }
                Some(self.last_sent + every)
            }
            _ => None,
        };
        Ok(match (recovery_at, keepalive_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// The next event, or None after `timeout`. Keepalives and recovery
    /// HELLOs go out from here while it waits. An error from an automatic
    /// recovery (refused twice, or only another key than the pinned one
    /// for a whole handshake timeout) ends it.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<ClientEvent>, ConnectError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            let next_timer = self.run_timers(now)?;
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if now >= deadline {
                return Ok(None);
            }
            self.pump(next_timer.map_or(deadline, |t| t.min(deadline)))?;
        }
    }

    /// Sends a message; false if no session is established.
    ///
    /// # Errors
    /// `InvalidInput` (and nothing sent) if `body` is longer than
    /// [`MAX_BODY_LEN`]; otherwise socket errors.
    pub fn send(&mut self, body: &[u8]) -> io::Result<bool> {
        if body.len() > MAX_BODY_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "message of {} bytes is over the maximum of {MAX_BODY_LEN}",
                    body.len()
                ),
            ));
        }
        let ok = self.core.send(body, &mut self.out);
        self.flush()?;
        Ok(ok)
    }

    /// Sends a KEEPALIVE.
    pub fn keepalive(&mut self) -> io::Result<bool> {
        let ok = self.core.keepalive(&mut self.out);
        self.flush()?;
        Ok(ok)
    }

    /// Sends BYE and ends the session (and any automatic recovery).
    pub fn bye(&mut self) -> io::Result<bool> {
        self.recovery = None;
        let ok = self.core.bye(&mut self.out);
        self.flush()?;
        Ok(ok)
    }
}

impl Recovery {
    fn new(
        now: Instant,
        first: Instant,
        authentic_at_hint: Option<u64>,
        core: &ClientCore,
    ) -> Self {
        Recovery {
            since: now,
            next_hello: first,
            authentic_at_hint,
            report: None,
            key_accepted: false,
            pins_at_start: core.pin_mismatches(),
            tries: Tries::default(),
        }
    }
}

fn is_handshake_event(e: &ClientEvent) -> bool {
    matches!(
        e,
        ClientEvent::Welcome { .. } | ClientEvent::Rejected(_) | ClientEvent::ServerKey { .. }
    )
}

/// The system clock's Unix seconds (0 if it reads before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
