//! Named clients (protocol v2 §5): credentials admitting a name and its
//! permissions (v1 token after the Fernet key, v2 CREDENTIAL), ids
//! `NAME@address:port` on the wire, `pub` / `sub` / `pubsub` enforced in
//! fan-out and on DATA, clients-file reloads (revocations, narrowed rights,
//! a member turned `pub` leaving the group), kicks by name, and bodies that
//! no longer fit once a name is in SENDER_ID.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;

use super::v2::{roomy, DOWNLINK, GROUP_RAW};
use super::*;
use crate::client::udp::MAX_BODY_LEN;
use crate::relay::config::credentials::{token_digest, Credentials};
use crate::session::key::hex;
use crate::wire::handshake::CAP_GROUP;

const SENSOR: &[u8] = b"sensor-token-0123456789abcdef";
const DASH: &[u8] = b"dashboard-token-0123456789abcdef";
const ALICE: &[u8] = b"alice-token-0123456789abcdef";

/// A clients-file table of `(name, token, perms)` lines.
fn table(lines: &[(&str, &[u8], &str)]) -> Arc<Credentials> {
    let text: String = lines
        .iter()
        .map(|(n, t, p)| format!("{n} {} {p}\n", hex(&token_digest(t))))
        .collect();
    Arc::new(Credentials::parse(&text).unwrap())
}

fn three_lines() -> Arc<Credentials> {
    table(&[
        ("sensor", SENSOR, "pub"),
        ("dash", DASH, "sub"),
        ("alice", ALICE, "pubsub"),
    ])
}

fn named_config(shared: Option<&[u8]>) -> Config {
    Config {
        credentials: Some(three_lines()),
        access_token: shared.map(<[u8]>::to_vec),
        ..roomy()
    }
}

fn with_token(token: &[u8]) -> ClientOptions {
    ClientOptions {
        access_token: Some(token.to_vec()),
        ..ClientOptions::default()
    }
}

fn named(name: &str, net: &Net, i: usize) -> String {
    format!("{name}@{}", net.addr(i))
}

#[test]
fn each_sees_what_its_permissions_allow_under_its_name() {
    let mut net = Net::new(named_config(None));
    let sensor = net.joined(with_token(SENSOR));
    let dash = net.joined(with_token(DASH));
    let alice = net.joined(with_token(ALICE));
    let (s_id, d_id, a_id) = (
        named("sensor", &net, sensor),
        named("dash", &net, dash),
        named("alice", &net, alice),
    );
    assert_eq!(net.peers[sensor].core.id(), Some(s_id.as_str()));
    assert_eq!(net.peers[dash].core.id(), Some(d_id.as_str()));
    // Notices: the sensor heard of nobody; the dashboard of alice.
    assert!(net.take_events(sensor).is_empty());
    assert_eq!(
        net.take_events(dash),
        [ClientEvent::PeerJoined(a_id.clone())]
    );

    net.send(sensor, b"21.5 C");
    assert_eq!(net.messages(dash), [(s_id.clone(), b"21.5 C".to_vec())]);
    assert_eq!(net.messages(alice), [(s_id.clone(), b"21.5 C".to_vec())]);
    net.send(alice, b"hello");
    assert_eq!(net.messages(dash), [(a_id.clone(), b"hello".to_vec())]);
    assert!(net.take_events(sensor).is_empty(), "pub receives nothing");

    // The dashboard may not publish: REJECT 5, its session kept.
    net.send(dash, b"let me in");
    assert_eq!(
        net.take_events(dash),
        [ClientEvent::Rejected(RejectReason::Forbidden)]
    );
    assert!(net.take_events(alice).is_empty());
    assert!(net.take_events(sensor).is_empty());
    assert_eq!(net.stats().dropped(Drop::Forbidden), 1);
    assert_eq!(Drop::Forbidden.name(), "forbidden");
    net.keepalive(dash);
    assert!(net.peers[dash].core.is_established());
    net.send(sensor, b"22.0 C");
    assert_eq!(net.messages(dash), [(s_id.clone(), b"22.0 C".to_vec())]);

    // Leaving: the pub sensor is not told about the others.
    net.send_bye(alice);
    assert_eq!(net.take_events(dash), [left(&a_id, LeaveReason::Bye)]);
    assert!(net.take_events(sensor).is_empty());
    let ids: Vec<(String, String)> = net
        .relay
        .clients(net.now)
        .iter()
        .map(|c| (c.id.to_string(), c.perms.to_string()))
        .collect();
    assert!(ids.contains(&(s_id, "pub".into())), "{ids:?}");
    assert!(ids.contains(&(d_id, "sub".into())), "{ids:?}");

    // SERVER_CLOSING reaches even the sensor.
    net.relay.shutdown(&mut net.tx);
    net.route(&mut VecDeque::new());
    assert_eq!(net.take_events(sensor), [ClientEvent::ServerClosing]);
    assert_eq!(net.take_events(dash), [ClientEvent::ServerClosing]);
}

