//! `mcrelay bench --federation`: two relay binaries federated through a
//! real nats-server, measured end to end. Senders talk to relay A,
//! receivers to relay B; every message crosses A → NATS → B.
//!
//! Each run starts the two federated relays and a third relay A0 without
//! federation (the same binary and flags otherwise), then measures:
//!
//! 1. latency: an open loop at `--rate` through A → B, send to delivery;
//! 2. baseline: the same open loop into A0, whose CPU time per message
//!    subtracted from A's is what federation costs the sending relay;
//! 3. throughput: a closed loop (at most `--window` messages in flight)
//!    through A → B, every message accounted for (lost or duplicated);
//! 4. baseline at that rate: an open loop into A0 at the rate phase 3
//!    reached, for the same subtraction under load.
//!
//! Relay CPU time is read with `clock_getcpuclockid`, in nanoseconds: the
//! 10 ms ticks of /proc would swamp microseconds per message. Medians over
//! `--runs` are reported; the NATS server lives for the whole benchmark.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mcrelay::ClientEvent;
use mio::{Events, Interest, Poll, Token};

use super::child::{self, Relay};
use super::hist::Histogram;
use super::median;
use super::swarm::{self, Client};
use crate::cmd::json;
use crate::cmd::{finish, opt};

const HELP: &str = "\
mcrelay bench --federation: two relays federated through nats-server

Starts a nats-server on a free loopback port, relays A and B federated
through it and a relay A0 without federation. Senders talk to A, receivers
to B. Reports send-to-delivery latency at --rate, what federation costs the
sending relay in CPU per message (A minus A0 under the same load), and the
closed-loop throughput from A to B with every message accounted for.

OPTIONS:
    --nats-server PATH   nats-server binary [default: nats-server from PATH]
    --server-exe PATH    relay binary [default: this one]
    --senders N          sending clients on A [default: 1]
    --receivers N        receiving clients on B [default: 1]
    --group-mode         receivers ask B for group mode (protocol v2)
    --body BYTES         message body size, at least 20 [default: 100]
    --rate N             open loop for latency: messages per second [default: 1000]
    --duration SECS      length of each measured phase [default: 5]
    --warmup SECS        sending before the first phase of a run [default: 1]
    --window N           closed loop: messages in flight over all senders [default: 256]
    --runs N             runs; medians are reported [default: 3]
    --json               one JSON object on stdout instead of the text report
    --quiet              no per-run lines on stderr
";

/// What a body starts with: phase tag u16 and sender u16 (one u32),
/// sequence u64, send time u64 (ns since the phase's epoch), little-endian.
/// The tag keeps a straggler of one phase out of the next one's counts.
const STAMP_LEN: usize = 20;
/// A closed loop with no delivery for this long gives up on what is in
/// flight (lost) so it does not stall for good.
const STALL: Duration = Duration::from_millis(250);
/// After the senders stop: how long deliveries may keep coming, and how
/// long without any ends the wait early.
const DRAIN: Duration = Duration::from_secs(3);
const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// SO_RCVBUF of a receiving client (the kernel caps it at rmem_max): a
/// closed-loop window of small datagrams, at about 1 KiB of buffer each
/// in the kernel's accounting, outgrows the 208 KiB default.
const RECEIVER_BUFFER: usize = 4 << 20;
/// How long the links may take to carry a first message.
const LINK_UP: Duration = Duration::from_secs(30);

/// Parsed flags.
struct Opts {
    nats_server: PathBuf,
    exe: PathBuf,
    senders: usize,
    receivers: usize,
    group: bool,
    body: usize,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    window: usize,
    runs: usize,
    json: bool,
    quiet: bool,
}

/// How a phase paces its senders.
#[derive(Clone, Copy, Debug)]
enum Pace {
    /// Messages per second over all senders, whatever arrives.
    Open(f64),
    /// At most this many messages in flight over all senders.
    Closed(usize),
}

