//! The IO shell: one `mio::Poll` loop that owns the UDP socket and the
//! signal pipes, feeds datagrams and timer ticks to the sans-IO [`Relay`]
//! and sends what it returns. It holds no protocol logic of its own.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::{UdpSocket, UnixStream};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::net::admin::{Action, Admin};
use crate::relay::{Relay, Transmits};

const UDP: Token = Token(0);
const SIG_STOP: Token = Token(1);
const SIG_HUP: Token = Token(2);
const ADMIN_LISTENER: Token = Token(3);
/// Admin sessions get tokens from here up.
const ADMIN_SESSIONS: usize = 16;

/// Datagrams read per wakeup before timers and other sockets get a turn.
const RECV_BUDGET: usize = 256;

/// Where and how the server listens.
#[derive(Clone, Debug)]
pub struct Listen {
    /// UDP port (0 picks a free one, for tests).
    pub port: u16,
    /// Multicast group to join.
    pub group: Ipv4Addr,
    /// Interfaces to join the group on (0.0.0.0: the kernel's choice).
    pub ifaces: Vec<Ipv4Addr>,
    /// SO_RCVBUF, if set.
    pub recv_buffer: Option<usize>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            port: 5007,
            group: Ipv4Addr::new(239, 255, 0, 77),
            ifaces: vec![Ipv4Addr::UNSPECIFIED],
            recv_buffer: None,
        }
    }
}

/// Opens the relay's UDP socket: 0.0.0.0:port, SO_REUSEADDR, group joined
/// on every interface. Errors name what failed.
pub fn open_udp(listen: &Listen) -> Result<std::net::UdpSocket, String> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| format!("cannot create UDP socket: {e}"))?;
    sock.set_reuse_address(true)
        .map_err(|e| format!("cannot set SO_REUSEADDR: {e}"))?;
    if let Some(size) = listen.recv_buffer {
        sock.set_recv_buffer_size(size)
            .map_err(|e| format!("cannot set SO_RCVBUF to {size}: {e}"))?;
    }
    let addr = SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, listen.port));
    sock.bind(&addr.into())
        .map_err(|e| format!("cannot bind UDP port {}: {e}", listen.port))?;
    for iface in &listen.ifaces {
        sock.join_multicast_v4(&listen.group, iface).map_err(|e| {
            format!(
                "cannot join group {} on interface {iface}: {e}",
                listen.group
            )
        })?;
    }
    sock.set_nonblocking(true)
        .map_err(|e| format!("cannot make the UDP socket non-blocking: {e}"))?;
    Ok(sock.into())
}

/// What a signal asked for.
pub struct Signals {
    stop: UnixStream,
    hup: UnixStream,
}

