//! Protocol v2 in the relay core: the bound handshake (grants, BIND,
//! credentials, replays) and group fan-out (one GROUP_DATA per message
//! whatever the number of members, mixed groups, notices, fragments).

use super::v2::*;
use super::*;
use crate::session::fernet;
use crate::session::group::GroupError;
use crate::wire::handshake::{self, Handshake, CAP_RAW};

/// Every member hears the group datagrams sent since the last call, in
/// order; returns what each one could open, summarised.
pub(super) fn hear(net: &mut Net, ms: &mut [V2]) -> Vec<Vec<String>> {
    let ds = net.take_group(DOWNLINK);
    let now = net.now;
    ms.iter_mut()
        .map(|m| {
            ds.iter()
                .filter_map(|d| m.open_group(now, d).ok())
                .map(|p| summary(&p))
                .collect()
        })
        .collect()
}

/// The destinations of what the relay sent since `mark`, sorted.
pub(super) fn sent_to(net: &Net, mark: usize) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = net.sent[mark..].iter().map(|(d, _)| *d).collect();
    v.sort();
    v
}

#[test]
fn a_v2_handshake_is_welcomed_with_what_it_was_granted() {
    let mut net = Net::new(roomy());
    let a = net.v2(addr(41001), GROUP_RAW);
    assert_eq!(a.caps, GROUP_RAW);
    assert_eq!(
        a.welcome[tlv::HEADER_LEN],
        fernet::VERSION,
        "RAW: raw WELCOME"
    );
    assert_eq!(a.downlink, Some(DOWNLINK));
    assert_eq!(a.signer.as_deref(), Some(&net.relay.group_signer()[..]));
    assert_eq!(
        a.group.as_ref().unwrap().epoch(),
        2,
        "joined by ratchet 1 → 2"
    );
    let b = net.v2(addr(41002), 0);
    assert_eq!((b.caps, b.group.is_none(), b.downlink), (0, true, None));
    assert_eq!(b.welcome[tlv::HEADER_LEN], b'g', "no RAW: a text WELCOME");
    let c = net.v2(addr(41003), u32::MAX);
    assert_eq!(c.caps, GROUP_RAW, "unknown bits are never granted");
    // v1 goes on beside v2.
    net.manual(addr(41004), b"");
    // No downlink of its family: no group mode for an IPv6 client here.
    let d = net.v2("[2001:db8::5]:41005".parse().unwrap(), GROUP_RAW);
    assert_eq!(d.caps, CAP_RAW);
    let s = net.stats();
    assert_eq!(
        (s.handshakes_completed, s.ratchets, s.members_group),
        (5, 2, 2)
    );
    assert_eq!(s.group_epoch, 3);
    let modes: Vec<&str> = net.relay.clients(net.now).iter().map(|c| c.mode).collect();
    assert_eq!(modes, ["group", "v2", "group", "v1", "v2"]);

    let mut off = Net::new(Config {
        group_mode: false,
        ..roomy()
    });
    assert_eq!(off.v2(addr(41001), GROUP_RAW).caps, CAP_RAW);
    assert_eq!(off.stats().ratchets, 0);
}

#[test]
fn one_group_data_per_message_whatever_the_number_of_members() {
    for n in [3, 50] {
        let mut net = Net::new(roomy());
        let mut ms = net.members(n);
        let heard = hear(&mut net, &mut ms);
        // Each member heard the joins after its own, never its own or earlier.
        for (i, h) in heard.iter().enumerate() {
            assert_eq!(h.len(), n - 1 - i, "member {i}");
        }
        let before = net.stats().clone();
        let mark = net.sent.len();
        let d = ms[0].data(b"hello");
        net.deliver(ms[0].addr, &d);
        assert_eq!(sent_to(&net, mark), [DOWNLINK], "{n} members");
        let heard = hear(&mut net, &mut ms);
        let line = format!("{}: hello", ms[0].addr);
        for h in &heard[1..] {
            assert_eq!(h, std::slice::from_ref(&line));
        }
        let s = net.stats();
        assert_eq!(s.group_data_sent - before.group_data_sent, 1);
        assert_eq!(s.deliveries - before.deliveries, n as u64 - 1);
        assert_eq!(s.datagrams_out - before.datagrams_out, 1);
        assert_eq!(s.dropped_total(), 0);
        // A timing figure for the report, not a test: CI is noisy.
        let ds: Vec<Vec<u8>> = (0..200).map(|_| ms[0].data(&[7; 100])).collect();
        let t = Instant::now();
        for d in &ds {
            net.relay
                .handle_datagram(net.now, ms[0].addr, d, &mut net.tx);
            net.tx.clear();
        }
        println!(
            "{n} members: {:?} of relay time per message",
            t.elapsed() / 200
        );
    }
}

