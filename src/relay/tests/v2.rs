//! Hand-made protocol v2 clients for the relay's core tests: the bound
//! handshake built from `wire::handshake` and RSA, pairwise tokens through
//! a [`Session`] (raw or text, as the relay chose), and group datagrams
//! opened with a [`GroupMember`], so that tests see exactly what a v2
//! client would.

use super::*;

use crate::reassembly::{Outcome, Reassembler};
use crate::session::group::{GroupError, GroupMember};
use crate::session::{fernet, Direction, Session};
use crate::wire::fragment::parse_fragment;
use crate::wire::handshake::{Handshake, CAP_GROUP, CAP_RAW};
use crate::wire::outer::{Datagram, Item, TokenKind};

/// Both capabilities.
pub(super) const GROUP_RAW: u32 = CAP_GROUP | CAP_RAW;
/// The downlink of `Config::default()`.
pub(super) const DOWNLINK: SocketAddr = crate::relay::config::DEFAULT_DOWNLINK;

/// COOKIE + SESSION_KEY2 with `plain` RSA-OAEP encrypted to `der`.
pub(super) fn session_key2(der: &[u8], cookie: &[u8], plain: &[u8]) -> Vec<u8> {
    let public = PublicKey::from_public_key_der(der).unwrap();
    let ct = public.oaep_encrypt::<Sha256>(plain).unwrap();
    let mut d = Vec::new();
    tlv::put(&mut d, outer::COOKIE, cookie);
    tlv::put(&mut d, outer::SESSION_KEY2, &ct);
    d
}

/// A distinct Fernet key text per address.
fn key_for(addr: SocketAddr) -> String {
    let mut raw = [0x33u8; 32];
    raw[..2].copy_from_slice(&addr.port().to_be_bytes());
    if let std::net::IpAddr::V4(ip) = addr.ip() {
        raw[2..6].copy_from_slice(&ip.octets());
    }
    fernet::encode_key(&raw)
}

/// A v2 client made by hand.
pub(super) struct V2 {
    pub(super) addr: SocketAddr,
    pub(super) session: Session,
    pub(super) caps: u32,
    /// Its view of the group, when the WELCOME granted GROUP.
    pub(super) group: Option<GroupMember>,
    pub(super) downlink: Option<SocketAddr>,
    pub(super) signer: Option<Vec<u8>>,
    /// The datagram that registered it (to replay in tests).
    pub(super) handshake: Vec<u8>,
    /// The WELCOME datagram as received.
    pub(super) welcome: Vec<u8>,
    seq: u64,
}

impl V2 {
    /// Takes the WELCOME's grants: CAPS, and the group's key, downlink
    /// and signer when GROUP was granted.
    pub(super) fn adopt_welcome(&mut self, d: &[u8]) {
        let plain = open_single(&mut self.session, d, outer::WELCOME);
        let w = Inner::parse(&plain).unwrap();
        // `address:port`, or `NAME@address:port` for a named client (v2 §5).
        let id = w.client_id.expect("a WELCOME carries CLIENT_ID");
        let addr = self.addr.to_string();
        let name = id
            .strip_suffix(addr.as_bytes())
            .expect("the id ends with the address");
        assert!(name.is_empty() || name.ends_with(b"@"), "{id:?}");
        self.caps = w.caps.expect("a v2 WELCOME carries CAPS");
        self.group = match (w.group_signer, w.group_key) {
            (Some(s), Some((epoch, key))) => Some(GroupMember::new(s, epoch, key).unwrap()),
            _ => None,
        };
        self.signer = w.group_signer.map(<[u8]>::to_vec);
        self.downlink = w.group_addr;
        self.welcome = d.to_vec();
    }

    /// An outer `kind` datagram of `SEQ | fill` under this session (text).
    pub(super) fn token(&mut self, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        self.seq += 1;
        let token = self
            .session
            .seal(UNIX_START, [self.seq as u8; 16], &mut Vec::new(), fill);
        plain(&[(kind, token.as_bytes())])
    }

    pub(super) fn data(&mut self, body: &[u8]) -> Vec<u8> {
        self.token(outer::DATA, |p| tlv::put(p, inner::BODY, body))
    }

    pub(super) fn keepalive(&mut self, key_request: Option<u32>, probe: bool) -> Vec<u8> {
        self.token(outer::KEEPALIVE, |p| {
            if let Some(e) = key_request {
                tlv::put(p, inner::KEY_REQUEST, &e.to_be_bytes());
            }
            if probe {
                tlv::put(p, inner::PROBE, &[]);
            }
        })
    }

    pub(super) fn bye(&mut self) -> Vec<u8> {
        self.token(outer::BYE, |_| {})
    }

    /// Opens every pairwise token of the datagrams sent to it.
    pub(super) fn open_all(&mut self, ds: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for d in ds {
            let parsed = Datagram::parse(d).expect("well-formed");
            for item in parsed.items() {
                let Item::Token(TokenKind::Data, t) = item else {
                    panic!("not a DATA: {item:?}");
                };
                out.push(self.session.open(t, Direction::ToClient).expect("opens"));
            }
        }
        out
    }

