//! Many benchmark clients, each on its own non-blocking UDP socket, driven
//! through the handshake together by one poll loop: the sans-IO
//! [`ClientCore`] does the protocol, this module only moves datagrams.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use mcrelay::wire::RejectReason;
use mcrelay::{ClientCore, ClientEvent, ClientOptions};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

/// How long to wait for an answer before sending HELLO again (as the
/// blocking client does).
pub const RETRY: Duration = Duration::from_millis(700);
/// Handshakes in flight at once: enough to keep a relay's RSA busy, few
/// enough that a burst of SESSION_KEYs does not overflow its socket buffer.
const PARALLEL: usize = 64;
/// Handshakes in flight at once when they ask for group mode. Each join
/// moves the group key one ratchet step, and a member follows at most 8
/// steps at a time (from the PEER_JOINED notices on its downlink, which it
/// opens on WELCOME): with more joins completing before a new member's
/// downlink is open, it would miss more steps, hold every later message and
/// have to ask for the key. Fewer than 8 in flight keep each new member
/// within reach of the ratchet.
const PARALLEL_GROUP: usize = 6;
/// Receive buffer asked for each client socket (the kernel caps it at
/// net.core.rmem_max): a receiver thread serving hundreds of sockets may
/// come back to one only after a burst of rekeys or a closed-loop window
/// has piled up on it.
const CLIENT_RCVBUF: usize = 1 << 20;

/// Raises this process's open-file limit to at least `n` (up to the hard
/// limit); an error says how many the hard limit allows when that is short.
pub fn ensure_fds(n: usize) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(()); // unknown: let the sockets say
    }
    let want = n as libc::rlim_t;
    if lim.rlim_cur >= want {
        return Ok(());
    }
    if lim.rlim_max < want {
        return Err(format!(
            "the bench needs {n} file descriptors and the hard limit is {} (ulimit -Hn)",
            lim.rlim_max
        ));
    }
    lim.rlim_cur = want;
    // SAFETY: setrlimit reads one rlimit we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(format!(
            "cannot raise the open-file limit to {n}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Asks for [`CLIENT_RCVBUF`]; a smaller buffer only makes loss likelier,
/// which the benchmark counts, so a refusal is not an error.
fn roomy<S: std::os::fd::AsFd>(sock: &S) {
    let _ = socket2::SockRef::from(sock).set_recv_buffer_size(CLIENT_RCVBUF);
}

/// One benchmark client.
pub struct Client {
    /// Its socket (non-blocking).
    pub sock: UdpSocket,
    /// Its downlink socket, when the relay granted it group mode: bound to
    /// the downlink port and joined to its group on loopback (each member
    /// gets its own copy from the kernel, as each host of a LAN would).
    pub down: Option<UdpSocket>,
    /// Its protocol state.
    pub core: ClientCore,
    /// A passive receiver only takes datagrams off its sockets, unopened
    /// (`--passive`).
    pub passive: bool,
}

impl Client {
    /// Sends every datagram in `out` to `server`, emptying it. Send errors
    /// are ignored: UDP may drop, and the benchmark counts what arrives.
    pub fn flush(&self, server: SocketAddr, out: &mut Vec<Vec<u8>>) {
        for d in out.drain(..) {
            let _ = self.sock.send_to(&d, server);
        }
    }
}

/// Opens `n` sockets and completes a handshake on each with `server`; the
/// first `group` of them ask for group mode and join the downlink they are
/// given. Errors say what went wrong (refused, no answer, too many sockets).
pub fn connect(
    server: SocketAddr,
    n: usize,
    group: usize,
    within: Duration,
) -> Result<Vec<Client>, String> {
    let bind = if server.ip().is_loopback() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    };
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut clients = Vec::with_capacity(n);
    let unix_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for i in 0..n {
        let mut sock = UdpSocket::bind(bind).map_err(|e| format!("client socket {i}: {e}"))?;
        roomy(&sock);
        poll.registry()
            .register(&mut sock, Token(i), Interest::READABLE)
            .map_err(|e| format!("poll register: {e}"))?;
        clients.push(Client {
            sock,
            down: None,
            passive: false,
            core: ClientCore::new(
                // Without group mode each client reads its own socket
                // (per-recipient delivery); with it, also its downlink.
                ClientOptions {
                    group: i < group,
                    ..ClientOptions::default()
                },
                Instant::now(),
                unix_now,
                rand::random(),
            ),
        });
    }
    let result = handshake_all(&mut poll, &mut clients, server, group > 0, within);
    for c in &mut clients {
        let _ = poll.registry().deregister(&mut c.sock);
        if let Some(d) = c.down.as_mut() {
            let _ = poll.registry().deregister(d);
        }
    }
    result?;
    Ok(clients)
}