#[test]
fn each_family_hears_the_one_group_data_on_its_own_downlink() {
    let v6: SocketAddr = "[ff02::77]:5009".parse().unwrap();
    let mut net = Net::new(Config {
        downlinks: vec![DOWNLINK, v6],
        ..roomy()
    });
    let mut a = net.v2(addr(41001), GROUP_RAW);
    let mut b = net.v2("[2001:db8::5]:41002".parse().unwrap(), GROUP_RAW);
    let mut c = net.v2("[2001:db8::6]:41003".parse().unwrap(), GROUP_RAW);
    assert_eq!((a.downlink, b.downlink), (Some(DOWNLINK), Some(v6)));
    net.stray.clear();
    // From an IPv6 member: one seal, sent to both downlinks.
    let mark = net.sent.len();
    let d = b.data(b"both");
    net.deliver(b.addr, &d);
    assert_eq!(sent_to(&net, mark), [DOWNLINK, v6]);
    let (g4, g6) = (net.take_stray(DOWNLINK), net.take_stray(v6));
    assert_eq!(g4, g6, "the same datagram");
    assert!(a.open_group(net.now, &g4[0]).is_ok());
    assert!(c.open_group(net.now, &g6[0]).is_ok());
    assert_eq!(net.stats().group_data_sent, 2 + 1);
    // From the only IPv4 member: IPv6 members only.
    let mark = net.sent.len();
    let d = a.data(b"v6 only");
    net.deliver(a.addr, &d);
    assert_eq!(sent_to(&net, mark), [v6]);
}

#[test]
fn a_lone_member_sending_costs_no_group_data() {
    let mut net = Net::new(roomy());
    let mut a = net.v2(addr(41001), GROUP_RAW);
    let mark = net.sent.len();
    net.deliver(a.addr, &a.data(b"anyone?"));
    assert_eq!(net.sent.len(), mark);
    assert_eq!(net.stats().group_data_sent, 0);
}

#[test]
fn mixed_groups_get_one_group_data_and_one_data_per_other_client() {
    let mut net = Net::new(roomy());
    let mut ms = net.members(2);
    let mut solo = net.v2(addr(41010), CAP_RAW);
    let mut v1 = net.manual(addr(41011), b"");
    let v1b = net.manual(addr(41012), b"");
    hear(&mut net, &mut ms);
    net.stray.clear();

    // From a v1 client: the group once, the two others outside it once each.
    let mark = net.sent.len();
    let d = v1.data(b"from v1");
    net.deliver(v1.addr, &d);
    assert_eq!(sent_to(&net, mark), [addr(41010), addr(41012), DOWNLINK]);
    let line = format!("{}: from v1", v1.addr);
    assert_eq!(hear(&mut net, &mut ms), [[line.clone()], [line.clone()]]);
    let got = solo.open_all(&net.take_stray(solo.addr));
    assert_eq!(summary(&got[0]), line);
    let d = net.take_stray(v1b.addr);
    let p = v1b.open(&d[0], outer::DATA);
    assert_eq!(Inner::parse(&p).unwrap().body, Some(&b"from v1"[..]));
    assert!(net.take_stray(v1.addr).is_empty(), "no echo to the sender");

    // From a member: the other member through the group, three single copies.
    let mark = net.sent.len();
    let d = ms[0].data(b"from a member");
    net.deliver(ms[0].addr, &d);
    assert_eq!(
        sent_to(&net, mark),
        [addr(41010), addr(41011), addr(41012), DOWNLINK]
    );
    let heard = hear(&mut net, &mut ms);
    assert_eq!(heard[1], [format!("{}: from a member", ms[0].addr)]);
    // Four joins heard by members (all but the first member's), two messages.
    let s = net.stats();
    assert_eq!((s.messages_relayed, s.group_data_sent), (2, 4 + 2));
    assert_eq!(s.dropped_total(), 0);
}

