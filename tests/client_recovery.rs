//! Clients against forged answers, over real loopback sockets with the real
//! server binary: REJECTs are hints that cost at most a re-handshake a
//! second, a pinned client waits out SERVER_KEYs of another key, strangers
//! who spend the server's REJECT budget cannot keep clients from rejoining
//! a restarted relay, and only a real refusal of a new handshake stops a
//! client. Forged datagrams come from stranger sockets, and from a
//! [`Proxy`] standing where the client believes the server is (what an
//! attacker who forges the server's address achieves).

#[path = "support/cli.rs"]
mod cli;
mod common;
#[path = "support/proxy.rs"]
mod proxy;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cli::*;
use common::*;
use mcrelay::wire::{reject_datagram, RejectReason};
use mcrelay::{ClientEvent, ClientOptions, ConnectError, ServerKey, Target, UdpClient};
use proxy::Proxy;

/// The rate the issue names: stranger datagrams per second.
const FLOOD_PER_SEC: u64 = 2_000;
/// Stranger sockets: each stays under the server's per-source REJECT limit
/// (2/s), so together they spend its global budget (1000/s).
const FLOOD_SOCKETS: usize = 1_000;

/// `mcrelay serve` on a given port (a restart takes the port back).
fn serve_on(port: u16, args: &[&str]) -> Server {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--iface", "127.0.0.1", "--admin-port", "0"])
        .args(["--log-level", "debug", "--port", &port.to_string()])
        .args(args);
    Server::spawn(cmd)
}

/// A fresh directory for this test's files.
fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mcrelay-recovery-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fingerprint_of(server: &Server) -> String {
    let line = server.find_log("fingerprint (sha256)").unwrap();
    line.rsplit(' ').next().unwrap().to_string()
}

/// A UdpClient with keepalives every 0.5 s and recovery on, connected.
fn recovering_client(target: SocketAddr, opts: ClientOptions) -> UdpClient {
    recovering_client_within(target, opts, DEADLINE)
}

/// The same with a handshake timeout of its own (recoveries use it too).
fn recovering_client_within(
    target: SocketAddr,
    opts: ClientOptions,
    timeout: Duration,
) -> UdpClient {
    let mut c = UdpClient::new(Target::Unicast(target), opts).unwrap();
    c.set_keepalive(Some(Duration::from_millis(500)));
    c.set_auto_reconnect(Some(Duration::from_secs(1)));
    c.connect(timeout).expect("handshake");
    c
}

/// Receives for `d`; returns the events. Any error fails the test.
fn run_for(c: &mut UdpClient, d: Duration) -> Vec<ClientEvent> {
    let end = Instant::now() + d;
    let mut events = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match c.recv(left.min(Duration::from_millis(50))) {
            Ok(Some(e)) => events.push(e),
            Ok(None) => {}
            Err(e) => panic!("the client gave up: {e}; events so far {events:?}"),
        }
    }
    events
}

/// Clients the server lists on its admin channel.
fn members(server: &Server) -> usize {
    server.admin().ok("clients").len()
}

/// What the flood did, for the report.
struct FloodReport {
    secs: f64,
    sent: u64,
    /// REJECT 1 answers that reached the stranger sockets.
    rejects_back: u64,
    /// REJECTs forged towards the clients.
    forged: u64,
}

/// 2,000 DATA datagrams a second from [`FLOOD_SOCKETS`] unregistered
/// sockets, plus forged REJECT 1/2 (alternating) to each of `victims` from
/// stranger sockets (100/s each) and through `proxy` from the server's
/// address (50/s).
struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<FloodReport>>,
}

