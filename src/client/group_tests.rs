//! Protocol v2 from the client's side: the bound handshake, raw tokens and
//! group mode, against a fake v2 relay assembled from the library's own
//! pieces (the RSA key, [`Session`], [`GroupSender`], the wire codecs), on
//! a fake clock. The fake serves one client and does only what each test
//! asks, so every datagram's fate is the test's choice.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::client::group::{PROBES, PROBE_AFTER, PROBE_EVERY, SILENT_AFTER};
use crate::client::{ClientCore, ClientEvent, ClientOptions, SendError};
use crate::session::fernet;
use crate::session::group::{GroupSender, KEY_REQUEST_AFTER};
use crate::session::key::ServerKey;
use crate::session::{Direction, Session};
use crate::wire::fragment;
use crate::wire::handshake::{Handshake, CAP_GROUP, CAP_RAW};
use crate::wire::inner::{
    self, put_group_addr, put_group_key, CAPS, CLIENT_ID, GROUP_SIGNER, PEER_JOINED, PEER_LEFT,
    PROBE, REASON, SENDER_ID, SERVER_CLOSING,
};
use crate::wire::outer::{self, Datagram, Item, TokenKind};
use crate::wire::tlv::put;
use crate::wire::{Inner, LeaveReason};

/// Stamped on every fake token; nobody checks it.
const T: u64 = 1_700_000_000;
/// The cookie the fake hands out (the fake serves one address).
const COOKIE: [u8; 16] = [0xC0; 16];
const ME: &str = "127.0.0.1:40001";
const OTHER: &str = "127.0.0.1:40002";

fn downlink_addr() -> SocketAddr {
    "239.255.0.77:5009".parse().unwrap()
}

fn relay_src() -> SocketAddr {
    "127.0.0.1:5007".parse().unwrap()
}

/// The fake's key: the shared one of the simulated network.
fn rsa() -> &'static ServerKey {
    crate::sim::net::server_key()
}

/// What the fake learnt from the client's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    /// A v1 SESSION_KEY: the plaintext after the 44-byte key.
    V1 { token: Vec<u8> },
    /// A SESSION_KEY2.
    V2 {
        caps: u32,
        credential: Option<Vec<u8>>,
    },
}

/// A v2 relay serving one client, built from the library's pieces.
struct Fake {
    rng: StdRng,
    /// The VERSIONS value sent with SERVER_KEY (None: a v1 relay).
    versions: Option<Vec<u8>>,
    /// Capabilities this relay grants (of those asked).
    grants: u32,
    /// The GROUP_ADDR its WELCOME names.
    downlink: SocketAddr,
    group: GroupSender,
    session: Option<Session>,
    raw: bool,
    /// What the latest handshake asked for, and was granted.
    asked: Option<Asked>,
    granted: u32,
    handshakes: usize,
    key_requests: Vec<u32>,
    probes: usize,
    /// First byte of every token the client sent (0x80 raw, `g` text).
    token_forms: Vec<u8>,
    bodies: Vec<Vec<u8>>,
    /// False when several clients share this one-session relay: a token
    /// under an earlier client's key is then ignored, not a failure.
    strict: bool,
}

impl Fake {
    fn new(seed: u8) -> Fake {
        let mut rng = StdRng::from_seed([seed; 32]);
        let group = GroupSender::new(rng.random(), rng.random());
        Fake {
            rng,
            versions: Some(vec![1, 2]),
            grants: CAP_GROUP | CAP_RAW,
            downlink: downlink_addr(),
            group,
            session: None,
            raw: false,
            asked: None,
            granted: 0,
            handshakes: 0,
            key_requests: Vec::new(),
            probes: 0,
            token_forms: Vec::new(),
            bodies: Vec::new(),
            strict: true,
        }
    }

    fn v1() -> Fake {
        Fake {
            versions: None,
            ..Fake::new(9)
        }
    }

    /// The fake's answers to one datagram from the client.
    fn answer(&mut self, d: &[u8]) -> Vec<Vec<u8>> {
        let d = Datagram::parse(d).expect("the client sends well-formed datagrams");
        let mut answers = Vec::new();
        if d.hello.is_some() {
            let mut a = Vec::new();
            put(&mut a, outer::SERVER_KEY, rsa().public_der());
            put(&mut a, outer::COOKIE, &COOKIE);
            if let Some(v) = &self.versions {
                put(&mut a, outer::VERSIONS, v);
            }
            answers.push(a);
        }
        if let Some(k) = d.session_key {
            assert_eq!(k.cookie, Some(&COOKIE[..]));
            let plain = rsa().decrypt(&mut self.rng, k.value).expect("OAEP");
            let (key, token) = plain.split_at(44);
            self.asked = Some(Asked::V1 {
                token: token.to_vec(),
            });
            answers.push(self.welcome(std::str::from_utf8(key).unwrap(), 0));
        }
        if let Some(k) = d.session_key2 {
            let plain = rsa().decrypt(&mut self.rng, k.value).expect("OAEP");
            let h = Handshake::parse(&plain).expect("a valid handshake");
            assert_eq!(k.cookie, Some(&h.bind[..]), "BIND is the datagram's COOKIE");
            assert_eq!(h.bind, &COOKIE);
            self.asked = Some(Asked::V2 {
                caps: h.caps,
                credential: h.credential.map(<[u8]>::to_vec),
            });
            let key = std::str::from_utf8(h.fernet_key).unwrap().to_owned();
            answers.push(self.welcome(&key, h.caps & self.grants));
        }
        for item in d.items() {
            let Item::Token(kind, token) = item else {
                panic!("unexpected {item:?}")
            };
            self.token_forms.push(token[0]);
            let s = self.session.as_mut().expect("a session");
            let plain = match s.open(token, Direction::ToServer) {
                Ok(p) => p,
                Err(_) if !self.strict => continue,
                Err(e) => panic!("authentic: {e:?}"),
            };
            let m = Inner::parse(&plain).unwrap();
            match kind {
                TokenKind::Keepalive => {
                    self.key_requests.extend(m.key_request);
                    self.probes += usize::from(m.probe);
                }
                TokenKind::Data => self.bodies.push(m.body.unwrap().to_vec()),
                _ => {}
            }
        }
        answers
    }

