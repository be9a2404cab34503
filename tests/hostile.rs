//! Hostile input against the real `mcrelay serve` process, over loopback
//! only: fragment floods that claim huge messages, a handshake flood with a
//! valid cookie and garbage RSA (from one port, and from 100 ports of one
//! host against newcomers from another), malformed datagrams of every
//! shape, the worst datagram of each type (16k tiny TLVs) and the HELLO
//! stuck behind it, a full server, anti-amplification (one answer per
//! datagram, however many HELLOs it holds) and the REJECT rate limit. Each
//! test checks
//! that the server's memory stays within its bound, that the counters saw
//! the abuse, and that honest clients are still served afterwards.
//!
//! The tests take a file-wide lock and run one at a time: they measure the
//! memory and latency of a process on a 2-core machine, and a neighbour's
//! flood would make those numbers meaningless.
//!
//! `MCRELAY_BIN=/path/to/mcrelay` runs them against another build of the
//! server, e.g. `target/release/mcrelay`: only an optimised server can take
//! the 100k/s handshake flood, so the debug server `cargo test`
//! builds gets a 10k/s one (see `FLOOD_RATE_DEBUG`).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::testrng::XorShift;
use common::*;
use mcrelay::wire::fragment::FRAGMENT_HEADER_LEN;
use mcrelay::wire::tlv::{self, Reader};
use mcrelay::wire::{outer, RejectReason, COOKIE_LEN, MIN_HELLO_LEN};
use mcrelay::ConnectError;
use mcrelay::{ClientEvent, ClientOptions};

/// Silence that ends a drain of a client's pending events.
const QUIET: Duration = Duration::from_millis(300);
/// The server's default largest datagram; fragments of honest clients are this big.
const MAX_DATAGRAM: usize = 1200;
/// Largest UDP payload over IPv4.
const MAX_UDP: usize = 65507;
/// Burst of the per-source REJECT limiter (default config: twice the rate).
const REJECT_BURST: u64 = 4;
/// Refill of the per-source REJECT limiter, per second (default config).
const REJECT_RATE: f64 = 2.0;

/// Set in the child process that floods; holds
/// `server_addr,rate_per_sec,max_secs,ports`.
const FLOOD_ENV: &str = "MCRELAY_HOSTILE_FLOOD";

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time (see the module comment). A test that failed while
/// holding the lock must not fail every later one, hence `into_inner`.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server binary: `MCRELAY_BIN` if set, else the one cargo built for this test.
fn server_bin() -> PathBuf {
    std::env::var_os("MCRELAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(bin()))
}

/// True when the server under test is not the debug build cargo made for us.
fn custom_bin() -> bool {
    std::env::var_os("MCRELAY_BIN").is_some()
}

/// Like `Server::start`, but with [`server_bin`].
fn start(args: &[&str]) -> Server {
    let mut cmd = Command::new(server_bin());
    cmd.args(["serve", "--port", "0", "--iface", "127.0.0.1"])
        .args(["--admin-port", "0", "--log-level", "debug"])
        .args(args);
    Server::spawn(cmd)
}

/// Memory watch over one attack: the peak resident size is what an
/// attacker costs, even if the server frees it all before we look.
struct MemWatch {
    base_kib: u64,
}

impl MemWatch {
    /// Resets the kernel's peak-RSS mark (VmHWM) to the current RSS, so the
    /// peak read by [`MemWatch::growth_kib`] is the peak of what follows.
    fn start(server: &Server) -> MemWatch {
        std::fs::write(format!("/proc/{}/clear_refs", server.child.id()), "5")
            .expect("reset the peak RSS of the server (Linux >= 4.0)");
        MemWatch {
            base_kib: server.status_kib("VmRSS:"),
        }
    }

    /// Peak RSS since `start`, minus RSS at `start`.
    fn growth_kib(&self, server: &Server) -> u64 {
        server.status_kib("VmHWM:").saturating_sub(self.base_kib)
    }
}

/// A HELLO datagram of exactly `len` bytes (at least the 5 of header and version).
fn hello(len: usize) -> Vec<u8> {
    let mut value = vec![0u8; len - tlv::HEADER_LEN];
    value[0] = mcrelay::wire::VERSION;
    let mut d = Vec::with_capacity(len);
    tlv::put(&mut d, outer::HELLO, &value);
    d
}

/// A FRAGMENT datagram.
fn fragment(out: &mut Vec<u8>, msg_id: u32, index: u16, count: u16, chunk: &[u8]) {
    let mut value = Vec::with_capacity(FRAGMENT_HEADER_LEN + chunk.len());
    value.extend_from_slice(&msg_id.to_be_bytes());
    value.extend_from_slice(&index.to_be_bytes());
    value.extend_from_slice(&count.to_be_bytes());
    value.extend_from_slice(chunk);
    out.clear();
    tlv::put(out, outer::FRAGMENT, &value);
}

/// A plain socket aimed at the server, for bytes no honest client sends.
fn raw_socket(server: &Server) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(server.addr()).unwrap();
    s
}

/// Waits until the server has handled every datagram sent to it so far;
/// returns how many HELLOs that took (each is a datagram the server counts).
///
/// The server reads its one socket in arrival order, and loopback queues a
/// datagram before `send` returns, so the answer to a HELLO sent now proves
/// that everything queued before it was handled. Pacing a flood with this
/// keeps the server's receive buffer from overflowing, so the datagrams
/// reach the code under test instead of being dropped by the kernel.
fn barrier(server: &Server) -> u64 {
    // A fresh socket each time: a late answer to an earlier barrier's
    // retry must not end this one early.
    let probe = raw_socket(server);
    probe
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let end = Instant::now() + DEADLINE;
    let mut buf = [0u8; 2048];
    let mut hellos = 0;
    loop {
        probe.send(&hello(MIN_HELLO_LEN)).unwrap();
        hellos += 1;
        while let Ok(n) = probe.recv(&mut buf) {
            if n >= 2 && buf[..2] == outer::SERVER_KEY.to_be_bytes() {
                return hellos;
            }
        }
        assert!(
            Instant::now() < end,
            "the server answered no HELLO within {DEADLINE:?}"
        );
    }
}

