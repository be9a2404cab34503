//! The outer datagram, parsed once: [`Datagram::parse`] walks the TLVs a
//! single time and returns a typed, bounded view that both cores act on.
//!
//! Why one pass and a fixed shape: a datagram is untrusted and may hold
//! thousands of tiny TLVs. Handlers that rescan the bytes for a companion
//! TLV (the COOKIE of a SESSION_KEY) turn such a datagram into quadratic
//! work, and handlers that answer every HELLO turn one datagram into many
//! answers. So the parser keeps the *first* TLV of each handshake type (the
//! protocol never needs two), pairs a SESSION_KEY or SERVER_KEY with the
//! datagram's COOKIE wherever it sits, keeps session items (tokens and
//! fragments) in order up to [`MAX_ITEMS`], and only counts the rest.
//! Nothing here allocates, and the work is linear in the datagram's size.

use super::fragment::{parse_fragment, FragmentHeader};
use super::group::GroupData;
use super::tlv::{Malformed, Reader};
use super::COOKIE_LEN;

// Outer (datagram-level) type codes, protocol §3.

/// c→s: version byte and padding.
pub const HELLO: u16 = 0x0001;
/// s→c: DER SubjectPublicKeyInfo of the server key.
pub const SERVER_KEY: u16 = 0x0002;
/// c→s: RSA-OAEP ciphertext of the Fernet key (+ access token).
pub const SESSION_KEY: u16 = 0x0003;
/// s→c: key confirmation token.
pub const WELCOME: u16 = 0x0004;
/// both: application data token.
pub const DATA: u16 = 0x0005;
/// both: one piece of a larger datagram.
pub const FRAGMENT: u16 = 0x0006;
/// c→s: liveness token.
pub const KEEPALIVE: u16 = 0x0007;
/// c→s: leaving token.
pub const BYE: u16 = 0x0008;
/// s→c: plaintext refusal with a reason byte.
pub const REJECT: u16 = 0x0009;
/// both: address-validation cookie.
pub const COOKIE: u16 = 0x000A;
/// v2 c→s: RSA-OAEP ciphertext of a bound handshake (`wire::handshake`).
pub const SESSION_KEY2: u16 = 0x000B;
/// v2 s→group: one signed group token for every member (`wire::group`).
pub const GROUP_DATA: u16 = 0x000C;
/// v2 s→c: the protocol versions the server speaks, one byte each.
pub const VERSIONS: u16 = 0x000D;

/// Session items (tokens and fragments) one datagram may carry. A client
/// sends one per datagram; the bound keeps a datagram of thousands of empty
/// tokens from costing thousands of decryption attempts.
pub const MAX_ITEMS: usize = 16;

/// The outer types that carry a Fernet token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// s→c key confirmation.
    Welcome,
    /// Application data or a notice.
    Data,
    /// c→s liveness.
    Keepalive,
    /// c→s leaving.
    Bye,
}

impl TokenKind {
    /// The outer type code.
    pub fn code(self) -> u16 {
        match self {
            TokenKind::Welcome => WELCOME,
            TokenKind::Data => DATA,
            TokenKind::Keepalive => KEEPALIVE,
            TokenKind::Bye => BYE,
        }
    }
}

/// A session item, in datagram order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A Fernet token of this kind (not yet authenticated).
    Token(TokenKind, &'a [u8]),
    /// One fragment of a larger datagram (header checked, chunk non-empty).
    Fragment(FragmentHeader<'a>),
    /// A v2 GROUP_DATA (header checked; signature not yet verified).
    Group(GroupData<'a>),
}

/// A handshake request or answer: the first of its type in the datagram,
/// with the datagram's first COOKIE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keyed<'a> {
    /// The SESSION_KEY ciphertext or the SERVER_KEY DER.
    pub value: &'a [u8],
    /// The COOKIE that came with it, if any (any length: the receiver checks it).
    pub cookie: Option<&'a [u8]>,
}

/// Why a datagram was refused as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// TLV framing broken: a length past the end, or 1–3 trailing bytes.
    Framing,
    /// A FRAGMENT value shorter than its header, with count 0 or no chunk.
    BadFragment,
    /// A REJECT whose value is not one reason byte.
    BadReject,
    /// A GROUP_DATA value shorter than its header, or with no token.
    BadGroupData,
}

