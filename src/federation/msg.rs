//! What relays say to each other on the federation subject, and the checks
//! on what they hear (PROTOCOL.md, "Federation").
//!
//! A federation message is a TLV stream (`wire::tlv`): a header naming the
//! origin relay, its instance (a random id and the start time, so a
//! restarted relay is a new sequence space) and a sequence number, then
//! one of four kinds: a relayed message, a join, a leave, or one part of
//! the periodic member announce. The whole stream is sealed as one raw
//! Fernet token under the federation key, so NATS and anyone reading the
//! subject see ciphertext only; the token is the NATS payload.
//!
//! [`Sealer`] numbers and seals what this relay sends; `federation::inbox`
//! opens and vets what it hears.

use crate::session::fernet::FernetKey;
use crate::wire::tlv::{self, Reader};

/// TLV types of federation plaintexts (the 0x03xx block).
pub mod field {
    /// Relay name of the sender, 1..=64 bytes of `[A-Za-z0-9._-]`.
    pub const ORIGIN: u16 = 0x0301;
    /// u64: random per start of the sending relay.
    pub const INSTANCE: u16 = 0x0302;
    /// u64: Unix milliseconds when that instance started.
    pub const STARTED: u16 = 0x0303;
    /// u64: per-instance sequence number, from 1.
    pub const SEQ: u16 = 0x0304;
    /// u8: 1 message, 2 joined, 3 left, 4 announce.
    pub const KIND: u16 = 0x0305;
    /// UTF-8 member id (the origin's own id for it, without the relay name).
    pub const MEMBER: u16 = 0x0306;
    /// Application bytes of a relayed message.
    pub const BODY: u16 = 0x0307;
    /// u8: why a member left (the REASON codes of protocol §5).
    pub const REASON: u16 = 0x0308;
    /// Announce round u32, part u16, parts u16.
    pub const ROUND: u16 = 0x0309;
}

/// Longest relay name.
pub const MAX_RELAY_NAME: usize = 64;
/// Longest member id carried.
pub const MAX_MEMBER_ID: usize = 255;
/// Most parts one announce round may have.
pub const MAX_ANNOUNCE_PARTS: u16 = 256;

const KIND_MESSAGE: u8 = 1;
const KIND_JOINED: u8 = 2;
const KIND_LEFT: u8 = 3;
const KIND_ANNOUNCE: u8 = 4;

/// A relay name usable in a federation: it prefixes member ids as
/// `RELAY/ID`, so it never contains `/`, blanks or control characters.
pub fn valid_relay_name(name: &str) -> bool {
    (1..=MAX_RELAY_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A member id we pass on: UTF-8, 1..=255 bytes, no control characters
/// (it ends up on other people's terminals).
pub fn valid_member_id(id: &str) -> bool {
    member_id(id.as_bytes()).is_some()
}

fn member_id(v: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(v).ok()?;
    let ok = (1..=MAX_MEMBER_ID).contains(&v.len()) && !s.chars().any(char::is_control);
    ok.then_some(s)
}

/// Why a plaintext is not a federation message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgError {
    /// Broken TLV framing.
    Framing,
    /// A known type appears twice (MEMBER outside an announce included).
    Duplicate,
    /// A mandatory field is missing or a field does not belong to the kind.
    Shape,
    /// A field has the wrong size or an invalid value.
    BadField,
}

/// Who sent a message and where it sits in the sender's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// The sending relay's name.
    pub origin: &'a str,
    /// Random id of the sender's current run.
    pub instance: u64,
    /// Unix milliseconds when that run started.
    pub started_ms: u64,
    /// Sequence number within the run, from 1.
    pub seq: u64,
}

/// The MEMBER TLVs of an announce part, still encoded: the same bytes are
/// what is parsed and what is emitted, so neither side allocates a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Members<'a>(&'a [u8]);

impl<'a> Members<'a> {
    /// Appends `id` as a MEMBER TLV to an encoded member block.
    pub fn push(block: &mut Vec<u8>, id: &str) {
        tlv::put(block, field::MEMBER, id.as_bytes());
    }

