//! One received datagram, from bytes to handlers.
//!
//! The datagram is parsed once into a [`Datagram`] (linear in its size,
//! whatever it holds), then handled in a fixed order: its HELLO, its
//! SESSION_KEY, then its session items in datagram order. A [`Turn`] follows
//! the datagram through, including a payload reassembled from its fragment,
//! so that one datagram is answered with at most one SERVER_KEY+COOKIE and at
//! most one REJECT, however many TLVs it carries.

use std::net::SocketAddr;
use std::time::Instant;

use crate::relay::{Relay, Transmits};
use crate::wire::outer::{Datagram, Item, TokenKind};
use crate::wire::{self, RejectReason};

/// What one received datagram has been answered with so far.
pub(super) struct Turn {
    /// Where the datagram came from.
    pub(super) src: SocketAddr,
    /// A SERVER_KEY+COOKIE was queued for it.
    pub(super) answered: bool,
    /// A REJECT was queued for it, or refused by the REJECT limits.
    pub(super) rejected: bool,
}

impl Turn {
    pub(super) fn new(src: SocketAddr) -> Self {
        Turn {
            src,
            answered: false,
            rejected: false,
        }
    }
}

impl Relay {
    /// Handles a datagram, or the payload reassembled from a fragment of one
    /// (`reassembled`; it may not hold fragments itself).
    pub(super) fn handle_payload(
        &mut self,
        now: Instant,
        turn: &mut Turn,
        bytes: &[u8],
        reassembled: bool,
        out: &mut Transmits,
    ) {
        let d = match Datagram::parse(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.stats.malformed += 1;
                drop_debug!(
                    self,
                    now,
                    "malformed datagram ({} bytes, {e:?}) from {}",
                    bytes.len(),
                    turn.src
                );
                return;
            }
        };
        let server_types = usize::from(d.server_key.is_some()) + usize::from(d.reject.is_some());
        self.stats.unknown_types += (d.unknown + server_types) as u64;
        self.stats.repeated += d.repeated as u64;
        self.stats.too_many_items += d.overflow as u64;
        if let Some(version) = d.hello {
            self.handle_hello(now, turn, version, bytes.len(), out);
        }
        if let Some(k) = d.session_key {
            self.handle_session_key(now, turn, k, out);
        }
        if !d.has_items() {
            return;
        }
        if self.clients.lookup(&turn.src).is_none() {
            self.stats.strangers += 1;
            drop_debug!(self, now, "datagram from unregistered {}", turn.src);
            self.reject(now, turn, RejectReason::UnknownSession, out);
            return;
        }
        for item in d.items() {
            // Looked up again for each item: a BYE (or one inside a
            // reassembled payload) may have ended the session.
            let Some(slot) = self.clients.lookup(&turn.src) else {
                return;
            };
            match item {
                Item::Token(TokenKind::Welcome, _) => self.stats.unknown_types += 1,
                Item::Token(kind, token) => self.handle_token(now, slot, kind, token, out),
                // A fragment inside a reassembled message would let one message recurse.
                Item::Fragment(_) if reassembled => self.stats.malformed += 1,
                Item::Fragment(f) => self.handle_fragment(now, turn, slot, &f, out),
            }
        }
    }

    /// Queues a REJECT for the turn's source: one per datagram at most, and
    /// only within the per-source and global REJECT limits.
    pub(super) fn reject(
        &mut self,
        now: Instant,
        turn: &mut Turn,
        reason: RejectReason,
        out: &mut Transmits,
    ) {
        if std::mem::replace(&mut turn.rejected, true) {
            return;
        }
        let dst = turn.src;
        // Both limits: per source so one address cannot farm REJECTs, and
        // global so many spoofed sources cannot turn us into a reflector.
        if self.reject_limiter.try_take(now, &dst) && self.reject_budget.try_take(now) {
            let d = wire::reject_datagram(reason);
            out.push(dst, &d);
            self.stats.rejects_sent += 1;
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += d.len() as u64;
        } else {
            self.stats.rejects_suppressed += 1;
        }
    }
}
