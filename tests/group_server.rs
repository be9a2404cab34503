//! Group mode over real sockets: the `mcrelay serve` binary, library
//! clients in group mode, clients made by hand (`common::raw`: v2 members
//! whose keys the test holds, v1 clients) and a raw socket joined to the
//! downlink that sees every GROUP_DATA. A message reaches each other
//! member once, as one signed GROUP_DATA for all of them plus one DATA per
//! v1 client; a member cannot pass its own datagrams off as the relay's;
//! the relay drops GROUP_DATA sent to it; `--downlink` equal to the uplink
//! is refused at start.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::raw::{
    downlink_arg, downlink_socket, drain_socket, group_values, multicast_sender, recv_until,
    signed_by, value_of, Raw, RawEvent, DOWNLINK_GROUP,
};
use common::{expect_event, expect_message, Server, DEADLINE};
use ed25519_dalek::{Signer as _, SigningKey};
use mcrelay::fernet::{encode_key, FernetKey};
use mcrelay::group::GroupMember;
use mcrelay::wire::group::GroupData;
use mcrelay::wire::inner::{self, put_gseq};
use mcrelay::wire::{outer, tlv, Inner};
use mcrelay::{ClientEvent, UdpClient};

/// Long enough for a duplicate to show up after the last expected datagram.
const QUIET: Duration = Duration::from_millis(500);

/// `stats` as name → value.
fn stat(server: &Server, name: &str) -> u64 {
    server.admin().stat(name)
}

/// Receives until `c` has `n` messages, then for [`QUIET`] more (so that a
/// duplicate would be seen too): every message, in order.
fn collect_messages(c: &mut UdpClient, n: usize) -> Vec<(String, Vec<u8>)> {
    let end = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < end {
        if let Some(ClientEvent::Message { sender, body }) =
            c.recv(Duration::from_millis(100)).unwrap()
        {
            got.push((sender, body));
        }
    }
    got.extend(common::messages(&common::drain(c, QUIET)));
    got
}

/// Sorted, for comparing what arrived with what was sent.
fn sorted(mut v: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    v.sort();
    v
}

/// What everyone but `id` sent, sorted.
fn all_but(sent: &[(String, Vec<u8>)], id: &str) -> Vec<(String, Vec<u8>)> {
    sorted(sent.iter().filter(|(s, _)| s != id).cloned().collect())
}

#[test]
fn a_v1_message_reaches_a_v2_member_as_one_signed_group_datagram() {
    let down = downlink_socket();
    let downlink = downlink_arg(&down);
    let server = Server::start(&["--downlink", &downlink]);

    let mut member = Raw::v2(server.addr());
    let group = member.group.as_mut().unwrap();
    assert_eq!(group.downlink, downlink.parse::<SocketAddr>().unwrap());
    assert_eq!(member.id, member.sock.local_addr().unwrap().to_string());

    // A client outside group mode (served one by one, as a v1 client is).
    let mut v1 = server.client_with(mcrelay::ClientOptions {
        group: false,
        ..mcrelay::ClientOptions::default()
    });
    v1.connect(DEADLINE).expect("handshake");
    let v1_id = v1.id().unwrap().to_string();
    assert!(v1.send(b"over the downlink").unwrap());
    // The v1 client's PEER_JOINED comes first, then the message.
    let signer = group.signer;
    let opened = recv_until(&down, |d| {
        let value = value_of(d, outer::GROUP_DATA)?;
        assert!(signed_by(&signer, &value));
        let plain = group.member.open(Instant::now(), &value).ok()?;
        let m = Inner::parse(&plain).ok()?;
        (m.body == Some(&b"over the downlink"[..])).then(|| m.sender_id.map(<[u8]>::to_vec))
    })
    .expect("the message on the downlink");
    assert_eq!(opened, Some(v1_id.into_bytes()));

    // The v1 client's join and its message: two GROUP_DATA, one member.
    assert_eq!(stat(&server, "group_data_sent"), 2);
    assert_eq!(stat(&server, "members_group"), 1);
    assert_eq!(stat(&server, "ratchets"), 1);
    assert_eq!(stat(&server, "send_errors"), 0);
    let clients = server.admin().ok("clients");
    assert!(
        clients.iter().any(|l| l.ends_with(" mode=group")),
        "{clients:?}"
    );
    assert!(
        clients.iter().any(|l| l.ends_with(" mode=v2")),
        "{clients:?}"
    );
}

