//! The inner message: the plaintext of a Fernet token is a TLV stream
//! (protocol §4, and v2 §3-§4 for the group fields). [`Inner::parse`]
//! enforces the rules: exactly one of SEQ (pairwise tokens) or GSEQ (group
//! tokens), 8 bytes; every known type at most once; fixed-size fields of
//! their size; no framing errors.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::tlv::{self, Reader};

// Inner (token plaintext) type codes, protocol §4.

/// u64 BE sequence number.
pub const SEQ: u16 = 0x0101;
/// Application bytes.
pub const BODY: u16 = 0x0102;
/// Id of the original sender of a relayed BODY.
pub const SENDER_ID: u16 = 0x0103;
/// Id the server assigned to the receiver.
pub const CLIENT_ID: u16 = 0x0104;
/// Id of a client that joined.
pub const PEER_JOINED: u16 = 0x0105;
/// Id of a client that left (followed by REASON).
pub const PEER_LEFT: u16 = 0x0106;
/// Why a peer left.
pub const REASON: u16 = 0x0107;
/// The server is shutting down.
pub const SERVER_CLOSING: u16 = 0x0108;
/// v2 WELCOME: u32 BE capabilities granted.
pub const CAPS: u16 = 0x0109;
/// v2: `epoch u32 BE | 44-byte Fernet key` of the group.
pub const GROUP_KEY: u16 = 0x010A;
/// v2 WELCOME: `family u8 | address | port u16 BE` of the downlink.
pub const GROUP_ADDR: u16 = 0x010B;
/// v2 WELCOME: the 32-byte Ed25519 key that signs GROUP_DATA.
pub const GROUP_SIGNER: u16 = 0x010C;
/// v2 group tokens: u64 BE group sequence number, in place of SEQ.
pub const GSEQ: u16 = 0x010D;
/// v2 KEEPALIVE: u32 BE epoch whose key the member lacks.
pub const KEY_REQUEST: u16 = 0x010E;
/// v2: downlink probe (empty).
pub const PROBE: u16 = 0x010F;

/// Length of a GROUP_KEY value.
pub const GROUP_KEY_LEN: usize = 4 + 44;
/// Length of an Ed25519 public key (GROUP_SIGNER).
pub const SIGNER_LEN: usize = 32;

/// Why an inner plaintext was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerError {
    /// TLV framing broken.
    Malformed,
    /// No SEQ or GSEQ, both, or a fixed-size field of the wrong size.
    BadField,
    /// A type appeared twice.
    Duplicate,
}

/// A parsed token plaintext; fields borrow the plaintext.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inner<'a> {
    /// Sequence number: SEQ, or GSEQ when [`Inner::gseq`] (one is mandatory).
    pub seq: u64,
    /// True when the sequence number came from GSEQ (a group token).
    pub gseq: bool,
    /// Application bytes.
    pub body: Option<&'a [u8]>,
    /// Original sender of a relayed body.
    pub sender_id: Option<&'a [u8]>,
    /// The receiver's own id (WELCOME).
    pub client_id: Option<&'a [u8]>,
    /// A peer that joined.
    pub peer_joined: Option<&'a [u8]>,
    /// A peer that left.
    pub peer_left: Option<&'a [u8]>,
    /// Reason byte that goes with PEER_LEFT.
    pub reason: Option<u8>,
    /// SERVER_CLOSING was present.
    pub server_closing: bool,
    /// v2 capabilities granted (WELCOME).
    pub caps: Option<u32>,
    /// v2 group key: epoch and the 44-byte Fernet key text.
    pub group_key: Option<(u32, &'a [u8])>,
    /// v2 downlink address (WELCOME).
    pub group_addr: Option<SocketAddr>,
    /// v2 Ed25519 public key of the group signer (WELCOME).
    pub group_signer: Option<&'a [u8]>,
    /// v2 key request: the oldest epoch the member holds datagrams for.
    pub key_request: Option<u32>,
    /// v2 PROBE was present.
    pub probe: bool,
}

impl<'a> Inner<'a> {
    /// Parses and validates a plaintext. Unknown inner types are skipped so
    /// that later versions can add fields.
    pub fn parse(plain: &'a [u8]) -> Result<Self, InnerError> {
        let mut out = Inner::default();
        let mut seen: u16 = 0; // one bit per known inner type
        for t in Reader::new(plain) {
            let t = t.map_err(|_| InnerError::Malformed)?;
            let bit = match t.kind.checked_sub(SEQ) {
                Some(i @ 0..=14) => 1u16 << i,
                _ => continue,
            };
            if seen & bit != 0 {
                return Err(InnerError::Duplicate);
            }
            seen |= bit;
            let v = t.value;
            match t.kind {
                SEQ | GSEQ => {
                    out.seq = u64::from_be_bytes(fixed(v)?);
                    out.gseq = t.kind == GSEQ;
                }
                BODY => out.body = Some(v),
                SENDER_ID => out.sender_id = Some(v),
                CLIENT_ID => out.client_id = Some(v),
                PEER_JOINED => out.peer_joined = Some(v),
                PEER_LEFT => out.peer_left = Some(v),
                REASON => out.reason = Some(u8::from_be_bytes(fixed(v)?)),
                SERVER_CLOSING => out.server_closing = true,
                CAPS => out.caps = Some(u32::from_be_bytes(fixed(v)?)),
                GROUP_KEY => {
                    let (epoch, key) = v.split_first_chunk::<4>().ok_or(InnerError::BadField)?;
                    if v.len() != GROUP_KEY_LEN {
                        return Err(InnerError::BadField);
                    }
                    out.group_key = Some((u32::from_be_bytes(*epoch), key));
                }
                GROUP_ADDR => out.group_addr = Some(parse_group_addr(v)?),
                GROUP_SIGNER if v.len() == SIGNER_LEN => out.group_signer = Some(v),
                GROUP_SIGNER => return Err(InnerError::BadField),
                KEY_REQUEST => out.key_request = Some(u32::from_be_bytes(fixed(v)?)),
                _ => out.probe = true,
            }
        }
        // Exactly one of SEQ and GSEQ.
        let seqs = seen & (1 << (GSEQ - SEQ) | 1);
        if seqs.count_ones() == 1 {
            Ok(out)
        } else {
            Err(InnerError::BadField)
        }
    }
}

