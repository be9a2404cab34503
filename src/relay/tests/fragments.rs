//! Fragmented messages: reassembled in any order, each broken rule dropping
//! its message, no nesting, expiry driven by `poll_timeout`.

use super::*;

/// A relay with a 32 KiB reassembly limit and two joined clients.
fn two() -> (Net, usize, usize) {
    let mut net = Net::new(Config {
        max_datagram: 1200,
        reassembly: ReassemblyLimits {
            max_message_bytes: 32 * 1024,
            ..ReassemblyLimits::default()
        },
        ..Config::default()
    });
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    (net, a, b)
}

#[test]
fn a_fragmented_message_is_relayed_as_fragments() {
    let (mut net, a, b) = two();
    let big = body(20 * 1024, 1);
    let ds = net.outgoing(a, |c, o| c.send(&big, o));
    // A raw token (RAW is granted to these v2 clients) of 20 KiB: 18 pieces.
    assert!(ds.len() > 15 && ds.iter().all(|d| d.len() <= 1200));
    let n = ds.len() as u64;
    let mark = net.sent.len();
    net.deliver_all(net.addr(a), ds);
    assert_eq!(net.messages(b), [(net.id(a), big)]);
    let out = &net.sent[mark..];
    assert!(out.len() > 15 && out.iter().all(|(dst, _)| *dst == net.addr(b)));
    assert!(out.iter().all(|(_, d)| d.len() <= 1200));
    let s = net.stats();
    assert_eq!(
        (s.fragments_in, s.reassembled, s.messages_relayed),
        (n, 1, 1)
    );
    assert_eq!(s.fragments_out, out.len() as u64);
}

#[test]
fn fragments_in_any_order_make_the_message() {
    let (mut net, a, b) = two();
    let big = body(20 * 1024, 2);
    let mut ds = net.outgoing(a, |c, o| c.send(&big, o));
    let mut x = 0x2545_f491_u64;
    for i in (1..ds.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ds.swap(i, (x % (i as u64 + 1)) as usize);
    }
    net.deliver_all(net.addr(a), ds);
    assert_eq!(net.messages(b), [(net.id(a), big)]);
}

#[test]
fn each_broken_fragment_rule_drops_its_message() {
    let (mut net, a, b) = two();
    let aa = net.addr(a);
    // Each broken rule drops its message, frees its bytes and is counted.
    let header = |d: &[u8], at: usize| u16::from_be_bytes([d[at], d[at + 1]]);
    let tamper = |net: &mut Net, rule: DropReason, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut ds = net.outgoing(a, |c, o| c.send(&body(5000, 3), o));
        edit(&mut ds[1]);
        net.deliver_all(aa, ds[..2].to_vec());
        assert_eq!(reassembly(net.stats(), rule), 1, "{rule}");
        assert_eq!(net.relay.reassembly_bytes(), 0, "{rule}");
    };
    tamper(&mut net, DropReason::Duplicate, &|d| {
        d[8..10].copy_from_slice(&0u16.to_be_bytes())
    });
    tamper(&mut net, DropReason::IndexOutOfRange, &|d| {
        let count = header(d, 10);
        d[8..10].copy_from_slice(&count.to_be_bytes());
    });
    tamper(&mut net, DropReason::CountMismatch, &|d| {
        let count = header(d, 10);
        d[10..12].copy_from_slice(&(count + 1).to_be_bytes());
    });
    // Over the 32 KiB reassembly limit: dropped as soon as it cannot fit.
    let ds = net.outgoing(a, |c, o| c.send(&body(40 * 1024, 4), o));
    for d in ds {
        net.deliver(aa, &d);
        if reassembly(net.stats(), DropReason::TooLarge) == 1 {
            break;
        }
    }
    assert_eq!(reassembly(net.stats(), DropReason::TooLarge), 1);
    assert_eq!(net.relay.reassembly_bytes(), 0);
    assert!(net.messages(b).is_empty());
    // The next message still works.
    let big = body(20 * 1024, 6);
    net.send(a, &big);
    assert_eq!(net.messages(b), [(net.id(a), big)]);
    let s = net.stats();
    let all: u64 = DropReason::ALL.iter().map(|&r| reassembly(s, r)).sum();
    assert_eq!((all, s.dropped_total()), (4, 4));
}

#[test]
fn a_fragment_inside_a_reassembled_message_is_refused() {
    let (mut net, a, b) = two();
    // Refused, not recursed into.
    let inner_frag = net.outgoing(a, |c, o| c.send(&body(3000, 5), o)).remove(0);
    let mut nested = Vec::new();
    fragment::split(&inner_frag, 300, 77, |d| nested.push(d.to_vec()));
    net.deliver_all(net.addr(a), nested);
    assert_eq!(net.stats().dropped(Drop::NestedFragment), 1);
    assert_eq!(net.relay.reassembly_bytes(), 0);
    assert!(net.messages(b).is_empty());
}

#[test]
fn a_partial_message_expires_when_poll_timeout_says() {
    let (mut net, a, b) = two();
    let ds = net.outgoing(a, |c, o| c.send(&body(5000, 7), o));
    net.deliver_all(net.addr(a), ds[..3].to_vec());
    assert!(net.relay.reassembly_bytes() > 0);
    assert_eq!(net.relay.clients(net.now)[0].partials, 1);
    let age = ReassemblyLimits::default().max_age;
    assert!(net.relay.poll_timeout().is_some_and(|t| t <= net.now + age));
    net.advance(age - MS);
    assert_eq!(reassembly(net.stats(), DropReason::Expired), 0);
    net.advance(MS);
    assert_eq!(reassembly(net.stats(), DropReason::Expired), 1);
    assert_eq!(net.relay.reassembly_bytes(), 0);
    assert!(net.messages(b).is_empty());
}
