//! One benchmark run: receiver threads that decrypt every delivery, sender
//! threads that stamp each message with its send time, a warm-up, a
//! measured window, and a drain at the end to count what was lost.
//!
//! Closed loop: each sender keeps at most `window` messages in flight (a
//! message is done when every receiver got it, or given up after
//! [`LOST_AFTER`]). Open loop: senders send on a fixed schedule whatever
//! happens to earlier messages.

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mcrelay::ClientEvent;
use mio::{Events, Interest, Poll, Token};

use super::churn::{self, Churn, Tally};
use super::hist::Histogram;
use super::procfs;
use super::swarm::{self, Client};

/// Messages tracked per sender for completion; a message still open after
/// this many newer ones would be confused with them.
const RING: usize = 1 << 16;
/// A message not yet delivered to every receiver after this long is given
/// up on (lost somewhere) so the window does not shrink for good.
const LOST_AFTER: Duration = Duration::from_millis(250);
/// Receivers send a KEEPALIVE this often so long runs outlast the relay's
/// idle timeout (60 s by default).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);
/// How long a closed-loop sender with a full window sleeps before looking
/// again: short against the window's worth of relay work (milliseconds),
/// long enough not to spend the core the relay needs on wakeups.
const SENDER_NAP: Duration = Duration::from_micros(200);
/// What a body starts with: sender index u32, sequence u64, send time u64
/// (ns since the run's epoch), little-endian.
pub const STAMP_LEN: usize = 20;
/// How often a receiver thread runs its clients' timers (key requests for
/// a held epoch, downlink probes): well under the 250 ms after which a
/// member asks for a key it missed.
const TIMERS_EVERY: Duration = Duration::from_millis(10);

/// What to run.
#[derive(Clone, Debug)]
pub struct Load {
    /// Receiving clients.
    pub clients: usize,
    /// How many of them are passive: they take what they are sent off
    /// their sockets without opening it (no signature check, no decryption),
    /// so the relay can be driven to hundreds of group members without the
    /// bench's own signature checks (one per member per message) saturating
    /// the machine. Their datagrams count as deliveries; loss and latency
    /// are the others'.
    pub passive: usize,
    /// Sending clients (they receive each other's messages too).
    pub senders: usize,
    /// Message body size in bytes (at least [`STAMP_LEN`]).
    pub body: usize,
    /// Length of the measured window, unless `messages` ends it.
    pub duration: Duration,
    /// End the window after this many messages instead.
    pub messages: Option<u64>,
    /// Sending before the window opens.
    pub warmup: Duration,
    /// Closed loop: messages in flight per sender.
    pub window: usize,
    /// Open loop: messages per second over all senders.
    pub rate: Option<f64>,
    /// Receiver threads.
    pub threads: usize,
    /// Receivers that got something sleep this long before polling again,
    /// so each wakes once per burst rather than once per datagram.
    pub nap: Duration,
    /// Show a progress line on stderr.
    pub progress: bool,
    /// Receivers ask for group mode (protocol v2): one signed multicast
    /// datagram per message for all of them.
    pub group: bool,
    /// Extra clients joining and leaving while the load runs (`--churn`);
    /// they ask for group mode when the receivers do.
    pub churn: Option<Churn>,
}