/// Three library clients in group mode and a v1 client made by hand, each
/// sending one message: every other client gets each message exactly once
/// under its sender's id, nobody gets its own back; the members got theirs
/// through the downlink (one GROUP_DATA per message, whoever sent it), the
/// v1 client as DATA of its own session.
#[test]
fn three_members_and_a_v1_client_relay_in_every_direction_exactly_once() {
    let down = downlink_socket();
    let server = Server::start(&["--downlink", &downlink_arg(&down)]);
    let mut members: Vec<UdpClient> = (0..3).map(|_| server.client()).collect();
    assert!(members.iter().all(|m| m.downlink().is_some()), "group mode");
    let mut v1 = Raw::v1(server.addr());
    assert!(v1.group.is_none());
    // Every member heard the last join: the group is settled.
    for m in &mut members {
        expect_event(
            m,
            "the v1 client's join",
            |e| matches!(e, ClientEvent::PeerJoined(id) if *id == v1.id),
        );
    }
    let ids: Vec<String> = members.iter().map(|m| m.id().unwrap().into()).collect();
    // Anything still in flight (a probe's answer on a slow machine) is
    // counted before the snapshot, not in it.
    for m in &mut members {
        common::drain(m, Duration::from_millis(200));
    }
    drain_socket(&down, Duration::from_millis(200));
    let mut admin = server.admin();
    let sent_before = admin.stat("group_data_sent");
    let deliveries_before = admin.stat("deliveries");
    let downlink_before: Vec<_> = members.iter().map(UdpClient::downlink_stats).collect();

    let body = |i: usize| format!("from member {i}").into_bytes();
    for (i, m) in members.iter_mut().enumerate() {
        assert!(m.send(&body(i)).unwrap());
    }
    v1.send(b"from the v1 client");

    let everything: Vec<(String, Vec<u8>)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), body(i)))
        .chain([(v1.id.clone(), b"from the v1 client".to_vec())])
        .collect();
    for (i, m) in members.iter_mut().enumerate() {
        let expected = all_but(&everything, &ids[i]);
        assert_eq!(sorted(collect_messages(m, 3)), expected, "member {i}");
    }
    v1.pump_until("three messages", |events| {
        let n = events.iter().filter(|e| matches!(e, RawEvent::Message(..)));
        n.count() >= 3
    });
    v1.pump(QUIET);
    assert_eq!(sorted(v1.messages()), all_but(&everything, &v1.id), "v1");

    // One GROUP_DATA per message on the downlink, four in all; each
    // member opened four (three messages and the echo of its own).
    let on_downlink = group_values(&drain_socket(&down, Duration::from_millis(300)));
    assert_eq!(on_downlink.len(), 4, "one GROUP_DATA per message");
    assert_eq!(admin.stat("group_data_sent") - sent_before, 4);
    // Three receivers per message: a member's message reaches two members
    // by GROUP_DATA and the v1 client by DATA.
    assert_eq!(admin.stat("deliveries") - deliveries_before, 12);
    for (i, m) in members.iter().enumerate() {
        let (now, before) = (m.downlink_stats(), downlink_before[i]);
        assert_eq!(now.opened - before.opened, 4, "member {i}: {now:?}");
        assert_eq!(now.own_echo - before.own_echo, 1, "member {i}: {now:?}");
        assert_eq!(
            now.bad_signature + now.bad_token + now.replayed,
            0,
            "{now:?}"
        );
    }
    let clients = admin.ok("clients");
    let modes = |mode: &str| clients.iter().filter(|l| l.ends_with(mode)).count();
    assert_eq!(
        (modes(" mode=group"), modes(" mode=v1")),
        (3, 1),
        "{clients:?}"
    );
}

