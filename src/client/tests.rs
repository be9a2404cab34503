//! Unit tests of [`ClientCore`]'s rules for untrusted answers (REJECT as a
//! hint, the background re-handshake, refusals, the pin), against the real
//! relay core on a fake clock. Datagrams are carried by hand, so each test
//! decides what is delivered, dropped, forged or reordered.

use std::sync::OnceLock;
use std::time::Instant;

use crate::client::{ClientCore, ClientError, ClientEvent, ClientOptions};
use crate::relay::config::Config;
use crate::session::key::ServerKey;
use crate::sim::net::{addr, server_key, Net, UNIX_START};
use crate::wire::outer::{COOKIE, FRAGMENT, SERVER_KEY};
use crate::wire::tlv::put;
use crate::wire::{reject_datagram, RejectReason};

/// The relay's key (the shared one of [`crate::sim::net`]) and a rogue's;
/// generating one takes a while.
fn keys() -> (&'static ServerKey, &'static ServerKey) {
    static ROGUE: OnceLock<ServerKey> = OnceLock::new();
    let rogue = ROGUE.get_or_init(|| ServerKey::generate().expect("key generation"));
    (server_key(), rogue)
}

/// The shared simulated network with two clients: `a` (peer 0, under
/// test, with `opts`) and `b` (peer 1). Datagrams are carried by hand.
struct Pair {
    net: Net,
}

const A: u16 = 40001;
const B: u16 = 40002;

impl Pair {
    fn new(opts: ClientOptions) -> Pair {
        // Unicast only: this pair exchanges no downlink datagrams.
        let mut net = Net::seeded(
            Config {
                group_mode: false,
                ..Config::default()
            },
            [1; 32],
        );
        let now = net.now;
        net.add_core(addr(A), ClientCore::new(opts, now, UNIX_START, [2; 32]));
        net.add_core(
            addr(B),
            ClientCore::new(ClientOptions::default(), now, UNIX_START, [3; 32]),
        );
        let mut p = Pair { net };
        for port in [A, B] {
            let hello = p.core(port).hello();
            let events = p.exchange(port, vec![hello]);
            assert!(
                matches!(events.last(), Some(ClientEvent::Welcome { .. })),
                "{events:?}"
            );
        }
        p
    }

    /// The client under test.
    fn a(&mut self) -> &mut ClientCore {
        &mut self.net.peers[0].core
    }

    /// The other client.
    fn b(&mut self) -> &mut ClientCore {
        &mut self.net.peers[1].core
    }

    fn core(&mut self, port: u16) -> &mut ClientCore {
        if port == A {
            self.a()
        } else {
            self.b()
        }
    }

    /// The relay's answers to `ds` from `port`, undelivered.
    fn relay_answers(&mut self, port: u16, ds: Vec<Vec<u8>>) -> Vec<(u16, Vec<u8>)> {
        let mut answers = Vec::new();
        for d in ds {
            let net = &mut self.net;
            net.relay
                .handle_datagram(net.now, addr(port), &d, &mut net.tx);
            answers.extend(net.tx.iter().map(|(dst, d)| (dst.port(), d.to_vec())));
            net.tx.clear();
        }
        answers
    }

    /// Delivers one datagram to a client; returns its events and replies.
    fn deliver(&mut self, port: u16, d: &[u8]) -> (Vec<ClientEvent>, Vec<Vec<u8>>) {
        let (mut events, mut out) = (Vec::new(), Vec::new());
        let now = self.net.now;
        self.core(port)
            .handle_datagram(now, d, &mut out, &mut events)
            .expect("no pin in play");
        (events, out)
    }

    /// Routes `ds` from `port` until quiet; returns the events of `port`.
    fn exchange(&mut self, port: u16, ds: Vec<Vec<u8>>) -> Vec<ClientEvent> {
        let mut queue: Vec<(u16, Vec<u8>)> = ds.into_iter().map(|d| (port, d)).collect();
        let mut events = Vec::new();
        while !queue.is_empty() {
            let mut next = Vec::new();
            for (src, d) in queue {
                for (dst, answer) in self.relay_answers(src, vec![d]) {
                    let (e, out) = self.deliver(dst, &answer);
                    if dst == port {
                        events.extend(e);
                    }
                    next.extend(out.into_iter().map(|o| (dst, o)));
                }
            }
            queue = next;
        }
        events
    }

    /// `b` sends `body`; returns what `a` made of it.
    fn b_says(&mut self, body: &[u8]) -> Vec<ClientEvent> {
        let mut out = Vec::new();
        assert!(self.b().send(body, &mut out));
        let mut events = Vec::new();
        for (dst, d) in self.relay_answers(B, out) {
            assert_eq!(dst, A);
            events.extend(self.deliver(A, &d).0);
        }
        events
    }

