//! `--churn RATE`: extra clients that join and leave while the load runs.
//! One thread starts a new client every 1/RATE seconds; each completes a
//! handshake (asking for group mode when the receivers do, and then joining
//! the downlink as they do), stays for `stay`, and leaves with a BYE.
//!
//! Churners only come and go: they discard what they are sent without
//! decrypting it (the relay's work for them is the same either way), and
//! they are not counted as receivers, so the run's loss is the stable
//! receivers' alone. In group mode every leave makes the relay rekey, so
//! churn measures whether the stable members follow the epochs without
//! losing a message.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use mcrelay::wire::RejectReason;
use mcrelay::{ClientCore, ClientEvent, ClientOptions};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use super::swarm;

/// A churner whose handshake has not completed after this long is counted
/// as failed and closed, so a relay that cannot keep up shows as failures
/// rather than as a growing crowd of half-open clients.
const GIVE_UP: Duration = Duration::from_secs(5);
/// Churners alive at once, at most: beyond it a due join is counted as
/// failed instead of opening yet another socket.
pub const MAX_LIVE: usize = 4096;
/// Longest poll wait: the join schedule and the leave timers are checked
/// at least this often.
const TICK: Duration = Duration::from_millis(2);

/// What the churn does.
#[derive(Clone, Debug)]
pub struct Churn {
    /// Joins per second (and, once the first churners leave, leaves per second).
    pub rate: f64,
    /// How long each churner stays after its WELCOME.
    pub stay: Duration,
    /// Churners ask for group mode and join the downlink.
    pub group: bool,
}

impl Churn {
    /// Churners alive at once in the steady state, with room for the
    /// handshakes in flight: what the relay's client limits must allow.
    pub fn population(&self) -> usize {
        let alive = self.rate * (self.stay.as_secs_f64() + 1.0);
        (alive.ceil() as usize).clamp(1, MAX_LIVE)
    }
}

/// Joins, leaves and failures so far; the load samples them at the
/// edges of the measured window.
#[derive(Debug, Default)]
pub struct Counts {
    /// Handshakes completed (WELCOME received).
    pub joins: AtomicU64,
    /// BYEs sent after the stay.
    pub leaves: AtomicU64,
    /// Joins that did not happen: refused, no WELCOME within [`GIVE_UP`],
    /// no socket, or over [`MAX_LIVE`].
    pub failed: AtomicU64,
}

/// A snapshot of [`Counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    /// Handshakes completed.
    pub joins: u64,
    /// BYEs sent.
    pub leaves: u64,
    /// Joins that did not happen.
    pub failed: u64,
}

impl Counts {
    /// The counts now.
    pub fn tally(&self) -> Tally {
        Tally {
            joins: self.joins.load(Relaxed),
            leaves: self.leaves.load(Relaxed),
            failed: self.failed.load(Relaxed),
        }
    }
}

impl Tally {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Tally) -> Tally {
        Tally {
            joins: self.joins - earlier.joins,
            leaves: self.leaves - earlier.leaves,
            failed: self.failed - earlier.failed,
        }
    }
}

enum Phase {
    /// HELLO sent; sent again at `retry_at` (twice as late each time).
    Connecting {
        retry_at: Instant,
        tries: u32,
        give_up: Instant,
    },
    /// Welcomed; sends BYE at `leave_at`.
    Joined { leave_at: Instant },
}

struct Churner {
    sock: UdpSocket,
    down: Option<UdpSocket>,
    core: ClientCore,
    phase: Phase,
}

impl Churner {
    fn flush(&self, server: SocketAddr, out: &mut Vec<Vec<u8>>) {
        for d in out.drain(..) {
            let _ = self.sock.send_to(&d, server);
        }
    }

    fn hello(&mut self, server: SocketAddr, now: Instant) {
        let h = self.core.hello();
        let _ = self.sock.send_to(&h, server);
        if let Phase::Connecting {
            retry_at, tries, ..
        } = &mut self.phase
        {
            *retry_at = now + swarm::RETRY * (1 << (*tries).min(4));
            *tries += 1;
        }
    }
}

