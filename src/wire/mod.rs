//! Bytes to values and back: no state, no clock, no crypto.
//!
//! - [`tlv`]: the framing both layers share.
//! - [`outer`]: datagram-level type codes and [`outer::Datagram`], the
//!   one-pass typed view of a received datagram.
//! - [`inner`]: token plaintext type codes and [`Inner`], its parsed form.
//! - [`fragment`]: the FRAGMENT header codec and the splitter.
//!
//! This module holds the constants, reason codes and datagram builders
//! both ends use.

pub mod fragment;
pub mod group;
pub mod handshake;
pub mod inner;
pub mod outer;
pub mod tlv;

pub use inner::{put_seq, Inner, InnerError};

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
    /// Its credentials were revoked.
    Revoked = 5,
    /// It was a member of a federated relay that went silent.
    Unreachable = 6,
}

impl LeaveReason {
    /// Decodes a reason byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Bye,
            2 => Self::Timeout,
            3 => Self::Kicked,
            4 => Self::Shutdown,
            5 => Self::Revoked,
            6 => Self::Unreachable,
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
            Self::Revoked => "revoked",
            Self::Unreachable => "unreachable",
        }
    }
}

/// Length of a REJECT datagram: one TLV with a one-byte reason.
pub const REJECT_LEN: usize = tlv::HEADER_LEN + 1;

/// Builds a REJECT datagram.
pub fn reject_datagram(reason: RejectReason) -> [u8; REJECT_LEN] {
    let [t0, t1] = outer::REJECT.to_be_bytes();
    [t0, t1, 0, 1, reason as u8]
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