    /// `a` sends `body`; true if `b` got it.
    fn a_says(&mut self, body: &[u8]) -> bool {
        let mut out = Vec::new();
        assert!(self.a().send(body, &mut out));
        let mut got = false;
        for (dst, d) in self.relay_answers(A, out) {
            if dst == B {
                got |= self.deliver(B, &d).0.iter().any(|e| is_message(e, body));
            }
        }
        got
    }
}

fn is_message(e: &ClientEvent, want: &[u8]) -> bool {
    matches!(e, ClientEvent::Message { body, .. } if body == want)
}

fn rogue_server_key(cookie_from: &[u8]) -> Vec<u8> {
    // The cookie of a real answer: only the key differs.
    let cookie = crate::wire::outer::Datagram::parse(cookie_from)
        .unwrap()
        .server_key
        .unwrap()
        .cookie
        .unwrap()
        .to_vec();
    let mut d = Vec::new();
    put(&mut d, SERVER_KEY, keys().1.public_der());
    put(&mut d, COOKIE, &cookie);
    d
}

#[test]
fn a_forged_reject_is_a_hint_and_the_session_keeps_working() {
    for reason in [RejectReason::UnknownSession, RejectReason::AuthFailed] {
        let mut p = Pair::new(ClientOptions::default());
        let (events, out) = p.deliver(A, &reject_datagram(reason));
        assert_eq!(events, [ClientEvent::Rejected(reason)]);
        assert!(out.is_empty() && p.a().is_established());
        assert_eq!(p.a().take_hint(), Some(reason));
        assert_eq!(p.a().take_hint(), None, "taken once");
        assert!(p.a_says(b"still here"), "{reason:?}: the session is intact");
    }
    // Not a hint: REJECT 3 or 4 while established, or anything before.
    let mut p = Pair::new(ClientOptions::default());
    for reason in [RejectReason::ServerFull, RejectReason::BadCookie] {
        p.deliver(A, &reject_datagram(reason));
    }
    assert_eq!(p.a().take_hint(), None);
    let mut fresh = ClientCore::new(
        ClientOptions::default(),
        Instant::now(),
        UNIX_START,
        [4; 32],
    );
    let (mut out, mut events) = (Vec::new(), Vec::new());
    fresh
        .handle_datagram(
            p.net.now,
            &reject_datagram(RejectReason::UnknownSession),
            &mut out,
            &mut events,
        )
        .unwrap();
    assert_eq!(fresh.take_hint(), None);
}

#[test]
fn the_background_handshake_keeps_the_old_session_until_welcomed() {
    let mut p = Pair::new(ClientOptions::default());
    let hello = p.a().rehandshake();
    assert!(p.a().is_rehandshaking() && p.a().is_established());
    let answer = p.relay_answers(A, vec![hello]).remove(0).1;
    // Messages still go out while the server key is on its way (one
    // coming in would prove the hint false, see the next test).
    assert!(p.a_says(b"mine"));
    // SERVER_KEY: the SESSION_KEY goes out, the old session still opens
    // what the server sent before it re-keyed.
    let mut in_flight = Vec::new();
    assert!(p.b().send(b"in flight", &mut in_flight));
    let in_flight = p.relay_answers(B, in_flight).remove(0).1;
    let (_, session_key) = p.deliver(A, &answer);
    assert_eq!(session_key.len(), 1);
    assert!(p.a().is_rehandshaking(), "completed only by its WELCOME");
    let welcome = p.relay_answers(A, session_key).remove(0).1;
    let (events, _) = p.deliver(A, &in_flight);
    assert!(
        events.iter().any(|e| is_message(e, b"in flight")),
        "{events:?}"
    );
    let (events, _) = p.deliver(A, &welcome);
    assert_eq!(
        events,
        [ClientEvent::Welcome {
            id: addr(A).to_string()
        }]
    );
    assert!(!p.a().is_rehandshaking());
    assert!(p.a_says(b"new key"));
    assert!(p.b_says(b"to a").iter().any(|e| is_message(e, b"to a")));
}

#[test]
fn an_authentic_token_before_the_session_key_proves_the_hint_false() {
    let mut p = Pair::new(ClientOptions::default());
    p.deliver(A, &reject_datagram(RejectReason::UnknownSession));
    let hello = p.a().rehandshake();
    let answer = p.relay_answers(A, vec![hello]).remove(0).1;
    p.b_says(b"proof");
    assert!(!p.a().is_rehandshaking(), "the server still knows us");
    let (events, out) = p.deliver(A, &answer);
    assert!(events.is_empty() && out.is_empty(), "late answer ignored");
    assert!(p.a_says(b"same key"));
}

#[test]
fn a_token_under_the_pending_key_completes_a_handshake_whose_welcome_was_lost() {
    let mut p = Pair::new(ClientOptions {
        group: false,
        ..ClientOptions::default()
    });
    let before = p.a().authentic();
    let hello = p.a().rehandshake();
    let answer = p.relay_answers(A, vec![hello]).remove(0).1;
    let (_, session_key) = p.deliver(A, &answer);
    let _lost_welcome = p.relay_answers(A, session_key);
    let events = p.b_says(b"under the new key");
    assert_eq!(
        events[0],
        ClientEvent::Welcome {
            id: addr(A).to_string()
        }
    );
    assert!(is_message(&events[1], b"under the new key"), "{events:?}");
    assert!(!p.a().is_rehandshaking() && p.a().authentic() > before);
    assert!(p.a_says(b"and back"));
}