impl Net {
    fn send_bye(&mut self, i: usize) {
        let ds = self.outgoing(i, |c, o| c.bye(o));
        self.deliver_all(self.addr(i), ds);
    }
}

#[test]
fn no_token_or_an_unknown_one_is_reject_2() {
    for shared in [None, Some(&b"shared-token-0123456789"[..])] {
        let mut net = Net::new(named_config(shared));
        for opts in [
            ClientOptions::default(),
            with_token(b"who-knows-0123456789"),
        ] {
            let i = net.add(opts);
            net.connect(i);
            assert!(!net.peers[i].core.is_established());
            assert!(
                net.take_events(i)
                    .contains(&ClientEvent::Rejected(RejectReason::AuthFailed)),
                "{shared:?}"
            );
        }
        assert_eq!(net.stats().dropped(Drop::UnknownCredential), 2);
        assert_eq!(net.relay.client_count(), 0);
        // The shared token admits an unnamed pubsub client beside the
        // named ones.
        if let Some(t) = shared {
            let i = net.joined(with_token(t));
            assert_eq!(net.peers[i].core.id(), Some(net.id(i).as_str()));
            let a = net.joined(with_token(ALICE));
            net.send(i, b"anon");
            assert_eq!(net.messages(a), [(net.id(i), b"anon".to_vec())]);
        }
    }
}

#[test]
fn without_a_clients_file_nothing_changes() {
    let mut net = Net::new(roomy());
    let a = net.joined(with_token(ALICE));
    let b = net.joined(ClientOptions::default());
    assert_eq!(net.peers[a].core.id(), Some(net.id(a).as_str()));
    net.send(b, b"x");
    assert_eq!(net.messages(a), [(net.id(b), b"x".to_vec())]);
}

#[test]
fn a_v1_token_after_the_fernet_key_names_the_client() {
    let mut net = Net::new(named_config(None));
    let src = addr(41000);
    let (der, cookie) = net.hello_from(src);
    let key = Fernet::generate_key();
    let mut plain = key.clone().into_bytes();
    plain.extend_from_slice(ALICE);
    net.deliver(src, &session_key(&der, Some(&cookie), &plain));
    let replies = net.take_stray(src);
    assert_eq!(replies.len(), 1, "one WELCOME");
    let f = Fernet::new(&key).unwrap();
    let tlvs = parse(&replies[0]);
    assert_eq!(tlvs[0].0, outer::WELCOME);
    let w = f.decrypt(std::str::from_utf8(&tlvs[0].1).unwrap()).unwrap();
    let w = Inner::parse(&w).unwrap();
    assert_eq!(w.client_id, Some(format!("alice@{src}").as_bytes()));
    // The same without a token: REJECT 2.
    let src = addr(41001);
    let (der, cookie) = net.hello_from(src);
    let plain = Fernet::generate_key().into_bytes();
    net.deliver(src, &session_key(&der, Some(&cookie), &plain));
    assert_eq!(net.take_stray(src), [reject(RejectReason::AuthFailed)]);
    assert_eq!(net.stats().dropped(Drop::UnknownCredential), 1);
}

