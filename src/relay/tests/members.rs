//! What members send: relayed DATA, tokens that fail, the inner rules, and
//! what strangers get.

use super::*;

#[test]
fn relays_to_every_other_client_once() {
    let mut net = Net::new(Config::default());
    let ids: Vec<usize> = (0..3)
        .map(|_| net.joined(ClientOptions::default()))
        .collect();
    for &i in &ids {
        net.take_events(i);
    }
    for &i in &ids {
        net.send(i, format!("from {i}").as_bytes());
    }
    for &i in &ids {
        let want: Vec<(String, Vec<u8>)> = ids
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| (net.id(j), format!("from {j}").into_bytes()))
            .collect();
        assert_eq!(net.messages(i), want, "receiver {i}");
    }
    let s = net.stats();
    assert_eq!((s.messages_relayed, s.deliveries), (3, 6));
    assert_eq!(s.dropped_total(), 0);
}

#[test]
fn tokens_not_under_the_sender_s_key_are_dropped_silently() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    let (aa, ba) = (net.addr(a), net.addr(b));
    // Random bytes, non-UTF-8, someone else's token, a Fernet prefix.
    net.deliver(aa, &plain(&[(outer::DATA, &body(120, 7))]));
    net.deliver(aa, &plain(&[(outer::DATA, &[0xff, 0xfe, 0x80])]));
    let a_token = net.outgoing(a, |c, o| c.send(b"stolen", o)).remove(0);
    net.deliver(ba, &a_token);
    net.deliver(aa, &plain(&[(outer::KEEPALIVE, b"gAAAA")]));
    let s = net.stats();
    assert_eq!((s.dropped(Drop::BadToken), s.dropped_total()), (4, 4));
    assert_eq!(s.rejects_sent, 0);
    assert!(net.messages(a).is_empty() && net.messages(b).is_empty());
}

#[test]
fn broken_framing_drops_the_whole_datagram_before_any_decryption() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    let aa = net.addr(a);
    let good = net.outgoing(a, |c, o| c.send(b"ok", o)).remove(0);
    let mut past_end = good.clone();
    past_end[3] = past_end[3].wrapping_add(1);
    net.deliver(aa, &past_end);
    for trail in 1..=3 {
        let mut d = good.clone();
        d.extend(std::iter::repeat_n(0, trail));
        net.deliver(aa, &d);
    }
    net.deliver(aa, &[0, 5, 0]);
    let s = net.stats();
    assert_eq!((s.dropped(Drop::Framing), s.dropped_total()), (5, 5));
    assert!(net.messages(b).is_empty());
    // The intact datagram still works: the broken copies burnt no SEQ.
    net.deliver(aa, &good);
    assert_eq!(net.messages(b), [(net.id(a), b"ok".to_vec())]);
}

#[test]
fn unknown_and_server_to_client_types_are_skipped_and_the_rest_processed() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    let d = net.outgoing(a, |c, o| c.send(b"after junk", o)).remove(0);
    let mut mixed = plain(&[(0x7777, b"junk"), (outer::WELCOME, b"x")]);
    mixed.extend_from_slice(&d);
    mixed.extend(plain(&[(0x0f00, b""), (outer::REJECT, &[1])]));
    net.deliver(net.addr(a), &mixed);
    assert_eq!(net.messages(b), [(net.id(a), b"after junk".to_vec())]);
    let s = net.stats();
    let skipped = (
        s.dropped(Drop::UnknownType),
        s.dropped(Drop::ServerToClient),
    );
    assert_eq!(skipped, (2, 2));
    assert_eq!((s.messages_relayed, s.dropped_total()), (1, 4));
    assert!(net.messages(a).is_empty(), "never echoed");
}

#[test]
fn each_broken_inner_rule_is_dropped_and_counted() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let m = net.manual(addr(50001), b"");
    net.take_events(a);
    for (i, (kind, p, why)) in broken_plaintexts().iter().enumerate() {
        let before = net.stats().dropped(*why);
        net.deliver(m.addr, &m.datagram(*kind, p));
        assert_eq!(net.stats().dropped(*why), before + 1, "case {i}");
        assert_eq!(net.stats().dropped_total(), i as u64 + 1, "case {i}");
    }
    assert!(net.take_events(a).is_empty());
    assert_eq!(
        net.relay.client_count(),
        2,
        "the malformed BYE removed nobody"
    );
    let s = net.stats();
    assert_eq!((s.messages_relayed, s.dropped_total()), (0, 8));
}