#[test]
fn notices_go_through_the_group_to_members_and_singly_to_the_others() {
    let mut net = Net::new(roomy());
    let mut ms = net.members(2);
    let mut solo = net.v2(addr(41010), CAP_RAW);
    let joined = format!("joined {}", solo.addr);
    assert_eq!(
        hear(&mut net, &mut ms),
        [
            vec![format!("joined {}", ms[1].addr), joined.clone()],
            vec![joined]
        ]
    );
    let mark = net.sent.len();
    net.relay.shutdown(&mut net.tx);
    net.route(&mut VecDeque::new());
    assert_eq!(sent_to(&net, mark), [solo.addr, DOWNLINK]);
    assert_eq!(hear(&mut net, &mut ms), [["closing"], ["closing"]]);
    let got = solo.open_all(&net.take_stray(solo.addr));
    assert_eq!(summary(&got[0]), "closing");
    assert_eq!(net.stats().members_group, 0);
}

#[test]
fn a_large_group_data_goes_out_as_fragments_to_the_group() {
    let mut net = Net::new(roomy());
    let mut ms = net.members(2);
    hear(&mut net, &mut ms);
    let big = body(5000, 3);
    let mark = net.sent.len();
    let d = ms[0].data(&big);
    net.deliver(ms[0].addr, &d);
    let out = &net.sent[mark..];
    assert!(out.len() >= 5, "{} datagrams", out.len());
    assert!(out
        .iter()
        .all(|(dst, d)| *dst == DOWNLINK && d.len() <= 1200));
    assert!(out.iter().all(|(_, d)| kinds(d) == [outer::FRAGMENT]));
    let ds = net.take_group(DOWNLINK);
    assert_eq!(ds.len(), 1, "reassembled into one GROUP_DATA");
    let p = ms[1].open_group(net.now, &ds[0]).unwrap();
    assert_eq!(Inner::parse(&p).unwrap().body, Some(&big[..]));
    assert_eq!(net.stats().group_data_sent, 2);
}

#[test]
fn a_bind_mismatch_is_refused_with_reject_4() {
    let mut net = Net::new(roomy());
    let key = fernet::encode_key(&[5; 32]);
    // Each case from its own address: REJECTs are limited per source.
    type Make<'a> = &'a dyn Fn(&[u8], &[u8]) -> Vec<u8>;
    let cases: [(u16, Make, Drop, RejectReason); 4] = [
        (
            42001,
            &|_, other| hs(&key, other, None),
            Drop::BindMismatch,
            RejectReason::BadCookie,
        ),
        (
            42002,
            &|_, _| plain(&[(handshake::FERNET_KEY, key.as_bytes())]),
            Drop::BindMismatch,
            RejectReason::BadCookie,
        ),
        (
            42003,
            &|mine, _| {
                plain(&[
                    (handshake::FERNET_KEY, &key.as_bytes()[..43]),
                    (handshake::BIND, mine),
                ])
            },
            Drop::BadHandshake,
            RejectReason::AuthFailed,
        ),
        (
            42004,
            &|mine, _| hs(&"!".repeat(44), mine, None),
            Drop::BadFernetKey,
            RejectReason::AuthFailed,
        ),
    ];
    for (port, make, why, reject_reason) in cases {
        let src = addr(port);
        let (_, other) = net.hello_from(addr(port + 100));
        let (der, cookie) = net.hello_from(src);
        let before = net.stats().dropped(why);
        net.deliver(src, &session_key2(&der, &cookie, &make(&cookie, &other)));
        assert_eq!(net.take_stray(src), [reject(reject_reason)], "{why}");
        assert_eq!(net.stats().dropped(why), before + 1);
    }
    assert_eq!(net.relay.client_count(), 0);
}

/// A handshake plaintext with GROUP|RAW asked for.
fn hs(key: &str, bind: &[u8], credential: Option<&[u8]>) -> Vec<u8> {
    let mut p = Vec::new();
    Handshake {
        fernet_key: key.as_bytes(),
        bind: bind.try_into().unwrap(),
        caps: GROUP_RAW,
        credential,
    }
    .emit(&mut p);
    p
}

