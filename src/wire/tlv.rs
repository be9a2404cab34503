//! TLV framing: `type u16 BE | length u16 BE | value`, back to back.
//!
//! The reader borrows the buffer and yields one TLV at a time; the first
//! framing error ends the stream, and callers treat the whole datagram as
//! malformed (protocol §2). Nothing here allocates or panics on input.

/// Size of a TLV header (type + length).
pub const HEADER_LEN: usize = 4;

/// Largest value a single TLV can carry.
pub const MAX_VALUE_LEN: usize = u16::MAX as usize;

/// One TLV borrowed from a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The type code.
    pub kind: u16,
    /// The value bytes (exactly `length` of them).
    pub value: &'a [u8],
}

/// The datagram's framing is broken: a TLV runs past the end, or 1–3 bytes trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// Iterates the TLVs of a buffer. After an error it yields nothing more.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Reader<'a> {
    /// Starts reading `buf` from its first byte.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            rest: buf,
            failed: false,
        }
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Tlv<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let Some((header, body)) = self.rest.split_first_chunk::<HEADER_LEN>() else {
            self.failed = true;
            return Some(Err(Malformed));
        };
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if body.len() < len {
            self.failed = true;
            return Some(Err(Malformed));
        }
        let (value, rest) = body.split_at(len);
        self.rest = rest;
        Some(Ok(Tlv { kind, value }))
    }
}

/// Checks that `buf` is a well-formed TLV stream, without looking at types.
pub fn validate(buf: &[u8]) -> Result<(), Malformed> {
    Reader::new(buf).try_for_each(|t| t.map(drop))
}

/// Appends one TLV to `out`. Values longer than [`MAX_VALUE_LEN`] are a caller
/// bug (every value the project builds is bounded far below it).
///
/// # Panics
/// If `value` is longer than [`MAX_VALUE_LEN`].
pub fn put(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(value.len()).expect("TLV value longer than 65535 bytes");
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

/// Appends a TLV whose value is a big-endian u64.
pub fn put_u64(out: &mut Vec<u8>, kind: u16, v: u64) {
    put(out, kind, &v.to_be_bytes());
}

/// Appends a TLV whose value is one byte.
pub fn put_u8(out: &mut Vec<u8>, kind: u16, v: u8) {
    put(out, kind, &[v]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        put(&mut buf, 1, b"abc");
        put(&mut buf, 0xffff, b"");
        put_u64(&mut buf, 0x0101, 7);
        let tlvs: Vec<_> = Reader::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(tlvs.len(), 3);
        assert_eq!(
            tlvs[0],
            Tlv {
                kind: 1,
                value: b"abc"
            }
        );
        assert_eq!(
            tlvs[1],
            Tlv {
                kind: 0xffff,
                value: b""
            }
        );
        assert_eq!(tlvs[2].value, &7u64.to_be_bytes());
    }

    #[test]
    fn golden_bytes() {
        let mut buf = Vec::new();
        put_u8(&mut buf, 0x0009, 1);
        assert_eq!(buf, [0x00, 0x09, 0x00, 0x01, 0x01]);
    }

    #[test]
    fn empty_buffer_is_an_empty_stream() {
        assert_eq!(validate(&[]), Ok(()));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        for trail in 1..=3 {
            let mut buf = Vec::new();
            put(&mut buf, 5, b"x");
            buf.extend(std::iter::repeat_n(0, trail));
            assert_eq!(validate(&buf), Err(Malformed), "{trail} trailing bytes");
        }
    }

    #[test]
    fn length_past_end_is_malformed_and_stops() {
        let buf = [0, 5, 0, 10, 1, 2, 3];
        let mut r = Reader::new(&buf);
        assert_eq!(r.next(), Some(Err(Malformed)));
        assert_eq!(r.next(), None);
    }
}
