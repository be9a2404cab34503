//! Replays: SEQ windows, reflected tokens, and SESSION_KEYs that were
//! accepted before (resent WELCOMEs, the 24-hour memory).

use super::*;

#[test]
fn a_seq_is_accepted_once_in_any_order_within_the_window() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    let d: Vec<Vec<u8>> = (1..=3)
        .map(|n| net.outgoing(a, |c, o| c.send(format!("{n}").as_bytes(), o))[0].clone())
        .collect();
    net.deliver(net.addr(a), &d[0]);
    net.deliver(net.addr(a), &d[0]);
    assert_eq!(net.stats().dropped(Drop::Replay), 1);
    net.deliver(net.addr(a), &d[2]);
    net.deliver(net.addr(a), &d[1]);
    net.deliver(net.addr(a), &d[1]);
    let got: Vec<Vec<u8>> = net.messages(b).into_iter().map(|(_, m)| m).collect();
    assert_eq!(got, [b"1", b"3", b"2"]);
    let s = net.stats();
    assert_eq!(
        (s.dropped(Drop::Replay), s.messages_relayed, s.deliveries),
        (2, 3, 3)
    );
}

#[test]
fn a_seq_older_than_the_window_or_zero_is_refused() {
    let mut net = Net::new(Config::default());
    let b = net.joined(ClientOptions::default());
    // Older than the window (1024 here, ≥ 64 per the spec), and SEQ 0.
    let m = net.manual(addr(50001), b"");
    net.take_events(b);
    net.deliver(m.addr, &m.data_seq(5000, b"new"));
    net.deliver(m.addr, &m.data_seq(5000 - 1024, b"too old"));
    net.deliver(m.addr, &m.data_seq(0, b"zero"));
    net.deliver(m.addr, &m.data_seq(5000 - 1023, b"oldest in window"));
    let got: Vec<Vec<u8>> = net.messages(b).into_iter().map(|(_, m)| m).collect();
    assert_eq!(got, [&b"new"[..], b"oldest in window"]);
    assert_eq!(net.stats().dropped(Drop::Replay), 2);
}

#[test]
fn a_repeated_session_key_gets_the_same_welcome_at_most_once_a_second() {
    let mut net = Net::new(Config::default());
    let b = net.joined(ClientOptions::default());
    let src = addr(50002);
    let (der, cookie) = net.hello_from(src);
    let key = Fernet::generate_key();
    let sk = session_key(&der, Some(&cookie), key.as_bytes());
    net.deliver(src, &sk);
    let welcome = net.take_stray(src);
    assert_eq!(welcome.len(), 1, "WELCOME");
    let m = Manual {
        addr: src,
        fernet: Fernet::new(&key).unwrap(),
        seq: 0,
    };
    let old = m.data_seq(1, b"once");
    net.deliver(src, &old);
    net.take_events(b);

    // The same COOKIE+SESSION_KEY again from its address (a lost WELCOME,
    // or a replay): never a re-key, which would restart the SEQ window and
    // let `old` pass again. Within a second of the WELCOME, nothing at all.
    let before = net.stats().handshakes_completed;
    net.deliver(src, &sk);
    assert!(
        net.take_stray(src).is_empty(),
        "at most one WELCOME a second"
    );
    // A second later, the same WELCOME again, byte for byte.
    net.advance(SEC - MS);
    net.deliver(src, &sk);
    assert!(net.take_stray(src).is_empty());
    net.advance(MS);
    net.deliver(src, &sk);
    assert_eq!(net.take_stray(src), welcome);
    net.deliver(src, &sk);
    assert!(net.take_stray(src).is_empty());
    assert_eq!(net.stats().handshakes_completed, before);
    net.deliver(src, &old);
    assert!(net.messages(b).is_empty(), "old DATA is still a replay");
    let s = net.stats();
    assert_eq!(s.welcomes_resent, 1);
    assert_eq!(
        (
            s.dropped(Drop::WelcomeResendLimited),
            s.dropped(Drop::Replay)
        ),
        (3, 1)
    );
    // The session goes on where it was: SEQ 2 is fresh.
    net.deliver(src, &m.data_seq(2, b"twice"));
    assert_eq!(net.messages(b), [(src.to_string(), b"twice".to_vec())]);
    // From another address, under a cookie valid there: silence.
    let elsewhere = addr(50003);
    let (_, cookie2) = net.hello_from(elsewhere);
    let mut d = plain(&[(outer::COOKIE, &cookie2)]);
    d.extend_from_slice(&sk[sk.len() - 4 - 256..]);
    net.deliver(elsewhere, &d);
    assert!(net.take_stray(elsewhere).is_empty());
    assert_eq!(net.stats().dropped(Drop::ReplayedSessionKey), 1);
}

#[test]
fn a_captured_session_key_stays_refused_for_a_day() {
    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    let mut net = Net::new(Config::default());
    let src = addr(50002);
    let (der, cookie) = net.hello_from(src);
    let key = Fernet::generate_key();
    let captured = session_key(&der, Some(&cookie), key.as_bytes());
    net.deliver(src, &captured);
    assert_eq!(kinds(&net.take_stray(src)[0]), [outer::WELCOME]);
    let ciphertext = parse(&captured)[1].1.clone();
    // The captured ciphertext under a fresh cookie of the sender's address.
    let replay = |net: &mut Net, from: SocketAddr| {
        let (_, cookie) = net.hello_from(from);
        let d = plain(&[(outer::COOKIE, &cookie), (outer::SESSION_KEY, &ciphertext)]);
        net.deliver(from, &d);
        net.take_stray(from)
    };
    // Five minutes on (past what the relay used to remember), from another
    // address; and from its own, now that its session timed out.
    net.advance(5 * MIN);
    assert_eq!(net.relay.client_count(), 0);
    assert!(replay(&mut net, addr(50003)).is_empty());
    assert!(replay(&mut net, src).is_empty());
    // 23 hours on, still refused.
    net.advance(23 * HOUR);
    assert!(replay(&mut net, addr(50004)).is_empty());
    let s = net.stats();
    assert_eq!(
        (s.dropped(Drop::ReplayedSessionKey), s.handshakes_completed),
        (3, 1)
    );
    assert_eq!(net.relay.client_count(), 0);
    // A day after it was accepted it is forgotten: the residual v1 risk
    // PROTOCOL.md states.
    net.advance(HOUR);
    let answer = replay(&mut net, addr(50005));
    assert_eq!(kinds(&answer[0]), [outer::WELCOME]);
}

#[test]
fn a_relayed_token_sent_back_by_its_receiver_is_refused() {
    let mut net = Net::new(Config::default());
    let b = net.joined(ClientOptions::default());
    let m = net.manual(addr(50002), b"");
    net.take_events(b);
    // A relayed token sent back from its receiver's address is refused: it
    // carries SENDER_ID, which only the server sends.
    let peer_b = net.addr(b);
    net.deliver(m.addr, &m.data_seq(1, b"to b"));
    let relayed = net
        .sent
        .iter()
        .rev()
        .find(|(dst, _)| *dst == peer_b)
        .unwrap()
        .1
        .clone();
    net.take_stray(m.addr);
    net.deliver(peer_b, &relayed);
    assert_eq!(net.stats().dropped(Drop::Reflected), 1);
    assert!(
        net.take_stray(m.addr).is_empty(),
        "not relayed as b's message"
    );
}
