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

use std::collections::VecDeque;
use std::ffi::CString;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};

use crate::client::group::DownlinkStats;
use crate::client::{ClientCore, ClientError, ClientEvent, ClientOptions, SendError};
use crate::net::iface::snapshot;
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

/// The interface a [`Target::Multicast`] sends from and joins the group
/// downlink on, as the user named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MulticastIface {
    /// The kernel's choice (the route to the group).
    Any,
    /// The interface that holds this address. An IPv4 address is used as
    /// it is for an IPv4 group, without looking it up.
    Addr(IpAddr),
    /// An interface by name (`eth0`, `br-lan`).
    Name(String),
    /// An interface by index (as `ip link` numbers them).
    Index(u32),
}

impl MulticastIface {
    /// Reads an interface the way `--iface` takes it: an address (`::`
    /// and `0.0.0.0` are [`MulticastIface::Any`]), an index (digits
    /// only), or else a name.
    ///
    /// # Errors
    /// A one-line message when `s` is none of these (a name is 1 to 15
    /// printable characters without spaces or `/`).
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(ip.into());
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u32>() {
                Ok(i) if i > 0 => Ok(MulticastIface::Index(i)),
                _ => Err(format!("interface index {s} is outside 1..=4294967295")),
            };
        }
        // IFNAMSIZ is 16 with the NUL; the kernel refuses '/' and spaces.
        let ok =
            !s.is_empty() && s.len() < 16 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
        if ok {
            Ok(MulticastIface::Name(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is neither an address, an interface index nor an interface name"
            ))
        }
    }
}

impl std::str::FromStr for MulticastIface {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        MulticastIface::parse(s)
    }
}

impl From<IpAddr> for MulticastIface {
    fn from(ip: IpAddr) -> Self {
        if ip.is_unspecified() {
            MulticastIface::Any
        } else {
            MulticastIface::Addr(ip)
        }
    }
}

impl From<Ipv4Addr> for MulticastIface {
    fn from(ip: Ipv4Addr) -> Self {
        IpAddr::V4(ip).into()
    }
}

impl From<Ipv6Addr> for MulticastIface {
    fn from(ip: Ipv6Addr) -> Self {
        IpAddr::V6(ip).into()
    }
}

impl fmt::Display for MulticastIface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MulticastIface::Any => f.write_str("any"),
            MulticastIface::Addr(a) => write!(f, "{a}"),
            MulticastIface::Name(n) => f.write_str(n),
            MulticastIface::Index(i) => write!(f, "index {i}"),
        }
    }
}

/// A [`MulticastIface`] resolved for one family, once, at
/// [`UdpClient::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutIface {
    /// IPv4: the interface's address (unspecified: the kernel's choice).
    V4(Ipv4Addr),
    /// IPv6: the interface's index (0: the kernel's choice).
    V6(u32),
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

/// The second socket of group mode, member of the downlink group.
struct JoinedDownlink {
    sock: UdpSocket,
    addr: SocketAddr,
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
    /// Started by the client itself to leave group mode: its WELCOME is
    /// not reported (the session goes on, only the transport changed).
    quiet: bool,
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

    /// Makes the downlink socket follow the core: joined while group mode
    /// is on, closed (which leaves the group) when it ends. A downlink that
    /// cannot be joined ends group mode.
    fn sync_downlink(&mut self) -> io::Result<()> {
        let want = self.core.downlink();
        if self.downlink.as_ref().map(|d| d.addr) == want {
            return Ok(());
        }
        self.downlink = None;
        let Some(addr) = want else { return Ok(()) };
        match join_downlink(addr, self.join_iface(), self.join_index()) {
            Ok(sock) => self.downlink = Some(JoinedDownlink { sock, addr }),
            Err(_) => {
                // Nothing can arrive there: ask to be served per recipient.
                if let Some(hello) = self.core.leave_group() {
                    self.out.push(hello);
                    self.flush()?;
                    self.events.push_back(ClientEvent::DownlinkSilent(addr));
                    self.quiet_recovery(Instant::now());
                }
            }
        }
        Ok(())
    }

