//! The inner message: the plaintext of a Fernet token is a TLV stream
//! (protocol §4). [`Inner::parse`] enforces the rules: SEQ present and 8
//! bytes, every known type at most once, no framing errors.

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

/// Why an inner plaintext was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerError {
    /// TLV framing broken.
    Malformed,
    /// No SEQ, or SEQ not 8 bytes, or REASON not 1 byte.
    BadField,
    /// A type appeared twice.
    Duplicate,
}

/// A parsed token plaintext; fields borrow the plaintext.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inner<'a> {
    /// Sequence number (mandatory).
    pub seq: u64,
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
}

impl<'a> Inner<'a> {
    /// Parses and validates a plaintext. Unknown inner types are skipped so
    /// that later versions can add fields.
    pub fn parse(plain: &'a [u8]) -> Result<Self, InnerError> {
        let mut out = Inner::default();
        let mut seen: u16 = 0; // one bit per known inner type
        let mut have_seq = false;
        for t in Reader::new(plain) {
            let t = t.map_err(|_| InnerError::Malformed)?;
            let bit = match t.kind.checked_sub(SEQ) {
                Some(i @ 0..=7) => 1u16 << i,
                _ => continue,
            };
            if seen & bit != 0 {
                return Err(InnerError::Duplicate);
            }
            seen |= bit;
            let v = t.value;
            match t.kind {
                SEQ => {
                    let b: [u8; 8] = v.try_into().map_err(|_| InnerError::BadField)?;
                    out.seq = u64::from_be_bytes(b);
                    have_seq = true;
                }
                BODY => out.body = Some(v),
                SENDER_ID => out.sender_id = Some(v),
                CLIENT_ID => out.client_id = Some(v),
                PEER_JOINED => out.peer_joined = Some(v),
                PEER_LEFT => out.peer_left = Some(v),
                REASON => match v {
                    [r] => out.reason = Some(*r),
                    _ => return Err(InnerError::BadField),
                },
                _ => out.server_closing = true,
            }
        }
        if have_seq {
            Ok(out)
        } else {
            Err(InnerError::BadField)
        }
    }
}

/// Appends the mandatory SEQ TLV that starts every plaintext.
pub fn put_seq(out: &mut Vec<u8>, seq: u64) {
    tlv::put_u64(out, SEQ, seq);
}
