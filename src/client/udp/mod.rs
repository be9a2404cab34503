//! The Rust client: [`UdpClient`], a blocking client on a std UDP socket.
//! It puts the sans-IO [`ClientCore`] (handshake, Fernet sessions,
//! fragmentation both ways, the anti-replay window on receive, v2 group
//! mode) on a socket and adds retries, timeouts, optional automatic
//! keepalives and optional automatic recovery after the server forgot the
//! session (a restart, a timeout, SERVER_CLOSING). Used by `mcrelay
//! chat/send/listen`, the examples and the tests.
//!
//! # Group mode (protocol v2)
//!
//! When the relay grants group mode the client opens a second socket on
//! the downlink's port (SO_REUSEADDR, so that several clients of one host
//! can) and joins the downlink group on its interface: the `iface` of a
//! [`Target::Multicast`], otherwise the one the system would use to reach
//! the server. IPv6 joins go by interface index: the target's, the
//! server's scope (a link-local server), or the index of the interface
//! that holds the local address routing to the server.
//! [`UdpClient::recv`] waits on both sockets. Anything may arrive on the
//! downlink; only what the relay signed is used. The socket is closed,
//! which leaves the group, when the session ends or group mode does. If
//! the downlink cannot be joined, or stays silent through the probes, the
//! client handshakes again without group mode (quietly: no new
//! `Welcome` comes out of `recv`, only [`ClientEvent::DownlinkSilent`]),
//! retrying once a second as a recovery does.
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

mod downlink;
mod recovery;
mod sockets;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use crate::client::group::DownlinkStats;
use crate::client::{ClientCore, ClientError, ClientEvent, ClientOptions, SendError};
use crate::wire::RejectReason;

use self::downlink::JoinedDownlink;
use self::recovery::{is_handshake_event, Recovery, Tries};
pub use self::sockets::MulticastIface;
use self::sockets::{
    invalid, open_multicast, recv_datagram, resolve_iface, unscoped_unless_link_local,
    wait_readable, OutIface,
};

/// How long to wait for an answer before sending HELLO again.
const RETRY: Duration = Duration::from_millis(700);

/// How long a refusal waits for a WELCOME racing it before it counts.
const REFUSAL_GRACE: Duration = Duration::from_millis(250);

/// Handshake attempts in a row refused (and not welcomed) that end it.
const REFUSALS_TO_STOP: u32 = 2;

/// How long a hint waits for the established session to prove it false
/// before the re-handshake goes out.
const HINT_GRACE: Duration = Duration::from_millis(200);

/// How often a handshake without group mode is retried after the downlink
/// failed, when automatic recovery is off.
const DOWNLINK_RETRY: Duration = Duration::from_secs(1);

/// A keepalive interval well inside the server's default 60 s client timeout.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(20);

/// Largest message body [`UdpClient::send`] accepts (49,009 bytes): the
/// relay's copy of it (SEQ, SENDER_ID, BODY) must still fit in one TLV once
/// sealed as a Fernet token, whatever the sender's id. The longest is a
/// scoped IPv6 one, `[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535`
/// (58 bytes; a link-local client's is typically 35, an IPv4 one at most 21).
///
/// A named client's id has `NAME@` (up to 33 bytes) in front (v2 §5). The
/// limit is not lowered for it: the relay refuses (drop cause `oversize`)
/// a body whose relayed copy no longer fits a receiver's token, which only
/// happens when name and address together pass 58 bytes (an IPv4 client
/// with any name never does) and the body is within 33 bytes of this
/// maximum. Unnamed clients keep the full size.
pub const MAX_BODY_LEN: usize = {
    // A Fernet token is the padded base64url of version (1) + timestamp (8)
    // + IV (16) + AES-CBC ciphertext + HMAC (32) = 57 bytes + ciphertext.
    let raw = crate::wire::tlv::MAX_VALUE_LEN / 4 * 3;
    // PKCS#7 always adds 1..=16 bytes, up to a multiple of 16.
    let plain = (raw - 57) / 16 * 16 - 1;
    let (seq, sender_id, body_header) = (4 + 8, 4 + 58, 4);
    plain - seq - sender_id - body_header
};

/// Where the client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The server's unicast address (IPv4 or IPv6; a link-local IPv6
    /// address needs its scope, `[fe80::1%3]:5007`).
    Unicast(SocketAddr),
    /// The multicast group the server joined.
    Multicast {
        /// Group address, IPv4 or IPv6.
        group: IpAddr,
        /// Port.
        port: u16,
        /// Interface to send from: IP_MULTICAST_IF (by its IPv4 address)
        /// for an IPv4 group, IPV6_MULTICAST_IF (by its index) for IPv6.
        /// Resolved once, by [`UdpClient::new`].
        iface: MulticastIface,
        /// Multicast TTL (IPv4) or hop limit (IPv6), 0..=255: 0 keeps
        /// datagrams on this host.
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
    /// The server ended the session because our credential was revoked
    /// (our own PEER_LEFT, reason 5): trying again would only be refused.
    Revoked,
    /// No answer in time.
    Timeout,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "socket error: {e}"),
            ConnectError::Pin(e) => write!(f, "{e}"),
            ConnectError::Rejected(r) => write!(f, "server refused the session: {r:?}"),
            ConnectError::Revoked => write!(f, "server revoked this client's credential"),
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
    dest: SocketAddr,
    /// Where HELLOs of a fresh handshake go for a group target: the group
    /// (for IPv6 with the interface as its scope).
    group_dest: Option<SocketAddr>,
    /// The group target's interface, resolved: group sends leave by it,
    /// and the downlink is joined on it.
    out_iface: Option<OutIface>,
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
    /// The group downlink joined, while group mode is on.
    downlink: Option<JoinedDownlink>,
}