    /// The interface to join an IPv4 downlink on: the target's, else the
    /// local address that routes to the server.
    fn join_iface(&self) -> Ipv4Addr {
        if let Some(OutIface::V4(ip)) = self.out_iface {
            if !ip.is_unspecified() {
                return ip;
            }
        }
        match self.server.and_then(local_route) {
            Some(IpAddr::V4(ip)) => ip,
            _ => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// The interface index to join an IPv6 downlink on: the target's, else
    /// the server's scope (a link-local server), else the interface that
    /// holds the local address routing to the server, else 0 (the kernel's
    /// choice).
    fn join_index(&self) -> u32 {
        if let Some(OutIface::V6(index)) = self.out_iface {
            if index != 0 {
                return index;
            }
        }
        let Some(SocketAddr::V6(server)) = self.server else {
            return 0;
        };
        if server.scope_id() != 0 {
            return server.scope_id();
        }
        let Some(IpAddr::V6(local)) = local_route(SocketAddr::V6(server)) else {
            return 0;
        };
        snapshot()
            .ok()
            .and_then(|now| now.into_iter().find(|i| i.v6.contains(&local)))
            .map_or(0, |i| i.index)
    }

    /// Retries the background handshake the core started to leave group
    /// mode, without telling the caller about its WELCOME.
    fn quiet_recovery(&mut self, now: Instant) {
        self.last_hello = Some(now);
        if self.recovery.is_some() {
            return; // one under way already sends HELLOs
        }
        let every = self.reconnect_every.unwrap_or(DOWNLINK_RETRY);
        let mut rec = Recovery::new(now, now + every, None, &self.core);
        rec.tries.started = Some(now);
        rec.quiet = true;
        self.recovery = Some(rec);
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

    /// Runs the recovery: HELLOs when due, and the end of it (welcomed,
    /// proven false, or refused for good). Returns when it next needs
    /// attention.
    fn run_recovery(&mut self, now: Instant) -> Result<Option<Instant>, ConnectError> {
        let Some(rec) = &mut self.recovery else {
            return Ok(None);
        };
        let every = self.reconnect_every.unwrap_or(DOWNLINK_RETRY);
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
            quiet: false,
        }
    }
}

fn is_handshake_event(e: &ClientEvent) -> bool {
    matches!(
        e,
        ClientEvent::Welcome { .. } | ClientEvent::Rejected(_) | ClientEvent::ServerKey { .. }
    )
}

/// Waits until the session socket or the downlink socket is readable, or
/// `timeout` passed; says which are.
fn wait_readable(
    session: &UdpSocket,
    downlink: Option<&UdpSocket>,
    timeout: Duration,
) -> io::Result<(bool, bool)> {
    let fd = |s: &UdpSocket| libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [fd(session), downlink.map_or(fd(session), fd)];
    let n: libc::nfds_t = if downlink.is_some() { 2 } else { 1 };
    // Rounded up: a wait of 0 ms with time left would spin.
    let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    // SAFETY: `fds` is a live array of at least `n` pollfd structs, whose
    // descriptors belong to sockets borrowed for the whole call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        // EINTR: the caller's loop looks at the clock and waits again.
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok((false, false))
        } else {
            Err(e)
        };
    }
    // POLLERR (an ICMP error queued) is read, and ignored, by recv_from.
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLERR) != 0;
    Ok((ready(&fds[0]), downlink.is_some() && ready(&fds[1])))
}

