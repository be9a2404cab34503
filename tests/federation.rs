//! Federated relays over real sockets: the real `mcrelay serve` binary,
//! several of them, linked through real `nats-server` processes (Debian
//! package `nats-server`) on free loopback ports, with real UDP clients.
//! Messages, joins and leaves cross relays exactly once under `RELAY/ID`;
//! a killed relay's members leave as unreachable; a relay whose NATS
//! server dies moves to another of the cluster and carries on, and its
//! local relaying never stops; a relay in group mode and one serving its
//! clients one by one exchange messages once each way; a plain NATS
//! subscriber on the subject reads nothing but ciphertext; the admin
//! `clients remote|all` lists the other relays' members; and a short
//! `bench --federation` runs. Timings are printed, not asserted tightly.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::nats::{Nats, Raw};
use common::*;
use mcrelay::wire::LeaveReason;
use mcrelay::{ClientEvent, ClientOptions, UdpClient};

const SUBJECT: &str = "mcrelay.test.fed";

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
    let nats = Nats::start(&[], &[]);
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
    let first = Nats::start(&[], &[]);
    let n2 = Nats::start(&[first.cluster_port], &[]);
    let n3 = Nats::start(&[first.cluster_port], &[]);
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
    let nats = Nats::start(&[], &[]);
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
    let mut n1 = Nats::start(&[], &[]);
    let n2 = Nats::start(&[n1.cluster_port], &[]);
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
    let nats = Nats::start(&[], &[]);
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
    let nats = Nats::start(&[], &[]);
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

/// One admin reply's lines, by command.
fn admin_lines(server: &Server, cmd: &str) -> Vec<String> {
    server.admin().ok(cmd)
}

#[test]
fn group_mode_on_one_relay_and_per_recipient_on_the_other_deliver_once_both_ways() {
    let nats = Nats::start(&[], &[]);
    let key = key_file("mixed");
    let a = relay("alpha", &[&nats], &key, &[]);
    let b = relay("beta", &[&nats], &key, &["--no-group-mode"]);
    linked(&a, &["beta"]);
    linked(&b, &["alpha"]);
    // Everyone asks for group mode; only alpha grants it.
    let mut a_side = vec![client(&a, true), client(&a, true)];
    let mut b_side = vec![client(&b, true), client(&b, true)];
    for c in &a_side {
        assert!(c.downlink().is_some(), "alpha grants group mode");
    }
    for c in &b_side {
        assert!(c.downlink().is_none(), "beta serves one by one");
    }
    let a_ids: Vec<String> = a_side.iter().map(|c| c.id().unwrap().to_owned()).collect();
    let b_ids: Vec<String> = b_side.iter().map(|c| c.id().unwrap().to_owned()).collect();
    until("each relay to list the other's members", || {
        let on_a = admin_lines(&a, "clients remote");
        let on_b = admin_lines(&b, "clients remote");
        on_a.len() == 2 && on_b.len() == 2
    });
    for (c, name) in a_side.iter_mut().chain(b_side.iter_mut()).zip(0..) {
        let heard = messages(&drain(c, Duration::from_millis(200)));
        assert!(heard.is_empty(), "client {name} heard {heard:?}");
    }

    // The admin view: local lines as before, then the remote members.
    let local = admin_lines(&a, "clients");
    assert_eq!(local.len(), 2, "{local:?}");
    assert!(local.iter().all(|l| l.ends_with("mode=group")), "{local:?}");
    let remote = admin_lines(&a, "clients remote");
    let mut want: Vec<String> = b_ids
        .iter()
        .map(|id| format!("beta/{id} relay=beta mode=remote"))
        .collect();
    want.sort();
    assert_eq!(remote, want);
    let all = admin_lines(&a, "clients all");
    assert_eq!(all[..2], local[..], "local clients first");
    assert_eq!(all[2..], remote[..], "then the remote members");
    let on_b = admin_lines(&b, "clients all");
    assert!(on_b[..2].iter().all(|l| l.ends_with("mode=v2")), "{on_b:?}");
    assert!(on_b[2..]
        .iter()
        .all(|l| l.starts_with("alpha/") && l.ends_with(" relay=alpha mode=remote")));

    let t = Instant::now();
    for (i, c) in a_side.iter_mut().enumerate() {
        c.send(format!("group-side {i}").as_bytes()).unwrap();
    }
    for (i, c) in b_side.iter_mut().enumerate() {
        c.send(format!("one-by-one side {i}").as_bytes()).unwrap();
    }
    // Every client hears the three others once each: its own side's
    // under their local ids, the other side's under RELAY/ID.
    let all_sent: Vec<(usize, Vec<u8>, String)> = a_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (0, format!("group-side {i}").into_bytes(), id.clone()))
        .chain(
            b_ids
                .iter()
                .enumerate()
                .map(|(i, id)| (1, format!("one-by-one side {i}").into_bytes(), id.clone())),
        )
        .collect();
    let expect = |me: usize| -> BTreeMap<Vec<u8>, Vec<String>> {
        let my_side = me / 2;
        all_sent
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != me)
            .map(|(_, (side, body, id))| {
                let sender = match (*side == my_side, side) {
                    (true, _) => id.clone(),
                    (false, 0) => format!("alpha/{id}"),
                    (false, _) => format!("beta/{id}"),
                };
                (body.clone(), vec![sender])
            })
            .collect()
    };
    for (me, c) in a_side.iter_mut().chain(b_side.iter_mut()).enumerate() {
        let want = expect(me);
        let mut got = BTreeMap::new();
        let end = Instant::now() + DEADLINE;
        while got.len() < want.len() && Instant::now() < end {
            for (body, senders) in heard(c, Duration::from_millis(300)) {
                got.entry(body).or_insert_with(Vec::new).extend(senders);
            }
        }
        // Late duplicates would come within this.
        for (body, senders) in heard(c, Duration::from_millis(1000)) {
            got.entry(body).or_insert_with(Vec::new).extend(senders);
        }
        assert_eq!(got, want, "client {me}");
    }
    println!(
        "mixed modes: every message heard once after {:?}",
        t.elapsed()
    );
    // A relay alone has no remote members to list.
    let plain = Server::start(&[]);
    let (_, end) = plain.admin().cmd("clients remote");
    assert_eq!(end, "ERR federation is off");
    assert!(admin_lines(&plain, "clients all").is_empty());
    fs::remove_file(key).unwrap();
}

