//! One datagram, one answer: however many TLVs a datagram (or the payload
//! reassembled from it) holds, at most one SERVER_KEY+COOKIE, at most one
//! REJECT, and a bounded number of items tried.

use super::*;

#[test]
fn many_hellos_in_one_datagram_get_one_answer() {
    let mut net = Net::new(Config::default());
    for (port, n) in (50001..).zip([1, 2, 51, 13_101]) {
        let src = addr(port);
        let d = hellos(n);
        net.deliver(src, &d);
        let answers = net.take_stray(src);
        assert_eq!(answers.len(), 1, "{n} HELLOs");
        assert_eq!(
            kinds(&answers[0]),
            [outer::SERVER_KEY, outer::COOKIE, outer::VERSIONS]
        );
        assert!(answers[0].len() <= 3 * d.len(), "{n} HELLOs");
    }
    assert_eq!(hellos(51).len(), 256);
    let s = net.stats();
    assert_eq!(s.hellos_answered, 4);
    assert_eq!(s.dropped(Drop::Repeated), 1 + 50 + 13_100);
}

#[test]
fn hello_and_session_key_mixes_get_one_answer_of_each_kind() {
    let mut net = Net::new(Config::default());
    // HELLO + a valid COOKIE + SESSION_KEY, in either order: one
    // SERVER_KEY+COOKIE and one WELCOME.
    for (port, session_key_first) in [(50001, false), (50002, true)] {
        let src = addr(port);
        let (der, cookie) = net.hello_from(src);
        let key = Fernet::generate_key();
        let sk = session_key(&der, Some(&cookie), key.as_bytes());
        let mut d = if session_key_first {
            sk.clone()
        } else {
            Vec::new()
        };
        d.extend_from_slice(&hellos(1));
        if !session_key_first {
            d.extend_from_slice(&sk);
        }
        net.deliver(src, &d);
        let answers: Vec<Vec<u16>> = net.take_stray(src).iter().map(|a| kinds(a)).collect();
        assert_eq!(
            answers,
            [
                vec![outer::SERVER_KEY, outer::COOKIE, outer::VERSIONS],
                vec![outer::WELCOME]
            ]
        );
    }
    // Thousands of cookieless SESSION_KEYs and HELLOs, interleaved: one
    // SERVER_KEY+COOKIE and one REJECT 4, whatever the order.
    let src = addr(50003);
    let mut d = Vec::new();
    for _ in 0..2000 {
        tlv::put(&mut d, outer::SESSION_KEY, &[]);
        d.extend_from_slice(&hellos(1));
    }
    net.deliver(src, &d);
    let answers = net.take_stray(src);
    assert_eq!(answers.len(), 2);
    assert_eq!(
        kinds(&answers[0]),
        [outer::SERVER_KEY, outer::COOKIE, outer::VERSIONS]
    );
    assert_eq!(answers[1], reject(RejectReason::BadCookie));
    // Two good SESSION_KEYs in one datagram: only the first is tried.
    let src = addr(50004);
    let (der, cookie) = net.hello_from(src);
    let mut d = session_key(&der, Some(&cookie), Fernet::generate_key().as_bytes());
    d.extend_from_slice(&session_key(&der, None, Fernet::generate_key().as_bytes()));
    let before = net.stats().dropped(Drop::RsaDecrypt);
    net.deliver(src, &d);
    assert_eq!(net.take_stray(src).len(), 1, "one WELCOME");
    let s = net.stats();
    assert_eq!(
        (s.handshakes_completed, s.dropped(Drop::RsaDecrypt)),
        (3, before)
    );
}

#[test]
fn thousands_of_tiny_tokens_from_a_member_cost_a_few_decryptions() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    let aa = net.addr(a);
    for kind in [outer::DATA, outer::KEEPALIVE, outer::BYE] {
        let d = many(kind, &[]);
        assert_eq!(d.len(), 65_504);
        net.deliver(aa, &d);
    }
    let s = net.stats();
    let items = outer::MAX_ITEMS as u64;
    assert_eq!(s.dropped(Drop::BadToken), 3 * items);
    assert_eq!(s.dropped(Drop::TooManyItems), 3 * (16_376 - items));
    assert!(net.stray.is_empty() && net.messages(b).is_empty());
    // The session is untouched: a real message first, junk after it.
    let mut d = net.outgoing(a, |c, o| c.send(b"first", o)).remove(0);
    d.extend_from_slice(&many(outer::DATA, &[])[..60_000]);
    net.deliver(aa, &d);
    assert_eq!(net.messages(b), [(net.id(a), b"first".to_vec())]);
    // Reassembled from fragments, the same: one REJECT for it all.
    let payload = many(outer::SESSION_KEY, &[]);
    let mut frags = Vec::new();
    fragment::split(&payload, 1200, 7, |f| frags.push(f.to_vec()));
    let mark = net.sent.len();
    net.deliver_all(aa, frags);
    assert_eq!(net.stats().reassembled, 1);
    let to_a: Vec<_> = net.sent[mark..].iter().filter(|(d, _)| *d == aa).collect();
    assert_eq!(to_a.len(), 1);
    assert_eq!(to_a[0].1, reject(RejectReason::BadCookie));
    assert_eq!(net.relay.client_count(), 2);
}

#[test]
fn a_hello_in_a_reassembled_payload_shares_its_datagram_s_one_answer() {
    let mut net = Net::new(Config::default());
    let aa = net.manual(addr(50001), b"").addr;
    // HELLO + a one-fragment payload holding another HELLO.
    let mut frag = Vec::new();
    fragment::split(&hellos(1), 1200, 9, |f| frag = f.to_vec());
    let mut d = hellos(1);
    d.extend_from_slice(&frag);
    net.deliver(aa, &d);
    let answers = net.take_stray(aa);
    assert_eq!(answers.len(), 1);
    assert_eq!(
        kinds(&answers[0]),
        [outer::SERVER_KEY, outer::COOKIE, outer::VERSIONS]
    );
    assert_eq!(net.stats().dropped(Drop::HelloRepeated), 1);
    // A fragment nested in it is refused, whatever else the payload holds.
    let mut inner = hellos(1);
    inner.extend_from_slice(&frag);
    let mut nested = Vec::new();
    fragment::split(&inner, 1200, 10, |f| nested = f.to_vec());
    net.deliver(aa, &nested);
    assert_eq!(net.take_stray(aa).len(), 1, "its own HELLO is answered");
    assert_eq!(net.stats().dropped(Drop::NestedFragment), 1);
}