    /// The member blocks of one announce round: each at most `budget`
    /// bytes (unless one id alone is larger), at most
    /// [`MAX_ANNOUNCE_PARTS`] of them (ids beyond are left out, logged),
    /// and always at least one, so an empty list is announced too.
    pub fn split<'i>(ids: impl Iterator<Item = &'i str>, budget: usize) -> Vec<Vec<u8>> {
        let mut blocks = vec![Vec::new()];
        for id in ids {
            let full = blocks
                .last()
                .is_some_and(|b| !b.is_empty() && b.len() + tlv::HEADER_LEN + id.len() > budget);
            if full {
                if blocks.len() == usize::from(MAX_ANNOUNCE_PARTS) {
                    log::warn!("federation: too many members to announce; list truncated");
                    break;
                }
                blocks.push(Vec::new());
            }
            if let Some(b) = blocks.last_mut() {
                Self::push(b, id);
            }
        }
        blocks
    }

    /// Wraps a block built with [`Members::push`].
    pub fn from_block(block: &'a [u8]) -> Self {
        Members(block)
    }

    /// The member ids (a parsed block holds valid ids only).
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        Reader::new(self.0)
            .map_while(Result::ok)
            .filter(|t| t.kind == field::MEMBER)
            .filter_map(|t| member_id(t.value))
    }
}

/// What a message says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    /// A member of the origin relay sent `body`.
    Message {
        /// The member's id on its relay.
        sender_id: &'a str,
        /// The application bytes.
        body: &'a [u8],
    },
    /// A member joined the origin relay.
    Joined {
        /// Its id on that relay.
        id: &'a str,
    },
    /// A member left the origin relay.
    Left {
        /// Its id on that relay.
        id: &'a str,
        /// The REASON code (protocol §5).
        reason: u8,
    },
    /// Part `part` of `parts` of the origin's full member list, round
    /// `round`; a receiver that got every part of a round knows exactly
    /// who is there.
    Announce {
        /// Counts announces; all parts of one share it.
        round: u32,
        /// This part's index, from 0.
        part: u16,
        /// Parts in the round, 1..=[`MAX_ANNOUNCE_PARTS`].
        parts: u16,
        /// The members listed in this part.
        members: Members<'a>,
    },
}

/// A parsed federation plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FedMsg<'a> {
    /// Sender and sequence.
    pub header: Header<'a>,
    /// Content.
    pub kind: Kind<'a>,
}

/// Seen fields of one plaintext, before they are checked against the kind.
#[derive(Default)]
struct Seen<'a> {
    origin: Option<&'a [u8]>,
    instance: Option<&'a [u8]>,
    started: Option<&'a [u8]>,
    seq: Option<&'a [u8]>,
    kind: Option<&'a [u8]>,
    member: Option<&'a [u8]>,
    members: usize,
    body: Option<&'a [u8]>,
    reason: Option<&'a [u8]>,
    round: Option<&'a [u8]>,
}

fn u64_of(v: &[u8]) -> Result<u64, MsgError> {
    Ok(u64::from_be_bytes(
        v.try_into().map_err(|_| MsgError::BadField)?,
    ))
}