/// What one phase measured.
#[derive(Clone, Default)]
struct Phase {
    secs: f64,
    sent: u64,
    /// Deliveries expected (sent × receivers) and missing or repeated.
    expected: u64,
    lost: u64,
    duplicated: u64,
    latency: Histogram,
    /// CPU nanoseconds of the relay the senders talk to.
    relay_cpu_ns: u64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.sent as f64 / self.secs
    }

    fn cpu_us_per_msg(&self) -> f64 {
        self.relay_cpu_ns as f64 / 1e3 / self.sent.max(1) as f64
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency
            .quantile(q)
            .map_or(f64::NAN, |ns| ns as f64 / 1e6)
    }
}

/// One run's four phases.
struct Run {
    paced: Phase,
    paced_alone: Phase,
    flood: Phase,
    flood_alone: Phase,
}

/// `mcrelay bench --federation ARGS`.
pub fn run(mut args: pico_args::Arguments) -> Result<(), String> {
    if args.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    let secs = |v: Option<f64>, d: f64, name: &str| -> Result<Duration, String> {
        let v = v.unwrap_or(d);
        Duration::try_from_secs_f64(v)
            .map_err(|_| format!("{name} {v} is not a duration in seconds"))
    };
    let exe: Option<PathBuf> = opt(&mut args, "--server-exe")?;
    let o = Opts {
        nats_server: opt(&mut args, "--nats-server")?
            .unwrap_or_else(|| PathBuf::from("nats-server")),
        exe: child::resolve_exe(exe.as_deref())?,
        senders: opt(&mut args, "--senders")?.unwrap_or(1),
        receivers: opt(&mut args, "--receivers")?.unwrap_or(1),
        group: args.contains("--group-mode"),
        body: opt(&mut args, "--body")?.unwrap_or(100),
        rate: opt(&mut args, "--rate")?.unwrap_or(1000.0),
        duration: secs(opt(&mut args, "--duration")?, 5.0, "--duration")?,
        warmup: secs(opt(&mut args, "--warmup")?, 1.0, "--warmup")?,
        window: opt(&mut args, "--window")?.unwrap_or(256),
        runs: opt(&mut args, "--runs")?.unwrap_or(3),
        json: args.contains("--json"),
        quiet: args.contains("--quiet"),
    };
    finish(args)?;
    if o.senders == 0 || o.receivers == 0 || o.window == 0 || o.runs == 0 {
        return Err("--senders, --receivers, --window and --runs must be at least 1".into());
    }
    if o.senders > 1000 {
        return Err("--senders: at most 1000".into());
    }
    if o.body < STAMP_LEN {
        return Err(format!(
            "--body {} is too small: the stamp needs {STAMP_LEN} bytes",
            o.body
        ));
    }
    if !(o.rate > 0.0 && o.rate.is_finite()) {
        return Err("--rate must be a positive number".into());
    }
    let nats = Nats::start(&o.nats_server)?;
    let key = KeyFile::new()?;
    let mut runs = Vec::with_capacity(o.runs);
    for i in 0..o.runs {
        let r = one_run(&o, &nats, &key)?;
        if !o.quiet {
            eprintln!(
                "run {}/{}: p50 {:.3} ms p99 {:.3} ms at {:.0}/s; CPU {:.2} vs {:.2} us/msg; \
                 closed loop {:.0} msg/s, lost {} dup {}; CPU {:.2} vs {:.2} us/msg",
                i + 1,
                o.runs,
                r.paced.ms(0.5),
                r.paced.ms(0.99),
                r.paced.rate(),
                r.paced.cpu_us_per_msg(),
                r.paced_alone.cpu_us_per_msg(),
                r.flood.rate(),
                r.flood.lost,
                r.flood.duplicated,
                r.flood.cpu_us_per_msg(),
                r.flood_alone.cpu_us_per_msg(),
            );
        }
        runs.push(r);
    }
    report(&o, &nats, &runs);
    Ok(())
}

