//! Protocol v1 type codes and the inner (encrypted) message format.
//!
//! Outer TLVs frame datagrams; inner TLVs are the plaintext of a Fernet
//! token. [`Inner::parse`] enforces the §4 rules: SEQ present and 8 bytes,
//! every known type at most once, no framing errors.

pub mod fragment;
pub mod tlv;

use tlv::Reader;

/// Protocol version carried in HELLO.
pub const VERSION: u8 = 1;
/// Smallest HELLO datagram the server answers (anti-amplification).
pub const MIN_HELLO_LEN: usize = 256;
/// Length of an address-validation cookie.
pub const COOKIE_LEN: usize = 16;
/// Length of a URL-safe base64 Fernet key.
pub const FERNET_KEY_LEN: usize = 44;
/// Longest access token that fits next to the key in one RSA-2048 OAEP-SHA256 block.
pub const MAX_ACCESS_TOKEN_LEN: usize = 146;

/// Outer (datagram-level) type codes, protocol §3.
pub mod outer {
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
}

/// Inner (token plaintext) type codes, protocol §4.
pub mod inner {
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
}

/// REJECT reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The address has no session: handshake again.
    UnknownSession = 1,
    /// Bad key or access token.
    AuthFailed = 2,
    /// The client table is full.
    ServerFull = 3,
    /// The cookie was wrong or stale: send HELLO again.
    BadCookie = 4,
}

impl RejectReason {
    /// Decodes a reason byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::UnknownSession,
            2 => Self::AuthFailed,
            3 => Self::ServerFull,
            4 => Self::BadCookie,
            _ => return None,
        })
    }
}

/// Why a peer left, carried in REASON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client said BYE.
    Bye = 1,
    /// Nothing heard within the client timeout.
    Timeout = 2,
    /// An operator kicked it.
    Kicked = 3,
    /// The server is shutting down.
    Shutdown = 4,
}

impl LeaveReason {
    /// Decodes a reason byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Bye,
            2 => Self::Timeout,
            3 => Self::Kicked,
            4 => Self::Shutdown,
            _ => return None,
        })
    }

    /// Lower-case name for logs and UIs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bye => "bye",
            Self::Timeout => "timeout",
            Self::Kicked => "kicked",
            Self::Shutdown => "server shutdown",
        }
    }
}

/// Builds a REJECT datagram (5 bytes).
pub fn reject_datagram(reason: RejectReason) -> [u8; 5] {
    let [t0, t1] = outer::REJECT.to_be_bytes();
    [t0, t1, 0, 1, reason as u8]
}

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
            let bit = match t.kind.checked_sub(inner::SEQ) {
                Some(i @ 0..=7) => 1u16 << i,
                _ => continue,
            };
            if seen & bit != 0 {
                return Err(InnerError::Duplicate);
            }
            seen |= bit;
            let v = t.value;
            match t.kind {
                inner::SEQ => {
                    let b: [u8; 8] = v.try_into().map_err(|_| InnerError::BadField)?;
                    out.seq = u64::from_be_bytes(b);
                    have_seq = true;
                }
                inner::BODY => out.body = Some(v),
                inner::SENDER_ID => out.sender_id = Some(v),
                inner::CLIENT_ID => out.client_id = Some(v),
                inner::PEER_JOINED => out.peer_joined = Some(v),
                inner::PEER_LEFT => out.peer_left = Some(v),
                inner::REASON => match v {
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
    tlv::put_u64(out, inner::SEQ, seq);
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
    fn relay_plaintext_parses() {
        let p = plain(&[
            (inner::SEQ, &9u64.to_be_bytes()),
            (inner::SENDER_ID, b"1.2.3.4:5"),
            (inner::BODY, b"hi"),
        ]);
        let m = Inner::parse(&p).unwrap();
        assert_eq!(m.seq, 9);
        assert_eq!(m.sender_id, Some(&b"1.2.3.4:5"[..]));
        assert_eq!(m.body, Some(&b"hi"[..]));
    }

    #[test]
    fn seq_is_mandatory_and_8_bytes() {
        assert_eq!(
            Inner::parse(&plain(&[(inner::BODY, b"x")])),
            Err(InnerError::BadField)
        );
        assert_eq!(
            Inner::parse(&plain(&[(inner::SEQ, b"1234")])),
            Err(InnerError::BadField)
        );
    }

    #[test]
    fn duplicates_refused() {
        let s = 1u64.to_be_bytes();
        let p = plain(&[(inner::SEQ, &s), (inner::BODY, b"a"), (inner::BODY, b"b")]);
        assert_eq!(Inner::parse(&p), Err(InnerError::Duplicate));
        let p = plain(&[(inner::SEQ, &s), (inner::SEQ, &s)]);
        assert_eq!(Inner::parse(&p), Err(InnerError::Duplicate));
    }

    #[test]
    fn trailing_bytes_refused() {
        let mut p = plain(&[(inner::SEQ, &1u64.to_be_bytes())]);
        p.push(0);
        assert_eq!(Inner::parse(&p), Err(InnerError::Malformed));
    }

    #[test]
    fn reason_must_be_one_byte() {
        let p = plain(&[(inner::SEQ, &1u64.to_be_bytes()), (inner::REASON, b"")]);
        assert_eq!(Inner::parse(&p), Err(InnerError::BadField));
    }

    #[test]
    fn reject_bytes() {
        assert_eq!(reject_datagram(RejectReason::BadCookie), [0, 9, 0, 1, 4]);
    }
}