impl Signals {
    /// Routes SIGINT/SIGTERM and SIGHUP into two self-pipes the loop polls.
    pub fn install() -> io::Result<Self> {
        let pipe = |signals: &[i32]| -> io::Result<UnixStream> {
            let (read, write) = StdUnixStream::pair()?;
            for &s in signals {
                signal_hook::low_level::pipe::register(s, write.try_clone()?)?;
            }
            read.set_nonblocking(true)?;
            Ok(UnixStream::from_std(read))
        };
        Ok(Signals {
            stop: pipe(&[signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?,
            hup: pipe(&[signal_hook::consts::SIGHUP])?,
        })
    }
}

/// Empties a self-pipe (the signal is level-triggered by its content).
fn drain(s: &mut UnixStream) {
    let mut buf = [0u8; 64];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// Called on SIGHUP: re-reads whatever files the caller owns.
pub type Reload = Box<dyn FnMut(&mut Relay, Option<&mut Admin>)>;

/// The relay on its sockets.
pub struct Server {
    poll: Poll,
    udp: UdpSocket,
    signals: Signals,
    relay: Relay,
    admin: Option<Admin>,
    out: Transmits,
    buf: Vec<u8>,
    reload: Option<Reload>,
}

impl Server {
    /// Wraps an opened socket and a relay core.
    pub fn new(
        udp: std::net::UdpSocket,
        relay: Relay,
        signals: Signals,
        admin: Option<Admin>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut udp = UdpSocket::from_std(udp);
        let mut signals = signals;
        poll.registry()
            .register(&mut udp, UDP, Interest::READABLE)?;
        poll.registry()
            .register(&mut signals.stop, SIG_STOP, Interest::READABLE)?;
        poll.registry()
            .register(&mut signals.hup, SIG_HUP, Interest::READABLE)?;
        let mut admin = admin;
        if let Some(a) = admin.as_mut() {
            a.register(poll.registry(), ADMIN_LISTENER, ADMIN_SESSIONS)?;
        }
        Ok(Server {
            poll,
            udp,
            signals,
            relay,
            admin,
            out: Transmits::new(),
            buf: vec![0; 65536],
            reload: None,
        })
    }

    /// Sets what SIGHUP does.
    pub fn on_reload(&mut self, reload: Reload) {
        self.reload = Some(reload);
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Runs until SIGINT or SIGTERM, then tells every client the server is
    /// closing.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            let timeout = if self.admin.as_ref().is_some_and(Admin::busy) {
                // Admin input left over from the last turn: no readiness
                // event will announce it again.
                Some(Duration::ZERO)
            } else {
                self.relay.poll_timeout().map(|t| {
                    t.saturating_duration_since(now)
                        .max(Duration::from_millis(1))
                })
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut stop = false;
            for ev in events.iter() {
                match ev.token() {
                    UDP => self.read_udp(),
                    SIG_STOP => {
                        drain(&mut self.signals.stop);
                        info!("signal received");
                        stop = true;
                    }
                    SIG_HUP => {
                        drain(&mut self.signals.hup);
                        if let Some(reload) = self.reload.as_mut() {
                            reload(&mut self.relay, self.admin.as_mut());
                        }
                    }
                    token => {
                        if let Some(admin) = self.admin.as_mut().filter(|a| a.owns(token)) {
                            admin.handle(self.poll.registry(), token);
                        }
                    }
                }
            }
            if let Some(admin) = self.admin.as_mut() {
                // A bounded share of admin work per turn, after this turn's UDP.
                let action = admin.run(&mut self.relay, &mut self.out, Instant::now());
                stop |= action == Action::Shutdown;
            }
            self.relay.handle_timeout(Instant::now(), &mut self.out);
            self.send_all();
            if stop {
                info!("shutting down");
                self.relay.shutdown(&mut self.out);
                self.send_all();
                if let Some(admin) = self.admin.as_mut() {
                    admin.flush(self.poll.registry());
                    admin.farewell(self.poll.registry(), "server shutting down");
                }
                return Ok(());
            }
            if let Some(admin) = self.admin.as_mut() {
                admin.flush(self.poll.registry());
            }
        }
    }

    fn read_udp(&mut self) {
        for _ in 0..RECV_BUDGET {
            match self.udp.recv_from(&mut self.buf) {
                Ok((n, src)) => {
                    self.relay
                        .handle_datagram(Instant::now(), src, &self.buf[..n], &mut self.out);
                    if self.out.len() >= 1024 {
                        self.send_all();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; they are not fatal.
                    log::debug!("udp recv: {e}");
                }
            }
        }
        // Budget spent with data still queued: mio is edge-triggered, so
        // the next poll must not wait.
        self.send_all();
        self.read_udp_again_soon();
    }

    fn read_udp_again_soon(&mut self) {
        // Re-registering re-arms the edge so the remaining datagrams wake us.
        if let Err(e) = self
            .poll
            .registry()
            .reregister(&mut self.udp, UDP, Interest::READABLE)
        {
            warn!("udp reregister: {e}");
        }
    }

    fn send_all(&mut self) {
        if self.out.is_empty() {
            return; // called after every wakeup: no batch to set up
        }
        let mut errors = 0u64;
        // Batched (sendmmsg on Linux): the send syscall is most of a
        // delivery's cost, so one kernel entry per batch, not per datagram.
        crate::net::batch::send_all(&self.udp, self.out.iter(), |dst, e| {
            // UDP is lossy by contract: a full socket buffer drops the
            // datagram rather than stalling the loop.
            errors += 1;
            log::debug!("udp send to {dst}: {e}");
        });
        self.relay.stats_mut().send_errors += errors;
        self.out.clear();
    }
}