    /// Registers the session and builds its WELCOME (raw when RAW is
    /// granted: the client must accept that too).
    fn welcome(&mut self, key: &str, granted: u32) -> Vec<u8> {
        self.handshakes += 1;
        let v2 = matches!(self.asked, Some(Asked::V2 { .. }));
        if v2 && granted & CAP_GROUP != 0 {
            self.group.ratchet(Instant::now()); // the join
        }
        let mut s = Session::new(key).expect("a valid key");
        let (epoch, group_key, signer, downlink) = (
            self.group.epoch(),
            self.group.key_text(),
            self.group.signer_public(),
            self.downlink,
        );
        let fill = |p: &mut Vec<u8>| {
            put(p, CLIENT_ID, ME.as_bytes());
            if v2 {
                put(p, CAPS, &granted.to_be_bytes());
            }
            if granted & CAP_GROUP != 0 {
                put_group_key(p, epoch, group_key.as_bytes());
                put_group_addr(p, downlink);
                put(p, GROUP_SIGNER, &signer);
            }
        };
        self.raw = granted & CAP_RAW != 0;
        self.granted = granted;
        let mut scratch = Vec::new();
        let iv = self.rng.random();
        let mut d = Vec::new();
        if self.raw {
            put(
                &mut d,
                outer::WELCOME,
                s.seal_raw(T, iv, &mut scratch, fill),
            );
        } else {
            put(
                &mut d,
                outer::WELCOME,
                s.seal(T, iv, &mut scratch, fill).as_bytes(),
            );
        }
        self.session = Some(s);
        d
    }

    /// A pairwise DATA token carrying what `fill` appends after SEQ.
    fn pairwise(&mut self, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let iv = self.rng.random();
        let s = self.session.as_mut().expect("a session");
        let token = s.seal(T, iv, &mut Vec::new(), fill);
        let mut d = Vec::new();
        put(&mut d, outer::DATA, token.as_bytes());
        d
    }

    /// A GROUP_DATA datagram carrying what `fill` appends after GSEQ.
    fn group_data(&mut self, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut tail = Vec::new();
        fill(&mut tail);
        let mut d = Vec::new();
        self.group.seal(T, self.rng.random(), &tail, &mut d);
        d
    }

    fn message(&mut self, sender: &str, body: &[u8]) -> Vec<u8> {
        self.group_data(|p| {
            put(p, SENDER_ID, sender.as_bytes());
            put(p, inner::BODY, body);
        })
    }

    /// A leave's rekey: the new epoch's GROUP_KEY as pairwise DATA.
    fn rekey(&mut self) -> Vec<u8> {
        self.group.leave();
        let fresh = self.rng.random();
        assert!(self.group.rekey_if_pending(Instant::now(), fresh));
        self.group_key()
    }

    /// The current epoch's GROUP_KEY as pairwise DATA.
    fn group_key(&mut self) -> Vec<u8> {
        let (epoch, key) = (self.group.epoch(), self.group.key_text());
        self.pairwise(|p| put_group_key(p, epoch, key.as_bytes()))
    }
}

/// The client under test, the fake, and the fake clock.
struct Net {
    fake: Fake,
    client: ClientCore,
    now: Instant,
}

impl Net {
    fn new(fake: Fake, opts: ClientOptions) -> Net {
        let now = Instant::now();
        Net {
            fake,
            client: ClientCore::new(opts, now, T, [7; 32]),
            now,
        }
    }

    /// A client with default options welcomed by a v2 fake.
    fn connected() -> (Net, Vec<ClientEvent>) {
        let mut net = Net::new(Fake::new(1), ClientOptions::default());
        let hello = net.client.hello();
        let events = net.exchange(vec![hello]);
        assert!(net.client.is_established(), "{events:?}");
        (net, events)
    }

