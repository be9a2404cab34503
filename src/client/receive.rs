//! What [`ClientCore`] makes of a datagram from the server: one parse of
//! the outer items, tokens opened under the established or pending session,
//! held group datagrams released, messages and notices turned into events.

use std::time::Instant;

use super::{ClientCore, ClientError, ClientEvent, Opened, State};
use crate::reassembly::Outcome;
use crate::session::Direction;
use crate::wire::handshake::CAP_GROUP;
use crate::wire::outer::{Datagram, Item, TokenKind};
use crate::wire::{Inner, RejectReason};

impl ClientCore {
    /// Handles a datagram from the server: events go to `events`, replies
    /// (the SESSION_KEY) to `out`.
    ///
    /// # Errors
    /// [`ClientError::PinMismatch`] when the datagram's SERVER_KEY was
    /// ignored because of the pin. Nothing is wrong with the core: the
    /// handshake goes on waiting for the pinned key, so callers log or
    /// count it and carry on.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        data: &[u8],
        out: &mut Vec<Vec<u8>>,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        self.clock.advance(now);
        self.handle_payload(now, data, false, out, events)
    }

    pub(super) fn handle_payload(
        &mut self,
        now: Instant,
        data: &[u8],
        reassembled: bool,
        out: &mut Vec<Vec<u8>>,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        // One pass over the bytes; a broken datagram is dropped as a whole.
        let Ok(d) = Datagram::parse(data) else {
            self.dropped += 1;
            return Ok(());
        };
        if d.overflow > 0 {
            self.dropped += 1; // more session items than any server sends
        }
        let mut result = Ok(());
        if let Some(k) = d.server_key {
            result = self.on_server_key(k, d.versions, out, events);
        }
        if let Some(r) = d.reject.and_then(RejectReason::from_u8) {
            self.on_reject(r, events);
        }
        for item in d.items() {
            match item {
                Item::Token(kind @ (TokenKind::Welcome | TokenKind::Data), token) => {
                    self.on_token(now, kind, token, events)
                }
                // KEEPALIVE and BYE only travel towards the server.
                Item::Token(TokenKind::Keepalive | TokenKind::Bye, _) => {}
                Item::Fragment(f) if !reassembled => {
                    self.reassembler.expire(now);
                    match self.reassembler.insert(now, 0, &f) {
                        Outcome::Complete(p) => {
                            let r = self.handle_payload(now, &p, true, out, events);
                            result = result.and(r);
                        }
                        Outcome::Incomplete => {}
                        Outcome::Dropped(_) => self.dropped += 1,
                    }
                }
                // A fragment inside a reassembled message would let one message recurse.
                Item::Fragment(_) => self.dropped += 1,
                // GROUP_DATA comes on the downlink, not on the session socket.
                Item::Group(_) => self.dropped += 1,
            }
        }
        result
    }

    /// Opens a token with the established session, or with the pending
    /// one (only a WELCOME while there is no established session).
    pub(super) fn open(&mut self, kind: TokenKind, token: &[u8]) -> Option<(Vec<u8>, Opened)> {
        let (established, pending) = match &mut self.state {
            State::Idle => (None, None),
            State::Connecting(a) => (
                None,
                a.session.as_mut().filter(|_| kind == TokenKind::Welcome),
            ),
            State::Established { session, rekey, .. } => (
                Some(session),
                rekey.as_mut().and_then(|a| a.session.as_mut()),
            ),
        };
        if let Some(Ok(plain)) = established.map(|s| s.open(token, Direction::ToClient)) {
            return Some((plain, Opened::Established));
        }
        let plain = pending?.open(token, Direction::ToClient).ok()?;
        Some((plain, Opened::Pending))
    }

    /// Delivers held group datagrams a GROUP_KEY released, in order.
    pub(super) fn release(&mut self, released: Vec<Vec<u8>>, events: &mut Vec<ClientEvent>) {
        for plain in released {
            self.downlink_stats.released += 1;
            self.on_group_plain(&plain, events);
        }
    }

    pub(super) fn on_token(
        &mut self,
        now: Instant,
        kind: TokenKind,
        token: &[u8],
        events: &mut Vec<ClientEvent>,
    ) {
        let Some((plain, by)) = self.open(kind, token) else {
            self.dropped += 1;
            return;
        };
        self.seen.authentic += 1;
        let Ok(m) = Inner::parse(&plain) else { return };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match by {
            Opened::Pending => {
                if kind == TokenKind::Welcome {
                    let id = text(m.client_id.unwrap_or_default());
                    self.promote(now, id, Some(&m), events);
                    return;
                }
                // A DATA under the new key: its WELCOME was lost. That
                // completes a re-key of a known id that did not ask for
                // GROUP; otherwise the WELCOME carries what we lack (our id,
                // the group's key, downlink and signer): the token is
                // dropped and the handshake's retry brings a WELCOME.
                let asked_group = self
                    .attempt()
                    .and_then(|a| a.asked)
                    .is_some_and(|caps| caps & CAP_GROUP != 0);
                let Some(id) = self.id().filter(|_| !asked_group).map(str::to_owned) else {
                    self.dropped += 1;
                    return;
                };
                self.promote(now, id, None, events);
            }
            Opened::Established => {
                if let State::Established { rekey, .. } = &mut self.state {
                    if rekey.as_ref().is_some_and(|a| a.session.is_none()) {
                        *rekey = None; // the server still knows us: the hint was false
                    }
                }
                if kind == TokenKind::Welcome {
                    events.push(ClientEvent::Welcome {
                        id: text(m.client_id.unwrap_or_default()),
                    });
                    return;
                }
            }
        }
        if let (Some((epoch, key)), Some(g)) = (m.group_key, &mut self.group) {
            // A rekey, or the answer to a KEY_REQUEST.
            let released = g.member.set_key(now, epoch, key);
            self.release(released, events);
        }
        self.notice(&m, events);
    }
}