/// One datagram from a socket poll(2) found readable; None when there was
/// nothing after all, or an error that only concerns an earlier datagram.
fn recv_datagram(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
    match sock.recv_from(buf) {
        Ok(x) => Ok(Some(x)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        // EINTR, or an ICMP error some systems report for an earlier
        // datagram to a server that is down: keep waiting, the retry and
        // recovery timers deal with a dead server.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `addr` as the server's answers will come from: the kernel gives a
/// scope (and the flow label) only to link-local sources, and answers are
/// matched to the server's address exactly.
fn unscoped_unless_link_local(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) if !a.ip().is_unicast_link_local() => {
            SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, 0))
        }
        SocketAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, a.scope_id())),
        v4 => v4,
    }
}

/// The local address the system would send from to reach `server` (a
/// route lookup: connecting a UDP socket sends nothing).
fn local_route(server: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = UdpSocket::bind(bind).ok()?;
    probe.connect(server).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn not_found(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, msg)
}

/// Resolves `iface` for a group of one family: an IPv4 group needs the
/// interface's IPv4 address (IP_MULTICAST_IF, and the IPv4 join, take
/// one), an IPv6 group its index (IPv6 multicast is per interface).
///
/// # Errors
/// `NotFound`, with a one-line message, when no interface matches or an
/// IPv4 group's interface has no IPv4 address.
fn resolve_iface(iface: &MulticastIface, v6: bool) -> io::Result<OutIface> {
    match (iface, v6) {
        (MulticastIface::Any, false) => return Ok(OutIface::V4(Ipv4Addr::UNSPECIFIED)),
        (MulticastIface::Any, true) => return Ok(OutIface::V6(0)),
        // As IPv4 clients always did: the kernel checks the address.
        (MulticastIface::Addr(IpAddr::V4(a)), false) => return Ok(OutIface::V4(*a)),
        (MulticastIface::Name(name), true) => {
            let index = CString::new(name.as_str())
                // SAFETY: a valid NUL-terminated string, read only.
                .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
                .unwrap_or(0);
            return match index {
                0 => Err(not_found(format!("no interface named {name}"))),
                i => Ok(OutIface::V6(i)),
            };
        }
        _ => {}
    }
    // An address to find, an index to check, or an IPv4 group's interface
    // by name or index, which needs its address.
    let now = snapshot()?;
    let found = now.iter().find(|i| match iface {
        MulticastIface::Any => false,
        MulticastIface::Addr(IpAddr::V4(a)) => i.v4.contains(a),
        MulticastIface::Addr(IpAddr::V6(a)) => i.v6.contains(a),
        MulticastIface::Name(n) => i.name == *n,
        MulticastIface::Index(x) => i.index == *x,
    });
    let Some(found) = found else {
        return Err(not_found(match iface {
            MulticastIface::Addr(a) => format!("no interface has the address {a}"),
            MulticastIface::Name(n) => format!("no interface named {n}"),
            other => format!("no interface of {other}"),
        }));
    };
    if v6 {
        return Ok(OutIface::V6(found.index));
    }
    match found.v4.first() {
        Some(a) => Ok(OutIface::V4(*a)),
        None => Err(not_found(format!(
            "interface {} has no IPv4 address to send an IPv4 group from",
            found.name
        ))),
    }
}

