//! The handshake: HELLO, cookies, SESSION_KEY checks and their order,
//! registration and re-keying.

use super::*;

#[test]
fn handshake_welcome_and_peer_joined() {
    let mut net = Net::new(Config::default());
    let a = net.add(ClientOptions::default());
    let hello = net.peers[a].core.hello();
    assert_eq!(hello.len(), MIN_HELLO_LEN);
    net.deliver(net.addr(a), &hello);

    let (dst, reply) = &net.sent[0];
    assert_eq!(*dst, net.addr(a));
    assert!(reply.len() <= 3 * hello.len(), "{} bytes", reply.len());
    assert_eq!(
        kinds(reply),
        [outer::SERVER_KEY, outer::COOKIE, outer::VERSIONS]
    );
    assert_eq!(parse(reply)[1].1.len(), 16);
    // v2 §2: VERSIONS rides in the same answer, within the 3× limit of
    // the smallest HELLO.
    assert_eq!(parse(reply)[2].1, [1, 2]);
    assert!(reply.len() <= 3 * MIN_HELLO_LEN, "{} bytes", reply.len());
    assert_eq!(kinds(&net.sent[1].1), [outer::WELCOME]);
    assert_eq!(
        net.take_events(a),
        [
            ClientEvent::ServerKey {
                fingerprint: net.relay.fingerprint()
            },
            ClientEvent::Welcome {
                id: "127.0.0.1:40001".into()
            },
        ]
    );
    assert_eq!(net.peers[a].core.id(), Some("127.0.0.1:40001"));
    assert_eq!(
        net.events,
        [Event::Joined {
            id: ClientId::new(addr(40001)),
            rekeyed: false
        }]
    );

    let b = net.joined(ClientOptions::default());
    assert_eq!(net.take_events(a), [ClientEvent::PeerJoined(net.id(b))]);
    let c = net.joined(ClientOptions::default());
    for i in [a, b] {
        assert_eq!(net.take_events(i), [ClientEvent::PeerJoined(net.id(c))]);
    }
    let s = net.stats();
    assert_eq!((s.hellos_answered, s.handshakes_completed), (3, 3));
    assert_eq!(s.dropped_total(), 0);
    assert_eq!(net.relay.client_count(), 3);
}

#[test]
fn short_or_wrong_version_hello_ignored() {
    let mut net = Net::new(Config::default());
    let src = addr(50001);
    let hello = |version: u8, len: usize| {
        let mut v = vec![0; len - tlv::HEADER_LEN];
        v[0] = version;
        plain(&[(outer::HELLO, &v)])
    };
    net.deliver(src, &hello(1, 255));
    assert!(net.sent.is_empty());
    assert_eq!(net.stats().dropped(Drop::ShortHello), 1);
    net.deliver(src, &hello(1, 4 + 1));
    net.deliver(src, &hello(2, 256));
    net.deliver(src, &hello(0, 256));
    // Long enough only thanks to padding outside the HELLO, which has no version byte.
    net.deliver(src, &plain(&[(outer::HELLO, b""), (0x7777, &[0; 248])]));
    assert!(net.sent.is_empty());
    let s = net.stats();
    let ignored = (s.dropped(Drop::ShortHello), s.dropped(Drop::BadVersion));
    assert_eq!((ignored, s.hellos_answered), ((2, 3), 0));
    assert_eq!(s.dropped(Drop::UnknownType), 1);

    net.deliver(src, &hello(1, 256));
    assert_eq!(net.sent.len(), 1);
    assert!(net.sent[0].1.len() <= 3 * 256);
    assert_eq!(net.stats().hellos_answered, 1);
}

#[test]
fn bad_cookies_are_refused_before_any_rsa() {
    // One RSA decryption in the budget: the bad cookies must not spend it.
    let mut net = Net::new(Config {
        rsa_rate: 1,
        reject_rate: 100,
        ..Config::default()
    });
    let (m1, m2) = (addr(50001), addr(50002));
    let (der, cookie) = net.hello_from(m1);
    let (_, cookie2) = net.hello_from(m2);
    let key = Fernet::generate_key();
    let wrong = {
        let mut c = cookie.clone();
        c[0] ^= 1;
        c
    };
    for c in [
        Some(&wrong[..]),
        None,
        Some(&cookie[..15]),
        Some(&cookie2[..]),
    ] {
        net.deliver(m1, &session_key(&der, c, key.as_bytes()));
        assert_eq!(net.take_stray(m1), [reject(RejectReason::BadCookie)]);
    }
    // A garbage ciphertext with a bad cookie is refused for the cookie, not the RSA.
    net.deliver(m1, &plain(&[(outer::SESSION_KEY, &[7; 256])]));
    assert_eq!(net.take_stray(m1), [reject(RejectReason::BadCookie)]);
    let s = net.stats();
    assert_eq!(s.dropped(Drop::BadCookie), 5);
    assert_eq!(s.dropped_total(), 5);
    assert_eq!(net.relay.client_count(), 0);
    // The one decryption is still there.
    net.deliver(m1, &session_key(&der, Some(&cookie), key.as_bytes()));
    assert_eq!(kinds(&net.take_stray(m1)[0]), [outer::WELCOME]);
}