impl<'a> FedMsg<'a> {
    /// Parses and checks a plaintext. Unknown TLV types are skipped, so
    /// later versions can add fields.
    ///
    /// # Errors
    /// [`MsgError`] says which rule the plaintext broke.
    pub fn parse(plain: &'a [u8]) -> Result<Self, MsgError> {
        let mut s = Seen::default();
        for t in Reader::new(plain) {
            let t = t.map_err(|_| MsgError::Framing)?;
            let slot = match t.kind {
                field::ORIGIN => &mut s.origin,
                field::INSTANCE => &mut s.instance,
                field::STARTED => &mut s.started,
                field::SEQ => &mut s.seq,
                field::KIND => &mut s.kind,
                field::BODY => &mut s.body,
                field::REASON => &mut s.reason,
                field::ROUND => &mut s.round,
                field::MEMBER => {
                    member_id(t.value).ok_or(MsgError::BadField)?;
                    s.members += 1;
                    &mut s.member
                }
                _ => continue,
            };
            if slot.is_some() && t.kind != field::MEMBER {
                return Err(MsgError::Duplicate);
            }
            *slot = Some(t.value);
        }
        let need = |v: Option<&'a [u8]>| v.ok_or(MsgError::Shape);
        let origin = std::str::from_utf8(need(s.origin)?).map_err(|_| MsgError::BadField)?;
        if !valid_relay_name(origin) {
            return Err(MsgError::BadField);
        }
        let header = Header {
            origin,
            instance: u64_of(need(s.instance)?)?,
            started_ms: u64_of(need(s.started)?)?,
            seq: u64_of(need(s.seq)?)?,
        };
        if header.seq == 0 {
            return Err(MsgError::BadField);
        }
        let kind = match need(s.kind)? {
            [KIND_ANNOUNCE] => {
                let r: [u8; 8] = need(s.round)?.try_into().map_err(|_| MsgError::BadField)?;
                let round = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
                let part = u16::from_be_bytes([r[4], r[5]]);
                let parts = u16::from_be_bytes([r[6], r[7]]);
                if parts == 0 || parts > MAX_ANNOUNCE_PARTS || part >= parts {
                    return Err(MsgError::BadField);
                }
                if s.body.is_some() || s.reason.is_some() {
                    return Err(MsgError::Shape);
                }
                Kind::Announce {
                    round,
                    part,
                    parts,
                    members: Members(plain),
                }
            }
            [k @ (KIND_MESSAGE | KIND_JOINED | KIND_LEFT)] => {
                if s.members != 1 || s.round.is_some() {
                    return Err(if s.members > 1 {
                        MsgError::Duplicate
                    } else {
                        MsgError::Shape
                    });
                }
                let id = s.member.and_then(member_id).ok_or(MsgError::Shape)?;
                match (*k, s.body, s.reason) {
                    (KIND_MESSAGE, Some(body), None) => Kind::Message {
                        sender_id: id,
                        body,
                    },
                    (KIND_JOINED, None, None) => Kind::Joined { id },
                    (KIND_LEFT, None, Some(&[reason])) => Kind::Left { id, reason },
                    (KIND_LEFT, None, Some(_)) => return Err(MsgError::BadField),
                    _ => return Err(MsgError::Shape),
                }
            }
            _ => return Err(MsgError::BadField),
        };
        Ok(FedMsg { header, kind })
    }

    /// Appends the plaintext: header fields first, then the kind's.
    ///
    /// # Panics
    /// If a value exceeds a TLV's 65535 bytes (callers bound bodies and
    /// announce parts far below that).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let h = &self.header;
        tlv::put(out, field::ORIGIN, h.origin.as_bytes());
        tlv::put_u64(out, field::INSTANCE, h.instance);
        tlv::put_u64(out, field::STARTED, h.started_ms);
        tlv::put_u64(out, field::SEQ, h.seq);
        match self.kind {
            Kind::Message { sender_id, body } => {
                tlv::put_u8(out, field::KIND, KIND_MESSAGE);
                tlv::put(out, field::MEMBER, sender_id.as_bytes());
                tlv::put(out, field::BODY, body);
            }
            Kind::Joined { id } => {
                tlv::put_u8(out, field::KIND, KIND_JOINED);
                tlv::put(out, field::MEMBER, id.as_bytes());
            }
            Kind::Left { id, reason } => {
                tlv::put_u8(out, field::KIND, KIND_LEFT);
                tlv::put(out, field::MEMBER, id.as_bytes());
                tlv::put_u8(out, field::REASON, reason);
            }
            Kind::Announce {
                round,
                part,
                parts,
                members,
            } => {
                tlv::put_u8(out, field::KIND, KIND_ANNOUNCE);
                let mut r = [0u8; 8];
                r[..4].copy_from_slice(&round.to_be_bytes());
                r[4..6].copy_from_slice(&part.to_be_bytes());
                r[6..].copy_from_slice(&parts.to_be_bytes());
                tlv::put(out, field::ROUND, &r);
                // A parsed block is the whole plaintext: only its MEMBERs go out.
                for id in members.iter() {
                    Members::push(out, id);
                }
            }
        }
    }
}

/// Numbers and seals what this relay publishes.
pub struct Sealer {
    key: FernetKey,
    origin: String,
    instance: u64,
    started_ms: u64,
    next_seq: u64,
    plain: Vec<u8>,
}