/// Every counter `stats` prints.
fn stats(admin: &mut AdminConn) -> HashMap<String, u64> {
    admin
        .ok("stats")
        .iter()
        .filter_map(|l| {
            let (name, v) = l.split_once(' ')?;
            Some((name.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// How much counter `name` grew between two snapshots.
fn grew(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    let get = |m: &HashMap<String, u64>| *m.get(name).unwrap_or_else(|| panic!("no stat {name}"));
    get(after) - get(before)
}

/// The datagrams waiting on `sock`, without blocking.
fn pending(sock: &UdpSocket) -> Vec<Vec<u8>> {
    sock.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut v = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        v.push(buf[..n].to_vec());
    }
    sock.set_nonblocking(false).unwrap();
    v
}

/// Most REJECTs one source may get in `elapsed`: the burst plus the refill.
fn reject_allowance(elapsed: Duration) -> u64 {
    REJECT_BURST + (elapsed.as_secs_f64() * REJECT_RATE).ceil() as u64
}

/// Two fresh clients handshake, and a message goes from one to the other.
fn fresh_clients_still_relay(server: &Server, what: &str) {
    let mut x = server.client();
    let mut y = server.client();
    drain(&mut x, QUIET);
    x.send(what.as_bytes()).unwrap();
    assert_eq!(expect_message(&mut y, what.as_bytes()), x.id().unwrap());
}

/// Sends `msgs` × `per_msg` fragments that claim `count` chunks each, with
/// chunks sized so that every datagram is `MAX_DATAGRAM` bytes.
fn send_fragment_flood(
    server: &Server,
    send: impl Fn(&[u8]),
    msgs: u32,
    per_msg: u16,
    count: u16,
    seed: u64,
) {
    let mut rng = XorShift::new(seed);
    // Slices of one random pool: fresh random bytes for 73 MiB would cost
    // more time than the server spends on them.
    let pool = rng.bytes(64 * 1024);
    let chunk_len = MAX_DATAGRAM - tlv::HEADER_LEN - FRAGMENT_HEADER_LEN;
    let mut d = Vec::with_capacity(MAX_DATAGRAM);
    for msg_id in 0..msgs {
        for index in 0..per_msg {
            let at = rng.index(pool.len() - chunk_len);
            fragment(&mut d, msg_id, index, count, &pool[at..at + chunk_len]);
            assert_eq!(d.len(), MAX_DATAGRAM);
            send(&d);
        }
        // 64 datagrams of 1200 bytes fit the default receive buffer.
        barrier(server);
    }
}

/// Messages of the fragment floods: 1000 × 64 fragments of 1200 bytes,
/// each claiming 65535 chunks, are 73 MiB if kept.
const FLOOD_MSGS: u32 = 1000;
/// Fragments sent per message of the fragment floods.
const FLOOD_PER_MSG: u16 = 64;

/// A registered client sends 1000 msg_ids × 64 fragments of 1200 bytes,
/// each claiming 65535 chunks (73 MiB if kept): every one is refused as too
/// large before anything is buffered, the server's RSS grows by less than
/// 16 MiB, and relaying works afterwards.
#[test]
fn registered_fragment_flood_claiming_huge_messages_stays_bounded() {
    let _serial = serial();
    let server = start(&[]);
    let mut admin = server.admin();
    admin.ok("log off");
    let mut a = server.client();
    let mut b = server.client();
    drain(&mut a, QUIET);
    // Warm up reassembly and fan-out, so that their first allocations do
    // not count as growth.
    let warm = vec![7u8; 5000];
    a.send(&warm).unwrap();
    expect_message(&mut b, &warm);
    barrier(&server);

    let before = stats(&mut admin);
    let mem = MemWatch::start(&server);
    let t = Instant::now();
    let sent = u64::from(FLOOD_MSGS) * u64::from(FLOOD_PER_MSG);
    send_fragment_flood(
        &server,
        |d| a.send_raw(d).unwrap(),
        FLOOD_MSGS,
        FLOOD_PER_MSG,
        u16::MAX,
        1,
    );
    let growth = mem.growth_kib(&server);
    let after = stats(&mut admin);
    eprintln!(
        "registered fragment flood: {sent} fragments in {:?}, peak RSS growth {growth} KiB",
        t.elapsed()
    );

    // Nearly all reached the reassembler (the kernel may drop a few), and
    // every one was refused: the claimed size is over the message limit.
    let seen = grew(&before, &after, "fragments_in");
    assert!(
        seen >= sent * 95 / 100,
        "only {seen} of {sent} fragments seen"
    );
    assert_eq!(
        grew(&before, &after, "drop_reassembly_too_large"),
        seen,
        "{after:?}"
    );
    assert_eq!(after["reassembly_bytes"], 0);
    assert!(growth < 16 * 1024, "RSS grew by {growth} KiB");
    a.send(b"still relaying").unwrap();
    assert_eq!(expect_message(&mut b, b"still relaying"), a.id().unwrap());
}

/// The same flood from an address that never shook hands: nothing is
/// buffered, RSS grows by less than 2 MiB, and all the sender gets back is
/// a rate-limited trickle of REJECT 1.
#[test]
fn unregistered_fragment_flood_costs_nothing_but_rate_limited_rejects() {
    let _serial = serial();
    let server = start(&[]);
    let mut admin = server.admin();
    admin.ok("log off");
    fresh_clients_still_relay(&server, "warm-up");
    barrier(&server);
    let stranger = raw_socket(&server);

    let before = stats(&mut admin);
    let mem = MemWatch::start(&server);
    let t = Instant::now();
    let sent = u64::from(FLOOD_MSGS) * u64::from(FLOOD_PER_MSG);
    send_fragment_flood(
        &server,
        |d| {
            stranger.send(d).unwrap();
        },
        FLOOD_MSGS,
        FLOOD_PER_MSG,
        u16::MAX,
        2,
    );
    let elapsed = t.elapsed();
    let growth = mem.growth_kib(&server);
    let after = stats(&mut admin);
    let replies = pending(&stranger);
    eprintln!(
        "unregistered fragment flood: {sent} fragments in {elapsed:?}, peak RSS growth \
         {growth} KiB, {} replies",
        replies.len()
    );

    let seen = grew(&before, &after, "drop_stranger");
    assert!(
        seen >= sent * 95 / 100,
        "only {seen} of {sent} datagrams seen"
    );
    assert_eq!(grew(&before, &after, "fragments_in"), 0, "never buffered");
    assert_eq!(after["reassembly_bytes"], 0);
    assert!(growth < 2 * 1024, "RSS grew by {growth} KiB");
    let reject = mcrelay::wire::reject_datagram(RejectReason::UnknownSession);
    assert!(
        replies.iter().all(|r| r[..] == reject),
        "only REJECT 1: {replies:?}"
    );
    assert!(!replies.is_empty(), "told at least once to handshake");
    let allowed = reject_allowance(elapsed);
    assert!(
        replies.len() as u64 <= allowed,
        "{} REJECTs in {elapsed:?}; at most {allowed}",
        replies.len()
    );
    fresh_clients_still_relay(&server, "after the flood");
}

/// With `--max-clients 2` a third client gets REJECT 3 (server full), and
/// gets in once one of the two has left.
#[test]
fn max_clients_2_third_gets_server_full_until_a_slot_frees() {
    let _serial = serial();
    let server = start(&["--max-clients", "2"]);
    let mut a = server.client();
    let _b = server.client();
    let mut c = server.client_with(ClientOptions::default());
    match c.connect(DEADLINE) {
        Err(ConnectError::Rejected(RejectReason::ServerFull)) => {}
        other => panic!("expected REJECT 3 (server full), got {other:?}"),
    }
    a.bye().unwrap();
    // The slot frees once the BYE is handled; a retry within the deadline must get in.
    let end = Instant::now() + DEADLINE;
    loop {
        match c.connect(DEADLINE) {
            Ok(_) => break,
            Err(ConnectError::Rejected(RejectReason::ServerFull)) if Instant::now() < end => {}
            other => panic!("after a BYE the third client gets in; got {other:?}"),
        }
    }
}

/// Anti-amplification: every HELLO of 256..=1500 bytes is answered with at
/// most three times its size; a 255-byte HELLO, or one of another version,
/// gets nothing.
#[test]
fn hello_answers_never_exceed_three_times_the_hello() {
    let _serial = serial();
    let server = start(&[]);
    let sock = raw_socket(&server);
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = vec![0u8; 65536];
    for len in MIN_HELLO_LEN..=1500 {
        let end = Instant::now() + DEADLINE;
        let n = loop {
            sock.send(&hello(len)).unwrap();
            if let Ok(n) = sock.recv(&mut buf) {
                break n;
            }
            assert!(Instant::now() < end, "no answer to a {len}-byte HELLO");
        };
        assert_eq!(&buf[..2], &outer::SERVER_KEY.to_be_bytes(), "{len}");
        assert!(n <= 3 * len, "a {len}-byte HELLO got {n} bytes");
    }

    // Too short by one byte, and the longest possible with a wrong
    // version: neither may be answered. The barrier's answer proves the
    // server handled both, and would have answered them first.
    let short = raw_socket(&server);
    short.send(&hello(MIN_HELLO_LEN - 1)).unwrap();
    let mut v2 = hello(MAX_UDP);
    v2[4] = 2;
    short.send(&v2).unwrap();
    barrier(&server);
    assert_eq!(pending(&short), Vec::<Vec<u8>>::new());
}

/// 1000 datagrams that need a session, sent quickly from one stranger, earn
/// it no more REJECTs than the per-source burst plus its refill; the rest
/// are counted as suppressed.
#[test]
fn rejects_to_one_source_are_rate_limited() {
    let _serial = serial();
    let server = start(&[]);
    let mut admin = server.admin();
    admin.ok("log off");
    let stranger = raw_socket(&server);
    let before = stats(&mut admin);
    let t = Instant::now();
    let junk = [0, 5, 0, 4, b'j', b'u', b'n', b'k'];
    for i in 0..1000 {
        stranger.send(&junk).unwrap();
        if i % 100 == 99 {
            barrier(&server);
        }
    }
    barrier(&server);
    let elapsed = t.elapsed();
    let replies = pending(&stranger);
    let after = stats(&mut admin);
    eprintln!(
        "1000 stranger datagrams in {elapsed:?}: {} REJECTs",
        replies.len()
    );
    let reject = mcrelay::wire::reject_datagram(RejectReason::UnknownSession);
    assert!(replies.iter().all(|r| r[..] == reject), "{replies:?}");
    assert!(!replies.is_empty());
    let allowed = reject_allowance(elapsed);
    assert!(
        replies.len() as u64 <= allowed,
        "{} REJECTs in {elapsed:?}; at most {allowed}",
        replies.len()
    );
    assert_eq!(grew(&before, &after, "drop_stranger"), 1000);
    assert_eq!(
        grew(&before, &after, "rejects_suppressed"),
        1000 - replies.len() as u64
    );
}

/// A handshake by a new client: the client and how long it took.
fn timed_handshake(server: &Server) -> (mcrelay::UdpClient, Duration) {
    let mut c = server.client_with(ClientOptions::default());
    let t = Instant::now();
    c.connect(DEADLINE).expect("handshake");
    (c, t.elapsed())
}

/// What the flooding process reported when it stopped.
struct FloodReport {
    sent: u64,
    secs: f64,
}

/// The flooding child process; killed on drop if the test fails first.
struct Flood {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Flood {
    /// Starts this test binary again as [`flood_helper_process`], aimed at
    /// `server` from `ports` sockets, and waits until it holds their
    /// cookies and floods.
    fn start(server: &Server, rate: u64, max_secs: u64, ports: usize) -> Flood {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "flood_helper_process",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(
                FLOOD_ENV,
                format!("{},{rate},{max_secs},{ports}", server.addr()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("re-run the test binary as the flooder");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut flood = Flood { child, lines };
        flood.wait_line("flooding from");
        flood
    }

    /// The first line from the flooder that contains `needle`.
    fn wait_line(&mut self, needle: &str) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("flooder said no {needle:?} within {DEADLINE:?}: {e}"),
            }
        }
    }

    /// Closes the flooder's stdin, which stops it, and reads its report.
    fn stop(mut self) -> FloodReport {
        drop(self.child.stdin.take());
        let line = self.wait_line("flood done");
        let field = |name: &str| -> &str {
            line.split_whitespace()
                .skip_while(|w| *w != name)
                .nth(1)
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        FloodReport {
            sent: field("sent").parse().unwrap(),
            secs: field("in").parse().unwrap(),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The flooding process: run by [`Flood::start`] with `FLOOD_ENV` set to
/// `server_addr,rate_per_sec,max_secs,ports`; run any other way it fails.
///
/// It gets a real cookie with a HELLO for each of its `ports` sockets (all
/// on 127.0.0.1), then sends COOKIE + SESSION_KEY(256 random bytes) from
/// them in turn as fast as it can, at most `rate` per second in total,
/// until its stdin closes or `max_secs` pass.
#[test]
#[ignore = "helper process of the flood test, which runs it"]
fn flood_helper_process() {
    let spec = std::env::var(FLOOD_ENV)
        .unwrap_or_else(|_| panic!("only the flood test runs this, with {FLOOD_ENV} set"));
    let mut parts = spec.split(',');
    let server: SocketAddr = parts.next().unwrap().parse().unwrap();
    let rate: u64 = parts.next().unwrap().parse().unwrap();
    let max = Duration::from_secs(parts.next().unwrap().parse().unwrap());
    let ports: usize = parts.next().unwrap().parse().unwrap();

    // A few different ciphertexts of the real length (RSA-2048) per
    // socket, so the server cannot get away with remembering one.
    const PER_SOCKET: usize = 16;
    let mut rng = XorShift::new(0xf100d);
    let mut socks = Vec::new();
    let mut datagrams = Vec::new();
    for _ in 0..ports {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(server).unwrap();
        let cookie = cookie_for(&sock);
        for _ in 0..PER_SOCKET {
            let mut d = Vec::new();
            tlv::put(&mut d, outer::COOKIE, &cookie);
            tlv::put(&mut d, outer::SESSION_KEY, &rng.bytes(256));
            datagrams.push(d);
        }
        socks.push(sock);
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        // EOF (or an error) on stdin: the parent is done, or gone.
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    println!(
        "flooding from {} and {} more sockets",
        socks[0].local_addr().unwrap(),
        ports - 1
    );
    let start = Instant::now();
    let mut sent = 0u64;
    let mut errors = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < max {
        let due = (start.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        // Bounded batches, so the stop flag is seen even when the sender
        // cannot keep up with `rate`.
        for _ in 0..(due - sent).min(1000) {
            let i = sent as usize;
            let sock = &socks[i % ports];
            let d = &datagrams[(i % ports) * PER_SOCKET + (i / ports) % PER_SOCKET];
            if sock.send(d).is_err() {
                errors += 1;
            }
            sent += 1;
        }
    }
    println!(
        "flood done: sent {sent} in {:.3} s, {errors} send errors",
        start.elapsed().as_secs_f64()
    );
}

/// Flood rate against a release server (`MCRELAY_BIN`): the 100k/s.
const FLOOD_RATE_RELEASE: u64 = 100_000;
/// Flood rate against the debug server `cargo test` builds. Unoptimised
/// HMAC makes that server handle only 10–30k datagrams/s on a busy 2-core
/// machine; at 100k/s the kernel drops most of everything, newcomers'
/// included, and a handshake takes up to 17 s of HELLO retries. 10k/s
/// keeps it below capacity, so the 0.5 s target still means something.
const FLOOD_RATE_DEBUG: u64 = 10_000;

/// The flood rate: `MCRELAY_FLOOD_RATE` if set (to measure other rates),
/// else by which server runs.
fn flood_rate() -> u64 {
    match std::env::var("MCRELAY_FLOOD_RATE") {
        Ok(r) => r.parse().expect("MCRELAY_FLOOD_RATE: datagrams per second"),
        Err(_) if custom_bin() => FLOOD_RATE_RELEASE,
        Err(_) => FLOOD_RATE_DEBUG,
    }
}

/// Newcomers that must get in, one after another, while the flood runs.
const NEWCOMERS: usize = 5;
/// The target for a newcomer's handshake under flood.
const HANDSHAKE_TARGET: Duration = Duration::from_millis(500);
/// Burst of the per-source handshake limiter (default config).
const HANDSHAKE_BURST: f64 = 10.0;
/// Refill of the per-source handshake limiter, per second (default config).
const HANDSHAKE_RATE: f64 = 5.0;

/// Newcomers handshake in under 0.5 s while a separate process (this test
/// binary re-run as [`flood_helper_process`]) sends COOKIE + SESSION_KEY
/// with a valid cookie and garbage RSA from one source, as fast as it can
/// up to the flood rate. The per-source limiter must keep the flood's RSA
/// work to its burst plus 5/s, and the flood must not crowd out others.
#[test]
fn handshakes_complete_quickly_under_a_valid_cookie_garbage_rsa_flood() {
    let _serial = serial();
    // 4 MiB (the kernel caps it at net.core.rmem_max): the default buffer
    // holds ~2 ms of a 100k/s flood, so on a loaded 2-core machine any
    // scheduling hiccup drops datagrams, and one lost HELLO costs a client
    // its 700 ms retry. An operator expecting floods sets this too.
    let server = start(&["--recv-buffer", "4194304"]);
    let mut admin = server.admin();
    admin.ok("log off");
    let (_, unloaded) = timed_handshake(&server);
    let start_stats = stats(&mut admin);

    let rate = flood_rate();
    let flood = Flood::start(&server, rate, 60, 1);
    // Time no one before the flood has run a while and visibly gets past
    // the cookie check to the per-source limiter, where a valid cookie lands.
    let flooding = Instant::now();
    let end = flooding + DEADLINE;
    while flooding.elapsed() < Duration::from_secs(1)
        || stats(&mut admin)["drop_handshake_rate_limited_addr"] < rate / 2
    {
        assert!(Instant::now() < end, "the flood never reached the limiter");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = stats(&mut admin);
    let mut clients = Vec::new();
    let mut times = Vec::new();
    for _ in 0..NEWCOMERS {
        let (c, t) = timed_handshake(&server);
        clients.push(c);
        times.push(t);
    }
    let after = stats(&mut admin);
    // They can talk under fire too. A full receive buffer drops datagrams
    // at random, so keep sending until one gets through.
    let end = Instant::now() + DEADLINE;
    'relay: loop {
        clients[NEWCOMERS - 1].send(b"under fire").unwrap();
        while let Some(e) = clients[0].recv(Duration::from_millis(200)).unwrap() {
            if matches!(&e, ClientEvent::Message { body, .. } if body == b"under fire") {
                break 'relay;
            }
        }
        assert!(Instant::now() < end, "no message relayed under flood");
    }
    let report = flood.stop();
    let done = stats(&mut admin);
    let rsa = grew(&start_stats, &done, "drop_handshake_rsa_decrypt");
    eprintln!(
        "handshake unloaded {unloaded:?}; under a flood of {:.0}/s ({} sent in {:.1} s, \
         {} refused by the limiter while timing, {rsa} garbage RSA decrypted): {times:?}",
        report.sent as f64 / report.secs,
        report.sent,
        report.secs,
        grew(&before, &after, "drop_handshake_rate_limited_addr"),
    );

    // The flood was what it claims: a valid cookie (no bad-cookie
    // refusals), garbage RSA that was decrypted and refused, still coming
    // while the newcomers shook hands.
    assert_eq!(grew(&start_stats, &done, "drop_handshake_bad_cookie"), 0);
    assert!(rsa >= 1);
    assert!(grew(&before, &after, "drop_handshake_rate_limited_addr") > 0);
    // The limiter held one source to its burst and rate; +2 for rounding
    // and for the backlog the server still drains after the flooder stops.
    let allowed = (HANDSHAKE_BURST + HANDSHAKE_RATE * report.secs).ceil() as u64 + 2;
    assert!(
        rsa <= allowed,
        "{rsa} RSA decryptions for one source; at most {allowed}"
    );
    assert_eq!(
        grew(&before, &after, "handshakes_completed"),
        NEWCOMERS as u64
    );
    assert!(
        times.iter().all(|t| *t < HANDSHAKE_TARGET),
        "handshakes under a {rate}/s flood took {times:?}"
    );
}

/// A cookie for `sock` (connected to the server): HELLO until answered.
fn cookie_for(sock: &UdpSocket) -> Vec<u8> {
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let end = Instant::now() + DEADLINE;
    let mut buf = [0u8; 2048];
    loop {
        sock.send(&hello(MIN_HELLO_LEN)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let cookie = Reader::new(&buf[..n])
                .flatten()
                .find(|t| t.kind == outer::COOKIE)
                .map(|t| t.value.to_vec());
            if let Some(c) = cookie.filter(|c| c.len() == COOKIE_LEN) {
                return c;
            }
        }
        assert!(Instant::now() < end, "no cookie within {DEADLINE:?}");
    }
}

/// The first TLV of `d` whose type is `kind`.
fn tlv_of(d: &[u8], kind: u16) -> Option<Vec<u8>> {
    Reader::new(d)
        .flatten()
        .find(|t| t.kind == kind)
        .map(|t| t.value.to_vec())
}

/// How long mcrelay's client waits for an answer before it starts over.
const CLIENT_RETRY: Duration = Duration::from_millis(700);
/// A valid Fernet key (its 44-character text): RSA-OAEP is randomised, so
/// every SESSION_KEY made from it is a new ciphertext.
const FERNET_KEY: &[u8] = b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A handshake made by hand from a fresh socket on `local_ip` (any address
/// of 127/8), the way mcrelay's client makes it: HELLO until SERVER_KEY +
/// COOKIE, then COOKIE + SESSION_KEY, and from HELLO again if no WELCOME
/// came within 700 ms. Returns how long until the WELCOME, or None if none
/// came within `limit`.
fn handshake_from(server: &Server, local_ip: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    // The per-address limiter is a fixed table: a port whose slot happens to
    // be shared with one of the 100 flooding ports (about 1 in 40) is held
    // to the flooder's bucket while the flood lasts. A client that gets no
    // answer for a few seconds starts again from a new socket, as a
    // restarted client would.
    while t.elapsed() < limit {
        let left = limit
            .saturating_sub(t.elapsed())
            .min(Duration::from_secs(4));
        if handshake_once(server, local_ip, left).is_some() {
            return Some(t.elapsed());
        }
    }
    None
}

/// [`handshake_from`] on one socket, for at most `limit`.
fn handshake_once(server: &Server, local_ip: &str, limit: Duration) -> Option<Duration> {
    use rsa::pkcs8::DecodePublicKey;
    let sock = UdpSocket::bind((local_ip, 0)).unwrap();
    sock.connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let t = Instant::now();
    let mut recv_within = |wait: Duration, kind: u16| -> Option<Vec<u8>> {
        let end = Instant::now() + wait;
        while Instant::now() < end {
            if let Ok(n) = sock.recv(&mut buf) {
                if Reader::new(&buf[..n]).flatten().any(|t| t.kind == kind) {
                    return Some(buf[..n].to_vec());
                }
            }
        }
        None
    };
    while t.elapsed() < limit {
        sock.send(&hello(MIN_HELLO_LEN)).unwrap();
        let Some(answer) = recv_within(CLIENT_RETRY, outer::SERVER_KEY) else {
            continue;
        };
        let (Some(der), Some(cookie)) = (
            tlv_of(&answer, outer::SERVER_KEY),
            tlv_of(&answer, outer::COOKIE),
        ) else {
            continue;
        };
        let public = rsa::PublicKey::from_public_key_der(&der).unwrap();
        let ct = public
            .oaep_encrypt::<rsa::sha2::Sha256>(FERNET_KEY)
            .unwrap();
        let mut d = Vec::new();
        tlv::put(&mut d, outer::COOKIE, &cookie);
        tlv::put(&mut d, outer::SESSION_KEY, &ct);
        sock.send(&d).unwrap();
        if recv_within(CLIENT_RETRY, outer::WELCOME).is_some() {
            return Some(t.elapsed());
        }
    }
    None
}

/// Source ports of the one host that floods in
/// [`a_host_flooding_from_100_ports_cannot_keep_another_host_out`].
const FLOOD_PORTS: usize = 100;
/// The target for a newcomer from another host under that flood.
const OTHER_HOST_TARGET: Duration = Duration::from_secs(2);

/// 100 source ports of 127.0.0.1 (a separate process) send COOKIE +
/// SESSION_KEY with valid cookies and garbage RSA as fast as they can, up
/// to the flood rate; each port alone is within its per-address limit, so
/// only the per-IP share keeps them from spending the whole RSA budget.
/// Newcomers from 127.0.0.2 must still join, well within 2 s (asserted
/// generously; the times are printed), and the flooding host must get no
/// more than its quarter of the RSA budget.
#[test]
fn a_host_flooding_from_100_ports_cannot_keep_another_host_out() {
    let _serial = serial();
    let server = start(&["--recv-buffer", "4194304"]);
    let mut admin = server.admin();
    admin.ok("log off");
    let start_stats = stats(&mut admin);

    let rate = flood_rate();
    let flood = Flood::start(&server, rate, 60, FLOOD_PORTS);
    // Time no one until the flood has run a while (its bursts spent).
    let flooding = Instant::now();
    let end = flooding + DEADLINE;
    while flooding.elapsed() < Duration::from_secs(2)
        || grew(&start_stats, &stats(&mut admin), "datagrams_in") < rate
    {
        assert!(Instant::now() < end, "the flood never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = stats(&mut admin);
    let times: Vec<Option<Duration>> = (0..NEWCOMERS)
        .map(|_| handshake_from(&server, "127.0.0.2", DEADLINE))
        .collect();
    let after = stats(&mut admin);
    let report = flood.stop();
    let done = stats(&mut admin);
    let get = |m: &HashMap<String, u64>, name: &str| m.get(name).copied().unwrap_or(0);
    let rsa =
        get(&done, "drop_handshake_rsa_decrypt") - get(&start_stats, "drop_handshake_rsa_decrypt");
    eprintln!(
        "newcomers from 127.0.0.2 under a flood of {:.0}/s from {FLOOD_PORTS} ports of \
         127.0.0.1 ({} sent in {:.1} s, {rsa} garbage RSA decrypted): joined after {:?} \
         (µs: {:?})",
        report.sent as f64 / report.secs,
        report.sent,
        report.secs,
        times,
        times
            .iter()
            .map(|t| t.map(|t| t.as_micros()))
            .collect::<Vec<_>>(),
    );

    assert!(
        times
            .iter()
            .all(|t| t.is_some_and(|t| t < 10 * OTHER_HOST_TARGET)),
        "newcomers from another host: {times:?}"
    );
    assert_eq!(
        grew(&before, &after, "handshakes_completed"),
        NEWCOMERS as u64
    );
    assert!(grew(&before, &after, "drop_handshake_rate_limited_ip") > 0);
    assert_eq!(grew(&start_stats, &done, "drop_handshake_bad_cookie"), 0);
    // One host's share: a quarter of the default 200/s, its burst of 50,
    // and slack for rounding and the backlog drained after the flood stops.
    let allowed = (50.0 + 50.0 * report.secs).ceil() as u64 + 25;
    assert!(
        rsa <= allowed,
        "{rsa} RSA decryptions for one host; at most {allowed}"
    );
}

/// `n` HELLO TLVs of version 1 in one datagram; the first is padded so that
/// the datagram has at least the minimum HELLO size.
fn hellos(n: usize) -> Vec<u8> {
    let one = tlv::HEADER_LEN + 1;
    let mut d = hello(MIN_HELLO_LEN.saturating_sub((n - 1) * one).max(one));
    for _ in 1..n {
        tlv::put(&mut d, outer::HELLO, &[mcrelay::wire::VERSION]);
    }
    d
}

/// As many TLVs of `kind` holding `value` as fit in the largest UDP datagram.
fn tiny_tlvs(kind: u16, value: &[u8]) -> Vec<u8> {
    let n = MAX_UDP / (tlv::HEADER_LEN + value.len());
    let mut d = Vec::with_capacity(MAX_UDP);
    for _ in 0..n {
        tlv::put(&mut d, kind, value);
    }
    d
}

/// The reflector: 51 HELLO TLVs in 256 bytes got 51 answers.
const HELLO_COUNTS: [usize; 4] = [1, 2, 51, MAX_UDP / (tlv::HEADER_LEN + 1)];

/// One datagram holding 1, 2, 51 or 13,101 HELLOs (the last fills the
/// largest UDP datagram) is answered once, with at most three times its
/// size: one datagram can never turn the relay into a reflector.
#[test]
fn one_datagram_of_many_hellos_gets_one_answer_within_three_times_its_size() {
    let _serial = serial();
    let server = start(&[]);
    let mut admin = server.admin();
    admin.ok("log off");
    let mut seen = Vec::new();
    for n in HELLO_COUNTS {
        let sock = raw_socket(&server);
        let d = hellos(n);
        assert!(d.len() >= MIN_HELLO_LEN && d.len() <= MAX_UDP);
        sock.send(&d).unwrap();
        barrier(&server);
        let answers = pending(&sock);
        let back: usize = answers.iter().map(Vec::len).sum();
        eprintln!(
            "{n} HELLOs in {} bytes: {} answers, {back} bytes back, {:.3}x",
            d.len(),
            answers.len(),
            back as f64 / d.len() as f64
        );
        seen.push((n, d.len(), answers, back));
    }
    for (n, len, answers, back) in seen {
        assert_eq!(answers.len(), 1, "{n} HELLOs");
        assert_eq!(&answers[0][..2], &outer::SERVER_KEY.to_be_bytes());
        assert!(back <= 3 * len, "{n} HELLOs: {back} bytes back");
    }
}

/// Runs of each worst-case datagram (after one to warm up).
const STALL_RUNS: usize = 10;
/// Generous bound on a HELLO's longest wait behind one worst-case
/// datagram: the goal is a few hundred µs with the release build (the
/// measured figures are printed), but CI machines are noisy.
const STALL_LIMIT: Duration = Duration::from_secs(2);
/// Bound on the median wait, which a noisy machine hardly moves: a
/// quadratic parse of one datagram (about 600 ms) fails it, a linear one
/// (a few ms even in a debug build) passes it many times over.
const STALL_MEDIAN_LIMIT: Duration = Duration::from_millis(50);

/// Sends `hello` from `probe` and waits for its SERVER_KEY (sending again
/// after a second, should it be lost); returns the wait.
fn hello_wait(probe: &UdpSocket) -> Duration {
    probe
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let t = Instant::now();
    loop {
        probe.send(&hello(MIN_HELLO_LEN)).unwrap();
        while let Ok(n) = probe.recv(&mut buf) {
            if n >= 2 && buf[..2] == outer::SERVER_KEY.to_be_bytes() {
                return t.elapsed();
            }
        }
        assert!(t.elapsed() < DEADLINE, "no answer within {DEADLINE:?}");
    }
}

/// Slowest and median of some waits, in µs.
fn worst_and_median(mut v: Vec<Duration>) -> (u128, u128) {
    v.sort();
    (v[v.len() - 1].as_micros(), v[v.len() / 2].as_micros())
}

/// For each outer type, the worst datagram of it: the largest UDP datagram
/// packed with the tiniest TLVs of that type (16,376 empty ones, or as many
/// of the smallest well-formed value), from a stranger and from a member,
/// and for a few types the same bytes reassembled from a member's fragments.
/// A HELLO from another socket, sent right behind it, waits for its answer
/// no more than a few hundred µs (release build; asserted generously, the
/// figures printed), and each such datagram is answered at most once.
#[test]
fn a_hello_waits_little_behind_the_worst_datagram_of_each_type() {
    let _serial = serial();
    let server = start(&[]);
    let mut admin = server.admin();
    admin.ok("log off");
    let member = server.client();
    let stranger = raw_socket(&server);
    let probe = raw_socket(&server);
    let alone: Vec<Duration> = (0..=STALL_RUNS).map(|_| hello_wait(&probe)).collect();
    let (alone_max, alone_median) = worst_and_median(alone[1..].to_vec());
    eprintln!("HELLO alone: worst {alone_max} µs, median {alone_median} µs");

    // A 9-byte FRAGMENT value is the smallest well-formed one; count 2, so
    // each would start a partial message. A REJECT needs its reason byte.
    let smallest_fragment = [0, 0, 0, 1, 0, 0, 0, 2, 0xAA];
    let cases: Vec<(String, Vec<u8>)> = [
        ("HELLO", outer::HELLO, &[][..]),
        ("SERVER_KEY", outer::SERVER_KEY, &[]),
        ("SESSION_KEY", outer::SESSION_KEY, &[]),
        ("WELCOME", outer::WELCOME, &[]),
        ("DATA", outer::DATA, &[]),
        ("FRAGMENT", outer::FRAGMENT, &smallest_fragment),
        ("KEEPALIVE", outer::KEEPALIVE, &[]),
        ("BYE", outer::BYE, &[]),
        ("REJECT", outer::REJECT, &[1]),
        ("COOKIE", outer::COOKIE, &[]),
        ("unknown 0x7777", 0x7777, &[]),
    ]
    .iter()
    .map(|(name, kind, value)| {
        let d = tiny_tlvs(*kind, value);
        let n = d.len() / (tlv::HEADER_LEN + value.len());
        (format!("{n} {name}s"), d)
    })
    .collect();
    let mut results = Vec::new();
    let mut msg_id = 0x4000_0000u32;
    for (name, d) in &cases {
        for from_member in [false, true] {
            let send = |d: &[u8]| {
                if from_member {
                    member.send_raw(d).unwrap();
                } else {
                    stranger.send(d).unwrap();
                }
            };
            let mut waits = Vec::new();
            for _ in 0..=STALL_RUNS {
                send(d);
                waits.push(hello_wait(&probe));
            }
            let who = if from_member { "member" } else { "stranger" };
            results.push((format!("{name} ({} bytes) from a {who}", d.len()), waits));
        }
    }
    // Reassembled from a member's fragments: the payload is handled as if it
    // had arrived whole, and costs no more.
    for (name, kind) in [
        ("SESSION_KEY", outer::SESSION_KEY),
        ("HELLO", outer::HELLO),
        ("DATA", outer::DATA),
    ] {
        let payload = tiny_tlvs(kind, &[]);
        let mut waits = Vec::new();
        for _ in 0..=STALL_RUNS {
            msg_id += 1;
            let mut frags = Vec::new();
            mcrelay::wire::fragment::split(&payload, MAX_DATAGRAM, msg_id, |f| {
                frags.push(f.to_vec())
            });
            // All but the last fragment first, so only the payload is timed.
            for f in &frags[..frags.len() - 1] {
                member.send_raw(f).unwrap();
            }
            barrier(&server);
            member.send_raw(&frags[frags.len() - 1]).unwrap();
            waits.push(hello_wait(&probe));
        }
        let what = format!(
            "16376 {name}s ({} bytes) reassembled from a member's {} fragments",
            payload.len(),
            payload
                .len()
                .div_ceil(MAX_DATAGRAM - FRAGMENT_HEADER_LEN - tlv::HEADER_LEN)
        );
        results.push((what, waits));
    }
    barrier(&server);
    let to_stranger = pending(&stranger);
    for (what, waits) in &results {
        let (worst, median) = worst_and_median(waits[1..].to_vec());
        eprintln!("HELLO behind {what}: worst {worst} µs, median {median} µs");
    }
    // At most one answer per datagram, and only REJECTs.
    let sent = cases.len() * (STALL_RUNS + 1);
    assert!(to_stranger.len() <= sent, "{} answers", to_stranger.len());
    assert!(
        to_stranger
            .iter()
            .all(|a| a.len() == mcrelay::wire::REJECT_LEN),
        "only REJECTs"
    );
    for (what, waits) in &results {
        let mut w = waits[1..].to_vec();
        w.sort();
        let (worst, median) = (w[w.len() - 1], w[w.len() / 2]);
        assert!(
            worst < STALL_LIMIT,
            "a HELLO waited {worst:?} behind {what}"
        );
        assert!(
            median < STALL_MEDIAN_LIMIT,
            "a HELLO waited {median:?} (median) behind {what}"
        );
    }
    fresh_clients_still_relay(&server, "after the worst datagrams");
}

/// Registered clients enough to fill the total reassembly budget (8 MiB):
/// 40 × the 256 KiB each may hold.
const BUDGET_CLIENTS: usize = 40;

/// Partial messages that fill the whole reassembly budget (8 MiB), expire
/// and fill it again cost the server less than 16 MiB, twice the budget.
/// Chunks of 900 bytes in messages of 66 that never complete, interleaved
/// across 40 clients: while the buffers grew by doubling, this peaked at
/// 14–16 MiB; growing by an eighth, it peaks at about 11 MiB.
#[test]
fn partials_filling_the_total_reassembly_budget_stay_within_twice_it() {
    let _serial = serial();
    let server = start(&["--reassembly-age", "1"]);
    let mut admin = server.admin();
    admin.ok("log off");
    let mut clients: Vec<_> = (0..BUDGET_CLIENTS).map(|_| server.client()).collect();
    fresh_clients_still_relay(&server, "warm-up");
    barrier(&server);
    let before = stats(&mut admin);
    let mem = MemWatch::start(&server);
    let mut rng = XorShift::new(4);
    let pool = rng.bytes(64 * 1024);
    let (chunk_len, count) = (900, 66);
    let mut d = Vec::with_capacity(MAX_DATAGRAM);
    let mut peak_held = 0;
    for round in 0..3u32 {
        // Each round starts empty, so the allocator sees the churn.
        let end = Instant::now() + DEADLINE;
        while stats(&mut admin)["reassembly_bytes"] > 0 {
            assert!(Instant::now() < end, "partials never expired");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Interleaved across clients, so that every buffer grows while
        // the others do: the worst case for reallocation.
        for msg in 0..8u32 {
            for index in 0..count - 1 {
                for c in clients.iter_mut() {
                    let at = rng.index(pool.len() - chunk_len);
                    fragment(
                        &mut d,
                        round * 8 + msg,
                        index,
                        count,
                        &pool[at..at + chunk_len],
                    );
                    c.send_raw(&d).unwrap();
                }
                barrier(&server);
            }
        }
        peak_held = peak_held.max(stats(&mut admin)["reassembly_bytes"]);
    }
    let growth = mem.growth_kib(&server);
    let after = stats(&mut admin);
    eprintln!(
        "reassembly budget: {peak_held} bytes held, peak RSS growth {growth} KiB, \
         {} owner_bytes and {} total_bytes drops",
        grew(&before, &after, "drop_reassembly_owner_bytes"),
        grew(&before, &after, "drop_reassembly_total_bytes")
    );
    let budget = 8 * 1024 * 1024;
    assert!(
        peak_held <= budget && peak_held > budget * 9 / 10,
        "{peak_held}"
    );
    assert!(grew(&before, &after, "drop_reassembly_total_bytes") > 0);
    assert!(growth < 16 * 1024, "RSS grew by {growth} KiB");
    fresh_clients_still_relay(&server, "after the budget flood");
}

/// What the server must have counted for a batch of hostile datagrams,
/// tallied from how each was built (not by asking the server's parser).
#[derive(Debug, Default)]
struct Expect {
    /// Broken outer framing, whoever sends it: `drop_wire_framing`.
    malformed: u64,
    /// FRAGMENTs with broken headers, whoever sends them: the datagram is
    /// refused as a whole, `drop_wire_bad_fragment`.
    bad_fragments: u64,
    /// Well-formed junk tokens from a member: `drop_token_bad`.
    tokens: u64,
    /// Well-formed datagrams that need a session, from a stranger: `drop_stranger`.
    strangers: u64,
    /// FRAGMENTs with index >= count from a member: reassembly drops.
    out_of_range: u64,
    /// TLVs of types the server does not know: `drop_wire_unknown_type`.
    unknown: u64,
    /// The first SERVER_KEY of a datagram, and a member's WELCOMEs: types
    /// only the server sends, `drop_wire_server_to_client`.
    server_types: u64,
    /// SERVER_KEYs after the first in a datagram: `drop_wire_repeated`.
    repeated: u64,
    /// SESSION_KEYs without a valid cookie: refused before any RSA.
    bad_cookies: u64,
    /// HELLOs too short or of another version: ignored.
    bad_hellos: u64,
}

/// A size for a hostile datagram: mostly up to 1500 bytes, sometimes up
/// to the largest UDP payload, now and then exactly that.
fn hostile_size(rng: &mut XorShift) -> usize {
    match rng.index(100) {
        0 => MAX_UDP,
        1..=3 => 1500 + rng.index(MAX_UDP - 1500),
        _ => 1 + rng.index(1500),
    }
}

/// Types a datagram may carry, the protocol's and a few it does not know.
const SOME_TYPES: [u16; 12] = [
    outer::HELLO,
    outer::SERVER_KEY,
    outer::SESSION_KEY,
    outer::WELCOME,
    outer::DATA,
    outer::FRAGMENT,
    outer::KEEPALIVE,
    outer::BYE,
    outer::REJECT,
    outer::COOKIE,
    0x0000,
    0xFFFF,
];

/// Builds into `d` one hostile datagram from `member` (a registered
/// source) or a stranger, and tallies what the server must count for it.
fn hostile_datagram(rng: &mut XorShift, d: &mut Vec<u8>, member: bool, e: &mut Expect) {
    d.clear();
    let size = hostile_size(rng);
    // Room for a value in a datagram of `size` bytes with one TLV header.
    let room = size.saturating_sub(tlv::HEADER_LEN);
    let session_type = [outer::DATA, outer::KEEPALIVE, outer::BYE][rng.index(3)];
    let needs_session = |e: &mut Expect| {
        if !member {
            e.strangers += 1;
        }
    };
    match rng.index(13) {
        // Random bytes: no telling what they are.
        0 => d.extend_from_slice(&rng.bytes(size)),
        // A TLV whose value is cut short.
        1 => {
            let claimed = 1 + rng.index(room.clamp(1, tlv::MAX_VALUE_LEN));
            d.extend_from_slice(&SOME_TYPES[rng.index(SOME_TYPES.len())].to_be_bytes());
            d.extend_from_slice(&(claimed as u16).to_be_bytes());
            d.extend_from_slice(&rng.some_bytes(0, claimed - 1));
            e.malformed += 1;
        }
        // 1–3 bytes: not even a TLV header.
        2 => {
            d.extend_from_slice(&rng.some_bytes(1, 3));
            e.malformed += 1;
        }
        // A good TLV, then 1–3 trailing bytes.
        3 => {
            tlv::put(d, session_type, &rng.bytes(room.min(1000)));
            d.extend_from_slice(&rng.some_bytes(1, 3));
            e.malformed += 1;
        }
        // A good TLV, then one claiming 65535 bytes that are not there.
        4 => {
            tlv::put(d, outer::KEEPALIVE, &rng.bytes(room.min(200)));
            d.extend_from_slice(&outer::DATA.to_be_bytes());
            d.extend_from_slice(&u16::MAX.to_be_bytes());
            d.extend_from_slice(&rng.some_bytes(0, 999));
            e.malformed += 1;
        }
        // A FRAGMENT whose header is short, or claims count 0, or has no chunk.
        5 => {
            let value = match rng.index(3) {
                0 => rng.some_bytes(0, FRAGMENT_HEADER_LEN - 1),
                1 => {
                    let mut v = rng.some_bytes(FRAGMENT_HEADER_LEN + 1, FRAGMENT_HEADER_LEN + 1000);
                    v[6..8].copy_from_slice(&[0, 0]);
                    v
                }
                _ => {
                    let mut v = rng.bytes(FRAGMENT_HEADER_LEN);
                    v[6..8].copy_from_slice(&[0, 2]);
                    v
                }
            };
            tlv::put(d, outer::FRAGMENT, &value);
            e.bad_fragments += 1;
        }
        // A FRAGMENT whose index is past its count; msg_ids of their own,
        // so it never meets a buffered message.
        6 => {
            let count = 1 + rng.index(100) as u16;
            let index = count + rng.index(1000) as u16;
            let msg_id = 0x8000_0000 | rng.next() as u32;
            let chunk = rng.some_bytes(1, room.clamp(13, 1200) - 12);
            fragment(d, msg_id, index, count, &chunk);
            if member {
                e.out_of_range += 1;
            }
            needs_session(e);
        }
        // Plausible FRAGMENTs on a few msg_ids: duplicates, disagreeing
        // counts, messages that never complete.
        7 => {
            let count = 2 + rng.index(63) as u16;
            let index = rng.index(usize::from(count)) as u16;
            let chunk = rng.some_bytes(1, 1188);
            fragment(d, rng.index(16) as u32, index, count, &chunk);
            needs_session(e);
        }
        // A one-chunk "message" holding junk, or a FRAGMENT inside a FRAGMENT.
        8 => {
            let mut inner = Vec::new();
            if rng.index(2) == 0 {
                inner.extend_from_slice(&rng.some_bytes(1, room.clamp(13, 2000) - 12));
            } else {
                fragment(&mut inner, rng.next() as u32, 0, 1, b"nested");
            }
            fragment(d, rng.next() as u32, 0, 1, &inner);
            needs_session(e);
        }
        // A junk token: random bytes, or text that looks like Fernet.
        9 | 10 => {
            let len = room.min(tlv::MAX_VALUE_LEN);
            let value = if rng.index(2) == 0 {
                rng.bytes(len)
            } else {
                const B64: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                let mut v = b"gAAAAA".to_vec();
                v.extend((0..len.saturating_sub(6)).map(|_| B64[rng.index(64)]));
                v
            };
            tlv::put(d, session_type, &value);
            if member {
                e.tokens += 1;
            }
            needs_session(e);
        }
        // Types the server does not take: unknown ones, and its own.
        11 => {
            let types = [
                0x0000,
                0x00EE,
                0x0100,
                0xFFFF,
                outer::SERVER_KEY,
                outer::WELCOME,
            ];
            let (mut server_keys, mut welcomes) = (0, 0);
            for _ in 0..1 + rng.index(4) {
                let ty = types[rng.index(types.len())];
                tlv::put(d, ty, &rng.some_bytes(0, room.min(300)));
                match ty {
                    outer::SERVER_KEY => server_keys += 1,
                    outer::WELCOME => welcomes += 1,
                    _ => e.unknown += 1,
                }
            }
            if server_keys > 0 {
                e.server_types += 1;
                e.repeated += server_keys - 1;
            }
            // A WELCOME is a session item: a member's is refused as a
            // server-to-client type, a stranger's makes the datagram a
            // stranger's.
            if member {
                e.server_types += welcomes;
            } else if welcomes > 0 {
                e.strangers += 1;
            }
        }
        // Handshakes gone wrong: SESSION_KEY with a made-up, short or no
        // cookie; HELLO one byte short or of another version.
        _ => match rng.index(4) {
            0 => {
                tlv::put(d, outer::COOKIE, &rng.bytes(COOKIE_LEN));
                tlv::put(d, outer::SESSION_KEY, &rng.bytes(256));
                e.bad_cookies += 1;
            }
            1 => {
                tlv::put(d, outer::COOKIE, &rng.bytes(COOKIE_LEN - 1));
                tlv::put(d, outer::SESSION_KEY, &rng.bytes(256));
                e.bad_cookies += 1;
            }
            2 => {
                tlv::put(d, outer::SESSION_KEY, &rng.bytes(256));
                e.bad_cookies += 1;
            }
            _ => {
                if rng.index(2) == 0 {
                    d.extend_from_slice(&hello(MIN_HELLO_LEN - 1));
                } else {
                    d.extend_from_slice(&hello(size.max(MIN_HELLO_LEN)));
                    d[4] = 2 + rng.index(254) as u8;
                }
                e.bad_hellos += 1;
            }
        },
    }
    assert!(d.len() <= MAX_UDP, "{}", d.len());
}

/// Total hostile datagrams, half from a member and half from a stranger.
const HOSTILE: usize = 10_000;

/// 10,000 malformed datagrams of every shape, from a registered and an
/// unregistered socket: the server stays up, holds its memory bound,
/// counts each kind where it belongs, relays none of it, and serves the
/// member, its peer and fresh clients as before.
#[test]
fn ten_thousand_malformed_datagrams_change_nothing() {
    let _serial = serial();
    let mut server = start(&[]);
    let mut admin = server.admin();
    admin.ok("log off");
    let mut member = server.client();
    let mut peer = server.client();
    drain(&mut member, QUIET);
    member.send(b"warm-up").unwrap();
    expect_message(&mut peer, b"warm-up");
    let stranger = raw_socket(&server);
    barrier(&server);

    let before = stats(&mut admin);
    let mem = MemWatch::start(&server);
    let t = Instant::now();
    let mut rng = XorShift::new(3);
    let (mut from_member, mut from_stranger) = (Expect::default(), Expect::default());
    let mut d = Vec::with_capacity(MAX_UDP);
    let (mut window, mut in_window, mut largest, mut probes) = (0, 0, 0, 0);
    for i in 0..HOSTILE {
        if i % 2 == 0 {
            hostile_datagram(&mut rng, &mut d, true, &mut from_member);
            member.send_raw(&d).unwrap();
        } else {
            hostile_datagram(&mut rng, &mut d, false, &mut from_stranger);
            stranger.send(&d).unwrap();
        }
        largest = largest.max(d.len());
        // Well inside the default receive buffer, counting the kernel's
        // overhead per datagram (a large one is charged about twice).
        window += 2 * d.len() + 1024;
        in_window += 1;
        if window >= 96 * 1024 || in_window >= 64 {
            probes += barrier(&server);
            (window, in_window) = (0, 0);
        }
    }
    probes += barrier(&server);
    let growth = mem.growth_kib(&server);
    let after = stats(&mut admin);
    eprintln!(
        "{HOSTILE} hostile datagrams (largest {largest}) in {:?}: peak RSS growth {growth} KiB; \
         member {from_member:?}, stranger {from_stranger:?}",
        t.elapsed()
    );
    let counted: Vec<_> = [
        "drop_wire_framing",
        "drop_wire_bad_fragment",
        "drop_token_bad",
        "drop_stranger",
        "drop_wire_unknown_type",
        "drop_wire_server_to_client",
        "drop_wire_repeated",
        "drop_hello_short",
        "drop_hello_bad_version",
        "drop_handshake_bad_cookie",
        "drop_reassembly_index_out_of_range",
    ]
    .iter()
    .map(|n| (*n, grew(&before, &after, n)))
    .collect();
    eprintln!("counters grew: {counted:?}");

    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died"
    );
    // Every hostile datagram reached the server.
    assert_eq!(
        grew(&before, &after, "datagrams_in"),
        HOSTILE as u64 + probes
    );
    let both = |f: fn(&Expect) -> u64| f(&from_member) + f(&from_stranger);
    let at_least = |names: &[&str], want: u64| {
        let got: u64 = names.iter().map(|n| grew(&before, &after, n)).sum();
        assert!(got >= want, "{names:?} grew by {got}, want at least {want}");
    };
    at_least(&["drop_wire_framing"], both(|e| e.malformed));
    at_least(&["drop_wire_bad_fragment"], both(|e| e.bad_fragments));
    at_least(&["drop_token_bad"], from_member.tokens);
    at_least(&["drop_stranger"], from_stranger.strangers);
    at_least(&["drop_wire_unknown_type"], both(|e| e.unknown));
    at_least(&["drop_wire_server_to_client"], both(|e| e.server_types));
    at_least(&["drop_wire_repeated"], both(|e| e.repeated));
    at_least(
        &["drop_hello_short", "drop_hello_bad_version"],
        both(|e| e.bad_hellos),
    );
    at_least(&["drop_handshake_bad_cookie"], both(|e| e.bad_cookies));
    at_least(
        &["drop_reassembly_index_out_of_range"],
        from_member.out_of_range,
    );
    assert_eq!(grew(&before, &after, "handshakes_completed"), 0);
    assert_eq!(grew(&before, &after, "messages_relayed"), 0);
    assert_eq!(after["clients"], 2);
    assert!(growth < 16 * 1024, "RSS grew by {growth} KiB");

    // The member's session survived its own junk (junk BYEs included),
    // and the peer got nothing but the next real message.
    member.send(b"after the junk").unwrap();
    let mut seen = Vec::new();
    loop {
        match expect_event(&mut peer, "the next message", |e| {
            matches!(e, ClientEvent::Message { .. })
        }) {
            ClientEvent::Message { body, .. } if body == b"after the junk" => break,
            other => seen.push(other),
        }
    }
    assert!(seen.is_empty(), "relayed junk: {seen:?}");
    fresh_clients_still_relay(&server, "fresh after the junk");
}