/// The churn thread's body: runs until `stop`, counting into `counts`.
/// Churners still there at the end send their BYE (not counted: the
/// measured window is over by then).
pub fn run(server: SocketAddr, churn: &Churn, stop: &AtomicBool, counts: &Counts) {
    let Ok(mut poll) = Poll::new() else {
        counts.failed.fetch_add(1, Relaxed);
        return;
    };
    let bind = if server.ip().is_loopback() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    };
    let unix_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let interval = Duration::from_secs_f64(1.0 / churn.rate.max(1e-3));
    let start = Instant::now();
    let mut started = 0u32;
    let mut slots: Vec<Option<Churner>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut live = 0usize;
    let mut events = Events::with_capacity(256);
    let (mut out, mut evs) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 65536];
    let mut gone: Vec<usize> = Vec::new();
    while !stop.load(Relaxed) {
        let now = Instant::now();
        // Joins due by now, catching up if the thread fell behind.
        while start + interval * started <= now {
            started += 1;
            if live >= MAX_LIVE {
                counts.failed.fetch_add(1, Relaxed);
                continue;
            }
            let i = free.pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            });
            match open(&poll, bind, i, churn.group, unix_now, now) {
                Ok(mut c) => {
                    c.hello(server, now);
                    slots[i] = Some(c);
                    live += 1;
                }
                Err(_) => {
                    free.push(i);
                    counts.failed.fetch_add(1, Relaxed);
                }
            }
        }
        // Timers: retries, give-ups and leaves.
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            match c.phase {
                Phase::Connecting { give_up, .. } if give_up <= now => {
                    counts.failed.fetch_add(1, Relaxed);
                    gone.push(i);
                }
                Phase::Connecting { retry_at, .. } if retry_at <= now => c.hello(server, now),
                Phase::Joined { leave_at } if leave_at <= now => {
                    c.core.bye(&mut out);
                    c.flush(server, &mut out);
                    counts.leaves.fetch_add(1, Relaxed);
                    gone.push(i);
                }
                _ => {}
            }
        }
        close(&poll, &mut slots, &mut free, &mut live, &mut gone);
        let next_join = (start + interval * started).saturating_duration_since(Instant::now());
        match poll.poll(&mut events, Some(next_join.min(TICK))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        for ev in events.iter() {
            let (i, downlink) = (ev.token().0 / 2, ev.token().0 % 2 == 1);
            let Some(c) = slots.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            if downlink {
                // A member's copy of each group datagram: taken off the
                // socket, not opened.
                if let Some(d) = &c.down {
                    while d.recv_from(&mut buf).is_ok() {}
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
                if from != server || matches!(c.phase, Phase::Joined { .. }) {
                    continue;
                }
                let now = Instant::now();
                if c.core
                    .handle_datagram(now, &buf[..n], &mut out, &mut evs)
                    .is_err()
                {
                    out.clear();
                    evs.clear();
                    counts.failed.fetch_add(1, Relaxed);
                    gone.push(i);
                    break;
                }
                c.flush(server, &mut out);
                for e in evs.drain(..) {
                    match e {
                        ClientEvent::Welcome { .. }
                            if matches!(c.phase, Phase::Connecting { .. }) =>
                        {
                            counts.joins.fetch_add(1, Relaxed);
                            c.phase = Phase::Joined {
                                leave_at: now + churn.stay,
                            };
                            if let Some(dl) = c.core.downlink() {
                                // A member that cannot open its downlink
                                // still counts as joined: the relay has it.
                                if let Ok(mut d) = swarm::join_downlink(dl) {
                                    let _ = poll.registry().register(
                                        &mut d,
                                        Token(2 * i + 1),
                                        Interest::READABLE,
                                    );
                                    c.down = Some(d);
                                }
                            }
                        }
                        ClientEvent::Rejected(
                            RejectReason::BadCookie | RejectReason::UnknownSession,
                        ) if matches!(c.phase, Phase::Connecting { .. }) => c.hello(server, now),
                        ClientEvent::Rejected(_) if matches!(c.phase, Phase::Connecting { .. }) => {
                            counts.failed.fetch_add(1, Relaxed);
                            gone.push(i);
                        }
                        _ => {}
                    }
                }
            }
        }
        gone.sort_unstable();
        gone.dedup();
        close(&poll, &mut slots, &mut free, &mut live, &mut gone);
    }
    for c in slots.iter_mut().flatten() {
        if matches!(c.phase, Phase::Joined { .. }) {
            c.core.bye(&mut out);
            c.flush(server, &mut out);
        }
    }
}

/// A new churner on slot `i`: its socket bound and registered.
fn open(
    poll: &Poll,
    bind: SocketAddr,
    i: usize,
    group: bool,
    unix_now: u64,
    now: Instant,
) -> io::Result<Churner> {
    let mut sock = UdpSocket::bind(bind)?;
    poll.registry()
        .register(&mut sock, Token(2 * i), Interest::READABLE)?;
    Ok(Churner {
        sock,
        down: None,
        core: ClientCore::new(
            ClientOptions {
                group,
                ..ClientOptions::default()
            },
            now,
            unix_now,
            rand::random(),
        ),
        phase: Phase::Connecting {
            retry_at: now,
            tries: 0,
            give_up: now + GIVE_UP,
        },
    })
}

/// Closes the churners listed in `gone` and frees their slots.
fn close(
    poll: &Poll,
    slots: &mut [Option<Churner>],
    free: &mut Vec<usize>,
    live: &mut usize,
    gone: &mut Vec<usize>,
) {
    for i in gone.drain(..) {
        let Some(mut c) = slots[i].take() else {
            continue;
        };
        let _ = poll.registry().deregister(&mut c.sock);
        if let Some(d) = c.down.as_mut() {
            let _ = poll.registry().deregister(d);
        }
        free.push(i);
        *live -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_covers_the_stay_and_the_handshakes() {
        let c = Churn {
            rate: 100.0,
            stay: Duration::from_millis(500),
            group: true,
        };
        assert_eq!(c.population(), 150);
        let huge = Churn {
            rate: 1e9,
            ..c.clone()
        };
        assert_eq!(huge.population(), MAX_LIVE);
    }

    #[test]
    fn tallies_subtract() {
        let a = Tally {
            joins: 5,
            leaves: 3,
            failed: 1,
        };
        let b = Tally {
            joins: 9,
            leaves: 8,
            failed: 1,
        };
        assert_eq!(
            b.since(&a),
            Tally {
                joins: 4,
                leaves: 5,
                failed: 0
            }
        );
    }
}
