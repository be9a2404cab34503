//! FRAGMENT (outer type 0x0006) value codec: parse a fragment header, split
//! an oversized datagram into FRAGMENT datagrams. No state: reassembly lives
//! in `crate::reassembly`.
//!
//! A FRAGMENT TLV value is `msg_id u32 BE | index u16 BE | count u16 BE | chunk`;
//! chunks `0..count` concatenated form one datagram payload.

use super::outer::FRAGMENT;
use super::tlv::HEADER_LEN as TLV_HEADER_LEN;

/// Bytes a fragment datagram spends on headers: 4 (TLV) + 8 (msg_id, index, count).
pub const FRAGMENT_OVERHEAD: usize = TLV_HEADER_LEN + FRAGMENT_HEADER_LEN;

/// Bytes of `msg_id | index | count` at the start of a FRAGMENT value.
pub const FRAGMENT_HEADER_LEN: usize = 8;

/// Largest chunk one FRAGMENT TLV can carry: its u16 length field also covers
/// the 8 header bytes, so `split` never exceeds this even for huge `max_datagram`.
pub const MAX_CHUNK_LEN: usize = u16::MAX as usize - FRAGMENT_HEADER_LEN;

/// One parsed FRAGMENT value, borrowing its chunk from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentHeader<'a> {
    /// Sender-chosen id shared by all fragments of one message.
    pub msg_id: u32,
    /// Position of this chunk, `0..count`.
    pub index: u16,
    /// Number of chunks the sender claims; untrusted, never used to size memory.
    pub count: u16,
    /// The chunk bytes (non-empty when produced by [`parse_fragment`]).
    pub chunk: &'a [u8],
}

/// Parses a FRAGMENT TLV *value* (not the TLV header). None if shorter than 8 bytes, count == 0, or empty chunk.
///
/// `index >= count` is *not* rejected here: the reassembler must see it so it
/// can discard the rest of that message.
pub fn parse_fragment(value: &[u8]) -> Option<FragmentHeader<'_>> {
    let (head, chunk) = value.split_first_chunk::<FRAGMENT_HEADER_LEN>()?;
    let msg_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let index = u16::from_be_bytes([head[4], head[5]]);
    let count = u16::from_be_bytes([head[6], head[7]]);
    if count == 0 || chunk.is_empty() {
        return None;
    }
    Some(FragmentHeader {
        msg_id,
        index,
        count,
        chunk,
    })
}

/// Splits `payload` into fragment datagrams of at most `max_datagram` bytes each, calling `emit` once per
/// datagram in index order. Returns the number of fragments, or None (emitting nothing) if it would need
/// more than 65535 fragments or max_datagram <= FRAGMENT_OVERHEAD. Uses one reused scratch buffer (no allocation per fragment).
///
/// An empty payload returns `Some(0)` and emits nothing: the wire format has
/// no way to express it (count 0 and empty chunks are malformed), and an empty
/// payload never needs fragmenting anyway. A payload that would fit in one
/// datagram still yields one `count == 1` fragment; deciding whether to
/// fragment at all is the caller's job. Chunks are capped at
/// [`MAX_CHUNK_LEN`] so the TLV length field cannot overflow.
pub fn split(
    payload: &[u8],
    max_datagram: usize,
    msg_id: u32,
    mut emit: impl FnMut(&[u8]),
) -> Option<usize> {
    let room = max_datagram
        .checked_sub(FRAGMENT_OVERHEAD)
        .filter(|&room| room > 0)?;
    let chunk_len = room.min(MAX_CHUNK_LEN);
    let n = payload.len().div_ceil(chunk_len);
    let count = u16::try_from(n).ok()?;
    let mut buf =
        Vec::with_capacity(FRAGMENT_OVERHEAD.saturating_add(chunk_len.min(payload.len())));
    // `n <= u16::MAX` chunks, so zipping with every u16 never cuts the payload short.
    for (index, chunk) in (0..=u16::MAX).zip(payload.chunks(chunk_len)) {
        // The fallback is unreachable: chunk.len() <= MAX_CHUNK_LEN = u16::MAX - FRAGMENT_HEADER_LEN.
        let value_len =
            u16::try_from(FRAGMENT_HEADER_LEN.saturating_add(chunk.len())).unwrap_or(u16::MAX);
        buf.clear();
        buf.extend_from_slice(&FRAGMENT.to_be_bytes());
        buf.extend_from_slice(&value_len.to_be_bytes());
        buf.extend_from_slice(&msg_id.to_be_bytes());
        buf.extend_from_slice(&index.to_be_bytes());
        buf.extend_from_slice(&count.to_be_bytes());
        buf.extend_from_slice(chunk);
        debug_assert_eq!(buf.len(), TLV_HEADER_LEN + usize::from(value_len));
        emit(&buf);
    }
    Some(n)
}