/// Starts the three relays, connects the clients, runs the four phases.
fn one_run(o: &Opts, nats: &Nats, key: &KeyFile) -> Result<Run, String> {
    let subject = format!("mcrelay.bench.{}", std::process::id());
    let fed = |name: &str| {
        let mut a = child::generous_args(o.senders + o.receivers);
        for (k, v) in [
            ("--federate", nats.url()),
            ("--federation-key-file", key.path.display().to_string()),
            ("--relay-name", name.to_string()),
            ("--federation-subject", subject.clone()),
        ] {
            a.push(k.into());
            a.push(v);
        }
        a
    };
    let a = Relay::start(&o.exe, &fed("bench-a"))?;
    let b = Relay::start(&o.exe, &fed("bench-b"))?;
    let alone = Relay::start(&o.exe, &child::generous_args(o.senders))?;
    let within = Duration::from_secs(30);
    let mut senders = swarm::connect(a.addr, o.senders, 0, within)?;
    let group = if o.group { o.receivers } else { 0 };
    let mut receivers = swarm::connect(b.addr, o.receivers, group, within)?;
    for c in &receivers {
        // Each receiver stands for a host of its own: its socket must not
        // be where a burst is lost while the bench thread waits for a core.
        let _ = socket2::SockRef::from(&c.sock).set_recv_buffer_size(RECEIVER_BUFFER);
        if let Some(d) = &c.down {
            let _ = socket2::SockRef::from(d).set_recv_buffer_size(RECEIVER_BUFFER);
        }
    }
    let mut senders0 = swarm::connect(alone.addr, o.senders, 0, within)?;
    link_up(&mut senders[0], a.addr, &mut receivers, b.addr)
        .map_err(|e| format!("{e}\nrelay A log:\n{}", a.log_tail()))?;
    let to_b = Target {
        relay: a.addr,
        pid: a.pid,
        from: b.addr,
    };
    let to_alone = Target {
        relay: alone.addr,
        pid: alone.pid,
        from: alone.addr,
    };
    let warm = o.warmup;
    phase(
        o,
        to_b,
        &mut senders,
        &mut receivers,
        Pace::Open(o.rate),
        warm,
    )?;
    let paced = phase(
        o,
        to_b,
        &mut senders,
        &mut receivers,
        Pace::Open(o.rate),
        o.duration,
    )?;
    let paced_alone = phase(
        o,
        to_alone,
        &mut senders0,
        &mut [],
        Pace::Open(o.rate),
        o.duration,
    )?;
    let flood = phase(
        o,
        to_b,
        &mut senders,
        &mut receivers,
        Pace::Closed(o.window),
        o.duration,
    )?;
    let same = Pace::Open(flood.rate().max(1.0));
    let flood_alone = phase(o, to_alone, &mut senders0, &mut [], same, o.duration)?;
    for r in [a, b, alone] {
        r.stop();
    }
    Ok(Run {
        paced,
        paced_alone,
        flood,
        flood_alone,
    })
}

/// Where a phase sends: the relay the senders talk to (its pid for the
/// CPU clock) and the relay the receivers talk to.
#[derive(Clone, Copy)]
struct Target {
    relay: SocketAddr,
    pid: u32,
    from: SocketAddr,
}

/// Sends probes from `sender` until a receiver gets one: both links are
/// up and subscribed.
fn link_up(
    sender: &mut Client,
    a: SocketAddr,
    receivers: &mut [Client],
    b: SocketAddr,
) -> Result<(), String> {
    let end = Instant::now() + LINK_UP;
    let (mut out, mut evs) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 65536];
    let probe = [0xffu8; STAMP_LEN];
    while Instant::now() < end {
        sender.core.send(&probe, &mut out);
        sender.flush(a, &mut out);
        thread::sleep(Duration::from_millis(50));
        for c in receivers.iter_mut() {
            while let Ok((n, from)) = c.sock.recv_from(&mut buf) {
                if from == b {
                    let _ = c
                        .core
                        .handle_datagram(Instant::now(), &buf[..n], &mut out, &mut evs);
                    out.clear();
                }
            }
            while let Some(Ok((n, from))) = c.down.as_ref().map(|d| d.recv_from(&mut buf)) {
                c.core
                    .handle_downlink(Instant::now(), from, &buf[..n], &mut evs);
            }
        }
        if evs
            .iter()
            .any(|e| matches!(e, ClientEvent::Message { body, .. } if body[..] == probe))
        {
            return Ok(());
        }
        evs.clear();
    }
    Err(format!(
        "no message crossed from relay A to relay B within {LINK_UP:?}"
    ))
}