    /// Carries `ds` to the fake and its answers back until quiet; returns
    /// the client's events.
    fn exchange(&mut self, mut ds: Vec<Vec<u8>>) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        while !ds.is_empty() {
            let mut next = Vec::new();
            for d in ds {
                for answer in self.fake.answer(&d) {
                    next.extend(self.deliver(&answer, &mut events));
                }
            }
            ds = next;
        }
        events
    }

    /// One datagram on the session socket; returns the client's replies.
    fn deliver(&mut self, d: &[u8], events: &mut Vec<ClientEvent>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.client
            .handle_datagram(self.now, d, &mut out, events)
            .expect("no pin");
        out
    }

    /// One datagram on the session socket, replies carried to the fake.
    fn session(&mut self, d: &[u8]) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        let out = self.deliver(d, &mut events);
        events.extend(self.exchange(out));
        events
    }

    /// One datagram on the downlink.
    fn downlink(&mut self, d: &[u8]) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        self.client
            .handle_downlink(self.now, relay_src(), d, &mut events);
        events
    }

    /// Moves the clock by `by`, running every timer due on the way, as a
    /// shell sleeping until `poll_timeout` would; what the client sends
    /// goes to the fake.
    fn advance(&mut self, by: Duration) -> Vec<ClientEvent> {
        let end = self.now + by;
        let mut events = Vec::new();
        while let Some(t) = self.client.poll_timeout().filter(|t| *t <= end) {
            assert!(t >= self.now, "a timer in the past would make a shell spin");
            self.now = t;
            let mut out = Vec::new();
            self.client.handle_timeout(t, &mut out, &mut events);
            events.extend(self.exchange(out));
        }
        self.now = end;
        events
    }

    /// The datagrams the client sends for `body`.
    fn sends(&mut self, body: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.client.try_send(body, &mut out).expect("established");
        out
    }
}

fn message(sender: &str, body: &[u8]) -> ClientEvent {
    ClientEvent::Message {
        sender: sender.into(),
        body: body.to_vec(),
    }
}

#[test]
fn a_v2_handshake_is_bound_and_group_messages_arrive_on_the_downlink() {
    let (mut net, events) = Net::connected();
    assert_eq!(
        net.fake.asked,
        Some(Asked::V2 {
            caps: CAP_GROUP | CAP_RAW,
            credential: None
        })
    );
    assert_eq!(
        events[1..],
        [
            ClientEvent::Welcome { id: ME.into() },
            ClientEvent::Downlink(downlink_addr())
        ],
        "{events:?}"
    );
    assert_eq!(net.client.downlink(), Some(downlink_addr()));
    assert_eq!(net.client.group_epoch(), Some(net.fake.group.epoch()));
    let d = net.fake.message(OTHER, b"hello group");
    assert_eq!(net.downlink(&d), [message(OTHER, b"hello group")]);
    assert_eq!(net.downlink(&d), [], "a replayed GROUP_DATA is dropped");
    let joined = net.fake.group_data(|p| put(p, PEER_JOINED, b"10.0.0.9:1"));
    assert_eq!(
        net.downlink(&joined),
        [ClientEvent::PeerJoined("10.0.0.9:1".into())]
    );
    let left = net.fake.group_data(|p| {
        put(p, PEER_LEFT, b"10.0.0.9:1");
        put(p, REASON, &[2]);
    });
    assert_eq!(
        net.downlink(&left),
        [ClientEvent::PeerLeft {
            id: "10.0.0.9:1".into(),
            reason: Some(LeaveReason::Timeout)
        }]
    );
    let probe = net.fake.group_data(|p| put(p, PROBE, &[]));
    assert_eq!(net.downlink(&probe), []);
    let stats = net.client.downlink_stats();
    assert_eq!((stats.opened, stats.replayed), (4, 1));
    // GROUP_DATA belongs on the downlink: on the session socket it is dropped.
    let dropped = net.client.dropped;
    let d = net.fake.message(OTHER, b"wrong socket");
    assert_eq!(net.session(&d), []);
    assert_eq!(net.client.dropped, dropped + 1);
    // SERVER_CLOSING through the group ends the session and group mode.
    let closing = net.fake.group_data(|p| put(p, SERVER_CLOSING, &[]));
    assert_eq!(net.downlink(&closing), [ClientEvent::ServerClosing]);
    assert!(!net.client.is_established());
    assert_eq!(net.client.downlink(), None);
}

#[test]
fn own_messages_and_own_join_are_dropped() {
    let (mut net, _) = Net::connected();
    let mine = net.fake.message(ME, b"echo");
    let my_join = net.fake.group_data(|p| put(p, PEER_JOINED, ME.as_bytes()));
    assert_eq!(net.downlink(&mine), []);
    assert_eq!(net.downlink(&my_join), []);
    assert_eq!(net.client.downlink_stats().own_echo, 2);
    let theirs = net.fake.message(OTHER, b"not an echo");
    assert_eq!(net.downlink(&theirs), [message(OTHER, b"not an echo")]);
}

