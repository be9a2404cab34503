//! The IO shell: one `mio::Poll` loop that owns the UDP sockets (one per
//! family), the admin channel and the signal pipes, feeds datagrams and
//! timer ticks to the sans-IO [`Relay`] and sends what it returns: unicast
//! on the socket of its family, and group mode's multicast GROUP_DATA
//! through the downlink sockets, once per served interface
//! (`net::downlink`). It holds no protocol logic of its own. It also keeps
//! the multicast memberships in step with the interfaces (`net::iface`),
//! looking again every `iface::RECHECK`; the downlink follows them.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use crate::net::admin::{Action, Admin};
use crate::net::downlink::Downlink;
use crate::net::federate::Federation;
use crate::net::iface::{self, Memberships};
use crate::net::socket::{Listen, SocketJoiner, UdpSockets};
use crate::relay::{Relay, Transmits};
use log::{info, warn};
use mio::net::{UdpSocket, UnixStream};
use mio::{Events, Interest, Poll, Token};

const UDP4: Token = Token(0);
const UDP6: Token = Token(4);
const SIG_STOP: Token = Token(1);
const SIG_HUP: Token = Token(2);
const ADMIN_LISTENER: Token = Token(3);
const NATS: Token = Token(5);
/// Admin sessions get tokens from here up.
const ADMIN_SESSIONS: usize = 16;

/// Datagrams read per wakeup before timers and other sockets get a turn.
const RECV_BUDGET: usize = 256;

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
pub type Reload = Box<dyn FnMut(&mut Relay, Option<&mut Admin>, &mut Transmits)>;

/// The relay on its sockets.
pub struct Server {
    poll: Poll,
    udp4: Option<UdpSocket>,
    udp6: Option<UdpSocket>,
    memberships: Memberships,
    downlink: Downlink,
    recheck_at: Instant,
    signals: Signals,
    relay: Relay,
    admin: Option<Admin>,
    out: Transmits,
    buf: Vec<u8>,
    reload: Option<Reload>,
    federation: Option<Federation>,
}