/// True when `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_nats_subscriber_sees_only_ciphertext() {
    let nats = Nats::start(&[], &[]);
    let mut sniffer = Raw::connect(nats.addr(), SUBJECT);
    let key = key_file("sniffed");
    // A named client on alpha, so a name is there to leak too.
    let dir = std::env::temp_dir().join(format!("mcrelay-fed-{}-sniffed", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let clients = dir.join("clients");
    let token = "carol-token-0123456789abcdef";
    let digest = mcrelay::hex(&mcrelay::credentials::token_digest(token.as_bytes()));
    fs::write(&clients, format!("carolyn {digest} pubsub\n")).unwrap();
    fs::set_permissions(&clients, fs::Permissions::from_mode(0o600)).unwrap();
    let a = relay(
        "alpha",
        &[&nats],
        &key,
        &["--clients-file", clients.to_str().unwrap()],
    );
    let b = relay("beta", &[&nats], &key, &[]);
    linked(&a, &["beta"]);
    linked(&b, &["alpha"]);
    let mut b1 = client(&b, false);
    let mut carol = a.client_with(ClientOptions {
        access_token: Some(token.as_bytes().to_vec()),
        ..Default::default()
    });
    carol.connect(DEADLINE).expect("handshake");
    let carol_id = carol.id().unwrap().to_owned();
    assert!(carol_id.starts_with("carolyn@"), "{carol_id}");
    let b1_id = b1.id().unwrap().to_owned();
    expect_event(&mut b1, "carol's join", |e| {
        *e == ClientEvent::PeerJoined(format!("alpha/{carol_id}"))
    });
    let (from_carol, from_b1) = (&b"the-carolyn-secret-4412"[..], &b"beta-secret-9902"[..]);
    carol.send(from_carol).unwrap();
    b1.send(from_b1).unwrap();
    expect_message(&mut b1, from_carol);
    expect_message(&mut carol, from_b1);
    carol.bye().unwrap();

    // What must not be readable on the subject: bodies, ids, addresses,
    // ports, the client's name and the relay names.
    let ports: Vec<String> = [&carol, &b1]
        .iter()
        .map(|c| c.local_addr().unwrap().port().to_string())
        .collect();
    let mut secrets: Vec<Vec<u8>> = vec![
        from_carol.to_vec(),
        from_b1.to_vec(),
        carol_id.clone().into_bytes(),
        b1_id.clone().into_bytes(),
        b"carolyn".to_vec(),
        b"127.0.0.1".to_vec(),
        b"alpha".to_vec(),
        b"beta".to_vec(),
    ];
    secrets.extend(ports.iter().map(|p| p.clone().into_bytes()));
    // The test holds the key only to show that what it checked is the
    // traffic that carried these (a sniffer that saw nothing proves nothing).
    let fkey = mcrelay::load_federation_key(&key).unwrap();
    let (mut payloads, mut plain_hits) = (0usize, [0usize; 3]);
    let end = Instant::now() + DEADLINE;
    let mut quiet_until: Option<Instant> = None;
    while quiet_until.is_none_or(|q| Instant::now() < q) {
        assert!(
            Instant::now() < end,
            "sniffer saw {plain_hits:?} of the three"
        );
        let Some((line, p)) = sniffer.next_msg(Duration::from_millis(500)) else {
            continue;
        };
        payloads += 1;
        // MSG <subject> <sid> <size>: no reply subject, nothing else.
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert_eq!((fields[1], fields[2]), (SUBJECT, "9"), "{line}");
        // A raw Fernet token: version 0x80, time, IV, whole AES blocks, HMAC.
        assert_eq!(p[0], 0x80, "a Fernet token");
        assert!(
            p.len() >= 57 + 16 && (p.len() - 57) % 16 == 0,
            "{}",
            p.len()
        );
        for s in &secrets {
            assert!(
                !contains(&p, s),
                "{:?} readable on the subject",
                String::from_utf8_lossy(s)
            );
        }
        let plain = fkey.open(&p).expect("sealed with the federation key");
        for (i, s) in [from_carol, from_b1, carol_id.as_bytes()]
            .iter()
            .enumerate()
        {
            plain_hits[i] += usize::from(contains(&plain, s));
        }
        // Carol's leave and an announce round of each relay follow the
        // two messages within this.
        if quiet_until.is_none() && plain_hits[0] > 0 && plain_hits[1] > 0 {
            quiet_until = Some(Instant::now() + Duration::from_millis(1500));
        }
    }
    println!("sniffer: {payloads} payloads, all ciphertext; plaintext hits {plain_hits:?}");
    assert_eq!(plain_hits[..2], [1, 1], "each message crossed once");
    fs::remove_file(key).unwrap();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bench_federation_measures_two_relays_through_nats() {
    // A short run of the real thing: nats-server and three relays started
    // by the bench, every phase carried out, the report in JSON.
    let t = Instant::now();
    let (status, out, err) = run(&[
        "bench",
        "--federation",
        "--runs",
        "1",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--rate",
        "200",
        "--window",
        "32",
        "--json",
        "--quiet",
    ]);
    assert!(status.success(), "{err}");
    println!(
        "bench --federation (short, debug build) in {:?}: {out}",
        t.elapsed()
    );
    let field = |name: &str| -> f64 {
        let key = format!("\"{name}\":");
        let rest = out
            .split_once(&key)
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .1;
        let v: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e'))
            .collect();
        v.parse()
            .unwrap_or_else(|_| panic!("{name} is not a number in {out}"))
    };
    assert!(field("rate") > 100.0, "{out}");
    assert!(field("latency_p99_ms") > 0.0, "{out}");
    assert!(field("throughput_msgs_per_sec") > 0.0, "{out}");
    assert!(field("throughput_expected") > 0.0, "{out}");
    assert_eq!(field("throughput_duplicated"), 0.0, "{out}");
    assert!(field("sender_cpu_us_per_msg_alone") > 0.0, "{out}");
    field("federation_cpu_us_per_msg");

    let (status, _, err) = run(&[
        "bench",
        "--federation",
        "--nats-server",
        "/nonexistent/nats-server",
    ]);
    assert!(!status.success());
    assert!(
        err.contains("apt-get install nats-server") && err.lines().count() == 1,
        "{err}"
    );
}
