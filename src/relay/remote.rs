//! Inputs from other relays of a federation, and the local messages handed
//! out for them.
//!
//! The shell owns the federation link; the core only sees what it says:
//! a remote member's message, join or leave ([`RemoteInput`]), announced to
//! local members exactly like a local one (group members get one
//! GROUP_DATA, the others their own DATA), under the remote id `RELAY/ID`
//! the link gives. A remote member is no group member here, so its
//! coming and going moves no group key. With `Config::federation` on, each
//! relayed local message also comes out as [`Event::Relayed`] for the
//! shell to publish; off, no body is copied.

use std::time::Instant;

use crate::relay::drop::Drop;
use crate::relay::{Event, Relay, Transmits};
use crate::wire::{inner, tlv};

/// What the federation link reports about a member of another relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteInput<'a> {
    /// It sent a message.
    Message {
        /// `RELAY/ID`: the SENDER_ID local members see.
        sender_id: &'a str,
        /// The application bytes.
        body: &'a [u8],
    },
    /// It joined (or was first heard of).
    Joined {
        /// `RELAY/ID`.
        id: &'a str,
    },
    /// It left, with this REASON byte.
    Left {
        /// `RELAY/ID`.
        id: &'a str,
        /// The REASON code (protocol v2: 6 when its relay went silent).
        reason: u8,
    },
}

impl Relay {
    /// Announces what another relay's member did to every local member.
    /// A message too long to carry with its SENDER_ID is dropped and
    /// counted as oversize, like a local one.
    pub fn handle_remote(&mut self, now: Instant, input: RemoteInput<'_>, out: &mut Transmits) {
        self.clock = now;
        self.unix.advance(now);
        self.rotate_cookies(now);
        // Before the tail is built: settling may send notices.
        self.settle(out);
        self.tail.clear();
        match input {
            RemoteInput::Message { sender_id, body } => {
                tlv::put(&mut self.tail, inner::SENDER_ID, sender_id.as_bytes());
                if body.len() + self.tail.len() + tlv::HEADER_LEN > tlv::MAX_VALUE_LEN {
                    self.dropped(None, Drop::Oversize, 1, out);
                    return;
                }
                tlv::put(&mut self.tail, inner::BODY, body);
                match self.broadcast(None, out) {
                    Ok(n) => self.stats.deliveries += n as u64,
                    Err(why) => self.dropped(None, why, 1, out),
                }
            }
            RemoteInput::Joined { id } => {
                tlv::put(&mut self.tail, inner::PEER_JOINED, id.as_bytes());
                self.notify(None, out);
            }
            RemoteInput::Left { id, reason } => {
                tlv::put(&mut self.tail, inner::PEER_LEFT, id.as_bytes());
                tlv::put_u8(&mut self.tail, inner::REASON, reason);
                self.notify(None, out);
            }
        }
    }

    /// A local member's message was relayed: hand it to the federation
    /// (only when it is on, so a relay alone copies no body).
    pub(super) fn relayed(&mut self, slot: usize, body: &[u8]) {
        if !self.config.federation {
            return;
        }
        if let Some(c) = self.clients.get(slot) {
            self.events.push(Event::Relayed {
                sender: c.id_text.clone(),
                body: body.to_vec(),
            });
        }
    }
}