/// A fixed-size value, or BadField.
fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N], InnerError> {
    v.try_into().map_err(|_| InnerError::BadField)
}

/// Decodes a GROUP_ADDR value: `family u8 (4 or 6) | address | port u16 BE`.
pub fn parse_group_addr(v: &[u8]) -> Result<SocketAddr, InnerError> {
    let ip: IpAddr = match v {
        [4, rest @ ..] if rest.len() == 4 + 2 => Ipv4Addr::from(fixed::<4>(&rest[..4])?).into(),
        [6, rest @ ..] if rest.len() == 16 + 2 => Ipv6Addr::from(fixed::<16>(&rest[..16])?).into(),
        _ => return Err(InnerError::BadField),
    };
    let port = u16::from_be_bytes(fixed(&v[v.len() - 2..])?);
    Ok(SocketAddr::new(ip, port))
}

/// Appends a GROUP_ADDR TLV for `addr`.
pub fn put_group_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    let mut v = Vec::with_capacity(19);
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(4);
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(6);
            v.extend_from_slice(&ip.octets());
        }
    }
    v.extend_from_slice(&addr.port().to_be_bytes());
    tlv::put(out, GROUP_ADDR, &v);
}

/// Appends a GROUP_KEY TLV: `epoch u32 BE | key`.
///
/// # Panics
/// If `key` is not the 44-byte base64 text of a Fernet key (a caller bug).
pub fn put_group_key(out: &mut Vec<u8>, epoch: u32, key: &[u8]) {
    assert_eq!(
        key.len() + 4,
        GROUP_KEY_LEN,
        "a Fernet key is 44 bytes of text"
    );
    let mut v = [0u8; GROUP_KEY_LEN];
    v[..4].copy_from_slice(&epoch.to_be_bytes());
    v[4..].copy_from_slice(key);
    tlv::put(out, GROUP_KEY, &v);
}

/// Appends the GSEQ TLV that starts every group plaintext.
pub fn put_gseq(out: &mut Vec<u8>, gseq: u64) {
    tlv::put_u64(out, GSEQ, gseq);
}

/// Appends the mandatory SEQ TLV that starts every plaintext.
pub fn put_seq(out: &mut Vec<u8>, seq: u64) {
    tlv::put_u64(out, SEQ, seq);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(parts: &[(u16, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, val) in parts {
            tlv::put(&mut v, *k, val);
        }
        v
    }

    #[test]
    fn group_fields_parse_and_gseq_replaces_seq() {
        let mut p = Vec::new();
        put_gseq(&mut p, 7);
        tlv::put(&mut p, CAPS, &3u32.to_be_bytes());
        put_group_key(&mut p, 9, &[b'k'; 44]);
        put_group_addr(&mut p, "[ff02::77]:5009".parse().unwrap());
        tlv::put(&mut p, GROUP_SIGNER, &[1; 32]);
        tlv::put(&mut p, KEY_REQUEST, &5u32.to_be_bytes());
        tlv::put(&mut p, PROBE, &[]);
        let m = Inner::parse(&p).unwrap();
        assert_eq!((m.seq, m.gseq, m.caps), (7, true, Some(3)));
        assert_eq!(m.group_key, Some((9, &[b'k'; 44][..])));
        assert_eq!(m.group_addr, Some("[ff02::77]:5009".parse().unwrap()));
        assert_eq!(m.group_signer, Some(&[1; 32][..]));
        assert_eq!((m.key_request, m.probe), (Some(5), true));

        let mut v4 = Vec::new();
        put_seq(&mut v4, 1);
        put_group_addr(&mut v4, "239.255.0.77:5009".parse().unwrap());
        assert_eq!(
            Inner::parse(&v4).unwrap().group_addr,
            Some("239.255.0.77:5009".parse().unwrap())
        );
    }

    #[test]
    fn seq_and_gseq_are_exclusive_and_sizes_are_checked() {
        let s = 1u64.to_be_bytes();
        let both = plain(&[(SEQ, &s), (GSEQ, &s)]);
        assert_eq!(Inner::parse(&both), Err(InnerError::BadField));
        for (kind, bad) in [
            (GROUP_KEY, &[0u8; 47][..]),
            (GROUP_SIGNER, &[0; 31]),
            (CAPS, &[0; 3]),
            (KEY_REQUEST, &[0; 5]),
            (GROUP_ADDR, &[4, 1, 2, 3, 4, 0]),
            (GROUP_ADDR, &[5, 1, 2, 3, 4, 0, 1]),
        ] {
            let p = plain(&[(SEQ, &s), (kind, bad)]);
            assert_eq!(Inner::parse(&p), Err(InnerError::BadField), "{kind:#x}");
        }
    }
}
