//! A protocol client made by hand on a raw UDP socket, for the tests that
//! need what the library's client hides: its pairwise session key, every
//! group key it was ever given, and the exact datagrams on the downlink.
//! It speaks v2 (SESSION_KEY2 asking for GROUP and RAW) or v1 (a plain
//! SESSION_KEY), and it never answers the relay on its own: no keepalive,
//! no probe, no key request, so what it knows is exactly what it was sent.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use mcrelay::fernet::{encode_key, FernetKey};
use mcrelay::group::{ratchet, GroupMember};
use mcrelay::wire::group::GroupData;
use mcrelay::wire::handshake::{Handshake, CAP_GROUP, CAP_RAW};
use mcrelay::wire::inner::{self, put_seq};
use mcrelay::wire::outer::{self, Datagram, Item, TokenKind};
use mcrelay::wire::tlv::{self, Reader};
use mcrelay::wire::{Inner, MIN_HELLO_LEN};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::PublicKey;

use super::DEADLINE;

/// The downlink group of these tests (the relay's own group is .77).
pub const DOWNLINK_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 78);

/// A socket bound to a free port, joined to [`DOWNLINK_GROUP`] on
/// loopback: pass `--downlink 239.255.0.78:PORT` with its port, and it
/// sees every GROUP_DATA the relay sends.
pub fn downlink_socket() -> UdpSocket {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    // The relay's members bind the same port (SO_REUSEADDR on both sides).
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
        .unwrap();
    s.join_multicast_v4(&DOWNLINK_GROUP, &Ipv4Addr::LOCALHOST)
        .unwrap();
    s.into()
}

/// `--downlink` for a socket made by [`downlink_socket`].
pub fn downlink_arg(down: &UdpSocket) -> String {
    format!("{DOWNLINK_GROUP}:{}", down.local_addr().unwrap().port())
}

/// A socket that sends to the loopback multicast groups (TTL 0).
pub fn multicast_sender() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let s2 = socket2::SockRef::from(&s);
    s2.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    s2.set_multicast_ttl_v4(0).unwrap();
    s
}

/// Receives until `pick` accepts a datagram or [`DEADLINE`] passes.
pub fn recv_until<T>(s: &UdpSocket, pick: impl FnMut(&[u8]) -> Option<T>) -> Option<T> {
    recv_within(s, DEADLINE, pick)
}

/// Receives until `pick` accepts a datagram or `within` passes.
pub fn recv_within<T>(
    s: &UdpSocket,
    within: Duration,
    mut pick: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    let end = Instant::now() + within;
    let mut buf = vec![0u8; 65536];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok(n) = s.recv(&mut buf) else { continue };
        if let Some(t) = pick(&buf[..n]) {
            return Some(t);
        }
    }
    None
}

/// Every datagram that arrives until none has for `quiet`.
pub fn drain_socket(s: &UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    while let Ok(n) = s.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    got
}

/// The value of the first TLV of `kind` in `d`.
pub fn value_of(d: &[u8], kind: u16) -> Option<Vec<u8>> {
    Reader::new(d)
        .map_while(Result::ok)
        .find(|t| t.kind == kind)
        .map(|t| t.value.to_vec())
}

/// The GROUP_DATA values among captured downlink datagrams.
pub fn group_values(datagrams: &[Vec<u8>]) -> Vec<Vec<u8>> {
    datagrams
        .iter()
        .filter_map(|d| value_of(d, outer::GROUP_DATA))
        .collect()
}

/// True when `value` is a GROUP_DATA signed by `signer`.
pub fn signed_by(signer: &[u8; 32], value: &[u8]) -> bool {
    let Some(g) = GroupData::parse(value) else {
        return false;
    };
    let mut message = Vec::new();
    GroupData::signed_message(g.epoch, g.token, &mut message);
    VerifyingKey::from_bytes(signer).is_ok_and(|k| {
        k.verify(&message, &Signature::from_bytes(g.signature))
            .is_ok()
    })
}

/// What an attacker holding `keys` (epoch → raw key) gets out of a
/// GROUP_DATA `value`: each key, and each of its join ratchets up to
/// `steps` epochs on, is tried on the token whatever epoch the datagram
/// names. The plaintext of the first that opens it.
pub fn open_with_any(keys: &BTreeMap<u32, [u8; 32]>, steps: u32, value: &[u8]) -> Option<Vec<u8>> {
    let g = GroupData::parse(value)?;
    for (&epoch, key) in keys {
        let mut raw = *key;
        for step in 0..=steps {
            if step > 0 {
                raw = ratchet(&raw, epoch.wrapping_add(step));
            }
            if let Ok(plain) = FernetKey::from_bytes(&raw).open(g.token) {
                return Some(plain);
            }
        }
    }
    None
}