impl Flood {
    fn start(server: SocketAddr, victims: Vec<SocketAddr>, proxy: Option<Arc<Proxy>>) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let socks: Vec<UdpSocket> = (0..FLOOD_SOCKETS)
                .map(|_| {
                    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect();
            let junk = [0, 5, 0, 4, b'j', b'u', b'n', b'k'];
            let reasons = [RejectReason::UnknownSession, RejectReason::AuthFailed];
            let tick = Duration::from_millis(10);
            let per_tick = (FLOOD_PER_SEC / 100) as usize;
            let start = Instant::now();
            let (mut next, mut sent, mut forged, mut i, mut n) = (start, 0u64, 0u64, 0usize, 0u64);
            while !flag.load(Ordering::Relaxed) {
                for _ in 0..per_tick {
                    if socks[i % socks.len()].send_to(&junk, server).is_ok() {
                        sent += 1;
                    }
                    i += 1;
                }
                let reject = reject_datagram(reasons[(n % 2) as usize]);
                for v in &victims {
                    forged += u64::from(socks[i % socks.len()].send_to(&reject, v).is_ok());
                }
                if let Some(p) = proxy.as_ref().filter(|_| n % 2 == 0) {
                    forged += u64::from(p.inject(&reject));
                }
                n += 1;
                // Absolute schedule: a late tick does not lower the rate.
                next += tick;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let mut buf = [0u8; 64];
            let mut rejects_back = 0;
            for s in &socks {
                while let Ok(n) = s.recv(&mut buf) {
                    rejects_back += u64::from(buf[..n] == reject_datagram(reasons[0]));
                }
            }
            FloodReport {
                secs,
                sent,
                rejects_back,
                forged,
            }
        });
        Flood {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// (a) A UdpClient (direct) and a `listen` process (through a proxy that
/// forges REJECTs from the server's address) rejoin a relay restarted on
/// the same port while strangers flood it and forge REJECTs at both.
#[test]
fn clients_rejoin_a_restarted_relay_during_a_stranger_flood() {
    let dir = tempdir("flood");
    let key = dir.join("key.pem");
    let key = key.to_str().unwrap();
    let server = Server::start(&["--key-file", key]);
    let port = server.port;

    let mut lib = recovering_client(server.addr(), ClientOptions::default());
    let lib_id = lib.id().unwrap().to_string();
    let lib_addr = SocketAddr::from(([127, 0, 0, 1], lib.local_addr().unwrap().port()));
    let proxy = Arc::new(Proxy::start(server.addr()));
    let target = proxy.addr.to_string();
    let mut listen = Cli::mcrelay(&["listen", "--server", &target, "--keepalive", "0.5"]);
    listen.connected_id();
    let listen_addr = proxy.client().expect("listen's address");
    assert_eq!(members(&server), 2);

    let flood = Flood::start(
        server.addr(),
        vec![lib_addr, listen_addr],
        Some(proxy.clone()),
    );
    // Forged REJECTs for 3 s: nobody is stopped, nobody hammers the server.
    let hellos_before = proxy.hellos();
    let t0 = Instant::now();
    run_for(&mut lib, Duration::from_secs(3));
    let forged_secs = t0.elapsed().as_secs_f64();
    let listen_hellos = proxy.hellos() - hellos_before;
    assert!(
        listen_hellos as f64 <= forged_secs + 2.0,
        "{listen_hellos} HELLOs in {forged_secs:.1} s of forged REJECTs"
    );
    lib.send(b"before the restart").unwrap();
    listen.expect_line(&format!("[{lib_id}] before the restart"));

    // Killed without a word, back on the same port with the same key.
    let t_kill = Instant::now();
    drop(server);
    let server = serve_on(port, &["--key-file", key]);
    let t_up = Instant::now();
    let mut lib_events = Vec::new();
    let mut checked = Instant::now();
    while members(&server) < 2 {
        assert!(
            t_up.elapsed() < DEADLINE,
            "not rejoined within {DEADLINE:?}: lib {lib_events:?}; listen {:?}; server {}",
            listen.seen,
            server.log_text()
        );
        lib_events.extend(run_for(&mut lib, Duration::from_millis(100)));
        checked = Instant::now();
    }
    let rejoined = checked.duration_since(t_up);
    let report = flood.stop();

    lib.send(b"after the restart").unwrap();
    listen.expect_line(&format!("[{lib_id}] after the restart"));
    assert!(
        listen.child.try_wait().unwrap().is_none(),
        "listen exited: {}",
        listen.stderr_text()
    );
    println!(
        "rejoined {:.2} s after the restart ({:.2} s after the kill); flood: {} datagrams \
         in {:.1} s ({:.0}/s), {} REJECTs came back to the strangers ({:.0}% of their \
         datagrams; the server's budget is 1000/s plus a burst of 1000 per start), {} REJECTs \
         forged to the clients; listen sent {listen_hellos} HELLOs in {forged_secs:.1} s of \
         forged REJECTs",
        rejoined.as_secs_f64(),
        checked.duration_since(t_kill).as_secs_f64(),
        report.sent,
        report.secs,
        report.sent as f64 / report.secs,
        report.rejects_back,
        100.0 * report.rejects_back as f64 / report.sent.max(1) as f64,
        report.forged,
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// (b) A pinned client whose every HELLO is answered first by another key
/// (a rogue forwarding to the real server) connects to the pinned server,
/// and so do its re-handshakes; so does a pinned `send`.
#[test]
fn a_pinned_client_waits_out_rogue_server_keys() {
    let server = Server::start(&[]);
    let fp = fingerprint_of(&server);
    let rogue = ServerKey::generate().unwrap();
    let proxy = Proxy::start(server.addr());
    proxy.set_rogue_key(Some(rogue.public_der()));
    let mut peer = server.client();

    let mut a = recovering_client(
        proxy.addr,
        ClientOptions {
            pin: Some(fp.clone()),
            ..Default::default()
        },
    );
    assert_eq!(a.fingerprint(), Some(fp.as_str()));
    assert!(a.pin_mismatches() >= 1, "the rogue answered first");
    let a_id = expect_event(&mut peer, "a's join", |e| {
        matches!(e, ClientEvent::PeerJoined(_))
    });

    // A forged REJECT: the re-handshake meets the rogue again, and wins.
    let mismatches = a.pin_mismatches();
    assert!(proxy.inject(&reject_datagram(RejectReason::UnknownSession)));
    expect_event(&mut a, "re-handshake", |e| {
        matches!(e, ClientEvent::Welcome { .. })
    });
    assert!(a.pin_mismatches() > mismatches);
    peer.send(b"still pinned").unwrap();
    expect_message(&mut a, b"still pinned");
    a.send(b"from a").unwrap();
    let sender = expect_message(&mut peer, b"from a");
    assert_eq!(ClientEvent::PeerJoined(sender), a_id);

    let proxy2 = Proxy::start(server.addr());
    proxy2.set_rogue_key(Some(rogue.public_der()));
    let out = Command::new(bin())
        .args([
            "send",
            "--server",
            &proxy2.addr.to_string(),
            "--pin",
            &fp,
            "pinned",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_message(&mut peer, b"pinned");
}

/// (c) Forged REJECT 1 and 2 from the server's address, 50 a second, to an
/// established client: messages keep flowing both ways, the client never
/// gives up, and it re-handshakes at most about once a second.
#[test]
fn forged_rejects_cost_an_established_client_at_most_a_rehandshake_a_second() {
    let server = Server::start(&[]);
    let mut b = server.client();
    let proxy = Arc::new(Proxy::start(server.addr()));
    let mut a = recovering_client(proxy.addr, ClientOptions::default());
    let a_id = a.id().unwrap().to_string();
    drain(&mut b, Duration::from_millis(200));

    let stop = Arc::new(AtomicBool::new(false));
    let forger = {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let reason =
                    [RejectReason::UnknownSession, RejectReason::AuthFailed][(n % 2) as usize];
                proxy.inject(&reject_datagram(reason));
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        })
    };
    let hellos_before = proxy.hellos();
    let t0 = Instant::now();

    // Busy: 40 messages from b, 75 ms apart, while a is told it is lost.
    let mut events = Vec::new();
    for i in 0..40 {
        b.send(format!("busy {i}").as_bytes()).unwrap();
        events.extend(run_for(&mut a, Duration::from_millis(75)));
    }
    let busy_hellos = proxy.hellos() - hellos_before;
    // Quiet: nothing to prove the hints false.
    events.extend(run_for(&mut a, Duration::from_secs(3)));
    let secs = t0.elapsed().as_secs_f64();
    let hellos = proxy.hellos() - hellos_before;
    stop.store(true, Ordering::Relaxed);
    let forged = forger.join().unwrap();

    let got: Vec<_> = messages(&events).into_iter().map(|(_, b)| b).collect();
    for i in 0..40 {
        let want = format!("busy {i}").into_bytes();
        assert!(got.contains(&want), "busy {i} lost; events {events:?}");
    }
    assert!(
        hellos as f64 <= secs + 2.0,
        "{hellos} HELLOs in {secs:.1} s under {forged} forged REJECTs"
    );
    a.send(b"still a").unwrap();
    assert_eq!(expect_message(&mut b, b"still a"), a_id);
    b.send(b"still b").unwrap();
    expect_message(&mut a, b"still b");
    let rehandshakes = events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Welcome { .. }))
        .count();
    println!(
        "{forged} forged REJECTs in {secs:.1} s: {hellos} HELLOs ({busy_hellos} while \
         messages arrived), {rehandshakes} re-handshakes reported, all 40 messages arrived"
    );
}

/// Only a real refusal stops a client: the relay comes back with another
/// access token, so every new handshake gets REJECT 2; the UdpClient's
/// `recv` and `listen` give up with that reason. A pinned client whose
/// relay comes back with another key gives up after its timeout.
#[test]
fn a_refused_rehandshake_stops_the_client() {
    let dir = tempdir("refused");
    let (old, new) = (dir.join("old"), dir.join("new"));
    std::fs::write(&old, "old token\n").unwrap();
    std::fs::write(&new, "new token\n").unwrap();
    let server = Server::start(&["--token-file", old.to_str().unwrap()]);
    let port = server.port;
    let fp = fingerprint_of(&server);
    let opts = ClientOptions {
        access_token: Some(b"old token".to_vec()),
        ..Default::default()
    };
    let mut lib = recovering_client(server.addr(), opts.clone());
    // Its 3 s timeout is also how long it waits for its key after a restart.
    let mut pinned = recovering_client_within(
        server.addr(),
        ClientOptions {
            pin: Some(fp),
            ..opts
        },
        Duration::from_secs(3),
    );
    let target = unicast(&server);
    let mut listen = Cli::mcrelay(&[
        "listen",
        "--server",
        &target,
        "--keepalive",
        "0.5",
        "--token-file",
        old.to_str().unwrap(),
    ]);
    listen.connected_id();

    drop(server);
    let _server = serve_on(port, &["--token-file", new.to_str().unwrap()]);
    let t0 = Instant::now();
    let end = t0 + DEADLINE;
    let err = loop {
        assert!(Instant::now() < end, "the client kept trying");
        if let Err(e) = lib.recv(Duration::from_millis(50)) {
            break e;
        }
    };
    assert!(
        matches!(err, ConnectError::Rejected(RejectReason::AuthFailed)),
        "{err}"
    );
    println!(
        "refused for good {:.2} s after the restart",
        t0.elapsed().as_secs_f64()
    );
    let (status, stderr) = listen.wait_with_stderr();
    assert!(!status.success());
    assert!(stderr.contains("refused the session"), "{stderr}");
    // The pinned one meets only a new key: it waits its timeout, then stops.
    let err = loop {
        assert!(Instant::now() < end, "the pinned client kept trying");
        if let Err(e) = pinned.recv(Duration::from_millis(50)) {
            break e;
        }
    };
    assert!(matches!(err, ConnectError::Pin(_)), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
