//! The member's side of group mode (protocol v2 §4) inside [`ClientCore`]:
//! the downlink the WELCOME named, the [`GroupMember`] that checks and
//! opens what arrives there, and the downlink probe. The core owns the
//! session that carries key requests and probes; this module decides when
//! they are due.
//!
//! [`ClientCore`]: super::ClientCore

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::session::group::{GroupError, GroupMember};

/// How long after its WELCOME a member waits for a correctly signed
/// GROUP_DATA before it probes the downlink.
pub const PROBE_AFTER: Duration = Duration::from_secs(2);
/// Time between two probes.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Probes sent before the member gives the downlink up.
pub const PROBES: u8 = 3;
/// How long after its last probe a member that still heard nothing gives
/// the downlink up and asks to be served per recipient.
pub const SILENT_AFTER: Duration = Duration::from_secs(2);

/// What arrived on the downlink and what became of it, one counter per
/// cause (the member's checks in their order, then the client's own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownlinkStats {
    /// GROUP_DATA the member opened (own echoes and PROBE answers included).
    pub opened: u64,
    /// Held for a key not yet received (may open later).
    pub held: u64,
    /// Held datagrams that opened once their key arrived.
    pub released: u64,
    /// Not parseable (framing, GROUP_DATA header, fragment header), or
    /// not what a relay sends there: pairwise tokens, nested fragments,
    /// more than one item in a datagram (each counted).
    pub malformed: u64,
    /// Arrived while the client was no group member.
    pub not_member: u64,
    /// Not signed by the group's signer.
    pub bad_signature: u64,
    /// An epoch older than the member's whose key is gone.
    pub old_epoch: u64,
    /// Newer epoch, hold queue full.
    pub hold_full: u64,
    /// The token did not open under its epoch's key.
    pub bad_token: u64,
    /// Plaintext breaking the inner rules.
    pub bad_inner: u64,
    /// GSEQ seen before or older than the window.
    pub replayed: u64,
    /// The client's own message or own join, echoed by the group.
    pub own_echo: u64,
    /// FRAGMENTs refused or evicted by the downlink's reassembler.
    pub fragments_dropped: u64,
    /// KEY_REQUESTs sent.
    pub key_requests: u64,
    /// PROBEs sent.
    pub probes: u64,
}

impl DownlinkStats {
    /// Counts a GROUP_DATA the member refused.
    pub(super) fn refused(&mut self, e: GroupError) {
        let c = match e {
            GroupError::Malformed => &mut self.malformed,
            GroupError::BadSignature => &mut self.bad_signature,
            GroupError::OldEpoch => &mut self.old_epoch,
            GroupError::Held => &mut self.held,
            GroupError::HoldFull => &mut self.hold_full,
            GroupError::BadToken => &mut self.bad_token,
            GroupError::Inner(_) => &mut self.bad_inner,
            GroupError::Replay => &mut self.replayed,
        };
        *c += 1;
    }
}

/// The probe's verdict at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    /// Nothing to do now.
    Wait,
    /// Send a KEEPALIVE carrying PROBE.
    Send,
    /// Nothing heard after every probe: give the downlink up.
    Silent,
}

/// Group mode of an established session.
pub(super) struct Downlink {
    pub(super) member: GroupMember,
    /// Where GROUP_DATA is sent: the socket the shell joins.
    pub(super) addr: SocketAddr,
    /// A correctly signed GROUP_DATA arrived: multicast reaches us.
    heard: bool,
    /// Probes sent so far.
    probes: u8,
    /// When the next probe, or the verdict, is due (while not heard).
    next: Instant,
}

impl Downlink {
    /// Group mode starting at `now` (the WELCOME).
    pub(super) fn new(member: GroupMember, addr: SocketAddr, now: Instant) -> Self {
        Downlink {
            member,
            addr,
            heard: false,
            probes: 0,
            next: now + PROBE_AFTER,
        }
    }

    /// A correctly signed GROUP_DATA arrived (whether or not it opened).
    pub(super) fn heard(&mut self) {
        self.heard = true;
    }

    /// The probe's next step; a `Send` is taken as sent.
    pub(super) fn probe(&mut self, now: Instant) -> Probe {
        if self.heard || now < self.next {
            return Probe::Wait;
        }
        if self.probes >= PROBES {
            return Probe::Silent;
        }
        self.probes += 1;
        self.next = now
            + if self.probes < PROBES {
                PROBE_EVERY
            } else {
                SILENT_AFTER
            };
        Probe::Send
    }

    /// When [`Downlink::probe`] or the member next has work.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let probe = (!self.heard).then_some(self.next);
        match (probe, self.member.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
