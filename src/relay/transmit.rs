//! The relay's output: [`Transmits`], the batch of datagrams the shell sends
//! after each input, and the emitter that frames tokens into outer
//! datagrams, fragmenting those over the configured maximum.

use std::net::SocketAddr;

use crate::relay::clients::Client;
use crate::relay::stats::Stats;
use crate::wire::fragment;
use crate::wire::tlv;

/// Datagrams to send, packed into one reusable buffer.
#[derive(Default)]
pub struct Transmits {
    buf: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
}

impl Transmits {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues one datagram.
    pub fn push(&mut self, dst: SocketAddr, datagram: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(datagram);
        self.items.push((dst, start, datagram.len()));
    }

    /// The queued datagrams in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (SocketAddr, &[u8])> + Clone + '_ {
        self.items
            .iter()
            .map(|&(dst, start, len)| (dst, &self.buf[start..start + len]))
    }

    /// Number of queued datagrams.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }
}

/// A token that cannot be framed: longer than one TLV can carry, or than
/// 65,535 fragments can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Oversize;

/// Builds outer datagrams and fragments those that are too large.
pub(super) struct Emitter {
    pub(super) max_datagram: usize,
    pub(super) next_msg_id: u32,
    /// The last outer TLV built by [`Emitter::token`] (before fragmenting).
    pub(super) datagram: Vec<u8>,
}

impl Emitter {
    /// Wraps `token` in an outer TLV of type `kind` and queues it for `dst`,
    /// fragmenting as needed. Returns the bytes queued; the TLV stays in
    /// `self.datagram` until the next call.
    pub(super) fn token(
        &mut self,
        dst: SocketAddr,
        kind: u16,
        token: &[u8],
        out: &mut Transmits,
        stats: &mut Stats,
    ) -> Result<usize, Oversize> {
        if token.len() > tlv::MAX_VALUE_LEN {
            return Err(Oversize);
        }
        self.datagram.clear();
        tlv::put(&mut self.datagram, kind, token);
        let Emitter {
            datagram,
            max_datagram,
            next_msg_id,
            ..
        } = self;
        emit(dst, datagram, *max_datagram, next_msg_id, out, stats)
    }

    /// [`Emitter::token`] to client `c`, counted in its totals.
    pub(super) fn token_to(
        &mut self,
        c: &mut Client,
        kind: u16,
        token: &[u8],
        out: &mut Transmits,
        stats: &mut Stats,
    ) -> Result<usize, Oversize> {
        let n = self.token(c.id.addr(), kind, token, out, stats)?;
        c.count_out(n);
        Ok(n)
    }

    /// Queues an outer TLV built earlier (a stored WELCOME) as
    /// [`Emitter::token`] would: the same bytes when it fits one datagram.
    pub(super) fn again(
        &mut self,
        dst: SocketAddr,
        datagram: &[u8],
        out: &mut Transmits,
        stats: &mut Stats,
    ) -> Result<usize, Oversize> {
        let max = self.max_datagram;
        emit(dst, datagram, max, &mut self.next_msg_id, out, stats)
    }
}

/// Queues the outer TLVs in `datagram` for `dst`: as they are when they
/// fit `max_datagram`, else as FRAGMENTs of message `next_msg_id` (which
/// then moves on). Returns the bytes queued.
pub(super) fn emit(
    dst: SocketAddr,
    datagram: &[u8],
    max_datagram: usize,
    next_msg_id: &mut u32,
    out: &mut Transmits,
    stats: &mut Stats,
) -> Result<usize, Oversize> {
    let len = datagram.len();
    if len <= max_datagram {
        out.push(dst, datagram);
        stats.datagrams_out += 1;
        stats.bytes_out += len as u64;
        return Ok(len);
    }
    let msg_id = *next_msg_id;
    *next_msg_id = next_msg_id.wrapping_add(1);
    let mut sent = 0usize;
    let n = fragment::split(datagram, max_datagram, msg_id, |d| {
        out.push(dst, d);
        sent += d.len();
    })
    .ok_or(Oversize)?;
    stats.datagrams_out += n as u64;
    stats.fragments_out += n as u64;
    stats.bytes_out += sent as u64;
    Ok(sent)
}