#[test]
fn forged_and_foreign_signatures_are_dropped() {
    let (mut net, _) = Net::connected();
    let d = net.fake.message(OTHER, b"genuine");
    // TLV header (4), epoch (4), then the signature; and the token's last byte.
    for at in [4 + 4 + 10, d.len() - 1] {
        let mut forged = d.clone();
        forged[at] ^= 1;
        assert_eq!(net.downlink(&forged), []);
    }
    // Another signer (a member forging the relay would hold the key, not
    // the signing key): the signature decides before anything is opened.
    let mut rogue = GroupSender::new([0; 32], [0x66; 32]);
    let mut forged = Vec::new();
    let mut tail = Vec::new();
    put(&mut tail, SENDER_ID, OTHER.as_bytes());
    put(&mut tail, inner::BODY, b"forged");
    rogue.seal(T, [1; 16], &tail, &mut forged);
    assert_eq!(net.downlink(&forged), []);
    assert_eq!(net.client.downlink_stats().bad_signature, 3);
    assert_eq!(net.downlink(&d), [message(OTHER, b"genuine")]);
    // Garbage on the downlink port never reaches the member.
    assert_eq!(net.downlink(b"\x00\x0c\x00\x02ab"), []);
    assert_eq!(net.client.downlink_stats().malformed, 1);
    // One item per datagram, as the relay sends: more buy no signature checks.
    let mut packed = net.fake.message(OTHER, b"first");
    for _ in 0..20 {
        packed.extend(forged.iter());
    }
    assert_eq!(net.downlink(&packed), [message(OTHER, b"first")]);
    let stats = net.client.downlink_stats();
    assert_eq!((stats.malformed, stats.bad_signature), (1 + 20, 3));
}

#[test]
fn a_rekey_by_pairwise_group_key_then_data_under_the_new_epoch() {
    let (mut net, _) = Net::connected();
    let before = net.client.group_epoch().unwrap();
    let rekey = net.fake.rekey();
    assert_eq!(net.session(&rekey), [], "a GROUP_KEY is no event");
    assert_eq!(net.client.group_epoch(), Some(before + 1));
    let d = net.fake.message(OTHER, b"after the leave");
    assert_eq!(net.downlink(&d), [message(OTHER, b"after the leave")]);
    // Joins move the key by ratchet, with no message to the member.
    net.fake.group.ratchet(net.now);
    net.fake.group.ratchet(net.now);
    let d = net.fake.message(OTHER, b"two joins later");
    assert_eq!(net.downlink(&d), [message(OTHER, b"two joins later")]);
    assert_eq!(net.client.group_epoch(), Some(before + 3));
}

#[test]
fn data_under_a_newer_epoch_is_held_until_its_group_key_arrives() {
    let (mut net, _) = Net::connected();
    net.fake.group.leave();
    assert!(net.fake.group.rekey_if_pending(net.now, [0x42; 32]));
    let first = net.fake.message(OTHER, b"first");
    let second = net.fake.message(OTHER, b"second");
    assert_eq!(net.downlink(&first), []);
    assert_eq!(net.downlink(&second), []);
    assert_eq!(net.client.group_held(), Some(2));
    let key = net.fake.group_key();
    assert_eq!(
        net.session(&key),
        [message(OTHER, b"first"), message(OTHER, b"second")]
    );
    assert_eq!(net.client.group_held(), Some(0));
    let stats = net.client.downlink_stats();
    assert_eq!((stats.held, stats.released), (2, 2));
}

#[test]
fn a_key_request_goes_out_after_250_ms_and_at_most_once_a_second() {
    let (mut net, _) = Net::connected();
    net.fake.group.leave();
    assert!(net.fake.group.rekey_if_pending(net.now, [0x42; 32]));
    let epoch = net.fake.group.epoch();
    let held = net.fake.message(OTHER, b"held");
    net.downlink(&held);
    // Heard (the signature is the relay's): no probe is due, only the request.
    assert_eq!(net.client.poll_timeout(), Some(net.now + KEY_REQUEST_AFTER));
    net.advance(KEY_REQUEST_AFTER - Duration::from_millis(1));
    assert!(net.fake.key_requests.is_empty());
    net.advance(Duration::from_millis(1));
    assert_eq!(net.fake.key_requests, [epoch]);
    // Unanswered: one more a second later, then the datagram's 2 s are up.
    net.advance(Duration::from_millis(999));
    assert_eq!(net.fake.key_requests.len(), 1);
    net.advance(Duration::from_millis(1));
    assert_eq!(net.fake.key_requests, [epoch, epoch]);
    net.advance(Duration::from_secs(5));
    assert_eq!(net.fake.key_requests.len(), 2);
    assert_eq!(net.client.group_held(), Some(0));
    assert_eq!(net.client.downlink_stats().key_requests, 2);
    // The answer to a request releases what waits.
    let again = net.fake.message(OTHER, b"again");
    net.downlink(&again);
    net.advance(KEY_REQUEST_AFTER);
    assert_eq!(net.fake.key_requests.len(), 3);
    let answer = net.fake.group_key();
    assert_eq!(net.session(&answer), [message(OTHER, b"again")]);
}

