//! `bench --limit`: the machine's ceiling for the relay's per-delivery work
//! on one core. A tight loop Fernet-encrypts the plaintext the relay would
//! seal for one receiver (SEQ, SENDER_ID, BODY), frames it as a DATA TLV and
//! sends it to one of `sinks` loopback sockets in turn, the way a fan-out
//! does; a second thread drains the sinks as the benchmark's receivers do. Measured
//! twice, side by side: one `sendto` per datagram (the plain loop), and
//! [`mcrelay::send_all`] per [`BATCH`] datagrams.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mcrelay::fernet::{self, FernetKey};
use mcrelay::wire::tlv;
use mcrelay::wire::{self, inner, outer};
use mcrelay::Transmits;
use mcrelay::BATCH;
use mio::{Events, Interest, Poll, Token};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::procfs;

/// One loop's result.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rate {
    /// Deliveries per CPU-second of the sending thread.
    pub per_cpu_sec: f64,
    /// Deliveries per wall-clock second.
    pub per_sec: f64,
}

/// Both loops, as medians over the runs.
#[derive(Clone, Debug, Default)]
pub struct Limit {
    /// One `sendto` per datagram: the reference.
    pub plain: Rate,
    /// Batched sends.
    pub batched: Rate,
    /// Every run, in the order measured (plain, batched, plain, ...).
    pub runs: Vec<(&'static str, Rate)>,
}

/// Runs each loop `runs` times for `secs` seconds, alternating, with
/// `body`-byte bodies spread over `sinks` destinations.
pub fn measure(
    body: usize,
    sinks: usize,
    secs: f64,
    runs: usize,
    nap: Duration,
) -> Result<Limit, String> {
    let io_err = |e: io::Error| format!("limit loop socket: {e}");
    let poll = Poll::new().map_err(io_err)?;
    let mut socks = Vec::new();
    for i in 0..sinks.max(1) {
        let mut s =
            mio::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(io_err)?;
        poll.registry()
            .register(&mut s, Token(i), Interest::READABLE)
            .map_err(io_err)?;
        socks.push(s);
    }
    let dsts: Vec<SocketAddr> = socks.iter().filter_map(|s| s.local_addr().ok()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let stop = stop.clone();
        thread::spawn(move || drain(poll, socks, nap, &stop))
    };
    let tx = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(io_err)?;
    let mut limit = Limit::default();
    let secs = Duration::from_secs_f64(secs);
    for _ in 0..runs.max(1) {
        limit
            .runs
            .push(("plain", one_loop(&tx, &dsts, body, secs, false)));
        limit
            .runs
            .push(("batched", one_loop(&tx, &dsts, body, secs, true)));
    }
    stop.store(true, Relaxed);
    let _ = drainer.join();
    let pick = |name: &str| -> Rate {
        let rates: Vec<Rate> = limit
            .runs
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|r| r.1)
            .collect();
        Rate {
            per_cpu_sec: super::median(rates.iter().map(|r| r.per_cpu_sec)),
            per_sec: super::median(rates.iter().map(|r| r.per_sec)),
        }
    };
    limit.plain = pick("plain");
    limit.batched = pick("batched");
    Ok(limit)
}

/// The plaintext the relay seals for one receiver of a `body`-byte message.
fn relay_plaintext(body: usize) -> Vec<u8> {
    let mut p = Vec::new();
    wire::put_seq(&mut p, 1);
    tlv::put(&mut p, inner::SENDER_ID, b"127.0.0.1:40000");
    tlv::put(&mut p, inner::BODY, &vec![0x5a; body]);
    p
}

fn one_loop(
    tx: &UdpSocket,
    dsts: &[SocketAddr],
    body: usize,
    secs: Duration,
    batched: bool,
) -> Rate {
    // The relay's seal: IVs from a seeded generator, the plaintext turned
    // into a raw token in place, then its base64 text.
    let mut rng = StdRng::from_seed(rand::random());
    let key = FernetKey::from_bytes(&rng.random());
    let plain = relay_plaintext(body);
    let mut scratch = Vec::with_capacity(2048);
    let mut datagram = Vec::with_capacity(2048);
    let mut out = Transmits::new();
    let mut n = 0u64;
    let (wall0, cpu0) = (Instant::now(), procfs::thread_cpu_now());
    let end = wall0 + secs;
    loop {
        for _ in 0..BATCH {
            scratch.clear();
            scratch.extend_from_slice(&plain);
            key.seal_in_place(1_700_000_000, rng.random(), &mut scratch);
            let token = fernet::to_text(&scratch);
            let dst = dsts[n as usize % dsts.len()];
            datagram.clear();
            tlv::put(&mut datagram, outer::DATA, token.as_bytes());
            if batched {
                out.push(dst, &datagram);
            } else {
                let _ = tx.send_to(&datagram, dst);
            }
            n += 1;
        }
        if batched {
            mcrelay::send_all(tx, out.iter(), |_, _| {});
            out.clear();
        }
        if Instant::now() >= end {
            break;
        }
    }
    let (wall, cpu) = (
        wall0.elapsed().as_secs_f64(),
        procfs::thread_cpu_now() - cpu0,
    );
    Rate {
        per_cpu_sec: n as f64 / cpu,
        per_sec: n as f64 / wall,
    }
}

/// The sinks' receiver: reads and discards until told to stop, napping
/// after each burst as the relay benchmark's receivers do, so both loops
/// pay the same for waking their receivers.
fn drain(mut poll: Poll, socks: Vec<mio::net::UdpSocket>, nap: Duration, stop: &AtomicBool) {
    let mut events = Events::with_capacity(socks.len().max(16));
    let mut buf = [0u8; 2048];
    while !stop.load(Relaxed) {
        if poll
            .poll(&mut events, Some(Duration::from_millis(20)))
            .is_err()
        {
            continue;
        }
        for ev in events.iter() {
            let s = &socks[ev.token().0];
            while s.recv_from(&mut buf).is_ok() {}
        }
        if !events.is_empty() && !nap.is_zero() {
            thread::sleep(nap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcrelay::wire::Inner;

    #[test]
    fn the_loop_seals_what_the_relay_would() {
        let p = relay_plaintext(100);
        let m = Inner::parse(&p).unwrap();
        assert_eq!(m.seq, 1);
        assert_eq!(m.body.map(<[u8]>::len), Some(100));
        assert!(m.sender_id.is_some());
    }

    #[test]
    fn a_short_run_counts_both_loops() {
        let l = measure(100, 3, 0.02, 1, Duration::from_micros(100)).unwrap();
        assert_eq!(l.runs.len(), 2);
        assert!(l.plain.per_cpu_sec > 0.0 && l.batched.per_cpu_sec > 0.0);
    }
}