/// A member holds the group key and can seal tokens the others would
/// open, but not sign as the relay: a GROUP_DATA it sends to the downlink
/// under another member's id, signed with its own Ed25519 key or with a
/// relay signature taken from another datagram, is dropped by every
/// member (counted as a bad signature) and never shown as a message. The
/// relay drops GROUP_DATA it receives and relays nothing of it.
#[test]
fn a_member_cannot_pass_its_own_group_datagrams_off_as_the_relays() {
    let down = downlink_socket();
    let server = Server::start(&["--downlink", &downlink_arg(&down)]);
    let mut victim = server.client();
    let mut reader = server.client();
    let mut forger = Raw::v2(server.addr());
    for c in [&mut victim, &mut reader] {
        expect_event(
            c,
            "the forger's join",
            |e| matches!(e, ClientEvent::PeerJoined(id) if *id == forger.id),
        );
    }
    let victim_id = victim.id().unwrap().to_string();

    // A genuine message, captured on the downlink as the forger opens it.
    assert!(victim.send(b"genuine").unwrap());
    assert_eq!(expect_message(&mut reader, b"genuine"), victim_id);
    let group = forger.group.as_mut().unwrap();
    let (genuine, gseq) = recv_until(&down, |d| {
        let value = value_of(d, outer::GROUP_DATA)?;
        let plain = group.member.open(Instant::now(), &value).ok()?;
        let m = Inner::parse(&plain).ok()?;
        (m.body == Some(&b"genuine"[..])).then_some((value, m.seq))
    })
    .expect("the genuine message on the downlink");

    // The forgery: the victim's id and the current group key, fresh GSEQs.
    let epoch = group.member.epoch();
    let raw_key = group.keys[&epoch];
    let key = FernetKey::from_bytes(&raw_key);
    let forge = |gseq: u64, body: &[u8]| {
        let mut plain = Vec::new();
        put_gseq(&mut plain, gseq);
        tlv::put(&mut plain, inner::SENDER_ID, victim_id.as_bytes());
        tlv::put(&mut plain, inner::BODY, body);
        let mut token = Vec::new();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        key.seal_into(now.unwrap().as_secs(), rand::random(), &plain, &mut token);
        token
    };
    let own_key = SigningKey::from_bytes(&rand::random());
    let token = forge(gseq + 1, b"forged, own signature");
    let mut message = Vec::new();
    GroupData::signed_message(epoch, &token, &mut message);
    let signature = own_key.sign(&message).to_bytes();
    let mut own_signed = Vec::new();
    let forged = GroupData {
        epoch,
        signature: &signature,
        token: &token,
    };
    forged.emit(&mut own_signed);
    // Flawless but for the signer: it opens for whoever trusts that key.
    let mut fooled = GroupMember::new(
        &own_key.verifying_key().to_bytes(),
        epoch,
        encode_key(&raw_key).as_bytes(),
    )
    .unwrap();
    let value = value_of(&own_signed, outer::GROUP_DATA).unwrap();
    assert!(fooled.open(Instant::now(), &value).is_ok());
    assert!(!signed_by(&group.signer, &value));

    // The relay's own signature, lifted from the genuine datagram.
    let token = forge(gseq + 2, b"forged, lifted signature");
    let mut lifted = Vec::new();
    GroupData {
        epoch,
        signature: GroupData::parse(&genuine).unwrap().signature,
        token: &token,
    }
    .emit(&mut lifted);

    // The victim's echo of its own message, opened before the forgeries.
    common::drain(&mut victim, QUIET);
    common::drain(&mut reader, Duration::from_millis(200));
    let before = [victim.downlink_stats(), reader.downlink_stats()];
    let to = multicast_sender();
    let downlink: SocketAddr = (DOWNLINK_GROUP, down.local_addr().unwrap().port()).into();
    for d in [&own_signed, &lifted] {
        to.send_to(d, downlink).unwrap();
    }
    // Both reach each member's downlink and are refused there.
    for (i, c) in [&mut victim, &mut reader].into_iter().enumerate() {
        let end = Instant::now() + DEADLINE;
        while c.downlink_stats().bad_signature < before[i].bad_signature + 2 {
            assert!(Instant::now() < end, "{:?}", c.downlink_stats());
            if let Some(ClientEvent::Message { body, .. }) =
                c.recv(Duration::from_millis(50)).unwrap()
            {
                panic!("accepted {:?}", String::from_utf8_lossy(&body));
            }
        }
        assert_eq!(c.downlink_stats().opened, before[i].opened);
    }

    // The same datagrams sent to the relay: dropped, counted, not relayed.
    let mut admin = server.admin();
    let dropped = admin.stat("drop_wire_server_to_client");
    let relayed = admin.stat("messages_relayed");
    for d in [&own_signed, &lifted] {
        forger.sock.send(d).unwrap();
    }
    let end = Instant::now() + DEADLINE;
    while admin.stat("drop_wire_server_to_client") < dropped + 2 {
        assert!(Instant::now() < end, "GROUP_DATA to the relay not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(admin.stat("messages_relayed"), relayed);

    // The downlink still works: what the relay signs arrives, and only that.
    forger.send(b"through the relay");
    for c in [&mut victim, &mut reader] {
        let got = collect_messages(c, 1);
        assert_eq!(got, [(forger.id.clone(), b"through the relay".to_vec())]);
    }
}

#[test]
fn a_downlink_equal_to_the_uplink_is_refused_at_start() {
    let port = UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(common::bin())
        .args(["serve", "--no-admin", "--iface", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .args(["--downlink", &format!("239.255.0.77:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the uplink GROUP:PORT"), "{err}");
}