#[test]
fn refused_plaintexts_burn_no_seq_and_unknown_inner_types_are_skipped() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let m = net.manual(addr(50001), b"");
    net.take_events(a);
    for (kind, p, _) in broken_plaintexts() {
        net.deliver(m.addr, &m.datagram(kind, &p));
    }
    // Only SEQ 6, whose token was valid but useless (no BODY), was burnt.
    let ok = plain(&[
        (inner::SEQ, &1u64.to_be_bytes()),
        (0x01ff, b"future"),
        (inner::BODY, b"fine"),
    ]);
    net.deliver(m.addr, &m.datagram(outer::DATA, &ok));
    net.deliver(m.addr, &m.data_seq(7, b"seven"));
    net.deliver(m.addr, &m.data_seq(6, b"six again"));
    let got: Vec<_> = net.messages(a).into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, [&b"fine"[..], b"seven"]);
    let s = net.stats();
    assert_eq!((s.messages_relayed, s.dropped(Drop::Replay)), (2, 1));
    assert_eq!(s.dropped_total(), 9);
}

/// Plaintexts that break an inner rule (SEQs 1 to 8), with the outer type
/// they are sent as and the cause they are dropped for.
fn broken_plaintexts() -> [(u16, Vec<u8>, Drop); 8] {
    let seq = |n: u64| n.to_be_bytes();
    [
        (
            outer::DATA,
            plain(&[(inner::BODY, b"no seq")]),
            Drop::InnerBadField,
        ),
        (
            outer::DATA,
            plain(&[
                (inner::SEQ, &seq(1)),
                (inner::BODY, b"a"),
                (inner::BODY, b"b"),
            ]),
            Drop::InnerDuplicate,
        ),
        (
            outer::DATA,
            plain(&[
                (inner::SEQ, &seq(2)),
                (inner::SEQ, &seq(3)),
                (inner::BODY, b"x"),
            ]),
            Drop::InnerDuplicate,
        ),
        (
            outer::DATA,
            plain(&[(inner::SEQ, &[0, 0, 0, 4]), (inner::BODY, b"short seq")]),
            Drop::InnerBadField,
        ),
        (
            outer::DATA,
            {
                let mut p = plain(&[(inner::SEQ, &seq(5)), (inner::BODY, b"trailing")]);
                p.push(0);
                p
            },
            Drop::InnerFraming,
        ),
        (outer::DATA, plain(&[(inner::SEQ, &seq(6))]), Drop::NoBody),
        (
            outer::KEEPALIVE,
            plain(&[(inner::BODY, b"no seq")]),
            Drop::InnerBadField,
        ),
        (
            outer::BYE,
            plain(&[(inner::SEQ, &seq(7)), (inner::SEQ, &seq(8))]),
            Drop::InnerDuplicate,
        ),
    ]
}

#[test]
fn a_stranger_s_datagram_gets_one_reject_1_and_nothing_else() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let token = net.outgoing(a, |c, o| c.send(b"spoofed", o)).remove(0);
    let frag = plain(&[(outer::FRAGMENT, &[0, 0, 0, 9, 0, 0, 0, 3, 1, 2, 3, 4])]);
    let keepalive = plain(&[(outer::KEEPALIVE, &body(100, 1))]);
    let bye = plain(&[(outer::BYE, &body(100, 2))]);
    let mut all = token.clone();
    all.extend_from_slice(&keepalive);
    all.extend_from_slice(&frag);
    all.extend_from_slice(&bye);
    for (port, d) in (50001..).zip([&token, &keepalive, &bye, &frag, &all]) {
        net.deliver(addr(port), d);
        assert_eq!(
            net.take_stray(addr(port)),
            [reject(RejectReason::UnknownSession)],
            "port {port}"
        );
    }
    assert!(net.take_events(a).is_empty());
    assert_eq!(net.relay.reassembly_bytes(), 0);
    let s = net.stats();
    assert_eq!(
        (s.dropped(Drop::Stranger), s.rejects_sent, s.fragments_in),
        (5, 5, 0)
    );
    assert_eq!((s.messages_relayed, s.dropped_total()), (0, 5));
}

#[test]
fn rejects_to_one_stranger_are_rate_limited() {
    let mut net = Net::new(Config::default());
    let keepalive = plain(&[(outer::KEEPALIVE, &body(100, 1))]);
    // A flood from one source earns only a few REJECTs; other sources are unaffected.
    let flooder = addr(50100);
    for _ in 0..20 {
        net.deliver(flooder, &keepalive);
    }
    let n = net.take_stray(flooder).len() as u64;
    assert!((1..20).contains(&n), "{n} REJECTs for 20 datagrams");
    assert_eq!(net.stats().rejects_suppressed, 20 - n);
    net.deliver(addr(50101), &keepalive);
    assert_eq!(net.take_stray(addr(50101)).len(), 1);
    net.deliver(flooder, &keepalive);
    assert!(net.take_stray(flooder).is_empty());
    net.advance(SEC);
    net.deliver(flooder, &keepalive);
    assert_eq!(
        net.take_stray(flooder),
        [reject(RejectReason::UnknownSession)]
    );
    assert_eq!(net.stats().dropped(Drop::Stranger), 20 + 3);
    assert_eq!(net.stats().rejects_suppressed, 21 - n);
}