impl Server {
    /// Wraps the opened sockets and a relay core; `listen` says which
    /// groups to keep joined on which interfaces (joined on the first turn).
    /// Opens the downlink sockets for the relay's downlinks.
    pub fn new(
        udp: UdpSockets,
        listen: &Listen,
        relay: Relay,
        signals: Signals,
        admin: Option<Admin>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let downlink =
            Downlink::open(relay.downlinks(), listen.downlink_ttl).map_err(io::Error::other)?;
        let mut udp4 = udp.v4.map(UdpSocket::from_std);
        let mut udp6 = udp.v6.map(UdpSocket::from_std);
        let mut signals = signals;
        for (sock, token) in [(&mut udp4, UDP4), (&mut udp6, UDP6)] {
            if let Some(sock) = sock {
                poll.registry().register(sock, token, Interest::READABLE)?;
            }
        }
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
            udp4,
            udp6,
            memberships: Memberships::new(listen.group_v4, listen.group_v6, &listen.ifaces),
            downlink,
            recheck_at: Instant::now(),
            signals,
            relay,
            admin,
            out: Transmits::new(),
            buf: vec![0; 65536],
            reload: None,
            federation: None,
        })
    }

    /// Sets what SIGHUP does.
    pub fn on_reload(&mut self, reload: Reload) {
        self.reload = Some(reload);
    }

    /// Federates the relay through this link (`--federate`); its socket
    /// joins the loop once the link asks for a connection.
    pub fn federate(&mut self, link: crate::federation::link::Link) {
        self.federation = Some(Federation::new(link, NATS));
    }

    /// The group mode downlinks (none with group mode off).
    pub fn downlinks(&self) -> Vec<SocketAddr> {
        self.relay.downlinks().to_vec()
    }

    /// The bound UDP addresses (IPv4 first).
    pub fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        [&self.udp4, &self.udp6]
            .into_iter()
            .flatten()
            .map(|s| s.local_addr())
            .collect()
    }

    /// Joins what the interfaces now allow and leaves what they no longer
    /// do; logs each change. Called at start and every `iface::RECHECK`.
    fn recheck_ifaces(&mut self, now: Instant) {
        self.recheck_at = now + iface::RECHECK;
        let snapshot = match iface::snapshot() {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot list interfaces: {e}");
                return;
            }
        };
        let mut joiner = SocketJoiner {
            v4: self.udp4.as_ref(),
            v6: self.udp6.as_ref(),
        };
        let mut changed = false;
        for change in self.memberships.reconcile(&snapshot, &mut joiner) {
            changed = true;
            match change {
                iface::Change::Failed(..) | iface::Change::Waiting(..) => warn!("{change}"),
                _ => info!("{change}"),
            }
        }
        self.downlink
            .set_interfaces(&self.memberships.joined(), &snapshot);
        let (v4, v6) = self.downlink.interfaces();
        self.relay.set_downlink_up(v4 > 0, v6 > 0);
        if changed && !self.relay.downlinks().is_empty() {
            info!("group mode downlink goes out on {v4} IPv4 and {v6} IPv6 interfaces");
        }
        if let Some(admin) = self.admin.as_mut() {
            admin.set_ifaces(self.memberships.describe());
        }
    }

    /// Runs until SIGINT or SIGTERM, then tells every client the server is
    /// closing.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        self.recheck_ifaces(Instant::now());
        loop {
            let now = Instant::now();
            if now >= self.recheck_at {
                self.recheck_ifaces(now);
            }
            let timeout = if self.admin.as_ref().is_some_and(Admin::busy) {
                // Admin input left over from the last turn: no readiness
                // event will announce it again.
                Some(Duration::ZERO)
            } else {
                let deadline = match self.relay.poll_timeout() {
                    Some(t) => t.min(self.recheck_at),
                    None => self.recheck_at,
                };
                let deadline = match self.federation.as_ref().and_then(|f| f.poll_timeout(now)) {
                    Some(t) => t.min(deadline),
                    None => deadline,
                };
                Some(
                    deadline
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(1)),
                )
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut stop = false;
            for ev in events.iter() {
                match ev.token() {
                    UDP4 | UDP6 => self.read_udp(ev.token()),
                    SIG_STOP => {
                        drain(&mut self.signals.stop);
                        info!("signal received");
                        stop = true;
                    }
                    SIG_HUP => {
                        drain(&mut self.signals.hup);
                        if let Some(reload) = self.reload.as_mut() {
                            reload(&mut self.relay, self.admin.as_mut(), &mut self.out);
                        }
                    }
                    token if self.federation.as_ref().is_some_and(|f| f.owns(token)) => {
                        if let Some(fed) = self.federation.as_mut() {
                            fed.handle_event(self.poll.registry(), ev, Instant::now());
                        }
                    }
                    token => {
                        if let Some(admin) = self.admin.as_mut().filter(|a| a.owns(token)) {
                            admin.handle(self.poll.registry(), token);
                        }
                    }
                }
            }
            if let Some(admin) = self.admin.as_mut().filter(|a| a.busy()) {
                // What the admin channel shows of the federation, taken only
                // when a command may want it.
                if let Some(fed) = self.federation.as_ref() {
                    let now = Instant::now();
                    admin.set_federation(Some(fed.view(now)));
                }
            }
            if let Some(admin) = self.admin.as_mut() {
                // A bounded share of admin work per turn, after this turn's UDP.
                let action = admin.run(&mut self.relay, &mut self.out, Instant::now());
                stop |= action == Action::Shutdown;
            }
            self.relay.handle_timeout(Instant::now(), &mut self.out);
            match self.federation.as_mut() {
                Some(fed) => fed.turn(
                    self.poll.registry(),
                    &mut self.relay,
                    &mut self.out,
                    Instant::now(),
                ),
                // Nobody else wants the relay's events: dropped each turn.
                None => self.relay.drain_events().for_each(drop),
            }
            self.send_all();
            if stop {
                info!("shutting down");
                if let Some(fed) = self.federation.as_mut() {
                    let members: Vec<String> = self
                        .relay
                        .clients(Instant::now())
                        .iter()
                        .map(|c| c.id.to_string())
                        .collect();
                    fed.shutdown(self.poll.registry(), &mut self.relay, &members);
                }
                self.relay.shutdown(&mut self.out);
                self.send_all();
                let mut joiner = SocketJoiner {
                    v4: self.udp4.as_ref(),
                    v6: self.udp6.as_ref(),
                };
                self.memberships.leave_all(&mut joiner);
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

    fn read_udp(&mut self, token: Token) {
        for _ in 0..RECV_BUDGET {
            let sock = if token == UDP4 {
                &self.udp4
            } else {
                &self.udp6
            };
            let Some(sock) = sock else {
                return;
            };
            match sock.recv_from(&mut self.buf) {
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
        self.read_udp_again_soon(token);
    }

    fn read_udp_again_soon(&mut self, token: Token) {
        let sock = if token == UDP4 {
            self.udp4.as_mut()
        } else {
            self.udp6.as_mut()
        };
        // Re-registering re-arms the edge so the remaining datagrams wake us.
        if let Some(sock) = sock {
            if let Err(e) = self
                .poll
                .registry()
                .reregister(sock, token, Interest::READABLE)
            {
                warn!("udp reregister: {e}");
            }
        }
    }

    fn send_all(&mut self) {
        if self.out.is_empty() {
            return; // called after every wakeup: no batch to set up
        }
        let mut errors = 0u64;
        // Batched (sendmmsg on Linux): the send syscall is most of a
        // delivery's cost, so one kernel entry per batch, not per datagram.
        // Each family goes out of its own socket.
        for (sock, v4) in [(&self.udp4, true), (&self.udp6, false)] {
            let mine = self
                .out
                .iter()
                .filter(|(dst, _)| dst.is_ipv4() == v4 && !dst.ip().is_multicast());
            let Some(sock) = sock else {
                errors += mine.count() as u64;
                continue;
            };
            crate::net::batch::send_all(sock, mine, |dst, e| {
                // UDP is lossy by contract: a full socket buffer drops the
                // datagram rather than stalling the loop.
                errors += 1;
                log::debug!("udp send to {dst}: {e}");
            });
        }
        // Group mode: the core queues each GROUP_DATA once per downlink;
        // it goes out once per served interface.
        let group = self.out.iter().filter(|(dst, _)| dst.ip().is_multicast());
        self.downlink.send(group, |dst, e| {
            errors += 1;
            log::debug!("downlink send to {dst}: {e}");
        });
        self.relay.stats_mut().send_errors += errors;
        self.out.clear();
    }
}