#[test]
fn a_revoked_name_ends_its_sessions_and_its_token_is_refused() {
    let mut net = Net::new(named_config(None));
    let alice = net.joined(with_token(ALICE));
    let dash = net.joined(with_token(DASH));
    let sensor = net.joined(with_token(SENSOR));
    let a_id = named("alice", &net, alice);
    for i in [alice, dash, sensor] {
        net.take_events(i);
    }
    // Alice's line goes; the others stay.
    let n = net.relay.set_credentials(
        Some(table(&[("sensor", SENSOR, "pub"), ("dash", DASH, "sub")])),
        &mut net.tx,
    );
    net.route(&mut VecDeque::new());
    assert_eq!(n, 1);
    assert_eq!(net.take_events(alice), [left(&a_id, LeaveReason::Revoked)]);
    assert_eq!(net.take_events(dash), [left(&a_id, LeaveReason::Revoked)]);
    assert!(net.take_events(sensor).is_empty());
    assert_eq!(net.relay.client_count(), 2);
    assert!(net.events.contains(&Event::Left {
        id: a_id.parse().unwrap(),
        reason: LeaveReason::Revoked
    }));
    let again = net.add(with_token(ALICE));
    net.connect(again);
    assert!(!net.peers[again].core.is_established());

    // A changed token revokes too; the new token then works.
    let d_id = named("dash", &net, dash);
    let fresh = b"dashboard-token-rotated-0123456789";
    net.relay.set_credentials(
        Some(table(&[("sensor", SENSOR, "pub"), ("dash", fresh, "sub")])),
        &mut net.tx,
    );
    net.route(&mut VecDeque::new());
    assert_eq!(net.take_events(dash), [left(&d_id, LeaveReason::Revoked)]);
    assert_eq!(net.relay.client_count(), 1);
    net.joined(with_token(fresh));
}

#[test]
fn narrowed_rights_apply_at_once_and_wider_ones_at_the_next_handshake() {
    let mut net = Net::new(named_config(None));
    let alice = net.joined(with_token(ALICE));
    let dash = net.joined(with_token(DASH));
    net.take_events(alice);
    // alice becomes sub: her DATA is refused at once.
    net.relay.set_credentials(
        Some(table(&[("alice", ALICE, "sub"), ("dash", DASH, "pubsub")])),
        &mut net.tx,
    );
    net.route(&mut VecDeque::new());
    net.send(alice, b"still?");
    assert_eq!(
        net.take_events(alice),
        [ClientEvent::Rejected(RejectReason::Forbidden)]
    );
    assert!(net.take_events(dash).is_empty());
    // dash was widened to pubsub: not before it handshakes again.
    net.send(dash, b"me?");
    assert_eq!(
        net.take_events(dash),
        [ClientEvent::Rejected(RejectReason::Forbidden)]
    );
    let dash2 = net.joined(with_token(DASH));
    net.send(dash2, b"now");
    assert_eq!(
        net.messages(alice),
        [(named("dash", &net, dash2), b"now".to_vec())]
    );
}

/// A v2 handshake with `credential`, delivered; its WELCOME adopted.
fn v2_named(net: &mut Net, src: SocketAddr, credential: &[u8]) -> super::v2::V2 {
    let (d, mut c) = net.v2_attempt(src, GROUP_RAW, Some(credential));
    net.deliver(src, &d);
    let replies = net.take_stray(src);
    assert_eq!(replies.len(), 1, "one WELCOME: {:?}", net.stats());
    c.adopt_welcome(&replies[0]);
    c
}

