//! Group keys over real sockets (protocol v2 §4): the `mcrelay serve`
//! binary, library clients in group mode, and members made by hand
//! (`common::raw`) whose every key the test holds, as an attacker who
//! was once a member would. A leave (BYE or kick) draws a fresh key: what
//! is sent afterwards opens with nothing the leaver had, nor with any join
//! ratchet of it. A join moves the key by a ratchet: the newcomer opens
//! nothing sent before its WELCOME, and the next message. Under churn the
//! stable members lose nothing and see each message once.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::raw::{
    downlink_arg, downlink_socket, drain_socket, group_values, open_with_any, recv_until,
    signed_by, value_of, Raw, RawEvent,
};
use common::{expect_event, expect_message, Server, DEADLINE};
use mcrelay::wire::group::GroupData;
use mcrelay::wire::{outer, Inner};
use mcrelay::{ClientEvent, UdpClient};

/// Join ratchets an attacker applies to every key it holds: more than a
/// member ever tries (8).
const STEPS: u32 = 16;

/// The epoch a GROUP_DATA value names.
fn epoch_of(value: &[u8]) -> u32 {
    GroupData::parse(value).expect("a GROUP_DATA").epoch
}

#[derive(Clone, Copy, Debug)]
enum Leave {
    Bye,
    Kick,
}

/// The leaver keeps every key it was given and ratchets each forward; once
/// it is gone, nothing on the downlink opens with any of them, though all
/// of it is signed by the relay and the members read it.
fn a_leaver_cannot_open_what_follows(leave: Leave) {
    let down = downlink_socket();
    let server = Server::start(&["--downlink", &downlink_arg(&down)]);
    let mut sender = server.client();
    let mut reader = server.client();
    let mut leaver = Raw::v2(server.addr());
    let signer = leaver.group.as_ref().unwrap().signer;

    // Someone comes and goes while the leaver is in: a ratchet, then a
    // rekey whose fresh key the leaver is sent in its own session.
    let mut passer = server.client();
    let passer_id = passer.id().unwrap().to_string();
    expect_event(
        &mut reader,
        "the passer's join",
        |e| matches!(e, ClientEvent::PeerJoined(id) if *id == passer_id),
    );
    assert!(passer.bye().unwrap());
    leaver.pump_until("the rekey after the passer left", |events| {
        events.iter().any(|e| matches!(e, RawEvent::GroupKey(_)))
    });
    let keys: BTreeMap<u32, [u8; 32]> = leaver.group.as_ref().unwrap().keys.clone();
    assert!(
        keys.len() >= 2,
        "the WELCOME's key and the rekey's: {keys:?}"
    );

    // The attack works on what is sent while it is a member.
    assert!(sender.send(b"while a member").unwrap());
    assert_eq!(
        expect_message(&mut reader, b"while a member"),
        sender.id().unwrap()
    );
    recv_until(&down, |d| {
        let value = value_of(d, outer::GROUP_DATA)?;
        let plain = open_with_any(&keys, STEPS, &value)?;
        let m = Inner::parse(&plain).ok()?;
        (m.body == Some(&b"while a member"[..])).then_some(())
    })
    .expect("the leaver's keys open what it was sent as a member");
    common::drain(&mut reader, Duration::from_millis(200));
    drain_socket(&down, Duration::from_millis(200));

    let mut admin = server.admin();
    let rekeys = admin.stat("rekeys");
    let reason = match leave {
        Leave::Bye => {
            leaver.bye();
            1
        }
        Leave::Kick => {
            admin.ok(&format!("kick {}", leaver.id));
            // It is told so itself, in its own session.
            let id = leaver.id.clone();
            leaver.pump_until("its own kick", |events| {
                events.contains(&RawEvent::Left(id.clone(), Some(3)))
            });
            3
        }
    };
    let left = expect_event(
        &mut reader,
        "the leaver's PEER_LEFT",
        |e| matches!(e, ClientEvent::PeerLeft { id, .. } if *id == leaver.id),
    );
    assert!(
        matches!(left, ClientEvent::PeerLeft { reason: Some(r), .. } if r as u8 == reason),
        "{left:?}"
    );
    assert!(sender.send(b"after the leave").unwrap());
    assert_eq!(
        expect_message(&mut reader, b"after the leave"),
        sender.id().unwrap()
    );
    assert!(admin.stat("rekeys") > rekeys, "a leave draws a fresh key");

    // Whatever else the leaver was sent goes into its key ring too.
    leaver.pump(Duration::from_millis(300));
    let keys = &leaver.group.as_ref().unwrap().keys;
    let newest_known = *keys.keys().max().unwrap();
    let after = group_values(&drain_socket(&down, Duration::from_millis(300)));
    assert!(after.len() >= 2, "the PEER_LEFT notice and the message");
    for value in &after {
        assert!(signed_by(&signer, value), "the relay signed it");
        assert!(epoch_of(value) > newest_known, "an epoch it never had");
        assert_eq!(open_with_any(keys, STEPS, value), None, "{leave:?}");
    }
}

