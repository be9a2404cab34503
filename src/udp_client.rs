//! A blocking client on a std UDP socket: [`ClientCore`] plus the socket,
//! retries and timeouts. Used by `mcrelay chat/send/listen`, the benchmark
//! and the tests.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::client::{ClientCore, ClientError, ClientEvent, ClientOptions};
use crate::wire::RejectReason;

/// How long to wait for an answer before sending HELLO again.
const RETRY: Duration = Duration::from_millis(700);

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
pub struct UdpClient {
    sock: UdpSocket,
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
}

impl UdpClient {
    /// Opens a socket for `target` (nothing is sent yet).
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
            dest,
            server,
            core: ClientCore::new(opts),
            out: Vec::new(),
            events: VecDeque::new(),
            scratch_events: Vec::new(),
            buf: vec![0; 65536],
            fingerprint: None,
            largest_received: 0,
        })
    }

    /// The local address the server will know us by (port part).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Our id, once welcomed.
    pub fn id(&self) -> Option<&str> {
        self.core.id()
    }

    /// The server's fingerprint, once its key arrived.
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
        }
        Ok(())
    }

    /// Runs the handshake until WELCOME; returns our id. Events that arrive
    /// meanwhile are kept for [`UdpClient::recv`].
    pub fn connect(&mut self, timeout: Duration) -> Result<String, ConnectError> {
        let deadline = Instant::now() + timeout;
        let hello = self.core.hello();
        self.send_raw(&hello)?;
        let mut retry_at = Instant::now() + RETRY;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ConnectError::Timeout);
            }
            if now >= retry_at {
                // Lost HELLO, answer or SESSION_KEY: start over; the server
                // treats a repeated handshake as a re-key.
                let hello = self.core.hello();
                self.send_raw(&hello)?;
                retry_at = now + RETRY;
            }
            self.pump(retry_at.min(deadline))?;
            while let Some(i) = self.events.iter().position(is_handshake_event) {
                match self.events.remove(i) {
                    Some(ClientEvent::Welcome { id }) => return Ok(id),
                    Some(ClientEvent::Rejected(
                        RejectReason::BadCookie | RejectReason::UnknownSession,
                    )) => {
                        retry_at = Instant::now(); // stale cookie: HELLO again
                    }
                    Some(ClientEvent::Rejected(r)) => return Err(ConnectError::Rejected(r)),
                    Some(ClientEvent::ServerKey { fingerprint }) => {
                        self.fingerprint = Some(fingerprint)
                    }
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
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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
            self.events.extend(self.scratch_events.drain(..));
            r.map_err(ConnectError::Pin)?;
        }
        Ok(())
    }

    /// The next event, or None after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<ClientEvent>, ConnectError> {
        if self.events.is_empty() {
            self.pump(Instant::now() + timeout)?;
        }
        Ok(self.events.pop_front())
    }

    /// Sends a message; false if no session is established.
    pub fn send(&mut self, body: &[u8]) -> io::Result<bool> {
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

    /// Sends BYE and ends the session.
    pub fn bye(&mut self) -> io::Result<bool> {
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