#[test]
fn a_silent_downlink_is_probed_then_given_up_for_per_recipient_delivery() {
    let (mut net, _) = Net::connected();
    let welcomed = net.now;
    assert_eq!(net.client.poll_timeout(), Some(welcomed + PROBE_AFTER));
    assert_eq!(net.advance(PROBE_AFTER), []);
    assert_eq!(net.fake.probes, 1);
    net.advance(PROBE_EVERY);
    net.advance(PROBE_EVERY);
    assert_eq!(net.fake.probes, usize::from(PROBES));
    assert_eq!(net.advance(SILENT_AFTER - Duration::from_millis(1)), []);
    let handshakes = net.fake.handshakes;
    // Two seconds after the last probe: a new handshake, without GROUP.
    let events = net.advance(Duration::from_millis(1));
    assert_eq!(events[0], ClientEvent::DownlinkSilent(downlink_addr()));
    assert!(
        events.contains(&ClientEvent::Welcome { id: ME.into() }),
        "{events:?}"
    );
    assert_eq!(net.fake.handshakes, handshakes + 1);
    assert_eq!(
        net.fake.asked,
        Some(Asked::V2 {
            caps: CAP_RAW,
            credential: None
        })
    );
    assert_eq!(net.client.downlink(), None);
    assert_eq!(net.client.poll_timeout(), None);
    assert_eq!(net.client.downlink_stats().probes, 3);
    // Served per recipient now; a later handshake from scratch asks again.
    let d = net.fake.pairwise(|p| {
        put(p, SENDER_ID, OTHER.as_bytes());
        put(p, inner::BODY, b"direct");
    });
    assert_eq!(net.session(&d), [message(OTHER, b"direct")]);
    let hello = net.client.hello();
    net.exchange(vec![hello]);
    assert!(matches!(net.fake.asked, Some(Asked::V2 { caps, .. }) if caps & CAP_GROUP != 0));
    assert_eq!(net.client.downlink(), Some(downlink_addr()));
}

#[test]
fn a_downlink_heard_in_time_is_not_probed_further() {
    let (mut net, _) = Net::connected();
    net.advance(PROBE_AFTER);
    assert_eq!(net.fake.probes, 1);
    let answer = net.fake.group_data(|p| put(p, PROBE, &[]));
    assert_eq!(net.downlink(&answer), []);
    assert_eq!(net.advance(Duration::from_secs(10)), []);
    assert_eq!(net.fake.probes, 1);
    assert_eq!(net.client.downlink(), Some(downlink_addr()));
}

#[test]
fn a_restarted_relay_is_a_new_signer_and_a_new_gseq_space() {
    let (mut net, _) = Net::connected();
    for i in 0..3 {
        let d = net.fake.message(OTHER, &[i]);
        assert_eq!(net.downlink(&d).len(), 1);
    }
    let old = net.fake.message(OTHER, b"old");
    // A re-handshake with the same relay (a join: the key moves on) keeps
    // the member: what was sent before still opens, once.
    let hello = net.client.rehandshake();
    net.exchange(vec![hello]);
    assert_eq!(net.downlink(&old), [message(OTHER, b"old")]);
    assert_eq!(net.downlink(&old), []);
    // The restarted relay's GSEQ starts again at 1: accepted.
    net.fake = Fake::new(2);
    let hello = net.client.hello();
    let events = net.exchange(vec![hello]);
    assert!(events.contains(&ClientEvent::Downlink(downlink_addr())));
    let d = net.fake.message(OTHER, b"gseq 1 again");
    assert_eq!(net.downlink(&d), [message(OTHER, b"gseq 1 again")]);
}

#[test]
fn downlink_fragments_are_reassembled_and_the_signature_covers_the_whole() {
    let (mut net, _) = Net::connected();
    let body = vec![b'x'; 3000];
    let d = net.fake.message(OTHER, &body);
    let mut frags = Vec::new();
    fragment::split(&d, 1200, 77, |f| frags.push(f.to_vec()));
    assert!(frags.len() > 2);
    let mut events = Vec::new();
    for f in frags.iter().rev() {
        events.extend(net.downlink(f));
    }
    assert_eq!(events, [message(OTHER, &body)]);
    // One byte changed inside a fragment: reassembled, then refused.
    let d = net.fake.message(OTHER, &body);
    let mut frags = Vec::new();
    fragment::split(&d, 1200, 78, |f| frags.push(f.to_vec()));
    frags[1][100] ^= 1;
    for f in &frags {
        assert_eq!(net.downlink(f), []);
    }
    assert_eq!(net.client.downlink_stats().bad_signature, 1);
}

#[test]
fn raw_tokens_when_granted_text_otherwise() {
    let (mut net, _) = Net::connected();
    let d = net.sends(b"raw please");
    net.exchange(d);
    let mut out = Vec::new();
    assert!(net.client.keepalive(&mut out));
    net.exchange(out);
    assert_eq!(net.fake.token_forms, [fernet::VERSION; 2]);
    assert_eq!(net.fake.bodies, [b"raw please".to_vec()]);

    let mut fake = Fake::new(3);
    fake.grants = CAP_GROUP;
    let mut net = Net::new(fake, ClientOptions::default());
    let hello = net.client.hello();
    net.exchange(vec![hello]);
    let d = net.sends(b"text");
    net.exchange(d);
    assert_eq!(net.fake.token_forms, [fernet::TEXT_FIRST]);
}