impl From<Malformed> for WireError {
    fn from(_: Malformed) -> Self {
        WireError::Framing
    }
}

/// One outer datagram as the cores see it.
#[derive(Clone, Debug)]
pub struct Datagram<'a> {
    /// The version byte of the first HELLO (`Some(None)`: a HELLO with an
    /// empty value).
    pub hello: Option<Option<u8>>,
    /// The first SESSION_KEY and the datagram's COOKIE.
    pub session_key: Option<Keyed<'a>>,
    /// The first SESSION_KEY2 (v2 bound handshake) and the datagram's COOKIE.
    pub session_key2: Option<Keyed<'a>>,
    /// The first SERVER_KEY and the datagram's COOKIE.
    pub server_key: Option<Keyed<'a>>,
    /// The first VERSIONS value (v2 servers send it with SERVER_KEY).
    pub versions: Option<&'a [u8]>,
    /// The reason byte of the first REJECT.
    pub reject: Option<u8>,
    /// Handshake-type TLVs after the first of their type (ignored).
    pub repeated: usize,
    /// TLVs of types this version does not know (skipped).
    pub unknown: usize,
    /// Session items beyond [`MAX_ITEMS`] (dropped).
    pub overflow: usize,
    items: [Option<Item<'a>>; MAX_ITEMS],
    len: usize,
}

impl<'a> Datagram<'a> {
    /// Parses `bytes` in one pass.
    ///
    /// # Errors
    /// [`WireError`] when the framing or a fixed-format value is broken;
    /// the whole datagram is then to be dropped.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let mut d = Datagram {
            hello: None,
            session_key: None,
            session_key2: None,
            server_key: None,
            versions: None,
            reject: None,
            repeated: 0,
            unknown: 0,
            overflow: 0,
            items: [None; MAX_ITEMS],
            len: 0,
        };
        let mut cookie: Option<&'a [u8]> = None;
        for tlv in Reader::new(bytes) {
            let tlv = tlv?;
            let v = tlv.value;
            let token = |kind| Item::Token(kind, v);
            match tlv.kind {
                HELLO => first(&mut d.hello, v.first().copied(), &mut d.repeated),
                COOKIE => first(&mut cookie, v, &mut d.repeated),
                SESSION_KEY => first(
                    &mut d.session_key,
                    Keyed {
                        value: v,
                        cookie: None,
                    },
                    &mut d.repeated,
                ),
                SESSION_KEY2 => first(
                    &mut d.session_key2,
                    Keyed {
                        value: v,
                        cookie: None,
                    },
                    &mut d.repeated,
                ),
                VERSIONS => first(&mut d.versions, v, &mut d.repeated),
                SERVER_KEY => first(
                    &mut d.server_key,
                    Keyed {
                        value: v,
                        cookie: None,
                    },
                    &mut d.repeated,
                ),
                REJECT => match v {
                    [r] => first(&mut d.reject, *r, &mut d.repeated),
                    _ => return Err(WireError::BadReject),
                },
                WELCOME => d.push(token(TokenKind::Welcome)),
                DATA => d.push(token(TokenKind::Data)),
                KEEPALIVE => d.push(token(TokenKind::Keepalive)),
                BYE => d.push(token(TokenKind::Bye)),
                FRAGMENT => {
                    let f = parse_fragment(v).ok_or(WireError::BadFragment)?;
                    d.push(Item::Fragment(f));
                }
                GROUP_DATA => {
                    let g = GroupData::parse(v).ok_or(WireError::BadGroupData)?;
                    d.push(Item::Group(g));
                }
                _ => d.unknown += 1,
            }
        }
        for k in [&mut d.session_key, &mut d.session_key2, &mut d.server_key]
            .into_iter()
            .flatten()
        {
            k.cookie = cookie;
        }
        Ok(d)
    }

    fn push(&mut self, item: Item<'a>) {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(item);
                self.len += 1;
            }
            None => self.overflow += 1,
        }
    }

    /// The session items, in datagram order.
    pub fn items(&self) -> impl Iterator<Item = Item<'a>> + '_ {
        self.items[..self.len].iter().flatten().copied()
    }

    /// True when the datagram carries session items (tokens or fragments).
    pub fn has_items(&self) -> bool {
        self.len > 0 || self.overflow > 0
    }

    /// True when the COOKIE of `k` has the protocol's length.
    pub fn cookie_len_ok(k: &Keyed<'_>) -> bool {
        k.cookie.is_some_and(|c| c.len() == COOKIE_LEN)
    }
}