#[test]
fn a_member_that_said_bye_cannot_open_what_follows() {
    a_leaver_cannot_open_what_follows(Leave::Bye);
}

#[test]
fn a_kicked_member_cannot_open_what_follows() {
    a_leaver_cannot_open_what_follows(Leave::Kick);
}

/// Everything on the downlink before a newcomer's WELCOME (a message and
/// the newcomer's own PEER_JOINED) stays closed to the key the WELCOME
/// gives it and to every ratchet of that key; the next message opens.
#[test]
fn a_newcomer_cannot_open_what_came_before_its_welcome() {
    let down = downlink_socket();
    let server = Server::start(&["--downlink", &downlink_arg(&down)]);
    let mut sender = server.client();
    let mut reader = server.client();
    expect_event(&mut sender, "the reader's join", |e| {
        matches!(e, ClientEvent::PeerJoined(_))
    });
    drain_socket(&down, Duration::from_millis(200));
    assert!(sender.send(b"before the join").unwrap());
    assert_eq!(
        expect_message(&mut reader, b"before the join"),
        sender.id().unwrap()
    );

    let mut newcomer = Raw::v2(server.addr());
    let before = group_values(&drain_socket(&down, Duration::from_millis(300)));
    assert!(
        before.len() >= 2,
        "the message and the newcomer's PEER_JOINED"
    );
    let group = newcomer.group.as_mut().unwrap();
    for value in &before {
        assert!(signed_by(&group.signer, value));
        assert!(epoch_of(value) < group.member.epoch());
        assert_eq!(open_with_any(&group.keys, STEPS, value), None);
        assert!(group.member.open(Instant::now(), value).is_err());
    }

    assert!(sender.send(b"after the join").unwrap());
    assert_eq!(
        expect_message(&mut reader, b"after the join"),
        sender.id().unwrap()
    );
    let sender_id = sender.id().unwrap().as_bytes().to_vec();
    let (value, plain) = recv_until(&down, |d| {
        let value = value_of(d, outer::GROUP_DATA)?;
        let plain = group.member.open(Instant::now(), &value).ok()?;
        // Not a probe's answer (a slow machine's members may ask for one).
        Inner::parse(&plain).ok()?.body?;
        Some((value, plain))
    })
    .expect("the next message opens");
    let m = Inner::parse(&plain).unwrap();
    assert_eq!(
        (m.sender_id, m.body),
        (Some(&sender_id[..]), Some(&b"after the join"[..]))
    );
    // Under the very key of the WELCOME: no ratchet, no rekey between.
    assert_eq!(open_with_any(&group.keys, 0, &value), Some(plain));
}

/// What a stable member saw: the sender's messages in arrival order, and
/// its downlink counters.
struct Seen {
    bodies: Vec<Vec<u8>>,
    strangers: Vec<String>,
    stats: mcrelay::DownlinkStats,
}

/// Receives until `n` distinct messages from `sender` arrived (then
/// [`QUIET_AFTER`] more, for duplicates) or `until`.
fn stable_member(mut c: UdpClient, sender: String, n: usize, until: Instant) -> Seen {
    let mut seen = Seen {
        bodies: Vec::new(),
        strangers: Vec::new(),
        stats: Default::default(),
    };
    let mut distinct = std::collections::HashSet::new();
    let mut quiet_from: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= until || quiet_from.is_some_and(|t| now >= t + QUIET_AFTER) {
            break;
        }
        match c.recv(Duration::from_millis(100)) {
            Ok(Some(ClientEvent::Message { sender: s, body })) => {
                if s != sender {
                    seen.strangers.push(s);
                }
                distinct.insert(body.clone());
                seen.bodies.push(body);
                if distinct.len() == n && quiet_from.is_none() {
                    quiet_from = Some(Instant::now());
                }
            }
            Ok(_) => {}
            Err(e) => panic!("stable member: {e}"),
        }
    }
    seen.stats = c.downlink_stats();
    seen
}

/// Listening on after the last message, for a duplicate.
const QUIET_AFTER: Duration = Duration::from_secs(1);