impl UdpClient {
    /// Opens a socket for `target` (nothing is sent yet). Keepalives and
    /// automatic recovery start switched off.
    ///
    /// # Errors
    /// Socket errors; for a [`Target::Multicast`], also `NotFound` when
    /// its interface does not exist (or, for an IPv4 group, has no IPv4
    /// address) and `InvalidInput` when the group is not multicast or the
    /// TTL is over 255, each with a one-line message.
    pub fn new(target: Target, opts: ClientOptions) -> io::Result<Self> {
        let (sock, dest, server, out_iface) = match target {
            Target::Unicast(addr) => {
                let addr = unscoped_unless_link_local(addr);
                let bind: SocketAddr = if addr.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                (UdpSocket::bind(bind)?, addr, Some(addr), None)
            }
            Target::Multicast {
                group,
                port,
                iface,
                ttl,
            } => {
                if !group.is_multicast() {
                    return Err(invalid(format!("{group} is not a multicast group")));
                }
                if ttl > 255 {
                    return Err(invalid(format!("multicast TTL {ttl} is outside 0..=255")));
                }
                let out = resolve_iface(&iface, group.is_ipv6())?;
                let (sock, dest) = open_multicast(group, port, out, ttl)?;
                (sock, dest, None, Some(out))
            }
        };
        Ok(UdpClient {
            sock,
            dest,
            group_dest: out_iface.map(|_| dest),
            out_iface,
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
            downlink: None,
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

    /// The group downlink this client has joined, while in group mode.
    pub fn downlink(&self) -> Option<SocketAddr> {
        self.downlink.as_ref().map(|d| d.addr)
    }

    /// What arrived on the group downlink and what became of it.
    pub fn downlink_stats(&self) -> DownlinkStats {
        self.core.downlink_stats()
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
            if let Some(group) = self.group_dest {
                self.dest = group;
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

    /// Reads datagrams (from the server, and from the downlink in group
    /// mode) until `until` or until at least one event is queued.
    fn pump(&mut self, until: Instant) -> Result<(), ConnectError> {
        while self.events.is_empty() {
            let now = Instant::now();
            let Some(wait) = until.checked_duration_since(now).filter(|d| !d.is_zero()) else {
                return Ok(());
            };
            let (session, downlink) =
                wait_readable(&self.sock, self.downlink.as_ref().map(|d| &d.sock), wait)?;
            if session {
                self.read_session(wait)?;
            }
            if let (true, Some(d)) = (downlink, &self.downlink) {
                d.sock.set_read_timeout(Some(wait))?;
                if let Some((n, from)) = recv_datagram(&d.sock, &mut self.buf)? {
                    self.core.handle_downlink(
                        Instant::now(),
                        from,
                        &self.buf[..n],
                        &mut self.scratch_events,
                    );
                    self.after_datagram();
                }
            }
            self.sync_downlink()?;
        }
        Ok(())
    }

    /// Reads one datagram from the session socket, which poll(2) found
    /// readable (`wait` bounds the read should that have been spurious).
    fn read_session(&mut self, wait: Duration) -> Result<(), ConnectError> {
        self.sock.set_read_timeout(Some(wait))?;
        let Some((n, from)) = recv_datagram(&self.sock, &mut self.buf)? else {
            return Ok(());
        };
        if self.server.is_some_and(|s| s != from) {
            return Ok(());
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
        Ok(())
    }

    /// Files the core's events and hint after a datagram.
    fn after_datagram(&mut self) {
        let now = Instant::now();
        // With recovery on, REJECTs are this shell's business: it reports
        // the hints it acts on, and refusals of its own handshakes.
        let filter = self.reconnect_every.is_some()
            && (self.core.is_established() || self.recovery.is_some());
        let mut downlink_silent = false;
        for e in self.scratch_events.drain(..) {
            let welcomed = matches!(e, ClientEvent::Welcome { .. })
                && self.core.is_established()
                && !self.core.is_rehandshaking();
            // The recovery is over; one the client started itself to leave
            // group mode is not news to the caller.
            if welcomed && self.recovery.take().is_some_and(|r| r.quiet) {
                continue;
            }
            match &e {
                ClientEvent::ServerKey { fingerprint } => {
                    self.fingerprint = Some(fingerprint.clone());
                    if let Some(rec) = &mut self.recovery {
                        rec.key_accepted = true;
                    }
                }
                ClientEvent::DownlinkSilent(_) => downlink_silent = true,
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
        if downlink_silent {
            self.quiet_recovery(now);
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

    /// Sends what the keepalive and recovery timers ask for; returns when
    /// they next need attention.
    fn run_timers(&mut self, now: Instant) -> Result<Option<Instant>, ConnectError> {
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            // Key requests, downlink probes, expiries.
            self.core
                .handle_timeout(now, &mut self.out, &mut self.scratch_events);
            self.flush()?;
            self.after_datagram();
            self.sync_downlink()?;
        }
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
        Ok([recovery_at, keepalive_at, self.core.poll_timeout()]
            .into_iter()
            .flatten()
            .min())
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
            // After the revocation notice itself has been read.
            if self.core.is_revoked() {
                self.recovery = None;
                return Err(ConnectError::Revoked);
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
        match self.core.try_send(body, &mut self.out) {
            Ok(()) => self.flush().map(|()| true),
            Err(SendError::NotEstablished) => Ok(false),
            Err(e @ SendError::TooLarge { .. }) => {
                Err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
            }
        }
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
        self.sync_downlink()?;
        Ok(ok)
    }
}

/// The system clock's Unix seconds (0 if it reads before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