/// The socket of a group target, sending out of `out` with `ttl` (TTL or
/// hop limit), looped back so that a relay on this host hears it; and the
/// destination, which for IPv6 carries the interface as its scope.
fn open_multicast(
    group: IpAddr,
    port: u16,
    out: OutIface,
    ttl: u32,
) -> io::Result<(UdpSocket, SocketAddr)> {
    match (group, out) {
        (IpAddr::V4(group), OutIface::V4(iface)) => {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_multicast_if_v4(&iface)?;
            s.set_multicast_ttl_v4(ttl)?;
            s.set_multicast_loop_v4(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
            Ok((s.into(), SocketAddr::from((group, port))))
        }
        (IpAddr::V6(group), OutIface::V6(index)) => {
            let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_only_v6(true)?;
            if index != 0 {
                s.set_multicast_if_v6(index)?;
            }
            s.set_multicast_hops_v6(ttl)?;
            s.set_multicast_loop_v6(true)?;
            s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
            // A link-local group (ff02::) means nothing without its link;
            // the kernel ignores the scope of wider groups.
            let dest = SocketAddrV6::new(group, port, 0, index);
            Ok((s.into(), SocketAddr::V6(dest)))
        }
        _ => Err(invalid(format!("{group}: interface of the other family"))),
    }
}

/// A socket on the downlink's port, member of its group on `iface` (IPv4)
/// or on the interface of index `index` (IPv6; 0: the system's choice).
/// SO_REUSEADDR lets several clients of one host bind the port; each gets
/// its own copy of every group datagram.
fn join_downlink(addr: SocketAddr, iface: Ipv4Addr, index: u32) -> io::Result<UdpSocket> {
    if !addr.ip().is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("downlink {addr} is not a multicast group"),
        ));
    }
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    match addr.ip() {
        IpAddr::V4(group) => {
            // Only this socket's own groups, not every group some other
            // socket of the host joined on this port (Linux's default).
            #[cfg(target_os = "linux")]
            s.set_multicast_all_v4(false)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())).into())?;
            s.join_multicast_v4(&group, &iface)?;
        }
        IpAddr::V6(group) => {
            s.set_only_v6(true)?;
            #[cfg(target_os = "linux")]
            s.set_multicast_all_v6(false)?;
            s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, addr.port())).into())?;
            s.join_multicast_v6(&group, index)?;
        }
    }
    Ok(s.into())
}