/// What one run measured.
#[derive(Clone, Default)]
pub struct Outcome {
    /// Length of the measured window in seconds.
    pub secs: f64,
    /// Messages sent in the window.
    pub messages: u64,
    /// Deliveries received in the window (receivers, and senders from each other).
    pub deliveries: u64,
    /// Deliveries the receivers should have got in the whole run.
    pub expected_total: u64,
    /// Deliveries the receivers got in the whole run.
    pub received_total: u64,
    /// Send-to-receive latency of messages sent in the window (ns).
    pub latency: Histogram,
    /// Server CPU seconds (user + system) in the window, when its pid is known.
    pub server_cpu: Option<f64>,
    /// The user part of `server_cpu`: the relay's own code, which group
    /// mode should keep flat per message whatever the number of receivers.
    pub server_user: Option<f64>,
    /// The system part of `server_cpu`: its system calls, including on
    /// loopback the kernel's copy of each multicast datagram to every
    /// receiving socket (so it grows with the receivers in group mode too).
    pub server_system: Option<f64>,
    /// Churners' joins, leaves and failures in the window (`--churn`).
    pub churn: Option<Tally>,
    /// This process's CPU seconds in the window.
    pub bench_cpu: f64,
    /// The busiest bench thread's CPU share in the window (1.0 = a core).
    pub busiest_thread: f64,
    /// CPU seconds the rest of the machine used in the window (other
    /// processes): a measurement taken while others ran is worth less.
    pub others_cpu: Option<f64>,
    /// Datagrams the receivers' client cores refused (bad, replayed or
    /// reflected): anything but 0 means the relay sent something wrong.
    pub dropped: u64,
    /// Group datagrams the receivers held for a key they did not have yet
    /// (a rekey's GROUP_KEY still on its way): released or lost later.
    pub held: u64,
    /// Group datagrams lost because a receiver's hold queue was full.
    pub hold_full: u64,
    /// KEY_REQUESTs the receivers sent for a key that did not come.
    pub key_requests: u64,
}

impl Outcome {
    /// Deliveries per second in the window.
    pub fn deliveries_per_sec(&self) -> f64 {
        self.deliveries as f64 / self.secs
    }

    /// Messages per second in the window.
    pub fn messages_per_sec(&self) -> f64 {
        self.messages as f64 / self.secs
    }

    /// Share of the expected deliveries that never arrived.
    pub fn loss(&self) -> f64 {
        if self.expected_total == 0 {
            return 0.0;
        }
        self.expected_total.saturating_sub(self.received_total) as f64 / self.expected_total as f64
    }

    /// Relay user CPU per message sent, in microseconds.
    pub fn user_us_per_message(&self) -> Option<f64> {
        self.server_user
            .filter(|_| self.messages > 0)
            .map(|u| u * 1e6 / self.messages as f64)
    }

    /// Relay user CPU per delivery, in nanoseconds.
    pub fn user_ns_per_delivery(&self) -> Option<f64> {
        self.server_user
            .filter(|_| self.deliveries > 0)
            .map(|u| u * 1e9 / self.deliveries as f64)
    }

    /// Deliveries per CPU-second of the relay.
    pub fn per_server_cpu_sec(&self) -> Option<f64> {
        self.server_cpu
            .filter(|c| *c > 0.0)
            .map(|c| self.deliveries as f64 / c)
    }
}

/// State the threads share.
struct Shared {
    epoch: Instant,
    nap: Duration,
    stop_senders: AtomicBool,
    stop_receivers: AtomicBool,
    /// The measured window in ns since `epoch` (u64::MAX: not yet).
    window_start: AtomicU64,
    window_end: AtomicU64,
    /// Per sender, per message slot: receivers that got it.
    acks: Vec<Box<[AtomicU32]>>,
    /// Per sender: messages sent.
    sent: Vec<AtomicU64>,
    /// Per receiver thread: deliveries; per sender: datagrams from the other senders.
    delivered: Vec<AtomicU64>,
    /// Per receiver thread: datagrams its passive receivers took.
    passive: Vec<AtomicU64>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.window_start.load(Relaxed) && t < self.window_end.load(Relaxed)
    }

    fn sent(&self) -> u64 {
        self.sent.iter().map(|s| s.load(Relaxed)).sum()
    }

    fn delivered(&self) -> u64 {
        let passive: u64 = self.passive.iter().map(|s| s.load(Relaxed)).sum();
        self.delivered.iter().map(|s| s.load(Relaxed)).sum::<u64>() + passive
    }

    /// What the receiver threads (not the senders) got.
    fn received(&self, threads: usize) -> u64 {
        self.delivered[..threads]
            .iter()
            .map(|s| s.load(Relaxed))
            .sum()
    }
}

/// What a receiver thread hands back.
#[derive(Default)]
struct Received {
    latency: Histogram,
    messages: u64,
    dropped: u64,
    held: u64,
    hold_full: u64,
    key_requests: u64,
}

