//! What members send once registered: tokens (DATA relayed to every other
//! member, KEEPALIVE, BYE), fragments reassembled into payloads, and the
//! fan-out that seals one plaintext tail for each receiver outside group
//! mode (group members get the one GROUP_DATA of `group`). Leaving (BYE,
//! timeout, kick) lives here too, since it is announced by fan-out.

use std::time::Instant;

use log::info;

use rand::RngExt;

use crate::reassembly::Outcome;
use crate::relay::dispatch::Turn;
use crate::relay::drop::Drop;
use crate::relay::{Event, Relay, Transmits};
use crate::session::Direction;
use crate::wire::fragment::FragmentHeader;
use crate::wire::outer::TokenKind;
use crate::wire::{inner, tlv, Inner, LeaveReason};

impl Relay {
    /// Opens a token from the member in `slot` and acts on it.
    pub(super) fn handle_token(
        &mut self,
        now: Instant,
        slot: usize,
        kind: TokenKind,
        token: &[u8],
        out: &mut Transmits,
    ) -> Result<(), Drop> {
        let Some(c) = self.clients.get_mut(slot) else {
            return Err(Drop::Stranger);
        };
        let plain = c.session.open(token, Direction::ToServer)?;
        c.last_seen = now;
        c.msgs_in += 1;
        c.bytes_in += token.len() as u64;
        match kind {
            // A `sub` client's DATA: refused, its session kept (v2 §5).
            TokenKind::Data if !c.perms.publish => return Err(Drop::Forbidden),
            TokenKind::Data => {
                let body = Inner::parse(&plain)?.body.ok_or(Drop::NoBody)?;
                // Before the tail is built: settling may send notices.
                self.settle(out);
                let Some(c) = self.clients.get(slot) else {
                    return Err(Drop::Stranger);
                };
                self.tail.clear();
                tlv::put(&mut self.tail, inner::SENDER_ID, c.id_text.as_bytes());
                if body.len() + self.tail.len() + tlv::HEADER_LEN > tlv::MAX_VALUE_LEN {
                    return Err(Drop::Oversize);
                }
                tlv::put(&mut self.tail, inner::BODY, body);
                self.stats.messages_relayed += 1;
                let n = self.broadcast(Some(slot), out)?;
                self.stats.deliveries += n as u64;
                self.relayed(slot, body);
            }
            TokenKind::Bye => self.remove(slot, LeaveReason::Bye),
            // KEEPALIVE: last_seen, and in v2 a member's KEY_REQUEST or
            // PROBE. WELCOME never gets here.
            TokenKind::Keepalive => {
                let m = Inner::parse(&plain)?;
                if m.key_request.is_some() || m.probe {
                    self.group_request(now, slot, m.key_request, m.probe, out)?;
                }
            }
            TokenKind::Welcome => {}
        }
        Ok(())
    }

    /// Buffers a fragment from the member in `slot`; a completed payload is
    /// handled as part of the same turn.
    pub(super) fn handle_fragment(
        &mut self,
        now: Instant,
        turn: &mut Turn,
        slot: usize,
        frag: &FragmentHeader<'_>,
        out: &mut Transmits,
    ) -> Result<(), Drop> {
        let owner = self
            .clients
            .get(slot)
            .map(|c| c.generation)
            .ok_or(Drop::Stranger)?;
        self.stats.fragments_in += 1;
        let outcome = self.reassembler.insert(now, owner, frag);
        // Evictions made room for this fragment: partials of this or another
        // client were dropped, and no datagram of theirs is to be answered.
        for (r, n) in self.reassembler.take_evictions() {
            self.dropped(None, r.into(), n as usize, out);
        }
        match outcome {
            Outcome::Incomplete => self.schedule_gc(),
            Outcome::Dropped(r) => return Err(r.into()),
            Outcome::Complete(payload) => {
                self.stats.reassembled += 1;
                self.handle_payload(now, turn, &payload, true, out);
            }
        }
        Ok(())
    }

    /// Seals `self.tail` (after a fresh SEQ) for every client outside
    /// group mode but `skip` and queues it as an outer `kind`, raw for
    /// sessions that asked for RAW. Returns how many were queued. Clients
    /// that may not subscribe get nothing but SERVER_CLOSING.
    ///
    /// # Errors
    /// [`Drop::Oversize`] when a sealed tail is too long to frame: every
    /// copy of one form has the same length, so none of that form is sent.
    pub(super) fn fan_out(
        &mut self,
        skip: Option<usize>,
        kind: u16,
        out: &mut Transmits,
    ) -> Result<usize, Drop> {
        let mut n = 0;
        if self.clients.len() == self.group.len() {
            return Ok(0); // all in group mode: the walk would find no one
        }
        let Relay {
            clients,
            emitter,
            tail,
            sealed,
            stats,
            rng,
            unix,
            closing,
            ..
        } = self;
        let unix_secs = unix.unix_secs();
        for (slot, c) in clients.iter_mut() {
            if Some(slot) == skip || c.downlink.is_some() || !(c.perms.subscribe || *closing) {
                continue;
            }
            let token = c.seal(unix_secs, rng.random(), sealed, |p| {
                p.extend_from_slice(tail)
            });
            emitter
                .token_to(c, kind, token, out, stats)
                .map_err(|_| Drop::Oversize)?;
            n += 1;
        }
        Ok(n)
    }

    /// Sends the notice in `self.tail` to every client but `skip` (through
    /// the group to its members). Notices are short; one that cannot be
    /// framed is counted like any message.
    pub(super) fn notify(&mut self, skip: Option<usize>, out: &mut Transmits) {
        if let Err(why) = self.broadcast(skip, out) {
            self.dropped(None, why, 1, out);
        }
    }

    /// Forgets the client in `slot` and tells the others why. The notice
    /// waits for the end of the input (`Relay::settle`): a member's leave
    /// moves the group key on, and the notice goes out under the new one.
    pub(super) fn remove(&mut self, slot: usize, reason: LeaveReason) {
        let Some(c) = self.clients.remove(slot) else {
            return;
        };
        self.member_removed(c.downlink);
        self.reassembler.remove_owner(c.generation);
        match reason {
            LeaveReason::Bye => self.stats.clients_left += 1,
            LeaveReason::Timeout => self.stats.clients_timed_out += 1,
            LeaveReason::Kicked => self.stats.clients_kicked += 1,
            LeaveReason::Shutdown | LeaveReason::Revoked | LeaveReason::Unreachable => {}
        }
        info!("client {} left ({})", c.id, reason.name());
        self.tail.clear();
        tlv::put(&mut self.tail, inner::PEER_LEFT, c.id_text.as_bytes());
        tlv::put_u8(&mut self.tail, inner::REASON, reason as u8);
        self.queue_left_notice();
        self.events.push(Event::Left { id: c.id, reason });
    }
}