#[test]
fn the_credential_is_the_access_token() {
    let mut net = Net::new(Config {
        access_token: Some(b"sesame".to_vec()),
        ..roomy()
    });
    for (port, credential, ok) in [
        (42101, Some(&b"sesame"[..]), true),
        (42102, Some(b"sesam"), false),
        (42103, None, false),
    ] {
        let src = addr(port);
        let (d, _) = net.v2_attempt(src, GROUP_RAW, credential);
        net.deliver(src, &d);
        let replies = net.take_stray(src);
        if ok {
            assert_eq!(kinds(&replies[0]), [outer::WELCOME]);
        } else {
            assert_eq!(replies, [reject(RejectReason::AuthFailed)]);
        }
    }
    assert_eq!(net.stats().dropped(Drop::BadAccessToken), 2);
    assert_eq!(net.relay.client_count(), 1);
}

#[test]
fn a_replayed_session_key2_registers_nothing() {
    let mut net = Net::new(roomy());
    let mut a = net.v2(addr(42201), GROUP_RAW);
    let ciphertext = parse(&a.handshake)[1].1.clone();
    // From another address with a cookie of its own: dropped silently, before RSA.
    let evil = addr(42202);
    let (_, cookie) = net.hello_from(evil);
    let rsa = net.stats().dropped(Drop::RsaDecrypt) + net.stats().handshakes_completed;
    net.deliver(
        evil,
        &plain(&[(outer::COOKIE, &cookie), (outer::SESSION_KEY2, &ciphertext)]),
    );
    assert!(net.take_stray(evil).is_empty());
    assert_eq!(net.stats().dropped(Drop::ReplayedSessionKey), 1);
    assert_eq!(
        net.stats().dropped(Drop::RsaDecrypt) + net.stats().handshakes_completed,
        rsa
    );
    // As captured, with the cookie of the address it came from: REJECT 4.
    net.deliver(evil, &a.handshake);
    assert_eq!(net.take_stray(evil), [reject(RejectReason::BadCookie)]);
    // From its own address while its session lives: the same WELCOME, byte
    // for byte (once a second), and nothing else changes.
    let (epoch, ratchets) = (net.relay.group.sender.epoch(), net.stats().ratchets);
    net.advance(SEC);
    net.deliver(a.addr, &a.handshake);
    assert_eq!(net.take_stray(a.addr), [a.welcome.clone()]);
    net.deliver(a.addr, &a.handshake);
    assert!(net.take_stray(a.addr).is_empty(), "at most once a second");
    assert_eq!(net.relay.group.sender.epoch(), epoch);
    assert_eq!(net.stats().ratchets, ratchets);
    assert_eq!(net.stats().welcomes_resent, 1);
    // Once that session has ended: dropped silently.
    let bye = a.bye();
    net.deliver(a.addr, &bye);
    net.advance(SEC);
    net.deliver(a.addr, &a.handshake);
    assert!(net.take_stray(a.addr).is_empty());
    assert_eq!(net.relay.client_count(), 0);
    assert_eq!(net.stats().dropped(Drop::ReplayedSessionKey), 2);
}

#[test]
fn a_datagram_with_both_handshakes_costs_one_decryption() {
    let mut net = Net::new(roomy());
    let src = addr(42301);
    let (mut d, mut c) = net.v2_attempt(src, CAP_RAW, None);
    tlv::put(&mut d, outer::SESSION_KEY, &[7; 256]);
    net.deliver(src, &d);
    let replies = net.take_stray(src);
    assert_eq!(kinds(&replies[0]), [outer::WELCOME]);
    assert_eq!(net.stats().dropped(Drop::Repeated), 1);
    assert_eq!(net.stats().dropped(Drop::RsaDecrypt), 0);
    // And the session works: its DATA opens (and reaches nobody).
    let d = c.data(b"x");
    net.deliver(src, &d);
    assert_eq!(net.stats().messages_relayed, 1);
}

#[test]
fn group_data_sent_to_the_relay_is_dropped_and_replays_are_caught() {
    let mut net = Net::new(roomy());
    let mut ms = net.members(2);
    hear(&mut net, &mut ms);
    let d = ms[0].data(b"genuine");
    net.deliver(ms[0].addr, &d);
    let g = net.take_group(DOWNLINK).remove(0);
    // Sent back to the relay by a member: dropped, nothing re-sent.
    net.deliver(ms[1].addr, &g);
    assert_eq!(net.stats().dropped(Drop::ServerToClient), 1);
    assert!(net.take_group(DOWNLINK).is_empty());
    // Replayed to the group: the GSEQ window catches it.
    assert!(ms[1].open_group(net.now, &g).is_ok());
    assert_eq!(ms[1].open_group(net.now, &g), Err(GroupError::Replay));
}