#[test]
fn the_rsa_budget_is_shared_by_all_sources() {
    let mut net = Net::new(Config {
        rsa_rate: 1,
        ..Config::default()
    });
    // On two hosts: one host's share of the budget would stop m2 first.
    let other = hosts_apart(&net, &[[127, 0, 0, 1]], 1)[0];
    let (m1, m2) = (addr(50001), at(other, 50002));
    let (der, cookie) = net.hello_from(m1);
    let (_, cookie2) = net.hello_from(m2);
    let key = Fernet::generate_key();
    net.deliver(m1, &session_key(&der, Some(&cookie), key.as_bytes()));
    assert_eq!(kinds(&net.take_stray(m1)[0]), [outer::WELCOME]);
    net.deliver(m2, &session_key(&der, Some(&cookie2), key.as_bytes()));
    assert!(net.take_stray(m2).is_empty(), "silence");
    assert_eq!(net.stats().dropped(Drop::RsaBudget), 1);
    // A second later it has refilled.
    net.advance(SEC);
    net.deliver(m2, &session_key(&der, Some(&cookie2), key.as_bytes()));
    assert_eq!(kinds(&net.take_stray(m2)[0]), [outer::WELCOME]);
}

#[test]
fn a_cookie_works_for_60_to_120_seconds() {
    let mut net = Net::new(Config::default());
    // Issued at t=0, a cookie works at 60 s and is stale after 120 s.
    let (m3, m4) = (addr(50003), addr(50004));
    let (der, c3) = net.hello_from(m3);
    let (_, c4) = net.hello_from(m4);
    net.advance(60 * SEC);
    let k4 = Fernet::generate_key();
    net.deliver(m4, &session_key(&der, Some(&c4), k4.as_bytes()));
    assert_eq!(kinds(&net.take_stray(m4)[0]), [outer::WELCOME]);
    net.advance(61 * SEC);
    let k3 = Fernet::generate_key();
    net.deliver(m3, &session_key(&der, Some(&c3), k3.as_bytes()));
    assert_eq!(net.take_stray(m3), [reject(RejectReason::BadCookie)]);
    let s = net.stats();
    assert_eq!(s.dropped(Drop::BadCookie), 1);
    assert_eq!((s.handshakes_completed, dropped(s, &AUTH_FAILED)), (1, 0));
}

#[test]
fn a_wrong_or_missing_access_token_gets_reject_2() {
    let mut net = Net::new(Config {
        access_token: Some(b"sesame".to_vec()),
        ..Config::default()
    });
    let with = |t: Option<&[u8]>| ClientOptions {
        access_token: t.map(<[u8]>::to_vec),
        ..ClientOptions::default()
    };
    let a = net.joined(with(Some(&b"sesame"[..])));
    for t in [
        Some(&b"sesamE"[..]),
        None,
        Some(&b"sesame!"[..]),
        Some(&b"sesam"[..]),
    ] {
        let i = net.add(with(t));
        net.connect(i);
        assert!(!net.peers[i].core.is_established());
        assert_eq!(
            net.take_events(i).last(),
            Some(&ClientEvent::Rejected(RejectReason::AuthFailed)),
            "{t:?}"
        );
        assert_eq!(net.sent.last().unwrap().1, reject(RejectReason::AuthFailed));
    }
    assert!(net.take_events(a).is_empty(), "nobody else joined");
    let s = net.stats();
    assert_eq!(s.dropped(Drop::BadAccessToken), 4);
    assert_eq!((s.handshakes_completed, net.relay.client_count()), (1, 1));
    net.manual(addr(50002), b"sesame");
}

#[test]
fn a_session_key_without_a_fernet_key_or_not_decryptable_gets_reject_2() {
    let mut net = Net::new(Config::default());
    let m = addr(50001);
    let (der, cookie) = net.hello_from(m);
    let mut not_a_key = vec![b'!'; 44];
    not_a_key.extend_from_slice(b"sesame");
    net.deliver(m, &session_key(&der, Some(&cookie), &not_a_key));
    assert_eq!(net.take_stray(m), [reject(RejectReason::AuthFailed)]);
    let mut d = plain(&[(outer::COOKIE, &cookie)]);
    d.extend(plain(&[(outer::SESSION_KEY, &[7; 256])]));
    net.deliver(m, &d);
    assert_eq!(net.take_stray(m), [reject(RejectReason::AuthFailed)]);
    let s = net.stats();
    assert_eq!(s.dropped(Drop::BadFernetKey), 1);
    assert_eq!(s.dropped(Drop::RsaDecrypt), 1);
    assert_eq!(net.relay.client_count(), 0);
}