/// A re-key that asked for GROUP needs its WELCOME (the group's key,
/// downlink and signer): a token under the pending key does not complete
/// it; the WELCOME, sent again for the repeated handshake, does.
#[test]
fn a_handshake_asking_for_group_waits_for_its_welcome() {
    let mut p = Pair::new(ClientOptions::default());
    let hello = p.a().rehandshake();
    let answer = p.relay_answers(A, vec![hello]).remove(0).1;
    let (_, session_key) = p.deliver(A, &answer);
    let welcome = p.relay_answers(A, session_key);
    let dropped = p.a().dropped;
    let events = p.b_says(b"under the new key");
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(p.a().dropped, dropped + 1);
    assert!(p.a().is_rehandshaking(), "still waiting for its WELCOME");
    let (_, w) = welcome.into_iter().next().expect("a WELCOME");
    let (events, _) = p.deliver(A, &w);
    assert!(
        matches!(&events[0], ClientEvent::Welcome { .. }),
        "{events:?}"
    );
    assert!(!p.a().is_rehandshaking());
    assert!(p.a_says(b"and back"));
}

#[test]
fn a_reject_answering_our_session_key_is_a_refusal_not_a_hint() {
    let mut p = Pair::new(ClientOptions::default());
    let hello = p.a().rehandshake();
    // Before the SESSION_KEY a REJECT 2 cannot answer it: a hint.
    p.deliver(A, &reject_datagram(RejectReason::AuthFailed));
    assert_eq!(p.a().take_hint(), Some(RejectReason::AuthFailed));
    assert_eq!(p.a().refusal(), None);
    let answer = p.relay_answers(A, vec![hello]).remove(0).1;
    let (_, session_key) = p.deliver(A, &answer);
    assert_eq!(session_key.len(), 1);
    for reason in [RejectReason::ServerFull, RejectReason::AuthFailed] {
        p.deliver(A, &reject_datagram(reason));
        assert_eq!(p.a().refusal(), Some(reason));
        assert_eq!(p.a().take_hint(), None);
    }
    // A REJECT 1 then is about the old session: a hint again.
    p.deliver(A, &reject_datagram(RejectReason::UnknownSession));
    assert_eq!(p.a().take_hint(), Some(RejectReason::UnknownSession));
    // The real WELCOME still wins over the forged refusal.
    let welcome = p.relay_answers(A, session_key).remove(0).1;
    let (events, _) = p.deliver(A, &welcome);
    assert!(matches!(events[..], [ClientEvent::Welcome { .. }]));
    assert_eq!(p.a().refusal(), None);
}

#[test]
fn a_pinned_client_ignores_other_keys_and_takes_the_pinned_one() {
    let pin = keys().0.fingerprint();
    let mut p = Pair::new(ClientOptions {
        pin: Some(pin.to_uppercase()),
        ..Default::default()
    });
    let mut c = ClientCore::new(
        ClientOptions {
            pin: Some(pin.clone()),
            ..Default::default()
        },
        Instant::now(),
        UNIX_START,
        [5; 32],
    );
    let hello = c.hello();
    let answer = p.relay_answers(A + 10, vec![hello]).remove(0).1;
    let (mut out, mut events) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let rogue = rogue_server_key(&answer);
        match c.handle_datagram(p.net.now, &rogue, &mut out, &mut events) {
            Err(ClientError::PinMismatch { expected, got }) => {
                assert_eq!((expected, got), (pin.clone(), keys().1.fingerprint()))
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(out.is_empty() && events.is_empty());
    assert_eq!(c.pin_mismatches(), 3);
    c.handle_datagram(p.net.now, &answer, &mut out, &mut events)
        .unwrap();
    assert_eq!(out.len(), 1, "the pinned key is answered");
    let welcome = p.relay_answers(A + 10, out).remove(0).1;
    c.handle_datagram(p.net.now, &welcome, &mut Vec::new(), &mut events)
        .unwrap();
    assert!(c.is_established(), "{events:?}");
}

#[test]
fn broken_datagrams_are_dropped_whole() {
    let mut p = Pair::new(ClientOptions::default());
    let dropped = p.a().dropped;
    // A REJECT 1 next to a fragment with count 0: nothing of it is acted on.
    let mut d = reject_datagram(RejectReason::UnknownSession).to_vec();
    put(&mut d, FRAGMENT, &[0, 0, 0, 1, 0, 0, 0, 0, 7]);
    let (events, _) = p.deliver(A, &d);
    assert!(events.is_empty());
    assert_eq!((p.a().dropped, p.a().take_hint()), (dropped + 1, None));
}
