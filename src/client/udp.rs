//! The Rust client: [`UdpClient`], a blocking client on a std UDP socket.
//! It puts the sans-IO [`ClientCore`] (handshake, Fernet sessions,
//! fragmentation both ways, the anti-replay window on receive) on a socket
//! and adds retries, timeouts, optional automatic keepalives and optional
//! automatic recovery after the server forgot the session (REJECT
//! UNKNOWN_SESSION, a restart, SERVER_CLOSING). Used by `mcrelay
//! chat/send/listen`, the examples and the tests.
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
    /// The server's key did not match the pin.
    Pin(ClientError),
    /// The server refused the session.
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
    /// Next HELLO of an automatic recovery; None while not recovering.
    rehello_at: Option<Instant>,
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
            rehello_at: None,
        })
    }

    /// Makes [`UdpClient::recv`] send a KEEPALIVE whenever nothing was sent
    /// for `every` while a session is established (None: never). Pick it
    /// well inside the server's client timeout (60 s by default), e.g.
    /// [`DEFAULT_KEEPALIVE`].
    pub fn set_keepalive(&mut self, every: Option<Duration>) {
        self.keepalive_every = every;
    }

    /// Makes the client recover by itself (None: never). After REJECT
    /// UNKNOWN_SESSION (the server restarted or timed us out) or
    /// SERVER_CLOSING, [`UdpClient::recv`] sends HELLO at once and then
    /// every `every` until a new WELCOME arrives. The events of the new
    /// handshake (`ServerKey`, `Welcome`) come out of `recv` so the caller
    /// can tell the user; a pinned key is still checked.
    pub fn set_auto_reconnect(&mut self, every: Option<Duration>) {
        self.reconnect_every = every;
        if every.is_none() {
            self.rehello_at = None;
        }
    }

    /// True while an automatic recovery is waiting for a new WELCOME.
    pub fn is_reconnecting(&self) -> bool {
        self.rehello_at.is_some()
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

    /// Sends a HELLO, aimed at the group again when the target is one, so
    /// that whichever server now answers there is found.
    fn send_hello(&mut self) -> io::Result<()> {
        if let Target::Multicast { group, port, .. } = self.target {
            self.dest = SocketAddr::from((group, port));
            self.server = None;
        }
        let hello = self.core.hello();
        self.send_raw(&hello)
    }

    /// Runs the handshake until WELCOME; returns our id. Events that arrive
    /// meanwhile are kept for [`UdpClient::recv`]. Calling it again starts
    /// a new session (the server replaces the old key).
    pub fn connect(&mut self, timeout: Duration) -> Result<String, ConnectError> {
        let deadline = Instant::now() + timeout;
        self.rehello_at = None;
        self.send_hello()?;
        let mut retry_at = Instant::now() + RETRY;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ConnectError::Timeout);
            }
            if now >= retry_at {
                // Lost HELLO, answer or SESSION_KEY: start over; the server
                // treats a repeated handshake as a re-key.
                self.send_hello()?;
                retry_at = now + RETRY;
            }
            self.pump(retry_at.min(deadline))?;
            while let Some(i) = self.events.iter().position(is_handshake_event) {
                match self.events.remove(i) {
                    Some(ClientEvent::Welcome { id }) => {
                        // A REJECT answering a datagram of the old session
                        // may have armed a recovery meanwhile: not needed.
                        self.rehello_at = None;
                        return Ok(id);
                    }
                    Some(ClientEvent::Rejected(
                        RejectReason::BadCookie | RejectReason::UnknownSession,
                    )) => {
                        retry_at = Instant::now(); // stale cookie: HELLO again
                    }
                    Some(ClientEvent::Rejected(r)) => return Err(ConnectError::Rejected(r)),
                    _ => {}
                }
            }
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
            if self.server.is_none() && !self.out.is_empty() {
                // Answered a SERVER_KEY sent to the group: talk unicast from now on.
                self.server = Some(from);
                self.dest = from;
            }
            self.flush()?;
            for e in self.scratch_events.drain(..) {
                match &e {
                    ClientEvent::ServerKey { fingerprint } => {
                        self.fingerprint = Some(fingerprint.clone())
                    }
                    ClientEvent::Welcome { .. } => self.rehello_at = None,
                    ClientEvent::Rejected(RejectReason::UnknownSession)
                    | ClientEvent::ServerClosing
                        if self.reconnect_every.is_some() && self.rehello_at.is_none() =>
                    {
                        self.rehello_at = Some(Instant::now());
                    }
                    _ => {}
                }
                self.events.push_back(e);
            }
            r.map_err(ConnectError::Pin)?;
        }
        Ok(())
    }

    /// Sends what the keepalive and recovery timers ask for; returns when
    /// they next need attention.
    fn run_timers(&mut self, now: Instant) -> io::Result<Option<Instant>> {
        if let (Some(at), Some(every)) = (self.rehello_at, self.reconnect_every) {
            if now >= at {
                self.send_hello()?;
                self.rehello_at = Some(now + every);
            }
        }
        let keepalive_at = match self.keepalive_every {
            Some(every) if self.core.is_established() => {
                if now >= self.last_sent + every {
                    self.keepalive()?;
                }
                Some(self.last_sent + every)
            }
            _ => None,
        };
        Ok(match (self.rehello_at, keepalive_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// The next event, or None after `timeout`. Keepalives and recovery
    /// HELLOs go out from here while it waits.
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
        self.rehello_at = None;
        let ok = self.core.bye(&mut self.out);
        self.flush()?;
        Ok(ok)
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