#[test]
fn server_full() {
    let mut net = Net::new(Config {
        max_clients: 2,
        ..Config::default()
    });
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.take_events(a);
    let c = net.add(ClientOptions::default());
    net.connect(c);
    assert_eq!(
        net.take_events(c).last(),
        Some(&ClientEvent::Rejected(RejectReason::ServerFull))
    );
    assert_eq!(net.sent.last().unwrap().1, [0, 9, 0, 1, 3]);
    assert_eq!(net.stats().dropped(Drop::ServerFull), 1);
    assert_eq!(net.relay.client_count(), 2);
    // A registered client may still re-handshake while the table is full.
    net.connect(a);
    assert!(net.peers[a].core.is_established());
    // Once someone leaves, there is room.
    let bye = net.outgoing(b, |c, o| c.bye(o));
    net.deliver_all(net.addr(b), bye);
    net.connect(c);
    assert!(net.peers[c].core.is_established());
    let s = net.stats();
    assert_eq!(
        (s.dropped(Drop::ServerFull), s.handshakes_completed),
        (1, 4)
    );
}

#[test]
fn handshake_rate_limit_per_source() {
    let mut net = Net::new(Config {
        handshake_rate: 1,
        handshake_burst: 2,
        ..Config::default()
    });
    // Two handshakes from one source (a join and a re-key) use the burst up.
    let a = net.joined(ClientOptions::default());
    net.connect(a);
    assert!(net.peers[a].core.is_established());
    net.take_events(a);
    let mark = net.sent.len();
    net.connect(a);
    assert!(!net.peers[a].core.is_established());
    assert!(matches!(
        &net.take_events(a)[..],
        [ClientEvent::ServerKey { .. }]
    ));
    assert_eq!(
        net.sent.len(),
        mark + 1,
        "SERVER_KEY only: no WELCOME, no REJECT"
    );
    assert_eq!(net.stats().dropped(Drop::RateLimitedAddr), 1);
    // Other sources have their own buckets (the project keys them by ip:port).
    net.joined(ClientOptions::default());
    net.add_at("127.0.0.2:40001".parse().unwrap(), ClientOptions::default());
    net.connect(2);
    assert!(net.peers[2].core.is_established());

    net.advance(SEC);
    net.connect(a);
    assert!(net.peers[a].core.is_established());
    let s = net.stats();
    assert_eq!(
        (s.dropped(Drop::RateLimitedAddr), s.handshakes_completed),
        (1, 5)
    );
}

#[test]
fn a_re_handshake_replaces_the_key_without_a_second_peer_joined() {
    let mut net = Net::new(Config::default());
    let a = net.joined(ClientOptions::default());
    let b = net.joined(ClientOptions::default());
    net.send(a, b"one");
    net.send(a, b"two");
    let stale = net.outgoing(a, |c, o| c.send(b"stale", o));
    net.take_events(a);
    net.take_events(b);
    net.events.clear();

    net.connect(a);
    assert!(matches!(
        &net.take_events(a)[..],
        [ClientEvent::ServerKey { .. }, ClientEvent::Welcome { id }] if *id == net.id(a)
    ));
    assert_eq!(
        net.events,
        [Event::Joined {
            id: net.cid(a),
            rekeyed: true
        }]
    );
    assert!(net.take_events(b).is_empty(), "no second PEER_JOINED");
    assert_eq!(net.relay.client_count(), 2);
    // The old key is gone; the new session starts again at SEQ 1.
    net.deliver_all(net.addr(a), stale);
    assert!(net.messages(b).is_empty());
    assert_eq!(net.stats().dropped(Drop::BadToken), 1);
    net.send(a, b"fresh");
    assert_eq!(net.messages(b), [(net.id(a), b"fresh".to_vec())]);
}

#[test]
fn a_re_handshake_restarts_both_seq_spaces() {
    let mut net = Net::new(Config::default());
    let b = net.joined(ClientOptions::default());
    // By hand, to see the SEQs: WELCOME has SEQ 1 and the next token to us
    // SEQ 2.
    let mut m = net.manual(addr(50001), b"");
    for _ in 0..3 {
        let d = m.data(b"old key");
        net.deliver(m.addr, &d);
    }
    let old = m.data(b"old key, late");
    let mut m2 = net.manual(m.addr, b"");
    net.deliver(m.addr, &old);
    assert_eq!(net.stats().dropped(Drop::BadToken), 1);
    net.deliver(m2.addr, &m2.data(b"new key"));
    net.send(b, b"to m");
    let to_m = net.take_stray(m.addr);
    assert_eq!(to_m.len(), 1);
    let p = m2.open(&to_m[0], outer::DATA);
    let msg = Inner::parse(&p).unwrap();
    assert_eq!((msg.seq, msg.body), (2, Some(&b"to m"[..])));
    let s = net.stats();
    let replays = dropped(s, &[Drop::Replay, Drop::ReplayedSessionKey]);
    assert_eq!((replays, s.handshakes_completed), (0, 3));
    let from_m: Vec<_> = net.messages(b).into_iter().map(|(_, m)| m).collect();
    assert_eq!(from_m.last().unwrap(), b"new key");
    assert_eq!(from_m.len(), 4);
}