/// Twenty stable members and a sender at 50 messages a second, while other
/// clients join and leave at about twenty a second (a rekey on every leave,
/// a ratchet on every join): each stable member gets every message once.
#[test]
fn stable_members_lose_nothing_while_others_join_and_leave() {
    const STABLE: usize = 20;
    const PER_SECOND: u32 = 50;
    const CHURN_PER_SECOND: u32 = 20;
    const SECONDS: u32 = 5;
    const MESSAGES: usize = (PER_SECOND * SECONDS) as usize;
    // Debug logs of every join and leave would cost the loop more than the
    // traffic does.
    let server = Server::start(&["--log-level", "info"]);
    let mut sender = server.client();
    let sender_id = sender.id().unwrap().to_string();
    let mut admin = server.admin();
    let stable: Vec<UdpClient> = (0..STABLE).map(|_| server.client()).collect();
    assert!(stable.iter().all(|c| c.downlink().is_some()), "group mode");
    common::drain(&mut sender, Duration::from_millis(200));
    let ratchets = admin.stat("ratchets");
    let rekeys = admin.stat("rekeys");

    // The stable members listen from now on, each on its own thread.
    let until = Instant::now() + Duration::from_secs(SECONDS.into()) + 3 * DEADLINE;
    let listeners: Vec<_> = stable
        .into_iter()
        .map(|c| {
            let sender = sender_id.clone();
            thread::spawn(move || stable_member(c, sender, MESSAGES, until))
        })
        .collect();

    // Churn: a new client every 1/CHURN_PER_SECOND s, staying 100-600 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(AtomicU32::new(0));
    let refused = Arc::new(AtomicU32::new(0));
    let churn = {
        let (stop, joined, refused) = (stop.clone(), joined.clone(), refused.clone());
        let addr = server.addr();
        thread::spawn(move || {
            let mut churners = Vec::new();
            let every = Duration::from_secs(1) / CHURN_PER_SECOND;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let (joined, refused) = (joined.clone(), refused.clone());
                churners.push(thread::spawn(move || {
                    let target = mcrelay::Target::Unicast(addr);
                    let mut c = UdpClient::new(target, Default::default()).unwrap();
                    if c.connect(DEADLINE).is_err() {
                        refused.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    joined.fetch_add(1, Ordering::Relaxed);
                    let stay = Duration::from_millis(100 + rand::random_range(0..500));
                    let end = Instant::now() + stay;
                    while let Some(left) = end.checked_duration_since(Instant::now()) {
                        let _ = c.recv(left);
                    }
                    c.bye().unwrap();
                }));
                next += every;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            for c in churners {
                c.join().unwrap();
            }
        })
    };

    // The sender, paced; its own session (keys, notices) is served between.
    let started = Instant::now();
    let every = Duration::from_secs(1) / PER_SECOND;
    for i in 0..MESSAGES {
        assert!(sender.send(format!("m{i:04}").as_bytes()).unwrap());
        let next = started + every * (i as u32 + 1);
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            let _ = sender.recv(left).unwrap();
        }
    }
    let sending = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    let churned = started.elapsed();

    let expected: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|i| format!("m{i:04}").into_bytes())
        .collect();
    let seen: Vec<Seen> = listeners.into_iter().map(|l| l.join().unwrap()).collect();
    let distinct = |s: &Seen| {
        let mut bodies = s.bodies.clone();
        bodies.sort();
        bodies.dedup();
        bodies
    };
    let lost: usize = seen.iter().map(|s| MESSAGES - distinct(s).len()).sum();
    let duplicates: usize = seen
        .iter()
        .map(|s| s.bodies.len() - distinct(s).len())
        .sum();
    let joined = joined.load(Ordering::Relaxed);
    let refused = refused.load(Ordering::Relaxed);
    let (ratchets, rekeys) = (
        admin.stat("ratchets") - ratchets,
        admin.stat("rekeys") - rekeys,
    );
    let total =
        |f: fn(&mcrelay::DownlinkStats) -> u64| seen.iter().map(|s| f(&s.stats)).sum::<u64>();
    eprintln!(
        "churn: {MESSAGES} messages in {sending:?} to {STABLE} members; {joined} joins \
         ({refused} refused) and as many leaves in {churned:?}: {ratchets} ratchets, \
         {rekeys} rekeys; the members held {} datagrams, released {}, asked {} keys, \
         refused {} of an old epoch; {lost} lost, {duplicates} duplicates",
        total(|s| s.held),
        total(|s| s.released),
        total(|s| s.key_requests),
        total(|s| s.old_epoch),
    );
    for (i, s) in seen.iter().enumerate() {
        assert!(s.strangers.is_empty(), "member {i}: {:?}", s.strangers);
        assert_eq!(distinct(s), expected, "member {i}: every message");
        assert_eq!(s.bodies.len(), MESSAGES, "member {i}: each once");
    }
    // Most churners got in (each one a ratchet, and a rekey when it left).
    assert!(joined >= CHURN_PER_SECOND * SECONDS / 2, "{joined} joins");
    assert!(ratchets >= u64::from(joined), "{ratchets} ratchets");
    assert!(
        rekeys >= 1 && rekeys <= u64::from(joined),
        "{rekeys} rekeys"
    );
}
