//! Federated relays over real sockets: the real `mcrelay serve` binary,
//! several of them, linked through real `nats-server` processes (Debian
//! package `nats-server`) on free loopback ports, with real UDP clients.
//! Messages, joins and leaves cross relays exactly once under `RELAY/ID`;
//! a killed relay's members leave as unreachable; a relay whose NATS
//! server dies moves to another of the cluster and carries on, and its
//! local relaying never stops. Timings are printed, not asserted tightly.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mcrelay::wire::LeaveReason;
use mcrelay::{ClientEvent, ClientOptions, UdpClient};

const SUBJECT: &str = "mcrelay.test.fed";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One nats-server process; killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    cluster_port: u16,
}

impl Nats {
    /// A server on free ports, routed to the cluster ports in `routes`.
    fn start(routes: &[u16]) -> Nats {
        let (port, cluster_port) = (free_port(), free_port());
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-cluster", &format!("nats://127.0.0.1:{cluster_port}")]);
        if !routes.is_empty() {
            let r: Vec<String> = routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args(["-routes", &r.join(",")]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run nats-server ({e}): install it with apt-get install nats-server")
        });
        let nats = Nats {
            child: Some(child),
            port,
            cluster_port,
        };
        until("nats-server accepting clients", || {
            TcpStream::connect(local(port)).is_ok()
        });
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for `cond`, panicking with `what` after [`DEADLINE`].
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A federation key file shared by the relays of one test.
fn key_file(test: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mcrelay-fed-{}-{test}.key", std::process::id()));
    fs::write(&p, mcrelay::new_federation_key()).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A relay named `name` federated through `nats` (comma-joined seeds).
fn relay(name: &str, nats: &[&Nats], key: &Path, extra: &[&str]) -> Server {
    let seeds: Vec<String> = nats.iter().map(|n| n.url()).collect();
    let seeds = seeds.join(",");
    let mut args = vec![
        "--federate",
        &seeds,
        "--federation-key-file",
        key.to_str().unwrap(),
        "--relay-name",
        name,
        "--federation-subject",
        SUBJECT,
        "--announce-period",
        "1",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The admin `federation` lines.
fn federation(server: &Server) -> Vec<String> {
    server.admin().ok("federation")
}

/// Waits until `server` is connected and hears every relay of `others`.
fn linked(server: &Server, others: &[&str]) {
    until("the relays to hear each other", || {
        let lines = federation(server);
        lines[0].starts_with("state connected")
            && others.iter().all(|o| {
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("relay {o} ")) && l.ends_with("alive"))
            })
    });
}

fn client(server: &Server, group: bool) -> UdpClient {
    let mut c = server.client_with(ClientOptions {
        group,
        ..Default::default()
    });
    c.connect(DEADLINE).expect("handshake");
    c
}

/// Messages received within `quiet` of each other, by body.
fn heard(c: &mut UdpClient, quiet: Duration) -> BTreeMap<Vec<u8>, Vec<String>> {
    let mut m: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    for (sender, body) in messages(&drain(c, quiet)) {
        m.entry(body).or_default().push(sender);
    }
    m
}

fn remote(relay: &str, c: &UdpClient) -> String {
    format!("{relay}/{}", c.id().unwrap())
}

#[test]
fn messages_joins_and_leaves_cross_two_relays_once() {
    let nats = Nats::start(&[]);
    let key = key_file("two");
    let a = relay("alpha", &[&nats], &key, &[]);
    let b = relay("beta", &[&nats], &key, &[]);
    linked(&a, &["beta"]);
    linked(&b, &["alpha"]);
    // Per-recipient on alpha, group mode on beta.
    let mut a1 = client(&a, false);
    let mut b1 = client(&b, true);
    let t = Instant::now();
    let mut a2 = client(&a, false);
    let id = remote("alpha", &a2);
    expect_event(&mut b1, "remote join", |e| {
        *e == ClientEvent::PeerJoined(id.clone())
    });
    println!("remote join seen after {:?}", t.elapsed());
    drain(&mut a1, Duration::from_millis(200));

    let t = Instant::now();
    a2.send(b"over the federation").unwrap();
    assert_eq!(expect_message(&mut b1, b"over the federation"), id);
    println!("message across relays after {:?}", t.elapsed());
    assert_eq!(
        expect_message(&mut a1, b"over the federation"),
        a2.id().unwrap(),
        "local members see the local id"
    );
    b1.send(b"and back").unwrap();
    let back = remote("beta", &b1);
    for c in [&mut a1, &mut a2] {
        assert_eq!(expect_message(c, b"and back"), back);
    }
    // Exactly once, and no echo to the sender.
    let quiet = Duration::from_millis(1500);
    for (c, name) in [(&mut a1, "a1"), (&mut a2, "a2"), (&mut b1, "b1")] {
        let extra = heard(c, quiet);
        assert!(extra.is_empty(), "{name} heard again: {extra:?}");
    }

    // A 20 KiB message: fragments in, one federation message, fragments out.
    let big: Vec<u8> = (0..20 * 1024).map(|i| (i % 251) as u8).collect();
    a2.send(&big).unwrap();
    assert_eq!(expect_message(&mut b1, &big), id);
    expect_message(&mut a1, &big);

    a2.bye().unwrap();
    let left = expect_event(
        &mut b1,
        "remote leave",
        |e| matches!(e, ClientEvent::PeerLeft { id: i, .. } if *i == id),
    );
    assert_eq!(
        left,
        ClientEvent::PeerLeft {
            id: id.clone(),
            reason: Some(LeaveReason::Bye)
        }
    );
    let mut admin = a.admin();
    assert!(admin.stat("federation_published") >= 3);
    assert!(admin.stat("federation_received") >= 2);
    assert_eq!(admin.stat("federation_dropped_unsealed"), 0);
    let fed = federation(&b);
    assert!(
        fed.iter().any(|l| l.starts_with("relay alpha members 1 ")),
        "{fed:?}"
    );
    fs::remove_file(key).unwrap();
}

#[test]
fn three_relays_on_a_cluster_deliver_every_message_exactly_once() {
    let first = Nats::start(&[]);
    let n2 = Nats::start(&[first.cluster_port]);
    let n3 = Nats::start(&[first.cluster_port]);
    let key = key_file("three");
    let names = ["east", "west", "north"];
    let relays: Vec<Server> = [&first, &n2, &n3]
        .iter()
        .zip(names)
        .map(|(n, name)| relay(name, &[n], &key, &[]))
        .collect();
    for (i, r) in relays.iter().enumerate() {
        let others: Vec<&str> = names.iter().copied().filter(|n| *n != names[i]).collect();
        linked(r, &others);
    }
    let mut clients: Vec<UdpClient> = relays
        .iter()
        .enumerate()
        .map(|(i, r)| client(r, i % 2 == 0))
        .collect();
    // Everyone's joins have gone round before the messages.
    std::thread::sleep(Duration::from_millis(500));
    for c in &mut clients {
        drain(c, Duration::from_millis(100));
    }
    let t = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("from {i}").as_bytes()).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let got = heard(c, Duration::from_millis(1500));
        let want: BTreeMap<Vec<u8>, Vec<String>> = (0..3)
            .filter(|&j| j != i)
            .map(|j| {
                let sender = format!("{}/", names[j]);
                (format!("from {j}").into_bytes(), vec![sender])
            })
            .collect();
        let got_prefixes: BTreeMap<Vec<u8>, Vec<String>> = got
            .into_iter()
            .map(|(b, s)| {
                let s = s
                    .into_iter()
                    .map(|s| {
                        s.split_once('/')
                            .map_or(s.clone(), |(r, _)| format!("{r}/"))
                    })
                    .collect();
                (b, s)
            })
            .collect();
        assert_eq!(got_prefixes, want, "client {i}");
    }
    println!("three relays: all messages in {:?}", t.elapsed());
    fs::remove_file(key).unwrap();
}

#[test]
fn a_killed_relays_members_leave_as_unreachable() {
    let nats = Nats::start(&[]);
    let key = key_file("killed");
    let a = relay("alpha", &[&nats], &key, &[]);
    let mut b = relay("beta", &[&nats], &key, &[]);
    linked(&a, &["beta"]);
    let mut a1 = client(&a, true);
    let b1 = client(&b, false);
    let id = remote("beta", &b1);
    expect_event(&mut a1, "remote join", |e| {
        *e == ClientEvent::PeerJoined(id.clone())
    });
    signal(&b, libc::SIGKILL);
    b.wait_exit(DEADLINE).expect("beta killed");
    let t = Instant::now();
    let left = expect_event(&mut a1, "unreachable leave", |e| {
        matches!(e, ClientEvent::PeerLeft { .. })
    });
    let took = t.elapsed();
    println!("killed relay's member announced left after {took:?} (3 periods: 3 s)");
    assert_eq!(
        left,
        ClientEvent::PeerLeft {
            id,
            reason: Some(LeaveReason::Unreachable)
        }
    );
    // The last announce may have come up to a period before the kill.
    assert!(took >= Duration::from_secs(1), "too early: {took:?}");
    until("beta to be dropped from the relay list", || {
        !federation(&a).iter().any(|l| l.starts_with("relay beta "))
    });
    fs::remove_file(key).unwrap();
}

#[test]
fn a_relay_whose_nats_server_dies_moves_on_and_local_relaying_never_stops() {
    let mut n1 = Nats::start(&[]);
    let n2 = Nats::start(&[n1.cluster_port]);
    let key = key_file("failover");
    // alpha knows only n1 and learns n2 from it; beta talks to n2.
    let a = relay("alpha", &[&n1], &key, &[]);
    let b = relay("beta", &[&n2], &key, &[]);
    linked(&a, &["beta"]);
    linked(&b, &["alpha"]);
    let mut a1 = client(&a, false);
    let mut a2 = client(&a, true);
    let mut b1 = client(&b, false);
    a1.send(b"before").unwrap();
    expect_message(&mut b1, b"before");
    expect_message(&mut a2, b"before");

    n1.kill();
    let t = Instant::now();
    // Local relaying goes on while the link is away.
    a1.send(b"local while away").unwrap();
    expect_message(&mut a2, b"local while away");
    let local = t.elapsed();
    let n2_addr = format!("server 127.0.0.1:{}", n2.port);
    until("alpha to reconnect to the other server", || {
        federation(&a)[0] == format!("state connected {n2_addr}")
    });
    let reconnect = t.elapsed();
    // Delivery across relays resumes (retried until it does: a message
    // sent while the link was down is buffered, not lost, but the test
    // only needs one to cross).
    let mut n = 0;
    let end = Instant::now() + DEADLINE;
    loop {
        n += 1;
        let body = format!("after {n}");
        a1.send(body.as_bytes()).unwrap();
        if messages(&drain(&mut b1, Duration::from_millis(300)))
            .iter()
            .any(|(s, b)| b == body.as_bytes() && s.starts_with("alpha/"))
        {
            break;
        }
        assert!(Instant::now() < end, "no delivery after the reconnect");
    }
    println!(
        "NATS server killed: local delivery after {local:?}, reconnected after {reconnect:?}, delivery across relays after {:?} ({n} tries)",
        t.elapsed()
    );
    assert!(a.admin().stat("federation_reconnects") >= 1);
    fs::remove_file(key).unwrap();
}

#[test]
fn a_relay_shutting_down_announces_its_members_left() {
    let nats = Nats::start(&[]);
    let key = key_file("shutdown");
    let a = relay("alpha", &[&nats], &key, &[]);
    let mut b = relay("beta", &[&nats], &key, &[]);
    linked(&a, &["beta"]);
    let mut a1 = client(&a, false);
    let b1 = client(&b, true);
    let id = remote("beta", &b1);
    expect_event(&mut a1, "remote join", |e| {
        *e == ClientEvent::PeerJoined(id.clone())
    });
    signal(&b, libc::SIGTERM);
    let t = Instant::now();
    let left = expect_event(&mut a1, "shutdown leave", |e| {
        matches!(e, ClientEvent::PeerLeft { .. })
    });
    println!("leave of a stopped relay's member after {:?}", t.elapsed());
    assert_eq!(
        left,
        ClientEvent::PeerLeft {
            id,
            reason: Some(LeaveReason::Shutdown)
        }
    );
    assert!(b.wait_exit(DEADLINE).is_some_and(|s| s.success()));
    fs::remove_file(key).unwrap();
}

#[test]
fn a_relay_with_the_wrong_key_is_dropped_and_counted() {
    let nats = Nats::start(&[]);
    let key = key_file("right");
    let wrong = key_file("wrong");
    let a = relay("alpha", &[&nats], &key, &[]);
    let c = relay("gamma", &[&nats], &wrong, &[]);
    until("both relays connected", || {
        [&a, &c]
            .iter()
            .all(|r| federation(r)[0].starts_with("state connected"))
    });
    let mut a1 = client(&a, false);
    let mut c1 = client(&c, false);
    c1.send(b"not for alpha").unwrap();
    let mut admin = a.admin();
    until("alpha to count gamma's traffic as unsealed", || {
        admin.stat("federation_dropped_unsealed") >= 2
    });
    let got = messages(&drain(&mut a1, Duration::from_millis(500)));
    assert!(got.is_empty(), "{got:?}");
    assert!(!federation(&a).iter().any(|l| l.starts_with("relay gamma")));
    fs::remove_file(key).unwrap();
    fs::remove_file(wrong).unwrap();
}