#[test]
fn pub_is_never_a_group_member_and_a_member_turned_pub_leaves() {
    let mut net = Net::new(named_config(None));
    let mut a = v2_named(&mut net, at([10, 7, 0, 1], 5000), ALICE);
    let mut d = v2_named(&mut net, at([10, 7, 0, 2], 5000), DASH);
    let s = v2_named(&mut net, at([10, 7, 0, 3], 5000), SENSOR);
    assert_ne!(a.caps & CAP_GROUP, 0);
    assert_ne!(d.caps & CAP_GROUP, 0);
    assert_eq!(s.caps & CAP_GROUP, 0, "no group key for pub");
    assert_eq!(net.stats().members_group, 2);
    net.take_group(DOWNLINK);
    let rekeys = net.stats().rekeys;
    // alice turns pub: she leaves the group (a rekey she does not get).
    net.relay.set_credentials(
        Some(table(&[
            ("alice", ALICE, "pub"),
            ("dash", DASH, "sub"),
            ("sensor", SENSOR, "pub"),
        ])),
        &mut net.tx,
    );
    net.route(&mut VecDeque::new());
    assert_eq!(net.stats().rekeys, rekeys + 1);
    assert_eq!(net.stats().members_group, 1);
    assert!(net.take_stray(a.addr).is_empty(), "no new key for alice");
    let got = d.open_all(&net.take_stray(d.addr));
    assert_eq!(d.take_keys(net.now, &got).len(), 0, "only the key");
    // alice still publishes; dash hears it, alice hears nothing.
    let m = a.data(b"from a publisher");
    net.deliver(a.addr, &m);
    let ds = net.take_group(DOWNLINK);
    assert_eq!(ds.len(), 1);
    let p = d.open_group(net.now, &ds[0]).unwrap();
    let m = Inner::parse(&p).unwrap();
    let a_id = format!("alice@{}", a.addr);
    assert_eq!(m.sender_id, Some(a_id.as_bytes()));
    assert_eq!(m.body, Some(&b"from a publisher"[..]));
    assert!(net.take_stray(a.addr).is_empty());
}

#[test]
fn kick_by_name_ends_every_session_of_that_name() {
    let mut net = Net::new(named_config(None));
    let a1 = net.joined(with_token(ALICE));
    let a2 = net.joined(with_token(ALICE));
    let dash = net.joined(with_token(DASH));
    for i in [a1, a2] {
        net.take_events(i);
    }
    let (id1, id2) = (named("alice", &net, a1), named("alice", &net, a2));
    assert!(
        !net.relay.kick(
            &format!("bob@{}", net.addr(a1)).parse().unwrap(),
            &mut net.tx
        ),
        "the name in an id must match"
    );
    assert_eq!(net.relay.kick_name("alice", &mut net.tx), 2);
    net.route(&mut VecDeque::new());
    assert_eq!(net.take_events(a1), [left(&id1, LeaveReason::Kicked)]);
    assert_eq!(net.take_events(a2)[0], left(&id2, LeaveReason::Kicked));
    let mut told = net.take_events(dash);
    told.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        told,
        [
            left(&id1, LeaveReason::Kicked),
            left(&id2, LeaveReason::Kicked)
        ]
    );
    assert_eq!(net.relay.kick_name("alice", &mut net.tx), 0);
    assert_eq!(net.relay.client_count(), 1);
}

#[test]
fn a_body_that_no_longer_fits_with_a_name_is_refused_as_oversize() {
    // The longest address the client's MAX_BODY_LEN allows for; a name
    // in front makes SENDER_ID 33 bytes longer than it assumed.
    let far = SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::from([0xffff; 8]),
        65535,
        0,
        u32::MAX,
    ));
    let long = "n".repeat(32);
    let shared = b"shared-token-0123456789";
    let mut net = Net::new(Config {
        credentials: Some(table(&[(long.as_str(), ALICE, "pubsub")])),
        access_token: Some(shared.to_vec()),
        ..roomy()
    });
    // A v1 receiver: its tokens are base64 text, the form MAX_BODY_LEN is
    // computed for (raw v2 tokens have room to spare).
    let rx = net.manual(addr(41000), shared);
    let sender = net.add_at(far, with_token(ALICE));
    net.connect(sender);
    let id = format!("{long}@{far}");
    assert_eq!(net.peers[sender].core.id(), Some(id.as_str()));
    net.take_stray(rx.addr);
    net.send(sender, &body(MAX_BODY_LEN, 1));
    assert!(net.take_stray(rx.addr).is_empty());
    assert_eq!(net.stats().dropped(Drop::Oversize), 1);
    // 33 bytes less fits whatever the name.
    let fits = body(MAX_BODY_LEN - 33, 2);
    net.send(sender, &fits);
    assert!(
        !net.take_stray(rx.addr).is_empty(),
        "relayed (in fragments)"
    );
    assert_eq!(net.stats().dropped(Drop::Oversize), 1);
}