/// A non-blocking socket on the downlink's port, joined to its IPv4 group
/// on loopback (where the bench's relay sends it).
pub fn join_downlink(dl: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let SocketAddr::V4(dl) = dl else {
        return Err(io::Error::other("the bench joins IPv4 downlinks only"));
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    roomy(&s);
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, dl.port())).into())?;
    s.join_multicast_v4(dl.ip(), &Ipv4Addr::LOCALHOST)?;
    s.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(s.into()))
}

fn handshake_all(
    poll: &mut Poll,
    clients: &mut [Client],
    server: SocketAddr,
    group: bool,
    within: Duration,
) -> Result<(), String> {
    let end = Instant::now() + within;
    let mut waiting: VecDeque<usize> = (0..clients.len()).collect();
    // Per client: when to send HELLO again, while its handshake is open.
    let mut retry_at: Vec<Option<Instant>> = vec![None; clients.len()];
    // Per client: HELLOs sent. Each retry waits twice as long: a HELLO
    // restarts the handshake, so retrying faster than a slow relay (a debug
    // build decrypts RSA in tens of ms) answers would never complete one.
    let mut tries: Vec<u32> = vec![0; clients.len()];
    let mut in_flight = 0usize;
    let mut done = 0usize;
    let mut events = Events::with_capacity(256);
    let mut out = Vec::new();
    let mut evs = Vec::new();
    let mut buf = vec![0u8; 65536];
    let n = clients.len();
    let hello = |c: &mut Client, retry: &mut Option<Instant>, tries: &mut u32| {
        let h = c.core.hello();
        let _ = c.sock.send_to(&h, server);
        *retry = Some(Instant::now() + RETRY * (1 << (*tries).min(4)));
        *tries += 1;
    };
    while done < clients.len() {
        let now = Instant::now();
        if now >= end {
            return Err(format!(
                "only {done} of {} clients completed the handshake with {server} within {within:?}",
                clients.len()
            ));
        }
        let parallel = if group { PARALLEL_GROUP } else { PARALLEL };
        while in_flight < parallel {
            let Some(i) = waiting.pop_front() else { break };
            hello(&mut clients[i], &mut retry_at[i], &mut tries[i]);
            in_flight += 1;
        }
        for (i, r) in retry_at.iter_mut().enumerate() {
            if r.is_some_and(|t| t <= now) {
                hello(&mut clients[i], r, &mut tries[i]);
            }
        }
        match poll.poll(&mut events, Some(Duration::from_millis(20))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        for ev in events.iter() {
            let (i, downlink) = (ev.token().0 % n, ev.token().0 >= n);
            let c = &mut clients[i];
            if downlink {
                // The PEER_JOINED of each later join: a member follows the
                // join ratchet from it, as a real client that opened its
                // downlink on WELCOME would. One that missed more joins
                // than a member ratchets over would hold the first
                // messages and ask for the key.
                while let Some(d) = &c.down {
                    let Ok((len, from)) = d.recv_from(&mut buf) else {
                        break;
                    };
                    c.core
                        .handle_downlink(Instant::now(), from, &buf[..len], &mut evs);
                    evs.clear();
                }
                continue;
            }
            loop {
                let (n, from) = match c.sock.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => continue, // an ICMP error from an earlier send
                };
                if from != server {
                    continue;
                }
                c.core
                    .handle_datagram(Instant::now(), &buf[..n], &mut out, &mut evs)
                    .map_err(|e| e.to_string())?;
                c.flush(server, &mut out);
                for e in evs.drain(..) {
                    match e {
                        ClientEvent::Welcome { .. } if retry_at[i].is_some() => {
                            retry_at[i] = None;
                            in_flight -= 1;
                            done += 1;
                            if let Some(dl) = c.core.downlink() {
                                let mut d = join_downlink(dl)
                                    .map_err(|e| format!("client {i} downlink {dl}: {e}"))?;
                                poll.registry()
                                    .register(&mut d, Token(n + i), Interest::READABLE)
                                    .map_err(|e| format!("poll register: {e}"))?;
                                c.down = Some(d);
                            }
                        }
                        ClientEvent::Rejected(
                            RejectReason::BadCookie | RejectReason::UnknownSession,
                        ) if retry_at[i].is_some() => {
                            hello(c, &mut retry_at[i], &mut tries[i]);
                        }
                        ClientEvent::Rejected(r) => {
                            let hint = "is --max-clients large enough?";
                            return Err(format!("{server} refused client {i}: {r:?} ({hint})"));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(())
}