#[test]
fn a_v1_relay_gets_the_v1_handshake_exactly() {
    let token = b"open sesame".to_vec();
    let mut net = Net::new(
        Fake::v1(),
        ClientOptions {
            access_token: Some(token.clone()),
            ..ClientOptions::default()
        },
    );
    let hello = net.client.hello();
    let answer = net.fake.answer(&hello).remove(0);
    let mut events = Vec::new();
    let out = net.deliver(&answer, &mut events);
    // COOKIE then SESSION_KEY, one 256-byte RSA block: as before v2.
    let d = Datagram::parse(&out[0]).unwrap();
    assert!(d.session_key.is_some() && d.session_key2.is_none());
    assert_eq!(out[0].len(), 4 + 16 + 4 + 256);
    assert_eq!(&out[0][..4], &[0, 0x0A, 0, 16]);
    let events = net.exchange(out);
    assert_eq!(net.fake.asked, Some(Asked::V1 { token }));
    assert_eq!(events, [ClientEvent::Welcome { id: ME.into() }]);
    assert_eq!(net.client.downlink(), None);
    let d = net.sends(b"v1 text");
    net.exchange(d);
    assert_eq!(net.fake.token_forms, [fernet::TEXT_FIRST]);
}

#[test]
fn a_token_too_long_for_credential_goes_v1_even_to_a_v2_relay() {
    for (len, v2) in [(110, true), (111, false)] {
        let token = vec![b't'; len];
        let mut net = Net::new(
            Fake::new(4),
            ClientOptions {
                access_token: Some(token.clone()),
                ..ClientOptions::default()
            },
        );
        let hello = net.client.hello();
        net.exchange(vec![hello]);
        assert!(net.client.is_established());
        let want = if v2 {
            Asked::V2 {
                caps: CAP_GROUP | CAP_RAW,
                credential: Some(token),
            }
        } else {
            Asked::V1 { token }
        };
        assert_eq!(net.fake.asked, Some(want), "{len}-byte token");
    }
}

#[test]
fn once_v2_was_offered_an_answer_without_versions_is_ignored() {
    let (mut net, _) = Net::connected();
    net.fake.versions = None;
    let hello = net.client.hello();
    let answer = net.fake.answer(&hello).remove(0);
    let mut events = Vec::new();
    assert_eq!(net.deliver(&answer, &mut events), Vec::<Vec<u8>>::new());
    assert_eq!((events.len(), net.client.downgrades()), (0, 1));
    // The v2 answer to the next HELLO is taken.
    net.fake.versions = Some(vec![1, 2]);
    let hello = net.client.hello();
    net.exchange(vec![hello]);
    assert!(net.client.is_established());
    assert!(matches!(net.fake.asked, Some(Asked::V2 { .. })));
}

#[test]
fn no_group_option_asks_only_for_raw_and_bodies_too_large_are_errors() {
    let mut net = Net::new(
        Fake::new(5),
        ClientOptions {
            group: false,
            ..ClientOptions::default()
        },
    );
    let hello = net.client.hello();
    let events = net.exchange(vec![hello]);
    assert!(!events.iter().any(|e| matches!(e, ClientEvent::Downlink(_))));
    assert_eq!(
        net.fake.asked,
        Some(Asked::V2 {
            caps: CAP_RAW,
            credential: None
        })
    );
    let mut out = Vec::new();
    for len in [65_535, 70_000] {
        let body = vec![0; len];
        assert_eq!(
            net.client.try_send(&body, &mut out),
            Err(SendError::TooLarge { len })
        );
        assert!(!net.client.send(&body, &mut out));
    }
    assert!(out.is_empty());
    let mut idle = ClientCore::new(ClientOptions::default(), net.now, T, [8; 32]);
    assert_eq!(
        idle.try_send(b"x", &mut out),
        Err(SendError::NotEstablished)
    );
}

/// Where a fake on a real socket sends something.
enum To {
    /// The client that handshook last.
    Client,
    /// The downlink group.
    Group,
}

/// Runs `fake` on a loopback socket until `stop`: it answers what clients
/// send, and every 50 ms sends what `tick` returns. Returns its address.
fn serve(
    fake: Fake,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tick: impl FnMut(&mut Fake) -> Vec<(To, Vec<u8>)> + Send + 'static,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    serve_at("127.0.0.1:0".parse().unwrap(), 0, fake, stop, tick)
}

/// [`serve`] on a socket bound to `at`, sending the downlink (IPv4 out of
/// loopback; IPv6 out of the interface of index `index`, hop limit 1).
fn serve_at(
    at: SocketAddr,
    index: u32,
    mut fake: Fake,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    mut tick: impl FnMut(&mut Fake) -> Vec<(To, Vec<u8>)> + Send + 'static,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::sync::atomic::Ordering;
    let sock = UdpSocket::bind(at).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let domain = socket2::Domain::for_address(fake.downlink);
    let mcast =
        socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).unwrap();
    let mut group_dest = fake.downlink;
    if let SocketAddr::V6(d) = &mut group_dest {
        mcast.set_multicast_if_v6(index).unwrap();
        mcast.set_multicast_hops_v6(1).unwrap();
        d.set_scope_id(index);
    } else {
        mcast.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
        mcast.set_multicast_ttl_v4(0).unwrap();
        mcast.set_multicast_loop_v4(true).unwrap();
    }
    let mcast: UdpSocket = mcast.into();
    let handle = std::thread::spawn(move || {
        let mut client = None;
        let mut next_tick = Instant::now();
        let mut buf = vec![0; 65536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                // The fake keeps one session, the latest: the tokens of a
                // client whose session it replaced (its probes, its BYE)
                // cannot be opened and are none of its business.
                let handshake = Datagram::parse(&buf[..n]).is_ok_and(|d| {
                    d.hello.is_some() || d.session_key.is_some() || d.session_key2.is_some()
                });
                if !handshake && client.is_some_and(|c| c != from) {
                    continue;
                }
                let handshakes = fake.handshakes;
                for a in fake.answer(&buf[..n]) {
                    sock.send_to(&a, from).unwrap();
                }
                if fake.handshakes > handshakes {
                    client = Some(from);
                }
            }
            if Instant::now() >= next_tick {
                next_tick += Duration::from_millis(50);
                for (to, d) in tick(&mut fake) {
                    // Best effort, as a relay's sends are.
                    let _ = match (to, client) {
                        (To::Client, Some(c)) => sock.send_to(&d, c),
                        (To::Group, _) => mcast.send_to(&d, group_dest),
                        (To::Client, None) => continue,
                    };
                }
            }
        }
    });
    (addr, handle)
}

