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

use crate::relay::drop::Drop;
use crate::relay::{Relay, Transmits};
use crate::wire::outer::{Datagram, Item, TokenKind};

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
            Err(e) => return self.dropped(Some(turn), e.into(), 1, out),
        };
        let server_types = usize::from(d.server_key.is_some()) + usize::from(d.reject.is_some());
        self.dropped(Some(turn), Drop::ServerToClient, server_types, out);
        self.dropped(Some(turn), Drop::UnknownType, d.unknown, out);
        self.dropped(Some(turn), Drop::Repeated, d.repeated, out);
        self.dropped(Some(turn), Drop::TooManyItems, d.overflow, out);
        if let Some(version) = d.hello {
            if let Err(why) = self.handle_hello(turn, version, bytes.len(), out) {
                self.dropped(Some(turn), why, 1, out);
            }
        }
        // One handshake per datagram: a SESSION_KEY2 (v2) wins over a
        // SESSION_KEY beside it, so one datagram costs one RSA decryption.
        let handshake = match (d.session_key2, d.session_key) {
            (Some(k2), k1) => {
                self.dropped(Some(turn), Drop::Repeated, usize::from(k1.is_some()), out);
                Some((k2, true))
            }
            (None, k1) => k1.map(|k| (k, false)),
        };
        if let Some((k, bound)) = handshake {
            if let Err(why) = self.handle_session_key(now, turn.src, k, bound, out) {
                self.dropped(Some(turn), why, 1, out);
            }
        }
        if !d.has_items() {
            return;
        }
        if self.clients.lookup(&turn.src).is_none() {
            return self.dropped(Some(turn), Drop::Stranger, 1, out);
        }
        for (i, item) in d.items().enumerate() {
            // Looked up again for each item: a BYE (or one inside a
            // reassembled payload) may have ended the session.
            let Some(slot) = self.clients.lookup(&turn.src) else {
                let rest = d.items().count() - i;
                return self.dropped(Some(turn), Drop::AfterBye, rest, out);
            };
            let r = match item {
                // The server sends these; it never takes them (v2 §2: a
                // server drops any GROUP_DATA it receives).
                Item::Token(TokenKind::Welcome, _) | Item::Group(_) => Err(Drop::ServerToClient),
                Item::Token(kind, token) => self.handle_token(now, slot, kind, token, out),
                // A fragment inside a reassembled message would let one message recurse.
                Item::Fragment(_) if reassembled => Err(Drop::NestedFragment),
                Item::Fragment(f) => self.handle_fragment(now, turn, slot, &f, out),
            };
            if let Err(why) = r {
                self.dropped(Some(turn), why, 1, out);
            }
        }
    }
}