    /// Applies the GROUP_KEYs among `plains` to its group view.
    pub(super) fn take_keys(&mut self, now: Instant, plains: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut opened = Vec::new();
        for p in plains {
            if let Some((epoch, key)) = Inner::parse(p).unwrap().group_key {
                let g = self.group.as_mut().expect("a member");
                opened.extend(g.set_key(now, epoch, key));
            }
        }
        opened
    }

    /// Opens one group datagram (a whole GROUP_DATA TLV).
    pub(super) fn open_group(&mut self, now: Instant, d: &[u8]) -> Result<Vec<u8>, GroupError> {
        let parsed = Datagram::parse(d).expect("well-formed");
        let Some(Item::Group(_)) = parsed.items().next() else {
            panic!("not a GROUP_DATA");
        };
        let value = &parse(d)[0].1;
        self.group.as_mut().expect("a member").open(now, value)
    }
}

/// Opens the single token of type `kind` in `d`.
fn open_single(session: &mut Session, d: &[u8], kind: u16) -> Vec<u8> {
    let tlvs = parse(d);
    assert_eq!(tlvs.len(), 1, "one token");
    assert_eq!(tlvs[0].0, kind);
    session
        .open(&tlvs[0].1, Direction::ToClient)
        .expect("token under our key")
}

/// The (SENDER_ID or notice, BODY) of a group plaintext, as text.
pub(super) fn summary(p: &[u8]) -> String {
    let m = Inner::parse(p).unwrap();
    let t = |v: Option<&[u8]>| v.map(|v| String::from_utf8_lossy(v).into_owned());
    if let (Some(s), Some(b)) = (t(m.sender_id), t(m.body)) {
        format!("{s}: {b}")
    } else if let Some(j) = t(m.peer_joined) {
        format!("joined {j}")
    } else if let Some(l) = t(m.peer_left) {
        format!("left {l} ({})", m.reason.unwrap_or(0))
    } else if m.server_closing {
        "closing".into()
    } else if m.probe {
        "probe".into()
    } else {
        format!("{m:?}")
    }
}

impl Net {
    /// A complete v2 handshake from `src` asking for `caps`; the WELCOME
    /// must come back, and nothing else to `src`.
    pub(super) fn v2(&mut self, src: SocketAddr, caps: u32) -> V2 {
        let (d, mut c) = self.v2_attempt(src, caps, None);
        self.deliver(src, &d);
        let replies = self.take_stray(src);
        assert_eq!(replies.len(), 1, "one WELCOME: {:?}", self.stats());
        c.adopt_welcome(&replies[0]);
        c
    }

    /// A v2 handshake datagram from `src` (not delivered) and the client
    /// it would make.
    pub(super) fn v2_attempt(
        &mut self,
        src: SocketAddr,
        caps: u32,
        credential: Option<&[u8]>,
    ) -> (Vec<u8>, V2) {
        let (der, cookie) = self.hello_from(src);
        let key = key_for(src);
        let bind: [u8; 16] = cookie.as_slice().try_into().unwrap();
        let h = Handshake {
            fernet_key: key.as_bytes(),
            bind: &bind,
            caps,
            credential,
        };
        let mut p = Vec::new();
        h.emit(&mut p);
        let d = session_key2(&der, &cookie, &p);
        let c = V2 {
            addr: src,
            session: Session::new(&key).unwrap(),
            caps: 0,
            group: None,
            downlink: None,
            signer: None,
            handshake: d.clone(),
            welcome: Vec::new(),
            seq: 0,
        };
        (d, c)
    }

    /// Group members at `n` distinct hosts (10.7.x.y:5000), in order.
    pub(super) fn members(&mut self, n: usize) -> Vec<V2> {
        (0..n)
            .map(|i| {
                self.v2(
                    at([10, 7, (i / 200) as u8, (i % 200 + 1) as u8], 5000),
                    GROUP_RAW,
                )
            })
            .collect()
    }

    /// Takes what went to the downlink `dst`, fragments reassembled:
    /// whole GROUP_DATA datagrams, in order.
    pub(super) fn take_group(&mut self, dst: SocketAddr) -> Vec<Vec<u8>> {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut whole = Vec::new();
        for d in self.take_stray(dst) {
            let tlvs = parse(&d);
            if tlvs[0].0 != outer::FRAGMENT {
                whole.push(d);
                continue;
            }
            let f = parse_fragment(&tlvs[0].1).unwrap();
            if let Outcome::Complete(p) = r.insert(self.now, 0, &f) {
                whole.push(p);
            }
        }
        whole
    }
}

/// A config whose handshake limits let many clients of one test join at once.
pub(super) fn roomy() -> Config {
    Config {
        rsa_rate: 100_000,
        handshake_rate: 1000,
        handshake_burst: 1000,
        ..Config::default()
    }
}