/// The 32 raw bytes of a 44-byte Fernet key text.
pub fn raw_key(text: &[u8]) -> [u8; 32] {
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(text)
        .expect("a base64url key");
    bytes.try_into().expect("a 32-byte key")
}

/// What the relay told a raw client in its own session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawEvent {
    /// A relayed message: sender id, body.
    Message(String, Vec<u8>),
    /// PEER_JOINED.
    Joined(String),
    /// PEER_LEFT with its REASON.
    Left(String, Option<u8>),
    /// A GROUP_KEY (rekey or key request answer): its epoch.
    GroupKey(u32),
}

/// Group mode as a raw v2 member holds it.
pub struct RawGroup {
    /// The library's member logic, fed the WELCOME and every GROUP_KEY.
    pub member: GroupMember,
    /// GROUP_SIGNER of the WELCOME.
    pub signer: [u8; 32],
    /// GROUP_ADDR of the WELCOME.
    pub downlink: SocketAddr,
    /// Every epoch key this client was given (WELCOME and GROUP_KEYs).
    pub keys: BTreeMap<u32, [u8; 32]>,
}

/// A client on its own socket, session and group state in plain view.
pub struct Raw {
    /// Its socket, connected to the relay.
    pub sock: UdpSocket,
    /// Its CLIENT_ID.
    pub id: String,
    /// The pairwise session key.
    pub key: FernetKey,
    /// The SEQ of the last token it sent.
    seq: u64,
    /// Group mode, when granted (v2 only).
    pub group: Option<RawGroup>,
    /// What arrived in its session, in order.
    pub events: Vec<RawEvent>,
}

impl Raw {
    /// A v2 client asking for GROUP and RAW; group mode must be granted.
    pub fn v2(server: SocketAddr) -> Raw {
        let r = Raw::handshake(server, Some(CAP_GROUP | CAP_RAW));
        assert!(r.group.is_some(), "group mode granted");
        r
    }

    /// A v1 client: a plain SESSION_KEY, although the relay offers v2.
    pub fn v1(server: SocketAddr) -> Raw {
        Raw::handshake(server, None)
    }

    /// HELLO, SERVER_KEY + COOKIE, then SESSION_KEY2 with `caps`, or a v1
    /// SESSION_KEY with `None`; WELCOME.
    pub fn handshake(server: SocketAddr, caps: Option<u32>) -> Raw {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(server).unwrap();
        let mut hello = Vec::new();
        tlv::put(
            &mut hello,
            outer::HELLO,
            &[&[1u8][..], &[0; MIN_HELLO_LEN - 5]].concat(),
        );
        assert_eq!(hello.len(), MIN_HELLO_LEN);
        sock.send(&hello).unwrap();
        let answer = recv_until(&sock, |d| {
            value_of(d, outer::SERVER_KEY).map(|_| d.to_vec())
        })
        .expect("SERVER_KEY + COOKIE");
        assert_eq!(value_of(&answer, outer::VERSIONS), Some(vec![1, 2]));
        assert!(answer.len() <= 3 * hello.len());
        let der = value_of(&answer, outer::SERVER_KEY).unwrap();
        let cookie = value_of(&answer, outer::COOKIE).unwrap();

        let key_text = encode_key(&rand::random());
        let mut plain = Vec::new();
        let kind = match caps {
            Some(caps) => {
                Handshake {
                    fernet_key: key_text.as_bytes(),
                    bind: cookie.as_slice().try_into().unwrap(),
                    caps,
                    credential: None,
                }
                .emit(&mut plain);
                outer::SESSION_KEY2
            }
            None => {
                plain.extend_from_slice(key_text.as_bytes());
                outer::SESSION_KEY
            }
        };
        let ct = PublicKey::from_public_key_der(&der)
            .unwrap()
            .oaep_encrypt::<Sha256>(&plain)
            .unwrap();
        let mut d = Vec::new();
        tlv::put(&mut d, outer::COOKIE, &cookie);
        tlv::put(&mut d, kind, &ct);
        sock.send(&d).unwrap();

        let key = FernetKey::from_base64(&key_text).unwrap();
        let welcome = recv_until(&sock, |d| {
            let parsed = Datagram::parse(d).ok()?;
            let first = parsed.items().next();
            match first {
                Some(Item::Token(TokenKind::Welcome, t)) => key.open(t).ok(),
                _ => None,
            }
        })
        .expect("WELCOME");
        let w = Inner::parse(&welcome).unwrap();
        let group = match caps {
            Some(asked) if w.caps.is_some_and(|c| c & CAP_GROUP != 0) => {
                assert_eq!(w.caps.map(|c| c & !asked), Some(0), "a subset");
                let (epoch, group_key) = w.group_key.expect("GROUP_KEY");
                let signer = w.group_signer.expect("GROUP_SIGNER");
                Some(RawGroup {
                    member: GroupMember::new(signer, epoch, group_key).unwrap(),
                    signer: signer.try_into().unwrap(),
                    downlink: w.group_addr.expect("GROUP_ADDR"),
                    keys: BTreeMap::from([(epoch, raw_key(group_key))]),
                })
            }
            Some(_) => None,
            None => {
                assert_eq!(w.caps, None, "a v1 WELCOME has no CAPS");
                assert!(w.group_key.is_none());
                None
            }
        };
        Raw {
            id: String::from_utf8(w.client_id.unwrap().to_vec()).unwrap(),
            sock,
            key,
            seq: 0,
            group,
            events: Vec::new(),
        }
    }