/// A multicast group and a port nobody else on this host uses now.
fn private_downlink() -> SocketAddr {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    SocketAddr::from(([239, 255, 77, 77], port))
}

/// Reads events until `want` returns true for one, or the deadline.
fn wait_for(
    c: &mut crate::client::udp::UdpClient,
    within: Duration,
    mut want: impl FnMut(&ClientEvent) -> bool,
) -> Vec<ClientEvent> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(e) = c.recv(Duration::from_millis(100)).expect("recv") {
            let done = want(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
    panic!("not seen within {within:?}: {seen:?}");
}

#[test]
fn udp_clients_of_one_host_share_a_downlink_over_loopback() {
    use crate::client::udp::{Target, UdpClient};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let downlink = private_downlink();
    let fake = Fake {
        downlink,
        // One session at a time: the first client's probes may come under
        // its key after the second client's handshake replaced it.
        strict: false,
        ..Fake::new(11)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut n = 0u32;
    let (addr, relay) = serve(fake, stop.clone(), move |f| {
        if f.granted & CAP_GROUP == 0 {
            return Vec::new();
        }
        n += 1;
        vec![(To::Group, f.message(OTHER, format!("tick {n}").as_bytes()))]
    });
    let deadline = Duration::from_secs(10);
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = UdpClient::new(Target::Unicast(addr), ClientOptions::default()).unwrap();
        c.connect(deadline).expect("welcomed");
        assert_eq!(c.downlink(), Some(downlink), "joined at the WELCOME");
        clients.push(c);
    }
    for c in &mut clients {
        let seen = wait_for(
            c,
            deadline,
            |e| matches!(e, ClientEvent::Message { body, .. } if body.starts_with(b"tick")),
        );
        assert!(seen.contains(&ClientEvent::Downlink(downlink)), "{seen:?}");
        assert!(c.downlink_stats().opened >= 1);
    }
    for c in &mut clients {
        c.bye().unwrap();
        assert_eq!(c.downlink(), None, "the group is left with the session");
    }
    stop.store(true, Ordering::Relaxed);
    relay.join().unwrap();
}

#[test]
fn a_udp_client_that_hears_nothing_on_the_downlink_is_served_directly() {
    use crate::client::udp::{Target, UdpClient};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // The relay names a downlink but never sends there (nor answers probes).
    let fake = Fake {
        downlink: private_downlink(),
        ..Fake::new(12)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, relay) = serve(fake, stop.clone(), |f| {
        if f.session.is_none() || f.granted & CAP_GROUP != 0 {
            return Vec::new();
        }
        let d = f.pairwise(|p| {
            put(p, SENDER_ID, OTHER.as_bytes());
            put(p, inner::BODY, b"direct");
        });
        vec![(To::Client, d)]
    });
    let mut c = UdpClient::new(Target::Unicast(addr), ClientOptions::default()).unwrap();
    c.connect(Duration::from_secs(10)).expect("welcomed");
    assert!(c.downlink().is_some());
    let started = Instant::now();
    // Probes for 3 s, silence for 2 more: generous bounds for a busy host.
    let seen = wait_for(
        &mut c,
        Duration::from_secs(30),
        |e| matches!(e, ClientEvent::Message { body, .. } if body == b"direct"),
    );
    let took = started.elapsed();
    assert!(
        took >= PROBE_AFTER + PROBE_EVERY * 2 + SILENT_AFTER,
        "{took:?}"
    );
    assert!(
        matches!(
            seen[..],
            [ClientEvent::Downlink(_), ClientEvent::DownlinkSilent(_), ..]
        ),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, ClientEvent::Welcome { .. })),
        "leaving group mode is no reconnection: {seen:?}"
    );
    assert_eq!(c.downlink(), None);
    assert_eq!(c.downlink_stats().probes, u64::from(PROBES));
    c.bye().unwrap();
    stop.store(true, Ordering::Relaxed);
    relay.join().unwrap();
}

/// Two network namespaces joined by a veth pair, `v0` in the relay's and
/// `v1` in the client's, with link-local IPv6 addresses only (usable at
/// once: duplicate address detection off); deleted on drop. Needs root.
struct Netns {
    relay: String,
    client: String,
}

