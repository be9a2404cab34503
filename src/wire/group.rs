//! GROUP_DATA (outer 0x000C, protocol v2 §4): `epoch u32 BE | Ed25519
//! signature (64) | raw Fernet token`, sent once to the downlink group for
//! every member. The signature covers `"mcrelay-v2 group" | epoch | token`,
//! so a member, who holds the group key too, still cannot forge the server.

use super::outer::GROUP_DATA;
use super::tlv;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes before the token: epoch and signature.
pub const HEADER_LEN: usize = 4 + SIGNATURE_LEN;
/// What the signature's message starts with (domain separation).
pub const SIGNING_CONTEXT: &[u8] = b"mcrelay-v2 group";

/// A GROUP_DATA value, borrowing the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupData<'a> {
    /// The group key epoch the token is sealed under.
    pub epoch: u32,
    /// Ed25519 signature by the group signer.
    pub signature: &'a [u8; SIGNATURE_LEN],
    /// The raw Fernet token.
    pub token: &'a [u8],
}

impl<'a> GroupData<'a> {
    /// Parses a GROUP_DATA value; `None` when shorter than its header or
    /// with an empty token.
    pub fn parse(value: &'a [u8]) -> Option<Self> {
        let (epoch, rest) = value.split_first_chunk::<4>()?;
        let (signature, token) = rest.split_first_chunk::<SIGNATURE_LEN>()?;
        if token.is_empty() {
            return None;
        }
        Some(GroupData {
            epoch: u32::from_be_bytes(*epoch),
            signature,
            token,
        })
    }

    /// The bytes the signature covers, written into `out` (cleared first).
    pub fn signed_message(epoch: u32, token: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(SIGNING_CONTEXT);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(token);
    }

    /// Appends the whole GROUP_DATA TLV to `out`.
    ///
    /// # Panics
    /// If the token is longer than a TLV can carry (a caller bug: tokens
    /// are built from bounded bodies).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let len = HEADER_LEN + self.token.len();
        let len = u16::try_from(len).expect("GROUP_DATA longer than a TLV");
        out.extend_from_slice(&GROUP_DATA.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(self.signature);
        out.extend_from_slice(self.token);
        debug_assert!(out.len() >= tlv::HEADER_LEN + HEADER_LEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tlv::Reader;

    #[test]
    fn round_trip_and_bounds() {
        let sig = [9u8; SIGNATURE_LEN];
        let g = GroupData {
            epoch: 3,
            signature: &sig,
            token: b"\x80token",
        };
        let mut d = Vec::new();
        g.emit(&mut d);
        let t = Reader::new(&d).next().unwrap().unwrap();
        assert_eq!(t.kind, GROUP_DATA);
        assert_eq!(GroupData::parse(t.value), Some(g));
        assert_eq!(GroupData::parse(&t.value[..HEADER_LEN]), None);
        assert_eq!(GroupData::parse(&[0; 3]), None);
        let mut m = Vec::new();
        GroupData::signed_message(3, b"tok", &mut m);
        assert_eq!(m, b"mcrelay-v2 group\x00\x00\x00\x03tok");
    }
}