impl Sealer {
    /// A sender named `origin` (a [`valid_relay_name`]) whose run started
    /// at `started_ms` (Unix ms) with the random id `instance`.
    pub fn new(key: FernetKey, origin: &str, instance: u64, started_ms: u64) -> Self {
        Sealer {
            key,
            origin: origin.to_owned(),
            instance,
            started_ms,
            next_seq: 1,
            plain: Vec::with_capacity(1024),
        }
    }

    /// Appends the raw token of the next message to `out`: numbered, then
    /// sealed at `unix_secs` (informational) under `iv` (the caller's
    /// CSPRNG).
    pub fn seal(&mut self, unix_secs: u64, iv: [u8; 16], kind: Kind<'_>, out: &mut Vec<u8>) {
        let msg = FedMsg {
            header: Header {
                origin: &self.origin,
                instance: self.instance,
                started_ms: self.started_ms,
                seq: self.next_seq,
            },
            kind,
        };
        self.next_seq += 1;
        self.plain.clear();
        msg.emit(&mut self.plain);
        self.key.seal_into(unix_secs, iv, &self.plain, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fernet;

    fn header(seq: u64) -> Header<'static> {
        Header {
            origin: "office",
            instance: 0x0102_0304_0506_0708,
            started_ms: 1_700_000_000_000,
            seq,
        }
    }

    fn bytes(m: &FedMsg<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        m.emit(&mut v);
        v
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The worked example of PROTOCOL.md, "Federation".
    #[test]
    fn golden_message_bytes() {
        let m = FedMsg {
            header: header(1),
            kind: Kind::Message {
                sender_id: "alice@192.0.2.10:40000",
                body: b"hi",
            },
        };
        let b = bytes(&m);
        let want = concat!(
            "030100066f6666696365",                                 // ORIGIN "office"
            "030200080102030405060708",                             // INSTANCE
            "030300080000018bcfe56800",                             // STARTED 1700000000000 ms
            "030400080000000000000001",                             // SEQ 1
            "0305000101",                                           // KIND 1 message
            "03060016616c696365403139322e302e322e31303a3430303030", // MEMBER
            "030700026869",                                         // BODY "hi"
        );
        assert_eq!(hex(&b), want);
        assert_eq!(FedMsg::parse(&b), Ok(m));
        assert_eq!(fernet::raw_len(b.len()), 25 + 96 + 32);
    }

    #[test]
    fn every_kind_round_trips() {
        let mut block = Vec::new();
        Members::push(&mut block, "a@1.2.3.4:5");
        Members::push(&mut block, "b");
        let kinds = [
            Kind::Joined { id: "a" },
            Kind::Left { id: "a", reason: 6 },
            Kind::Message {
                sender_id: "a",
                body: b"",
            },
            Kind::Announce {
                round: 9,
                part: 1,
                parts: 2,
                members: Members::from_block(&block),
            },
            Kind::Announce {
                round: 0,
                part: 0,
                parts: 1,
                members: Members::from_block(&[]),
            },
        ];
        for kind in kinds {
            let m = FedMsg {
                header: header(5),
                kind,
            };
            let b = bytes(&m);
            let p = FedMsg::parse(&b).unwrap();
            assert_eq!(p.header, m.header);
            match (p.kind, kind) {
                (Kind::Announce { members: a, .. }, Kind::Announce { members: w, .. }) => {
                    assert_eq!(a.iter().collect::<Vec<_>>(), w.iter().collect::<Vec<_>>());
                }
                (got, want) => assert_eq!(got, want),
            }
        }
    }

    #[test]
    fn announce_split() {
        let ids: Vec<String> = (0..10).map(|i| format!("id{i}")).collect();
        let blocks = Members::split(ids.iter().map(String::as_str), 3 * 7);
        assert_eq!(blocks.len(), 4, "three 7-byte TLVs per block");
        let back: Vec<&str> = blocks
            .iter()
            .flat_map(|b| Members::from_block(b).iter())
            .collect();
        assert_eq!(back, ids);
        assert_eq!(
            Members::split(std::iter::empty(), 100),
            vec![Vec::<u8>::new()]
        );
        let many = Members::split(ids.iter().map(String::as_str).cycle().take(1000), 1);
        assert_eq!(many.len(), usize::from(MAX_ANNOUNCE_PARTS));
    }

    /// Extra TLVs of a test plaintext.
    type Fields<'a> = &'a [(u16, &'a [u8])];

    #[test]
    fn rules() {
        let base = |kind: u8, extra: &[(u16, &[u8])]| {
            let mut v = Vec::new();
            tlv::put(&mut v, field::ORIGIN, b"r1");
            tlv::put_u64(&mut v, field::INSTANCE, 1);
            tlv::put_u64(&mut v, field::STARTED, 1);
            tlv::put_u64(&mut v, field::SEQ, 1);
            tlv::put_u8(&mut v, field::KIND, kind);
            for (k, val) in extra {
                tlv::put(&mut v, *k, val);
            }
            v
        };
        let m = field::MEMBER;
        let ok: &[(u8, Fields)] = &[
            (2, &[(m, b"a")]),
            (2, &[(m, b"a"), (0x0399, b"future field")]),
            (3, &[(m, b"a"), (field::REASON, &[6])]),
            (
                4,
                &[
                    (field::ROUND, &[0, 0, 0, 1, 0, 0, 0, 1]),
                    (m, b"a"),
                    (m, b"b"),
                ],
            ),
        ];
        for (kind, extra) in ok {
            assert!(
                FedMsg::parse(&base(*kind, extra)).is_ok(),
                "{kind} {extra:?}"
            );
        }
        let bad: &[(u8, Fields, MsgError)] = &[
            (2, &[], MsgError::Shape),
            (2, &[(m, b"a"), (m, b"b")], MsgError::Duplicate),
            (2, &[(m, b"")], MsgError::BadField),
            (2, &[(m, b"a\nb")], MsgError::BadField),
            (2, &[(m, b"\xff")], MsgError::BadField),
            (2, &[(m, b"a"), (field::BODY, b"x")], MsgError::Shape),
            (1, &[(m, b"a")], MsgError::Shape),
            (3, &[(m, b"a")], MsgError::Shape),
            (
                3,
                &[(m, b"a"), (field::REASON, &[6, 6])],
                MsgError::BadField,
            ),
            (4, &[(m, b"a")], MsgError::Shape),
            (
                4,
                &[(field::ROUND, &[0, 0, 0, 1, 0, 1, 0, 1])],
                MsgError::BadField,
            ),
            (
                4,
                &[(field::ROUND, &[0, 0, 0, 1, 0, 0, 0, 0])],
                MsgError::BadField,
            ),
            (
                4,
                &[(field::ROUND, &[0, 0, 0, 1, 0, 0, 1, 1])],
                MsgError::BadField,
            ),
            (9, &[(m, b"a")], MsgError::BadField),
            (2, &[(m, b"a"), (field::SEQ, &[0; 8])], MsgError::Duplicate),
        ];
        for (kind, extra, want) in bad {
            assert_eq!(
                FedMsg::parse(&base(*kind, extra)),
                Err(*want),
                "{kind} {extra:?}"
            );
        }
        let mut v = base(2, &[(m, b"a")]);
        v.push(0);
        assert_eq!(FedMsg::parse(&v), Err(MsgError::Framing));
        let mut v = Vec::new();
        tlv::put(&mut v, field::ORIGIN, b"a/b");
        assert_eq!(FedMsg::parse(&v), Err(MsgError::BadField));
        assert!(
            !valid_relay_name("a/b") && !valid_relay_name("") && valid_relay_name("site-1.x_y")
        );
        assert!(!valid_relay_name(&"a".repeat(65)));
    }

    #[test]
    fn random_plaintexts_never_panic() {
        let mut rng = crate::sim::testrng::XorShift::new(11);
        let mut good = Vec::new();
        FedMsg {
            header: header(3),
            kind: Kind::Left { id: "x", reason: 2 },
        }
        .emit(&mut good);
        for _ in 0..20_000 {
            let mut v = good.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.index(v.len());
                v[i] = rng.next() as u8;
            }
            v.truncate(rng.index(v.len() + 1));
            let _ = FedMsg::parse(&v);
        }
    }
}
