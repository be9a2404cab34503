//! The group downlink side of [`ClientCore`]: GROUP_DATA from the downlink
//! socket (whole or reassembled per source), opened by the group member, and
//! the notices inside group and pairwise messages turned into events.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Instant;

use super::{ClientCore, ClientEvent, State};
use crate::reassembly::Outcome;
use crate::session::group::GroupError;
use crate::wire::group::GroupData;
use crate::wire::outer::{Datagram, Item};
use crate::wire::{Inner, LeaveReason};

impl ClientCore {
    /// Handles a datagram that arrived on the downlink socket from `src`:
    /// GROUP_DATA (whole or in FRAGMENTs, reassembled per source) is
    /// checked and opened by the group member; its messages and notices
    /// become events as for DATA. The client's own messages and its own
    /// PEER_JOINED are dropped. Nothing else is acted on here: not even a
    /// REJECT, which only counts on the session socket.
    pub fn handle_downlink(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
        events: &mut Vec<ClientEvent>,
    ) {
        self.clock.advance(now);
        self.downlink_payload(now, src, data, false, events);
    }

    pub(super) fn downlink_payload(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
        reassembled: bool,
        events: &mut Vec<ClientEvent>,
    ) {
        let Ok(d) = Datagram::parse(data) else {
            self.downlink_stats.malformed += 1;
            return;
        };
        if self.group.is_none() {
            self.downlink_stats.not_member += 1;
            return;
        }
        // The relay sends one GROUP_DATA or one FRAGMENT per datagram; a
        // stranger's datagram packed with more would buy one signature
        // check each.
        let extra = d.items().count().saturating_sub(1) + d.overflow;
        self.downlink_stats.malformed += extra as u64;
        let first = d.items().next();
        if let Some(item) = first {
            match item {
                Item::Group(g) => self.on_group_data(now, &g, events),
                Item::Fragment(f) if !reassembled => {
                    let owner = self.owner_of(src);
                    self.downlink_reassembler.expire(now);
                    let outcome = self.downlink_reassembler.insert(now, owner, &f);
                    self.count_downlink_evictions();
                    match outcome {
                        Outcome::Complete(p) => self.downlink_payload(now, src, &p, true, events),
                        Outcome::Incomplete => {}
                        Outcome::Dropped(_) => self.downlink_stats.fragments_dropped += 1,
                    }
                }
                // Nested fragments, or pairwise tokens: never sent to a group.
                Item::Fragment(_) | Item::Token(..) => self.downlink_stats.malformed += 1,
            }
        }
    }

    pub(super) fn count_downlink_evictions(&mut self) {
        for (_, n) in self.downlink_reassembler.take_evictions() {
            self.downlink_stats.fragments_dropped += n;
        }
    }

    /// The reassembly owner of a downlink source: a keyed hash, so that
    /// nobody can pick an address that shares the relay's slots.
    pub(super) fn owner_of(&self, src: SocketAddr) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.owner_salt.hash(&mut h);
        src.hash(&mut h);
        h.finish()
    }

    pub(super) fn on_group_data(
        &mut self,
        now: Instant,
        g: &GroupData<'_>,
        events: &mut Vec<ClientEvent>,
    ) {
        let Some(group) = &mut self.group else { return };
        let result = group.member.open_data(now, g);
        if !matches!(
            result,
            Err(GroupError::BadSignature | GroupError::Malformed)
        ) {
            group.heard(); // the relay's signature: multicast reaches us
        }
        match result {
            Ok(plain) => {
                self.downlink_stats.opened += 1;
                self.on_group_plain(&plain, events);
            }
            Err(e) => self.downlink_stats.refused(e),
        }
    }

    /// A group plaintext the member accepted (GSEQ checked).
    pub(super) fn on_group_plain(&mut self, plain: &[u8], events: &mut Vec<ClientEvent>) {
        let Ok(m) = Inner::parse(plain) else { return };
        let me = self.id().map(str::as_bytes);
        if me.is_some() && (m.sender_id == me || m.peer_joined == me) {
            self.downlink_stats.own_echo += 1;
            return;
        }
        self.notice(&m, events);
    }

    /// Events for a message or notice, from DATA or GROUP_DATA. A PROBE
    /// answer carries none.
    pub(super) fn notice(&mut self, m: &Inner<'_>, events: &mut Vec<ClientEvent>) {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if let (Some(sender), Some(body)) = (m.sender_id, m.body) {
            events.push(ClientEvent::Message {
                sender: text(sender),
                body: body.to_vec(),
            });
        } else if let Some(id) = m.peer_joined {
            events.push(ClientEvent::PeerJoined(text(id)));
        } else if let Some(id) = m.peer_left {
            let reason = m.reason.and_then(LeaveReason::from_u8);
            // Our own revocation: the relay forgot us and will refuse our
            // credential, so the session is over rather than lost.
            if reason == Some(LeaveReason::Revoked) && self.id().map(str::as_bytes) == Some(id) {
                self.state = State::Idle;
                self.group = None;
                self.revoked = true;
            }
            events.push(ClientEvent::PeerLeft {
                id: text(id),
                reason,
            });
        } else if m.server_closing {
            self.state = State::Idle;
            self.group = None;
            events.push(ClientEvent::ServerClosing);
        }
    }
}