/// State the phase's threads share.
struct Shared {
    tag: u32,
    epoch: Instant,
    stop_senders: AtomicBool,
    stop_receivers: AtomicBool,
    sent: AtomicU64,
    delivered: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// One phase: senders on `t.relay` paced by `pace` for `length`, the
/// receivers (none for a baseline) counting every delivery.
fn phase(
    o: &Opts,
    t: Target,
    senders: &mut [Client],
    receivers: &mut [Client],
    pace: Pace,
    length: Duration,
) -> Result<Phase, String> {
    static PHASES: AtomicU32 = AtomicU32::new(1);
    let shared = Shared {
        tag: PHASES.fetch_add(1, Relaxed) & 0x7fff,
        epoch: Instant::now(),
        stop_senders: AtomicBool::new(false),
        stop_receivers: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
    };
    let shared = Arc::new(shared);
    let cpu0 = cpu_ns(t.pid);
    let per_sender = senders.len();
    let n_recv = receivers.len() as u64;
    let (phase, sent_per_sender) = thread::scope(|s| {
        let rx = {
            let shared = &shared;
            let receivers = &mut *receivers;
            s.spawn(move || receive(receivers, t.from, per_sender, shared))
        };
        let txs: Vec<_> = senders
            .iter_mut()
            .enumerate()
            .map(|(i, c)| {
                let shared = &shared;
                s.spawn(move || send(i, c, t.relay, o, pace, per_sender, n_recv, shared))
            })
            .collect();
        let start = Instant::now();
        thread::sleep(length);
        shared.stop_senders.store(true, Relaxed);
        let secs = start.elapsed().as_secs_f64();
        let sent: Vec<u64> = txs.into_iter().map(|h| h.join().unwrap_or(0)).collect();
        let total: u64 = sent.iter().sum();
        let cpu1 = cpu_ns(t.pid);
        let want = total * n_recv;
        let (end, mut last) = (Instant::now() + DRAIN, (0, Instant::now()));
        while n_recv > 0 && Instant::now() < end {
            let got = shared.delivered.load(Relaxed);
            if got >= want {
                break;
            }
            if got != last.0 {
                last = (got, Instant::now());
            } else if last.1.elapsed() > DRAIN_QUIET {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        shared.stop_receivers.store(true, Relaxed);
        let (latency, counts) = rx.join().expect("receiver");
        let mut p = Phase {
            secs,
            sent: total,
            expected: want,
            latency,
            relay_cpu_ns: cpu0.zip(cpu1).map_or(0, |(a, b)| b.saturating_sub(a)),
            ..Phase::default()
        };
        for (sender, sent) in sent.iter().enumerate() {
            for seq in 0..*sent as usize {
                let c = counts
                    .get(sender)
                    .and_then(|v| v.get(seq))
                    .copied()
                    .unwrap_or(0);
                let c = u64::from(c);
                p.lost += n_recv.saturating_sub(c);
                p.duplicated += c.saturating_sub(n_recv);
            }
        }
        (p, sent)
    });
    if phase.sent == 0 {
        return Err(format!("no message sent in a phase ({sent_per_sender:?})"));
    }
    Ok(phase)
}

/// A sender thread: stamped messages, open or closed loop, until told to
/// stop; returns how many it sent. What the relay sends it back (the other
/// senders' messages) is read and thrown away.
#[allow(clippy::too_many_arguments)]
fn send(
    index: usize,
    c: &mut Client,
    relay: SocketAddr,
    o: &Opts,
    pace: Pace,
    senders: usize,
    receivers: u64,
    shared: &Shared,
) -> u64 {
    let mut body = vec![0u8; o.body];
    body[0..4].copy_from_slice(&(shared.tag << 16 | index as u32).to_le_bytes());
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut seq = 0u64;
    let start = Instant::now();
    let mut given_up = 0u64;
    let mut progress = (0u64, Instant::now());
    while !shared.stop_senders.load(Relaxed) {
        let may = match pace {
            Pace::Open(rate) => {
                let due = start.elapsed().as_secs_f64() * rate / senders as f64;
                (due as u64).saturating_sub(seq)
            }
            Pace::Closed(window) => {
                // Over all senders: what was sent minus what arrived
                // everywhere; a stall forgives what is in flight.
                let delivered = shared.delivered.load(Relaxed) + given_up;
                let in_flight = (shared.sent.load(Relaxed) * receivers).saturating_sub(delivered);
                if delivered != progress.0 {
                    progress = (delivered, Instant::now());
                } else if in_flight > 0 && progress.1.elapsed() > STALL {
                    given_up += in_flight;
                    progress = (delivered + in_flight, Instant::now());
                }
                let room = (window as u64 * receivers).saturating_sub(in_flight) / receivers;
                room.min(16)
            }
        };
        if may == 0 {
            while c.sock.recv_from(&mut buf).is_ok() {}
            thread::sleep(Duration::from_micros(50));
            continue;
        }
        for _ in 0..may.min(64) {
            body[4..12].copy_from_slice(&seq.to_le_bytes());
            body[12..20].copy_from_slice(&shared.now_ns().to_le_bytes());
            c.core.send(&body, &mut out);
            c.flush(relay, &mut out);
            seq += 1;
            shared.sent.fetch_add(1, Relaxed);
        }
    }
    seq
}

/// The receiver thread: decrypts every delivery, records its latency and
/// counts it per (sender, sequence).
fn receive(
    clients: &mut [Client],
    relay: SocketAddr,
    senders: usize,
    shared: &Shared,
) -> (Histogram, Vec<Vec<u16>>) {
    let mut latency = Histogram::default();
    let mut counts: Vec<Vec<u16>> = vec![Vec::new(); senders];
    let Ok(mut poll) = Poll::new() else {
        return (latency, counts);
    };
    let n = clients.len();
    if n == 0 {
        // A baseline phase: nobody to receive.
        while !shared.stop_receivers.load(Relaxed) {
            thread::sleep(Duration::from_millis(5));
        }
        return (latency, counts);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let _ = poll
            .registry()
            .register(&mut c.sock, Token(i), Interest::READABLE);
        if let Some(d) = c.down.as_mut() {
            let _ = poll
                .registry()
                .register(d, Token(n + i), Interest::READABLE);
        }
    }
    let mut events = Events::with_capacity(n.max(16));
    let mut buf = vec![0u8; 65536];
    let (mut out, mut evs) = (Vec::new(), Vec::new());
    while !shared.stop_receivers.load(Relaxed) {
        match poll.poll(&mut events, Some(Duration::from_millis(20))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        for ev in events.iter() {
            let (i, downlink) = (ev.token().0 % n, ev.token().0 >= n);
            let c = &mut clients[i];
            loop {
                let sock = match (&c.down, downlink) {
                    (Some(d), true) => d,
                    _ => &c.sock,
                };
                let (len, from) = match sock.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => continue,
                };
                if downlink {
                    c.core
                        .handle_downlink(Instant::now(), from, &buf[..len], &mut evs);
                } else if from == relay {
                    let _ = c
                        .core
                        .handle_datagram(Instant::now(), &buf[..len], &mut out, &mut evs);
                    out.clear();
                }
                for e in evs.drain(..) {
                    let ClientEvent::Message { body, .. } = e else {
                        continue;
                    };
                    let Some((sender, seq, at)) = stamp(&body) else {
                        continue;
                    };
                    // A probe, or a straggler of an earlier phase.
                    let Some(v) = counts
                        .get_mut(sender & 0xffff)
                        .filter(|_| sender >> 16 == shared.tag as usize)
                    else {
                        continue;
                    };
                    let now = shared.now_ns();
                    latency.record(now.saturating_sub(at));
                    let seq = seq as usize;
                    // Bounded by what the phase sent (sequences count up).
                    if seq >= v.len() && seq < (shared.sent.load(Relaxed) as usize + 1) {
                        v.resize(seq + 1, 0);
                    }
                    if let Some(c) = v.get_mut(seq) {
                        *c = c.saturating_add(1);
                        shared.delivered.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }
    // The next phase registers these sockets with its own poll.
    for c in clients.iter_mut() {
        let _ = poll.registry().deregister(&mut c.sock);
        if let Some(d) = c.down.as_mut() {
            let _ = poll.registry().deregister(d);
        }
    }
    (latency, counts)
}

/// The sender, sequence and send time stamped into a body.
fn stamp(body: &[u8]) -> Option<(usize, u64, u64)> {
    let sender = u32::from_le_bytes(body.get(0..4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(body.get(4..12)?.try_into().ok()?);
    let at = u64::from_le_bytes(body.get(12..20)?.try_into().ok()?);
    Some((sender as usize, seq, at))
}

/// CPU nanoseconds (all threads) process `pid` has used, to the
/// nanosecond; None when it cannot be read.
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t to the pointer we
    // own; clock_gettime writes one timespec to ours.
    unsafe {
        if libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) != 0 {
            return None;
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if libc::clock_gettime(clock, &mut ts) != 0 {
            return None;
        }
        Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }
}

/// The nats-server the benchmark started; killed on drop.
struct Nats {
    child: Child,
    port: u16,
    version: String,
}

impl Nats {
    /// `PATH -a 127.0.0.1 -p PORT` on a free port, waited on until it
    /// accepts connections.
    fn start(path: &Path) -> Result<Nats, String> {
        let hint = "install it (apt-get install nats-server) or pass --nats-server PATH";
        let version = Command::new(path)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {} ({e}): {hint}", path.display()))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new(path)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {} ({e}): {hint}", path.display()))?;
        let mut nats = Nats {
            child,
            port,
            version,
        };
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(s)) = nats.child.try_wait() {
                return Err(format!("{} exited at start ({s})", path.display()));
            }
            if Instant::now() >= end {
                return Err(format!("{} did not listen within 10 s", path.display()));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A federation key in a private temporary file; removed on drop.
struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    fn new() -> Result<KeyFile, String> {
        let path = std::env::temp_dir().join(format!(
            "mcrelay-bench-federation-{}.key",
            std::process::id()
        ));
        let write = || -> io::Result<()> {
            std::fs::write(&path, mcrelay::new_federation_key())?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(KeyFile { path })
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The medians of the runs, as text or JSON.
fn report(o: &Opts, nats: &Nats, runs: &[Run]) {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f));
    let p50 = m(&|r| r.paced.ms(0.5));
    let p99 = m(&|r| r.paced.ms(0.99));
    let paced_rate = m(&|r| r.paced.rate());
    let paced_lost = runs.iter().map(|r| r.paced.lost).sum::<u64>();
    let cost = m(&|r| r.paced.cpu_us_per_msg() - r.paced_alone.cpu_us_per_msg());
    let fed_cpu = m(&|r| r.paced.cpu_us_per_msg());
    let alone_cpu = m(&|r| r.paced_alone.cpu_us_per_msg());
    let flood_rate = m(&|r| r.flood.rate());
    let flood_lost = runs.iter().map(|r| r.flood.lost).sum::<u64>();
    let flood_dup = runs.iter().map(|r| r.flood.duplicated).sum::<u64>();
    let flood_expected = runs.iter().map(|r| r.flood.expected).sum::<u64>();
    let flood_cost = m(&|r| r.flood.cpu_us_per_msg() - r.flood_alone.cpu_us_per_msg());
    let flood_fed_cpu = m(&|r| r.flood.cpu_us_per_msg());
    let flood_alone_cpu = m(&|r| r.flood_alone.cpu_us_per_msg());
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    if o.json {
        let obj = json::Obj::new()
            .str("nats_server", &nats.version)
            .num("senders", o.senders as f64)
            .num("receivers", o.receivers as f64)
            .bool("group_mode", o.group)
            .num("body", o.body as f64)
            .num("runs", runs.len() as f64)
            .num("rate", paced_rate)
            .num("latency_p50_ms", p50)
            .num("latency_p99_ms", p99)
            .num("paced_lost", paced_lost as f64)
            .num("sender_cpu_us_per_msg_federated", fed_cpu)
            .num("sender_cpu_us_per_msg_alone", alone_cpu)
            .num("federation_cpu_us_per_msg", cost)
            .num("throughput_msgs_per_sec", flood_rate)
            .num("throughput_expected", flood_expected as f64)
            .num("throughput_lost", flood_lost as f64)
            .num("throughput_duplicated", flood_dup as f64)
            .num("throughput_sender_cpu_us_per_msg_federated", flood_fed_cpu)
            .num("throughput_sender_cpu_us_per_msg_alone", flood_alone_cpu)
            .num("throughput_federation_cpu_us_per_msg", flood_cost);
        println!("{}", obj.finish());
        return;
    }
    let mode = if o.group {
        "group mode"
    } else {
        "per recipient"
    };
    println!(
        "mcrelay bench --federation: relays A and B through {} on 127.0.0.1:{}",
        nats.version, nats.port
    );
    println!(
        "  {} sender(s) on A, {} receiver(s) on B ({mode}), {}-byte bodies, {} phases of {:?}, medians of {} runs",
        o.senders,
        o.receivers,
        o.body,
        4,
        o.duration,
        runs.len()
    );
    println!(
        "latency at {paced_rate:.0} msg/s:     p50 {p50:.3} ms  p99 {p99:.3} ms  lost {paced_lost} \
         [target p99 < 5 ms: {}]",
        met(p99 < 5.0 && paced_lost == 0)
    );
    println!(
        "sending relay CPU:     {fed_cpu:.2} us/msg federated, {alone_cpu:.2} alone: \
         federation costs {cost:.2} us/msg [target <= 5 us: {}]",
        met(cost <= 5.0)
    );
    println!(
        "throughput A -> B:     {flood_rate:.0} msg/s closed loop (window {}), lost {flood_lost} \
         duplicated {flood_dup} of {flood_expected} deliveries [target >= 50000 msg/s, no loss: {}]",
        o.window,
        met(flood_rate >= 50_000.0 && flood_lost == 0 && flood_dup == 0)
    );
    println!(
        "  at that rate:        {flood_fed_cpu:.2} us/msg federated, {flood_alone_cpu:.2} alone: \
         federation costs {flood_cost:.2} us/msg"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_cpu_clock() {
        let mut b = vec![0u8; STAMP_LEN];
        b[0..4].copy_from_slice(&3u32.to_le_bytes());
        b[4..12].copy_from_slice(&9u64.to_le_bytes());
        b[12..20].copy_from_slice(&77u64.to_le_bytes());
        assert_eq!(stamp(&b), Some((3, 9, 77)));
        assert_eq!(stamp(&b[..19]), None);
        let me = std::process::id();
        let t0 = cpu_ns(me).expect("own CPU clock");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(5) {}
        assert!(cpu_ns(me).unwrap() > t0);
    }
}