#[test]
fn bans_keep_addresses_hosts_and_names_out_until_they_end() {
    use crate::relay::bans::BanTarget;
    let mut net = Net::new(named_config(None));
    let dash = net.joined(with_token(DASH));
    let src = at([10, 1, 1, 1], 5000);
    v2_named(&mut net, src, ALICE);
    let a_id = format!("alice@{src}");
    net.take_events(dash);
    // An address ban ends the session (REASON 3 to it and the others)
    // and refuses that address before RSA: no RSA failure, no handshake.
    let target: BanTarget = a_id.parse().unwrap();
    assert_eq!(target, BanTarget::Addr(src));
    let now = net.now;
    assert_eq!(
        net.relay
            .ban(target.clone(), Some(60 * SEC), now, &mut net.tx),
        Ok(1)
    );
    net.route(&mut VecDeque::new());
    assert_eq!(net.take_stray(src).len(), 1, "told itself");
    assert_eq!(net.take_events(dash), [left(&a_id, LeaveReason::Kicked)]);
    let completed = net.stats().handshakes_completed;
    let (d, _) = net.v2_attempt(src, GROUP_RAW, Some(ALICE));
    net.deliver(src, &d);
    assert_eq!(net.take_stray(src), [reject(RejectReason::AuthFailed)]);
    assert_eq!(net.stats().dropped(Drop::Banned), 1);
    assert_eq!(net.stats().dropped(Drop::RsaDecrypt), 0);
    assert_eq!(net.stats().handshakes_completed, completed);
    // Another port of that host may come in; alice too, from there.
    let other = at([10, 1, 1, 1], 5001);
    v2_named(&mut net, other, ALICE);
    let listed = net.relay.bans(net.now);
    assert_eq!(listed, [(target.clone(), Some(60 * SEC))]);
    // The ban ends by itself.
    net.advance(61 * SEC);
    assert!(net.relay.bans(net.now).is_empty());
    let (d, _) = net.v2_attempt(src, GROUP_RAW, Some(ALICE));
    net.deliver(src, &d);
    assert_eq!(net.take_stray(src).len(), 1, "welcomed again");
    // (The session at `other` timed out meanwhile.)
    v2_named(&mut net, other, ALICE);

    // A host ban covers every port; a name ban every address (after RSA).
    let now = net.now;
    let host = BanTarget::Host(src.ip());
    assert_eq!(net.relay.ban(host.clone(), None, now, &mut net.tx), Ok(2));
    net.route(&mut VecDeque::new());
    assert!(net.relay.unban(&host));
    assert!(!net.relay.unban(&host));
    let name = BanTarget::Name("alice".into());
    net.relay.ban(name.clone(), None, now, &mut net.tx).unwrap();
    let far = at([10, 9, 9, 9], 5000);
    let (d, _) = net.v2_attempt(far, GROUP_RAW, Some(ALICE));
    net.deliver(far, &d);
    assert_eq!(net.take_stray(far), [reject(RejectReason::AuthFailed)]);
    assert_eq!(net.stats().dropped(Drop::Banned), 2);
    assert!(net.relay.unban(&name));
    let (d, _) = net.v2_attempt(at([10, 9, 9, 8], 5000), GROUP_RAW, Some(ALICE));
    net.deliver(at([10, 9, 9, 8], 5000), &d);
    assert_eq!(net.take_stray(at([10, 9, 9, 8], 5000)).len(), 1);
}