impl Netns {
    fn create(tag: &str) -> Netns {
        let pid = std::process::id();
        let ns = Netns {
            relay: format!("mcrelay-{tag}r{pid}"),
            client: format!("mcrelay-{tag}c{pid}"),
        };
        for name in [&ns.relay, &ns.client] {
            sh(&["ip", "netns", "add", name]);
            ns.exec(name, "sysctl -qw net.ipv6.conf.default.accept_dad=0");
            ns.exec(name, "ip link set lo up");
        }
        sh(&[
            "ip", "link", "add", "v0", "netns", &ns.relay, "type", "veth", "peer", "name", "v1",
            "netns", &ns.client,
        ]);
        ns.exec(&ns.relay, "ip link set v0 up");
        ns.exec(&ns.client, "ip link set v1 up");
        ns
    }

    /// Runs `cmd` (split at spaces) in namespace `name`; returns stdout.
    fn exec(&self, name: &str, cmd: &str) -> String {
        let mut argv = vec!["ip", "netns", "exec", name];
        argv.extend(cmd.split(' '));
        sh(&argv)
    }

    fn index(&self, name: &str, iface: &str) -> u32 {
        let out = self.exec(name, &format!("cat /sys/class/net/{iface}/ifindex"));
        out.trim().parse().unwrap()
    }

    /// The link-local address of `iface`, once the kernel gave it one.
    fn link_local(&self, name: &str, iface: &str) -> std::net::Ipv6Addr {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.exec(name, &format!("ip -6 -o addr show dev {iface} scope link"));
            if let Some(a) = out.split_whitespace().find(|w| w.starts_with("fe80:")) {
                return a.split('/').next().unwrap().parse().unwrap();
            }
            assert!(Instant::now() < end, "no link-local address on {iface}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in [&self.relay, &self.client] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
        }
    }
}

fn sh(argv: &[&str]) -> String {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("iproute2 (ip) is needed for this test");
    assert!(
        out.status.success(),
        "{argv:?} failed (this test needs root for network namespaces): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Moves the calling thread (only it: a network namespace is per thread)
/// into the namespace `ip netns` created as `name`; sockets it opens from
/// then on live there.
fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
    // SAFETY: setns(2) on an open namespace file; no memory is involved.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

/// IPv6 group mode over a real link: the relay, in its own namespace,
/// names a link-local downlink group and sends it out of `v0`; the client,
/// on the other end of the pair, reaches the relay at its link-local
/// address and joins the downlink on the interface of the server's scope,
/// where the group's datagrams arrive.
#[test]
fn a_udp_client_joins_an_ipv6_downlink_on_the_interface_of_the_servers_scope() {
    use crate::client::udp::{Target, UdpClient};
    use std::net::{Ipv6Addr, SocketAddrV6};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let ns = Netns::create("dl6");
    let (v0, v1) = (ns.index(&ns.relay, "v0"), ns.index(&ns.client, "v1"));
    let relay_ll = ns.link_local(&ns.relay, "v0");
    ns.link_local(&ns.client, "v1"); // and with it the route to fe80::/64
                                     // A decoy: left to itself, the kernel would join the group on `d0`,
                                     // where its route points, and hear nothing.
    for cmd in [
        "ip link add d0 type veth peer name d1",
        "ip link set d1 up",
        "ip link set d0 up",
        "ip -6 route add ff02::6d63:77/128 dev d0 table local",
    ] {
        ns.exec(&ns.client, cmd);
    }
    let downlink = SocketAddr::from((Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x6d63, 0x77), 5009));
    let fake = Fake {
        downlink,
        ..Fake::new(13)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut n = 0u32;
    let tick = move |f: &mut Fake| {
        if f.granted & CAP_GROUP == 0 {
            return Vec::new();
        }
        n += 1;
        vec![(To::Group, f.message(OTHER, format!("tick {n}").as_bytes()))]
    };
    let (name, stop2) = (ns.relay.clone(), stop.clone());
    let (addr, relay) = std::thread::spawn(move || {
        enter_netns(&name);
        serve_at("[::]:0".parse().unwrap(), v0, fake, stop2, tick)
    })
    .join()
    .unwrap();
    let server = SocketAddrV6::new(relay_ll, addr.port(), 0, v1);
    let name = ns.client.clone();
    let client = std::thread::spawn(move || {
        enter_netns(&name);
        let target = Target::Unicast(SocketAddr::V6(server));
        let mut c = UdpClient::new(target, ClientOptions::default()).unwrap();
        c.connect(Duration::from_secs(10)).expect("welcomed");
        assert_eq!(c.downlink(), Some(downlink), "joined at the WELCOME");
        let seen = wait_for(
            &mut c,
            Duration::from_secs(20),
            |e| matches!(e, ClientEvent::Message { body, .. } if body.starts_with(b"tick")),
        );
        let opened = c.downlink_stats().opened;
        c.bye().unwrap();
        (seen, opened)
    })
    .join();
    stop.store(true, Ordering::Relaxed);
    relay.join().unwrap();
    let (seen, opened) = client.unwrap();
    assert!(seen.contains(&ClientEvent::Downlink(downlink)), "{seen:?}");
    assert!(opened >= 1, "{seen:?}");
}