/// The system clock's Unix seconds (0 if it reads before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback's index and name, as every Linux host has it.
    fn lo() -> (u32, String) {
        let now = snapshot().unwrap();
        let lo = now.iter().find(|i| i.v4.contains(&Ipv4Addr::LOCALHOST));
        let lo = lo.expect("an interface holding 127.0.0.1");
        (lo.index, lo.name.clone())
    }

    #[test]
    fn iface_parses_as_address_index_or_name() {
        use MulticastIface::*;
        for (text, want) in [
            ("::", Ok(Any)),
            ("0.0.0.0", Ok(Any)),
            ("10.0.0.1", Ok(Addr("10.0.0.1".parse().unwrap()))),
            ("fe80::1", Ok(Addr("fe80::1".parse().unwrap()))),
            ("3", Ok(Index(3))),
            ("eth0", Ok(Name("eth0".into()))),
            ("lan0.20", Ok(Name("lan0.20".into()))),
            ("br-lan", Ok(Name("br-lan".into()))),
        ] {
            assert_eq!(MulticastIface::parse(text), want, "{text}");
        }
        for bad in [
            "",
            "0",
            "99999999999",
            "a/b",
            "two words",
            "sixteen-chars-xx",
        ] {
            assert!(MulticastIface::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_iface_resolves_to_an_index_for_ipv6_and_an_address_for_ipv4() {
        let (index, name) = lo();
        for iface in [
            MulticastIface::Name(name.clone()),
            MulticastIface::Index(index),
            MulticastIface::Addr(Ipv6Addr::LOCALHOST.into()),
            MulticastIface::Addr(Ipv4Addr::LOCALHOST.into()),
        ] {
            assert_eq!(
                resolve_iface(&iface, true).unwrap(),
                OutIface::V6(index),
                "{iface}"
            );
            assert_eq!(
                resolve_iface(&iface, false).unwrap(),
                OutIface::V4(Ipv4Addr::LOCALHOST),
                "{iface}"
            );
        }
        assert_eq!(
            resolve_iface(&MulticastIface::Any, true).unwrap(),
            OutIface::V6(0)
        );
        let missing = MulticastIface::Name("nosuch0".into());
        for v6 in [true, false] {
            let e = resolve_iface(&missing, v6).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound);
            assert_eq!(e.to_string(), "no interface named nosuch0");
        }
        let e = resolve_iface(&MulticastIface::Index(u32::MAX), true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn an_ipv6_group_target_sends_by_index_with_the_ttl_as_hop_limit() {
        let (index, name) = lo();
        let target = Target::Multicast {
            group: "ff02::77".parse().unwrap(),
            port: 5007,
            iface: MulticastIface::Name(name),
            ttl: 7,
        };
        let c = UdpClient::new(target, ClientOptions::default()).unwrap();
        let sock = socket2::SockRef::from(&c.sock);
        assert_eq!(sock.multicast_if_v6().unwrap(), index);
        assert_eq!(sock.multicast_hops_v6().unwrap(), 7);
        assert!(sock.multicast_loop_v6().unwrap());
        let want = SocketAddrV6::new("ff02::77".parse().unwrap(), 5007, 0, index);
        assert_eq!(c.group_dest, Some(SocketAddr::V6(want)));
        // The downlink is joined where the group is sent.
        assert_eq!(c.join_index(), index);

        let target = Target::Multicast {
            group: "239.255.0.77".parse().unwrap(),
            port: 5007,
            iface: MulticastIface::Index(index),
            ttl: 3,
        };
        let c = UdpClient::new(target, ClientOptions::default()).unwrap();
        let sock = socket2::SockRef::from(&c.sock);
        assert_eq!(sock.multicast_if_v4().unwrap(), Ipv4Addr::LOCALHOST);
        assert_eq!(sock.multicast_ttl_v4().unwrap(), 3);
        assert_eq!(c.join_iface(), Ipv4Addr::LOCALHOST);

        for (group, ttl) in [("10.0.0.1", 1), ("ff02::77", 256)] {
            let target = Target::Multicast {
                group: group.parse().unwrap(),
                port: 5007,
                iface: MulticastIface::Any,
                ttl,
            };
            let e = UdpClient::new(target, ClientOptions::default()).err();
            assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
        }
    }

    #[test]
    fn an_ipv6_unicast_client_joins_on_the_interface_routing_to_the_server() {
        let (index, _) = lo();
        let server = SocketAddr::from((Ipv6Addr::LOCALHOST, 5007));
        let c = UdpClient::new(Target::Unicast(server), ClientOptions::default()).unwrap();
        // Known once a server answered; the target's is used until then.
        let c = UdpClient {
            server: Some(server),
            ..c
        };
        assert_eq!(c.join_index(), index);
        // A link-local server names its interface itself.
        let scoped = SocketAddrV6::new("fe80::1".parse().unwrap(), 5007, 0, 42);
        let c = UdpClient {
            server: Some(SocketAddr::V6(scoped)),
            ..c
        };
        assert_eq!(c.join_index(), 42);
        // Answers from a global address carry no scope: none is kept.
        let target = "[::1%7]:5007".parse().unwrap();
        let c = UdpClient::new(Target::Unicast(target), ClientOptions::default()).unwrap();
        assert_eq!(c.server, Some(server));
    }

    /// The memberships of interface `index` in /proc/net/igmp6, as group hex.
    fn igmp6(index: u32) -> Vec<String> {
        let table = std::fs::read_to_string("/proc/net/igmp6").unwrap();
        table
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first()?.parse::<u32>().ok()? == index)
                    .then(|| f.get(2).map(|g| g.to_string()))?
            })
            .collect()
    }

    #[test]
    fn an_ipv6_downlink_is_joined_on_the_interface_index_and_left_on_close() {
        let (index, _) = lo();
        let port = UdpSocket::bind("[::1]:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // A group of this test's own, so that parallel tests cannot mix in.
        let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x6d63, port);
        let hex: String = group.octets().iter().map(|b| format!("{b:02x}")).collect();
        let addr = SocketAddr::from((group, port));
        let sock = join_downlink(addr, Ipv4Addr::UNSPECIFIED, index).unwrap();
        assert!(igmp6(index).contains(&hex), "{:?}", igmp6(index));
        drop(sock);
        assert!(!igmp6(index).contains(&hex), "left with the socket");
    }
}
