//! The v2 bound handshake: the RSA plaintext of a SESSION_KEY2 is a TLV
//! stream (protocol v2 §3) naming the Fernet key, the cookie it was made
//! for (BIND), the capabilities asked for and an optional credential.
//!
//! BIND is what makes a captured handshake useless elsewhere: the server
//! refuses a SESSION_KEY2 whose BIND is not the COOKIE of its own datagram,
//! and a cookie is a MAC over the sender's address and the epoch.

use super::tlv::{self, Reader};
use super::{COOKIE_LEN, FERNET_KEY_LEN};

/// The 44-byte URL-safe base64 Fernet key. Mandatory.
pub const FERNET_KEY: u16 = 0x0201;
/// The 16-byte COOKIE of the datagram. Mandatory.
pub const BIND: u16 = 0x0202;
/// u32 BE capabilities asked for.
pub const CAPS: u16 = 0x0203;
/// The shared access token or a named client's token.
pub const CREDENTIAL: u16 = 0x0204;

/// Capability bit 0: group mode.
pub const CAP_GROUP: u32 = 1;
/// Capability bit 1: raw (binary) pairwise tokens.
pub const CAP_RAW: u32 = 2;

/// Longest CREDENTIAL: with the other fields it still fits one RSA-2048
/// OAEP-SHA256 block (190 bytes).
pub const MAX_CREDENTIAL_LEN: usize = 110;

/// A parsed handshake plaintext; fields borrow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake<'a> {
    /// The Fernet key text (44 bytes; decoded by the session layer).
    pub fernet_key: &'a [u8],
    /// The cookie this handshake was made for.
    pub bind: &'a [u8; COOKIE_LEN],
    /// Capabilities asked for (0 when absent).
    pub caps: u32,
    /// The credential, if any (1..=110 bytes).
    pub credential: Option<&'a [u8]>,
}

/// Why a handshake plaintext was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// TLV framing broken.
    Malformed,
    /// A type appeared twice.
    Duplicate,
    /// FERNET_KEY or BIND missing, or a field of the wrong size.
    BadField,
}

impl<'a> Handshake<'a> {
    /// Parses a SESSION_KEY2 plaintext; unknown types are ignored.
    ///
    /// # Errors
    /// [`HandshakeError`] naming the first rule broken.
    pub fn parse(plain: &'a [u8]) -> Result<Self, HandshakeError> {
        let (mut key, mut bind, mut caps, mut credential) = (None, None, None, None);
        for t in Reader::new(plain) {
            let t = t.map_err(|_| HandshakeError::Malformed)?;
            let slot_was_empty = match t.kind {
                FERNET_KEY => key.replace(t.value).is_none(),
                BIND => bind.replace(t.value).is_none(),
                CAPS => caps.replace(t.value).is_none(),
                CREDENTIAL => credential.replace(t.value).is_none(),
                _ => true,
            };
            if !slot_was_empty {
                return Err(HandshakeError::Duplicate);
            }
        }
        let fernet_key = key
            .filter(|k| k.len() == FERNET_KEY_LEN)
            .ok_or(HandshakeError::BadField)?;
        let bind = bind
            .and_then(|b| b.try_into().ok())
            .ok_or(HandshakeError::BadField)?;
        let caps = match caps {
            None => 0,
            Some(c) => u32::from_be_bytes(c.try_into().map_err(|_| HandshakeError::BadField)?),
        };
        if credential.is_some_and(|c| c.is_empty() || c.len() > MAX_CREDENTIAL_LEN) {
            return Err(HandshakeError::BadField);
        }
        Ok(Handshake {
            fernet_key,
            bind,
            caps,
            credential,
        })
    }

    /// Appends this handshake's plaintext to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        tlv::put(out, FERNET_KEY, self.fernet_key);
        tlv::put(out, BIND, self.bind);
        tlv::put(out, CAPS, &self.caps.to_be_bytes());
        if let Some(c) = self.credential {
            tlv::put(out, CREDENTIAL, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8; 44] = b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn round_trip_fits_one_rsa_block() {
        let h = Handshake {
            fernet_key: KEY,
            bind: &[7; 16],
            caps: CAP_GROUP | CAP_RAW,
            credential: Some(&[b'c'; MAX_CREDENTIAL_LEN]),
        };
        let mut p = Vec::new();
        h.emit(&mut p);
        assert!(p.len() <= 190, "{} bytes", p.len());
        assert_eq!(Handshake::parse(&p), Ok(h));
    }

    #[test]
    fn rules() {
        let mut p = Vec::new();
        tlv::put(&mut p, FERNET_KEY, KEY);
        assert_eq!(
            Handshake::parse(&p),
            Err(HandshakeError::BadField),
            "no BIND"
        );
        tlv::put(&mut p, BIND, &[1; 16]);
        tlv::put(&mut p, 0x0299, b"future field");
        let h = Handshake::parse(&p).unwrap();
        assert_eq!((h.caps, h.credential), (0, None));
        let mut dup = p.clone();
        tlv::put(&mut dup, BIND, &[1; 16]);
        assert_eq!(Handshake::parse(&dup), Err(HandshakeError::Duplicate));
        let mut bad = p.clone();
        tlv::put(&mut bad, CREDENTIAL, b"");
        assert_eq!(Handshake::parse(&bad), Err(HandshakeError::BadField));
        let mut short = Vec::new();
        tlv::put(&mut short, FERNET_KEY, KEY);
        tlv::put(&mut short, BIND, &[1; 15]);
        assert_eq!(Handshake::parse(&short), Err(HandshakeError::BadField));
        p.push(0);
        assert_eq!(Handshake::parse(&p), Err(HandshakeError::Malformed));
    }
}