/// Keeps the first value of a handshake type; counts any later one.
fn first<T>(slot: &mut Option<T>, value: T, repeated: &mut usize) {
    if slot.is_none() {
        *slot = Some(value);
    } else {
        *repeated += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tlv::put;

    fn datagram(parts: &[(u16, &[u8])]) -> Vec<u8> {
        let mut d = Vec::new();
        for (k, v) in parts {
            put(&mut d, *k, v);
        }
        d
    }

    #[test]
    fn cookie_pairs_with_session_key_in_either_order() {
        for parts in [
            [(COOKIE, &b"c"[..]), (SESSION_KEY, b"k")],
            [(SESSION_KEY, b"k"), (COOKIE, b"c")],
        ] {
            let b = datagram(&parts);
            let d = Datagram::parse(&b).unwrap();
            let k = d.session_key.unwrap();
            assert_eq!((k.value, k.cookie), (&b"k"[..], Some(&b"c"[..])));
            assert!(!d.has_items());
        }
    }

    #[test]
    fn only_the_first_of_each_handshake_type_counts() {
        let mut parts = vec![(HELLO, &[1u8][..]); 51];
        parts.push((HELLO, &[9]));
        parts.push((SESSION_KEY, b"a"));
        parts.push((SESSION_KEY, b"b"));
        let b = datagram(&parts);
        let d = Datagram::parse(&b).unwrap();
        assert_eq!(d.hello, Some(Some(1)));
        assert_eq!(d.session_key.unwrap().value, b"a");
        assert_eq!(d.repeated, 52);
    }

    #[test]
    fn items_keep_order_and_are_bounded() {
        let frag = [0, 0, 0, 7, 0, 0, 0, 1, 0xAA];
        let mut parts = vec![
            (DATA, &b"t1"[..]),
            (FRAGMENT, &frag[..]),
            (0x7777, b"?"),
            (BYE, b"t2"),
        ];
        parts.extend(std::iter::repeat_n((KEEPALIVE, &b""[..]), 20));
        let b = datagram(&parts);
        let d = Datagram::parse(&b).unwrap();
        let items: Vec<_> = d.items().collect();
        assert_eq!(items.len(), MAX_ITEMS);
        assert_eq!(items[0], Item::Token(TokenKind::Data, b"t1"));
        assert!(matches!(items[1], Item::Fragment(f) if f.msg_id == 7 && f.chunk == [0xAA]));
        assert_eq!(items[2], Item::Token(TokenKind::Bye, b"t2"));
        assert_eq!((d.unknown, d.overflow), (1, 20 + 3 - MAX_ITEMS));
    }

    #[test]
    fn broken_values_refuse_the_datagram() {
        let b = datagram(&[(FRAGMENT, &[0, 0, 0, 1, 0, 0, 0, 0, 5])]);
        assert_eq!(Datagram::parse(&b).err(), Some(WireError::BadFragment));
        let b = datagram(&[(REJECT, &[1, 2])]);
        assert_eq!(Datagram::parse(&b).err(), Some(WireError::BadReject));
        let mut b = datagram(&[(DATA, b"x")]);
        b.push(0);
        assert_eq!(Datagram::parse(&b).err(), Some(WireError::Framing));
    }

    #[test]
    fn many_tiny_tlvs_parse_in_linear_time() {
        // 16,376 empty SESSION_KEYs: the shape that used to cost a rescan each.
        let b = datagram(&vec![(SESSION_KEY, &b""[..]); 16_376]);
        let d = Datagram::parse(&b).unwrap();
        assert_eq!(d.repeated, 16_375);
        assert!(d.session_key.is_some_and(|k| k.cookie.is_none()));
    }
}