/// Connects the clients to `server`, runs the load, and returns the
/// measurements. `server_pid` lets it read the relay's CPU time.
pub fn run(server: SocketAddr, server_pid: Option<u32>, load: &Load) -> Result<Outcome, String> {
    let total = load.clients + load.senders;
    let within = Duration::from_secs(30) + Duration::from_millis(20 * total as u64);
    let group = if load.group { load.clients } else { 0 };
    let mut clients = swarm::connect(server, total, group, within)?;
    let senders: Vec<Client> = clients.drain(load.clients..).collect();
    let active = load.clients - load.passive;
    for c in &mut clients[active..] {
        c.passive = true;
    }
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        nap: load.nap,
        stop_senders: AtomicBool::new(false),
        stop_receivers: AtomicBool::new(false),
        window_start: AtomicU64::new(u64::MAX),
        window_end: AtomicU64::new(u64::MAX),
        acks: (0..load.senders)
            .map(|_| (0..RING).map(|_| AtomicU32::new(0)).collect())
            .collect(),
        sent: (0..load.senders).map(|_| AtomicU64::new(0)).collect(),
        delivered: (0..load.threads + load.senders)
            .map(|_| AtomicU64::new(0))
            .collect(),
        passive: (0..load.threads).map(|_| AtomicU64::new(0)).collect(),
    });

    let threads = load.threads.clamp(1, load.clients.max(1));
    let mut groups: Vec<Vec<Client>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, c) in clients.into_iter().enumerate() {
        groups[i % threads].push(c);
    }
    let receivers: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(t, group)| {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("bench-recv-{t}"))
                .spawn(move || receive(t, group, server, &shared))
                .map_err(|e| format!("cannot start a receiver thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let senders: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, client)| {
            let shared = shared.clone();
            let load = load.clone();
            thread::Builder::new()
                .name(format!("bench-send-{s}"))
                .spawn(move || send(s, client, server, &load, &shared))
                .map_err(|e| format!("cannot start a sender thread: {e}"))
        })
        .collect::<Result<_, _>>()?;

    // Churn runs through the warm-up too, so the window sees it steady.
    let churn_stop = Arc::new(AtomicBool::new(false));
    let churn_counts = Arc::new(churn::Counts::default());
    let churner = match &load.churn {
        None => None,
        Some(c) => {
            let c = Churn {
                group: load.group,
                ..c.clone()
            };
            let (stop, counts) = (churn_stop.clone(), churn_counts.clone());
            Some(
                thread::Builder::new()
                    .name("bench-churn".into())
                    .spawn(move || churn::run(server, &c, &stop, &counts))
                    .map_err(|e| format!("cannot start the churn thread: {e}"))?,
            )
        }
    };

    let mut progress = Progress::new(load.progress, &shared);
    progress.wait_until(&shared, |_| shared.epoch.elapsed() >= load.warmup);

    // The measured window: counters and CPU clocks before and after.
    let t0 = shared.now_ns();
    let (sent0, deliv0) = (shared.sent(), shared.delivered());
    let server0 = server_pid.and_then(procfs::process_cpu);
    let bench0 = procfs::self_cpu().unwrap_or(0.0);
    let threads0 = procfs::self_threads_cpu();
    let machine0 = procfs::machine_busy();
    let churn0 = churn_counts.tally();
    shared.window_start.store(t0, Relaxed);
    let end = Instant::now() + load.duration;
    progress.wait_until(&shared, |s| match load.messages {
        Some(m) => s.sent() - sent0 >= m,
        None => Instant::now() >= end,
    });
    let t1 = shared.now_ns();
    let (sent1, deliv1) = (shared.sent(), shared.delivered());
    let server1 = server_pid.and_then(procfs::process_cpu);
    let bench1 = procfs::self_cpu().unwrap_or(0.0);
    let threads1 = procfs::self_threads_cpu();
    let machine1 = procfs::machine_busy();
    let churn1 = churn_counts.tally();
    shared.window_end.store(t1, Relaxed);
    shared.stop_senders.store(true, Relaxed);
    churn_stop.store(true, Relaxed);
    progress.finish();
    for h in senders {
        h.join().map_err(|_| "a sender thread panicked")?;
    }
    if let Some(h) = churner {
        h.join().map_err(|_| "the churn thread panicked")?;
    }

    // Drain: what is still in flight gets a moment to arrive.
    let want = shared.sent() * active as u64;
    let mut last = (shared.received(threads), Instant::now());
    let drain_end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < drain_end {
        thread::sleep(Duration::from_millis(10));
        let got = shared.received(threads);
        if got >= want {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(300) {
            break;
        }
    }
    shared.stop_receivers.store(true, Relaxed);
    let mut out = Outcome {
        secs: (t1 - t0) as f64 * 1e-9,
        messages: sent1 - sent0,
        deliveries: deliv1 - deliv0,
        expected_total: want,
        churn: load.churn.as_ref().map(|_| churn1.since(&churn0)),
        ..Outcome::default()
    };
    for h in receivers {
        let r = h.join().map_err(|_| "a receiver thread panicked")?;
        out.latency.merge(&r.latency);
        out.received_total += r.messages;
        out.dropped += r.dropped;
        out.held += r.held;
        out.hold_full += r.hold_full;
        out.key_requests += r.key_requests;
    }
    let server = server0.zip(server1).map(|(a, b)| b.since(&a));
    out.server_cpu = server.map(|c| c.total());
    out.server_user = server.map(|c| c.user);
    out.server_system = server.map(|c| c.system);
    out.bench_cpu = bench1 - bench0;
    out.busiest_thread = procfs::busiest_thread(&threads0, &threads1, out.secs);
    out.others_cpu = machine0.zip(machine1).map(|(a, b)| {
        let ours = out.bench_cpu + out.server_cpu.unwrap_or(0.0);
        (b - a - ours).max(0.0)
    });
    Ok(out)
}

