//! Named clients (protocol v2 §5), the relay's side once they are
//! registered: a reload of the clients file (revocations end sessions,
//! narrowed permissions apply at once), kicks by name, and the notice a
//! client gets about its own session ending. Who a credential admits is
//! decided in `handshake`; who may send and receive in `deliver`.

use std::sync::Arc;

use log::info;
use rand::RngExt;

use crate::relay::config::credentials::Credentials;
use crate::relay::{Relay, Transmits};
use crate::wire::handshake::CAP_GROUP;
use crate::wire::{inner, outer, tlv, LeaveReason};

impl Relay {
    /// Replaces the clients file's table (SIGHUP re-reads the file). A
    /// named session whose name is gone, or whose name now has another
    /// token, ends with PEER_LEFT reason 5 (revoked), told to the client
    /// itself too. One whose line lost a right keeps only what both lines
    /// grant, at once (a group member that may no longer subscribe leaves
    /// the group: a rekey); rights a line gained apply at its next
    /// handshake. Returns how many sessions were revoked.
    pub fn set_credentials(
        &mut self,
        table: Option<Arc<Credentials>>,
        out: &mut Transmits,
    ) -> usize {
        self.config.credentials = table;
        let table = self.config.credentials.clone();
        let mut revoked = Vec::new();
        let mut narrowed = Vec::new();
        for (slot, c) in self.clients.iter() {
            let Some(name) = c.id.name() else { continue };
            match table.as_deref().and_then(|t| t.get(name)) {
                Some(e) if e.digest == c.credential => {
                    let kept = c.perms.intersect(e.perms);
                    if kept != c.perms {
                        narrowed.push((slot, kept));
                    }
                }
                _ => revoked.push(slot),
            }
        }
        for (slot, kept) in narrowed {
            let leaves = !kept.subscribe && self.drop_member(slot);
            if let Some(c) = self.clients.get_mut(slot) {
                c.perms = kept;
                if leaves {
                    c.caps &= !CAP_GROUP;
                }
                info!("client {} now {kept}", c.id);
            }
            if leaves {
                // The key it holds must not read what comes next.
                self.group.sender.leave();
            }
        }
        for &slot in &revoked {
            self.end_session(slot, LeaveReason::Revoked, out);
        }
        self.settle(out);
        revoked.len()
    }

    /// Ends every session of the client named `name`, as a kick: the
    /// clients themselves and the others get reason 3. Returns how many
    /// sessions ended.
    pub fn kick_name(&mut self, name: &str, out: &mut Transmits) -> usize {
        let slots: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.id.name() == Some(name))
            .map(|(slot, _)| slot)
            .collect();
        for &slot in &slots {
            self.end_session(slot, LeaveReason::Kicked, out);
        }
        self.settle(out);
        slots.len()
    }

    /// Ends the session in `slot` for `reason`, which the client hears
    /// first in its own session (`SEQ PEER_LEFT(its own id) REASON`), so
    /// that it knows not to reconnect by itself on a revocation; the
    /// others get the usual PEER_LEFT.
    pub(super) fn end_session(&mut self, slot: usize, reason: LeaveReason, out: &mut Transmits) {
        let Relay {
            clients,
            emitter,
            sealed,
            stats,
            rng,
            unix,
            ..
        } = self;
        if let Some(c) = clients.get_mut(slot) {
            let id_text = c.id_text.clone();
            let token = c.seal(unix.unix_secs(), rng.random(), sealed, |p| {
                tlv::put(p, inner::PEER_LEFT, id_text.as_bytes());
                tlv::put_u8(p, inner::REASON, reason as u8);
            });
            // A notice of an id and a reason always frames.
            let _ = emitter.token_to(c, outer::DATA, token, out, stats);
        }
        self.remove(slot, reason);
    }
}
