//! Fuzz bodies, kept in the library so that the corpus under `fuzz/corpus/`
//! replays as an ordinary `cargo test` (`tests/fuzz_corpus.rs`) and the
//! cargo-fuzz targets under `fuzz/` stay one-line wrappers.
//!
//! Every function takes arbitrary bytes, must never panic on them, and
//! panics (with a message saying which invariant broke) only when the code
//! under test misbehaves. Not part of the public API.

mod program;
mod reassembly;

use std::collections::HashSet;

use crate::wire::tlv::{self, Reader};
use crate::wire::{self, inner, Inner, InnerError};

pub use self::program::{core, core_report, CoreReport};
pub use self::reassembly::reassembly;

/// A cursor over the fuzz input. Every read returns `None` once the input
/// is used up, which ends the program being decoded.
struct ByteReader<'a> {
    rest: &'a [u8],
}

impl<'a> ByteReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        ByteReader { rest: data }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }

    fn u64(&mut self) -> Option<u64> {
        Some((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        head
    }

    /// A length byte, then that many bytes (scaled by `unit`).
    fn blob(&mut self, unit: usize) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?).saturating_mul(unit);
        Some(self.take(n))
    }
}

// ---------------------------------------------------------------------------
// tlv

/// TLV reader and [`tlv::validate`] on arbitrary bytes.
///
/// Checks that the reader never panics, that `validate` succeeds exactly when
/// the reader yields no error, that after an error the reader yields nothing
/// more, that the TLVs read tile the consumed prefix exactly, and that
/// re-encoding a valid stream with [`tlv::put`] reproduces the input.
pub fn tlv(data: &[u8]) {
    let mut reader = Reader::new(data);
    let mut tlvs = Vec::new();
    let mut failed = false;
    for item in reader.by_ref() {
        match item {
            Ok(t) => {
                assert!(!failed, "TLV yielded after an error");
                tlvs.push(t);
            }
            Err(tlv::Malformed) => {
                assert!(!failed, "two errors from one reader");
                failed = true;
            }
        }
    }
    assert_eq!(reader.next(), None, "reader resumed after the end");
    assert_eq!(
        tlv::validate(data).is_ok(),
        !failed,
        "validate disagrees with the reader"
    );
    let consumed: usize = tlvs.iter().map(|t| tlv::HEADER_LEN + t.value.len()).sum();
    let mut again = Vec::with_capacity(consumed);
    for t in &tlvs {
        assert!(t.value.len() <= tlv::MAX_VALUE_LEN);
        tlv::put(&mut again, t.kind, t.value);
    }
    if failed {
        // The good prefix re-encodes to itself; what follows cannot be framed.
        assert!(consumed < data.len(), "error with nothing left to read");
        assert_eq!(&data[..consumed], &again[..], "prefix does not round-trip");
    } else {
        assert_eq!(again, data, "valid stream does not round-trip");
    }
}

// ---------------------------------------------------------------------------
// inner

/// [`wire::Inner::parse`] on arbitrary bytes, against a reference model.
///
/// The model walks the TLVs in order like the protocol text (§4) describes:
/// the first framing error, duplicate known type or badly sized SEQ/REASON
/// decides the error; otherwise SEQ must be present. Accepted plaintexts
/// are re-encoded canonically and must parse to the same value.
pub fn inner(data: &[u8]) {
    let got = Inner::parse(data);
    let want = inner_model(data);
    assert_eq!(got, want, "Inner::parse disagrees with the model");
    if let Ok(m) = got {
        assert!(tlv::validate(data).is_ok(), "accepted a malformed stream");
        let mut p = Vec::new();
        if m.gseq {
            inner::put_gseq(&mut p, m.seq);
        } else {
            wire::put_seq(&mut p, m.seq);
        }
        let fields = [
            (inner::BODY, m.body),
            (inner::SENDER_ID, m.sender_id),
            (inner::CLIENT_ID, m.client_id),
            (inner::PEER_JOINED, m.peer_joined),
            (inner::PEER_LEFT, m.peer_left),
        ];
        for (kind, v) in fields {
            if let Some(v) = v {
                tlv::put(&mut p, kind, v);
            }
        }
        if let Some(r) = m.reason {
            tlv::put_u8(&mut p, inner::REASON, r);
        }
        if m.server_closing {
            tlv::put(&mut p, inner::SERVER_CLOSING, &[]);
        }
        if let Some(c) = m.caps {
            tlv::put(&mut p, inner::CAPS, &c.to_be_bytes());
        }
        if let Some((epoch, key)) = m.group_key {
            inner::put_group_key(&mut p, epoch, key);
        }
        if let Some(a) = m.group_addr {
            inner::put_group_addr(&mut p, a);
        }
        if let Some(k) = m.group_signer {
            tlv::put(&mut p, inner::GROUP_SIGNER, k);
        }
        if let Some(e) = m.key_request {
            tlv::put(&mut p, inner::KEY_REQUEST, &e.to_be_bytes());
        }
        if m.probe {
            tlv::put(&mut p, inner::PROBE, &[]);
        }
        assert_eq!(
            Inner::parse(&p),
            Ok(m),
            "canonical form does not round-trip"
        );
    }
}

fn inner_model(data: &[u8]) -> Result<Inner<'_>, InnerError> {
    let mut out = Inner::default();
    let mut seen = HashSet::new();
    for t in Reader::new(data) {
        let Ok(t) = t else {
            return Err(InnerError::Malformed);
        };
        if !(inner::SEQ..=inner::PROBE).contains(&t.kind) {
            continue; // unknown inner types are skipped
        }
        if !seen.insert(t.kind) {
            return Err(InnerError::Duplicate);
        }
        let v = t.value;
        let u32_of = |v: &[u8]| -> Result<u32, InnerError> {
            Ok(u32::from_be_bytes(
                v.try_into().map_err(|_| InnerError::BadField)?,
            ))
        };
        match t.kind {
            inner::SEQ | inner::GSEQ if v.len() == 8 => {
                let mut b = [0; 8];
                b.copy_from_slice(v);
                out.seq = u64::from_be_bytes(b);
                out.gseq = t.kind == inner::GSEQ;
            }
            inner::SEQ | inner::GSEQ => return Err(InnerError::BadField),
            inner::BODY => out.body = Some(v),
            inner::SENDER_ID => out.sender_id = Some(v),
            inner::CLIENT_ID => out.client_id = Some(v),
            inner::PEER_JOINED => out.peer_joined = Some(v),
            inner::PEER_LEFT => out.peer_left = Some(v),
            inner::REASON if v.len() == 1 => out.reason = Some(v[0]),
            inner::REASON => return Err(InnerError::BadField),
            inner::SERVER_CLOSING => out.server_closing = true,
            inner::CAPS => out.caps = Some(u32_of(v)?),
            inner::GROUP_KEY if v.len() == inner::GROUP_KEY_LEN => {
                out.group_key = Some((u32_of(&v[..4])?, &v[4..]));
            }
            inner::GROUP_KEY => return Err(InnerError::BadField),
            inner::GROUP_ADDR => out.group_addr = Some(inner::parse_group_addr(v)?),
            inner::GROUP_SIGNER if v.len() == inner::SIGNER_LEN => out.group_signer = Some(v),
            inner::GROUP_SIGNER => return Err(InnerError::BadField),
            inner::KEY_REQUEST => out.key_request = Some(u32_of(v)?),
            _ => out.probe = true,
        }
    }
    if seen.contains(&inner::SEQ) != seen.contains(&inner::GSEQ) {
        Ok(out)
    } else {
        Err(InnerError::BadField)
    }
}