/// A receiver thread: decrypts every datagram of its clients, records
/// latency and tells the senders which messages arrived.
fn receive(t: usize, mut clients: Vec<Client>, server: SocketAddr, shared: &Shared) -> Received {
    let mut r = Received::default();
    let Ok(mut poll) = Poll::new() else {
        return r;
    };
    let n = clients.len();
    for (i, c) in clients.iter_mut().enumerate() {
        let _ = poll
            .registry()
            .register(&mut c.sock, Token(i), Interest::READABLE);
        if let Some(down) = c.down.as_mut() {
            let _ = poll
                .registry()
                .register(down, Token(n + i), Interest::READABLE);
        }
    }
    let mut events = Events::with_capacity(clients.len().max(16));
    let mut buf = vec![0u8; 65536];
    let (mut out, mut evs) = (Vec::new(), Vec::new());
    let mut keepalive_at = Instant::now() + KEEPALIVE_EVERY;
    let mut timers_at = Instant::now() + TIMERS_EVERY;
    while !shared.stop_receivers.load(Relaxed) {
        match poll.poll(&mut events, Some(Duration::from_millis(20))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let mut got = 0u64;
        for ev in events.iter() {
            // Either socket's event reads both, the session socket first.
            let c = &mut clients[ev.token().0 % n];
            if c.passive {
                let taken = take_all(c, &mut buf);
                shared.passive[t].fetch_add(taken, Relaxed);
                continue;
            }
            got += read_client(c, server, &mut buf, &mut out, &mut evs, shared, &mut r);
        }
        if got > 0 {
            r.messages += got;
            shared.delivered[t].fetch_add(got, Relaxed);
            if !shared.nap.is_zero() {
                // Coalesce wakeups as a NIC does interrupts: on loopback the
                // relay pays for waking its receivers, which a real network
                // would not charge it, and the 2-core machine pays twice.
                thread::sleep(shared.nap);
            }
        }
        let now = Instant::now();
        if now >= timers_at {
            // As a real client's loop would: a member that missed a
            // GROUP_KEY (a rekey under churn) asks for it again.
            timers_at = now + TIMERS_EVERY;
            for c in &mut clients {
                if c.core.poll_timeout().is_some_and(|t| t <= now) {
                    c.core.handle_timeout(now, &mut out, &mut evs);
                    c.flush(server, &mut out);
                    evs.clear();
                }
            }
        }
        if now >= keepalive_at {
            keepalive_at += KEEPALIVE_EVERY;
            for c in &mut clients {
                c.core.keepalive(&mut out);
                c.flush(server, &mut out);
            }
        }
    }
    r.dropped = clients.iter().map(|c| c.core.dropped).sum();
    for c in &clients {
        let d = c.core.downlink_stats();
        r.held += d.held;
        r.hold_full += d.hold_full;
        r.key_requests += d.key_requests;
    }
    // Leave, so a relay that outlives the run (--target) does not keep
    // relaying to these clients until they time out.
    for c in &mut clients {
        c.core.bye(&mut out);
        c.flush(server, &mut out);
    }
    r
}

/// Reads what waits on a client's sockets: the session socket, then the
/// downlink until a datagram is held for a key not yet known, then the
/// session socket again (where that key comes, a GROUP_KEY sent before the
/// datagrams it opens), and so on until both are empty. Draining the
/// downlink first would hold every datagram sent after a rekey until the
/// next wakeup, and overflow the member's hold queue after a stall.
/// Returns the messages delivered.
fn read_client(
    c: &mut Client,
    server: SocketAddr,
    buf: &mut [u8],
    out: &mut Vec<Vec<u8>>,
    evs: &mut Vec<ClientEvent>,
    shared: &Shared,
    r: &mut Received,
) -> u64 {
    let mut got = 0;
    loop {
        while let Some((len, from)) = recv(&c.sock, buf) {
            if from == server {
                let _ = c
                    .core
                    .handle_datagram(Instant::now(), &buf[..len], out, evs);
                out.clear();
                got += deliver(evs, shared, r);
            }
        }
        let Some(down) = &c.down else { break };
        let held = c.core.downlink_stats().held;
        let mut again = false;
        while let Some((len, from)) = recv(down, buf) {
            // Anyone may send there: the core checks the signature.
            c.core
                .handle_downlink(Instant::now(), from, &buf[..len], evs);
            got += deliver(evs, shared, r);
            if c.core.downlink_stats().held > held {
                again = true;
                break;
            }
        }
        if !again {
            break;
        }
    }
    got
}

/// A passive receiver's turn: everything on both sockets taken off,
/// unopened. Returns the datagrams taken.
fn take_all(c: &Client, buf: &mut [u8]) -> u64 {
    let mut n = 0;
    while recv(&c.sock, buf).is_some() {
        n += 1;
    }
    if let Some(d) = &c.down {
        while recv(d, buf).is_some() {
            n += 1;
        }
    }
    n
}

/// One datagram from a non-blocking socket; None when it is empty (or
/// keeps failing).
fn recv(sock: &mio::net::UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    let mut tries = 0;
    loop {
        match sock.recv_from(buf) {
            Ok(x) => return Some(x),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            // Interrupted, or a pending error (each is reported once):
            // what follows it is still to be read, edge-triggered.
            Err(_) if tries < 8 => tries += 1,
            Err(_) => return None,
        }
    }
}

/// Records the messages among `evs` (latency, acks for the senders) and
/// empties it; returns how many there were.
fn deliver(evs: &mut Vec<ClientEvent>, shared: &Shared, r: &mut Received) -> u64 {
    let mut got = 0;
    for e in evs.drain(..) {
        let ClientEvent::Message { body, .. } = e else {
            continue;
        };
        let Some((sender, seq, sent_at)) = parse_stamp(&body) else {
            continue;
        };
        let Some(acks) = shared.acks.get(sender) else {
            continue;
        };
        let now = shared.now_ns();
        if shared.in_window(sent_at) {
            r.latency.record(now.saturating_sub(sent_at));
        }
        acks[seq as usize % RING].fetch_add(1, Relaxed);
        got += 1;
    }
    got
}

/// The sender index, sequence number and send time stamped into a body.
fn parse_stamp(body: &[u8]) -> Option<(usize, u64, u64)> {
    let sender = u32::from_le_bytes(body.get(0..4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(body.get(4..12)?.try_into().ok()?);
    let at = u64::from_le_bytes(body.get(12..20)?.try_into().ok()?);
    Some((sender as usize, seq, at))
}

/// A sender thread: sends stamped messages, closed or open loop, and
/// drains (without decrypting) what the other senders' messages bring it.
fn send(s: usize, mut client: Client, server: SocketAddr, load: &Load, shared: &Shared) {
    let acks = &shared.acks[s];
    let rx_counter = &shared.delivered[load.threads + s];
    let mut body = vec![0u8; load.body.max(STAMP_LEN)];
    body[0..4].copy_from_slice(&(s as u32).to_le_bytes());
    let mut sent_at = vec![0u64; RING];
    let (mut seq, mut oldest) = (0u64, 0u64);
    let lost_after = LOST_AFTER.as_nanos() as u64;
    // Open loop: this sender's share of the rate, its first slot staggered
    // so several senders do not fire together.
    let interval = load
        .rate
        .map(|r| Duration::from_secs_f64(load.senders as f64 / r.max(1e-3)));
    let start =
        Instant::now() + interval.map_or(Duration::ZERO, |i| i * s as u32 / load.senders as u32);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !shared.stop_senders.load(Relaxed) {
        let now = shared.now_ns();
        while oldest < seq {
            let slot = &acks[oldest as usize % RING];
            let done = slot.load(Relaxed) as usize >= load.clients - load.passive;
            if done || now.saturating_sub(sent_at[oldest as usize % RING]) > lost_after {
                slot.store(0, Relaxed);
                oldest += 1;
            } else {
                break;
            }
        }
        let wait = match interval {
            None if (seq - oldest) as usize >= load.window => Some(SENDER_NAP),
            None => None,
            Some(i) => {
                let due = start + i.mul_f64(seq as f64);
                let now = Instant::now();
                (due > now).then(|| (due - now).min(Duration::from_millis(1)))
            }
        };
        if let Some(w) = wait {
            drain(&client, &mut buf, rx_counter);
            thread::sleep(w);
            continue;
        }
        body[4..12].copy_from_slice(&seq.to_le_bytes());
        let t = shared.now_ns();
        body[12..20].copy_from_slice(&t.to_le_bytes());
        sent_at[seq as usize % RING] = t;
        client.core.send(&body, &mut out);
        client.flush(server, &mut out);
        seq += 1;
        shared.sent[s].store(seq, Relaxed);
        if seq % 64 == 0 {
            drain(&client, &mut buf, rx_counter);
        }
    }
    client.core.bye(&mut out);
    client.flush(server, &mut out);
}

/// Reads whatever waits on a sender's socket, counting it as deliveries
/// (bounded, so a flood cannot keep the sender from sending).
fn drain(c: &Client, buf: &mut [u8], counter: &AtomicU64) {
    let mut n = 0u64;
    while n < 1024 {
        match c.sock.recv_from(buf) {
            Ok(_) => n += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break, // empty (WouldBlock), or an ICMP error
        }
    }
    if n > 0 {
        counter.fetch_add(n, Relaxed);
    }
}

/// The once-a-second progress line.
struct Progress {
    on: bool,
    tty: bool,
    last: (Instant, u64),
    printed: bool,
}

impl Progress {
    fn new(on: bool, shared: &Shared) -> Self {
        Progress {
            on,
            tty: io::stderr().is_terminal(),
            last: (Instant::now(), shared.delivered()),
            printed: false,
        }
    }

    /// Sleeps in small steps until `done`, printing progress meanwhile.
    fn wait_until(&mut self, shared: &Shared, done: impl Fn(&Shared) -> bool) {
        while !done(shared) {
            thread::sleep(Duration::from_millis(5));
            if self.on && self.last.0.elapsed() >= Duration::from_secs(1) {
                let d = shared.delivered();
                let rate = (d - self.last.1) as f64 / self.last.0.elapsed().as_secs_f64();
                self.last = (Instant::now(), d);
                let line = format!(
                    "  {:6.1} s  {:>10} messages  {:>10.0} deliveries/s",
                    shared.epoch.elapsed().as_secs_f64(),
                    shared.sent(),
                    rate
                );
                let mut e = io::stderr().lock();
                let _ = if self.tty {
                    write!(e, "\r{line}")
                } else {
                    writeln!(e, "{line}")
                };
                let _ = e.flush();
                self.printed = true;
            }
        }
    }

    fn finish(&mut self) {
        if self.on && self.tty && self.printed {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let mut b = vec![0u8; 32];
        b[0..4].copy_from_slice(&7u32.to_le_bytes());
        b[4..12].copy_from_slice(&42u64.to_le_bytes());
        b[12..20].copy_from_slice(&123_456u64.to_le_bytes());
        assert_eq!(parse_stamp(&b), Some((7, 42, 123_456)));
        assert_eq!(parse_stamp(&b[..19]), None);
    }
}