    /// The epoch of the newest group key it holds.
    pub fn epoch(&self) -> u32 {
        self.group.as_ref().expect("group mode").member.epoch()
    }

    /// Sends one token of `kind`: `SEQ | tail`, sealed as base64 text
    /// (what every receiver accepts, RAW granted or not).
    pub fn send_token(&mut self, kind: u16, tail: &[u8]) {
        self.seq += 1;
        let mut plain = Vec::new();
        put_seq(&mut plain, self.seq);
        plain.extend_from_slice(tail);
        let token = self.key.seal_text(unix_now(), rand::random(), &plain);
        let mut d = Vec::new();
        tlv::put(&mut d, kind, token.as_bytes());
        self.sock.send(&d).unwrap();
    }

    /// DATA carrying `body`.
    pub fn send(&mut self, body: &[u8]) {
        let mut tail = Vec::new();
        tlv::put(&mut tail, inner::BODY, body);
        self.send_token(outer::DATA, &tail);
    }

    /// BYE: the session ends.
    pub fn bye(&mut self) {
        self.send_token(outer::BYE, &[]);
    }

    /// Handles what arrives on its socket within `within`; returns the
    /// number of events added.
    pub fn pump(&mut self, within: Duration) -> usize {
        let before = self.events.len();
        let end = Instant::now() + within;
        let mut buf = vec![0u8; 65536];
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            self.handle(&buf[..n]);
        }
        self.events.len() - before
    }

    /// Pumps until `done` holds for the events so far (panics after
    /// [`DEADLINE`]).
    pub fn pump_until(&mut self, what: &str, done: impl Fn(&[RawEvent]) -> bool) {
        let end = Instant::now() + DEADLINE;
        while !done(&self.events) {
            assert!(
                Instant::now() < end,
                "{}: no {what} within {DEADLINE:?}; got {:?}",
                self.id,
                self.events
            );
            self.pump(Duration::from_millis(50));
        }
    }

    /// The relayed messages it received: (sender, body).
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                RawEvent::Message(s, b) => Some((s.clone(), b.clone())),
                _ => None,
            })
            .collect()
    }

    fn handle(&mut self, d: &[u8]) {
        let Ok(parsed) = Datagram::parse(d) else {
            return;
        };
        for item in parsed.items() {
            let Item::Token(TokenKind::Data, t) = item else {
                continue;
            };
            let Ok(plain) = self.key.open(t) else {
                continue;
            };
            let Ok(m) = Inner::parse(&plain) else {
                continue;
            };
            let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
            if let Some((epoch, key)) = m.group_key {
                if let Some(g) = self.group.as_mut() {
                    g.keys.insert(epoch, raw_key(key));
                    g.member.set_key(Instant::now(), epoch, key);
                }
                self.events.push(RawEvent::GroupKey(epoch));
            }
            if let (Some(s), Some(b)) = (m.sender_id, m.body) {
                self.events.push(RawEvent::Message(text(s), b.to_vec()));
            }
            if let Some(id) = m.peer_joined {
                self.events.push(RawEvent::Joined(text(id)));
            }
            if let Some(id) = m.peer_left {
                self.events.push(RawEvent::Left(text(id), m.reason));
            }
        }
    }
}

/// Seconds since the Unix epoch (the Fernet timestamp; never checked).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
