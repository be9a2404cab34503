//! Group mode, the relay's side (protocol v2 §4): who is a member and on
//! which downlink, the one signed GROUP_DATA per message, the keys that
//! move on every leave (a fresh key sent to each remaining member) and join
//! (a ratchet, no message), KEY_REQUEST answers and downlink probes.
//!
//! Why leaves wait for the end of the input: a leave draws a fresh key and
//! sends it to every member, and the contract lets leaves with nothing sent
//! between them share one rekey. So a leave only marks the key as spent
//! and queues its PEER_LEFT; [`Relay::settle`] then rekeys once and sends
//! the queued notices under the new epoch. It runs before anything else
//! goes to the group (a message, a PEER_JOINED, a probe, a ratchet) and at
//! the end of every input, so no GROUP_DATA is ever sealed under a key a
//! former member holds.
//!
//! The key material lives in `session::group::GroupSender`; this module
//! decides when it moves and who hears of it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngExt;

use crate::relay::drop::Drop;
use crate::relay::transmit;
use crate::relay::{Relay, Timer, Transmits};
use crate::session::fernet;
use crate::session::group::GroupSender;
use crate::wire::group::HEADER_LEN as GROUP_HEADER_LEN;
use crate::wire::handshake::{CAP_GROUP, CAP_RAW};
use crate::wire::inner::{self, put_group_key};
use crate::wire::{outer, tlv};

/// At most one KEY_REQUEST answer per member in this time.
pub(super) const KEY_ANSWER_INTERVAL: Duration = Duration::from_secs(1);
/// At most one PROBE GROUP_DATA in this time (two a second, v2 §4).
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// A GSEQ TLV: what a group plaintext has before the tail.
const GSEQ_TLV_LEN: usize = tlv::HEADER_LEN + 8;

/// The group: its keys and signer, and its members per downlink.
pub(super) struct Group {
    pub(super) sender: GroupSender,
    /// Members listening on each downlink (parallel to `Config::downlinks`).
    members: Vec<usize>,
    /// PEER_LEFT notices of this input, sent by [`Relay::settle`] once the
    /// rekey is done.
    left: Vec<Vec<u8>>,
    /// A probe was asked for and waits for [`Group::next_probe`].
    probe_pending: bool,
    /// The earliest time the next probe may go.
    next_probe: Instant,
    /// The GROUP_DATA TLV being sent.
    datagram: Vec<u8>,
}

impl Group {
    /// A group at epoch 1 with a random key and a signer made now; both
    /// come from the relay's generator and are never stored (v2 §4: a
    /// restarted relay is a new signer with a new GSEQ space).
    pub(super) fn new(rng: &mut impl rand::Rng, downlinks: usize, now: Instant) -> Self {
        let key: [u8; 32] = rng.random();
        let signer_seed: [u8; 32] = rng.random();
        Group {
            sender: GroupSender::new(key, signer_seed),
            members: vec![0; downlinks],
            left: Vec::new(),
            probe_pending: false,
            next_probe: now,
            datagram: Vec::with_capacity(2048),
        }
    }

    /// Group members on all downlinks.
    pub(super) fn len(&self) -> usize {
        self.members.iter().sum()
    }

    /// Forgets every member (shutdown).
    pub(super) fn clear(&mut self) {
        self.members.iter_mut().for_each(|m| *m = 0);
        self.left.clear();
    }
}

impl Relay {
    /// The downlink a client at `addr` is told about: the one of its
    /// address family, if any.
    fn downlink_for(&self, addr: SocketAddr) -> Option<usize> {
        self.config
            .downlinks
            .iter()
            .position(|d| d.is_ipv4() == addr.is_ipv4())
    }

    /// The capabilities granted to a v2 client at `addr` that asked for
    /// `asked`: RAW always, GROUP when group mode is on and a downlink of
    /// the client's family exists and goes out on some interface.
    pub(super) fn grant(&self, asked: u32, addr: SocketAddr) -> u32 {
        let mut offered = CAP_RAW;
        let up = self.downlink_up[usize::from(addr.is_ipv6())];
        if self.config.group_mode && up && self.downlink_for(addr).is_some() {
            offered |= CAP_GROUP;
        }
        asked & offered
    }

    /// Makes the client in `slot` a member on its downlink (after the join
    /// ratchet). Returns the downlink's address.
    pub(super) fn add_member(&mut self, slot: usize) -> Option<SocketAddr> {
        let c = self.clients.get_mut(slot)?;
        let dl = self
            .config
            .downlinks
            .iter()
            .position(|d| d.is_ipv4() == c.id.addr().is_ipv4())?;
        if c.downlink.replace(dl).is_none() {
            self.group.members[dl] += 1;
        }
        self.group_gauges();
        self.config.downlinks.get(dl).copied()
    }

    /// The client in `slot` stops being a member (if it was one) without
    /// the key moving on: the caller either ratchets (it joins again) or
    /// calls [`GroupSender::leave`].
    pub(super) fn drop_member(&mut self, slot: usize) -> bool {
        let Some(dl) = self.clients.get_mut(slot).and_then(|c| c.downlink.take()) else {
            return false;
        };
        self.group.members[dl] = self.group.members[dl].saturating_sub(1);
        self.group_gauges();
        true
    }

    /// A removed client's membership ends: the key must move on.
    pub(super) fn member_removed(&mut self, downlink: Option<usize>) {
        if let Some(n) = downlink.and_then(|dl| self.group.members.get_mut(dl)) {
            *n = n.saturating_sub(1);
            self.group.sender.leave();
            self.group_gauges();
        }
    }

    /// Queues a PEER_LEFT notice (`self.tail`) for [`Relay::settle`].
    pub(super) fn queue_left_notice(&mut self) {
        self.group.left.push(self.tail.clone());
    }

    fn group_gauges(&mut self) {
        self.stats.members_group = self.group.len() as u64;
        self.stats.group_epoch = u64::from(self.group.sender.epoch());
    }

    /// The join step for a WELCOME that grants GROUP: `key[e+1]` from
    /// `key[e]`, computed by every member itself. A pending rekey is done
    /// first (the contract's order).
    pub(super) fn ratchet(&mut self, out: &mut Transmits) {
        self.settle(out);
        self.group.sender.ratchet(self.clock);
        self.stats.ratchets += 1;
        self.group_gauges();
    }

    /// Does what leaves of this input left to do: one rekey for all of
    /// them (a fresh random key, sent to every remaining member in its own
    /// session), then their PEER_LEFT notices under the new epoch. Cheap
    /// when there is nothing to do; `self.tail` is kept.
    pub(super) fn settle(&mut self, out: &mut Transmits) {
        if self.group.sender.rekey_pending() {
            let fresh: [u8; 32] = self.rng.random();
            self.group.sender.rekey_if_pending(self.clock, fresh);
            self.stats.rekeys += 1;
            self.group_gauges();
            self.send_group_keys(out);
        }
        if self.group.left.is_empty() {
            return;
        }
        let kept = std::mem::take(&mut self.tail);
        for notice in std::mem::take(&mut self.group.left) {
            self.tail = notice;
            if let Err(why) = self.broadcast_now(None, out) {
                self.dropped(None, why, 1, out);
            }
        }
        self.tail = kept;
    }

    /// The current group key to every member, each in its own session:
    /// DATA `SEQ GROUP_KEY`.
    fn send_group_keys(&mut self, out: &mut Transmits) {
        let (epoch, key) = (self.group.sender.epoch(), self.group.sender.key_text());
        let Relay {
            clients,
            emitter,
            sealed,
            stats,
            rng,
            unix,
            ..
        } = self;
        let unix_secs = unix.unix_secs();
        for (_, c) in clients.iter_mut().filter(|(_, c)| c.downlink.is_some()) {
            let token = c.seal(unix_secs, rng.random(), sealed, |p| {
                put_group_key(p, epoch, key.as_bytes())
            });
            // A GROUP_KEY token is a few hundred bytes: it always frames.
            let _ = emitter.token_to(c, outer::DATA, token, out, stats);
        }
    }

    /// Sends `self.tail` to everyone but `skip`: one GROUP_DATA for the
    /// group members, one DATA each for the other clients. Returns the
    /// receivers reached. A pending rekey and queued notices go first.
    ///
    /// # Errors
    /// [`Drop::Oversize`] when the tail is too long for either form; the
    /// other form may have gone out.
    pub(super) fn broadcast(
        &mut self,
        skip: Option<usize>,
        out: &mut Transmits,
    ) -> Result<usize, Drop> {
        self.settle(out);
        self.broadcast_now(skip, out)
    }

    fn broadcast_now(&mut self, skip: Option<usize>, out: &mut Transmits) -> Result<usize, Drop> {
        let skip_downlink = skip
            .and_then(|s| self.clients.get(s))
            .and_then(|c| c.downlink);
        let group = self.group_send(skip_downlink, out);
        let single = self.fan_out(skip, outer::DATA, out);
        Ok(group? + single?)
    }

    /// Seals and signs `GSEQ | self.tail` once and queues it for every
    /// downlink with a member other than the sender (`skip_downlink` is the
    /// sender's, if it is a member). Returns the members reached.
    fn group_send(
        &mut self,
        skip_downlink: Option<usize>,
        out: &mut Transmits,
    ) -> Result<usize, Drop> {
        let listeners = |i: usize, n: usize| n - usize::from(skip_downlink == Some(i));
        let reach: usize = self
            .group
            .members
            .iter()
            .enumerate()
            .map(|(i, &n)| listeners(i, n))
            .sum();
        if reach == 0 {
            return Ok(0);
        }
        // GROUP_DATA is one TLV: the signed header and the raw token must fit.
        let token_len = fernet::raw_len(GSEQ_TLV_LEN + self.tail.len());
        if GROUP_HEADER_LEN + token_len > tlv::MAX_VALUE_LEN {
            return Err(Drop::Oversize);
        }
        let Relay {
            group,
            config,
            tail,
            stats,
            rng,
            unix,
            ..
        } = self;
        group.datagram.clear();
        group
            .sender
            .seal(unix.unix_secs(), rng.random(), tail, &mut group.datagram);
        stats.group_data_sent += 1;
        for (i, (&n, &dst)) in group.members.iter().zip(&config.downlinks).enumerate() {
            if listeners(i, n) == 0 {
                continue;
            }
            // v2 §4: fragments of a GROUP_DATA carry random msg_ids.
            let mut msg_id = rng.random();
            transmit::emit(
                dst,
                &group.datagram,
                config.max_datagram,
                &mut msg_id,
                out,
                stats,
            )
            .map_err(|_| Drop::Oversize)?;
        }
        Ok(reach)
    }

    /// A member's KEEPALIVE asked for the key of `epoch` and/or a probe.
    pub(super) fn group_request(
        &mut self,
        now: Instant,
        slot: usize,
        key_request: Option<u32>,
        probe: bool,
        out: &mut Transmits,
    ) -> Result<(), Drop> {
        let member = self.clients.get(slot).is_some_and(|c| c.downlink.is_some());
        if !member {
            return Err(Drop::NotGroupMember);
        }
        if probe {
            self.request_probe(now, out);
        }
        match key_request {
            Some(epoch) => self.answer_key_request(now, slot, epoch, out),
            None => Ok(()),
        }
    }

    /// One datagram for the member in `slot`: `SEQ GROUP_KEY` for `epoch`
    /// if it is still known (the 2 s grace), not current, and not older
    /// than the member's membership, and one for the current epoch.
    fn answer_key_request(
        &mut self,
        now: Instant,
        slot: usize,
        epoch: u32,
        out: &mut Transmits,
    ) -> Result<(), Drop> {
        let answered = self.clients.get(slot).and_then(|c| c.key_answered);
        if answered.is_some_and(|at| now < at + KEY_ANSWER_INTERVAL) {
            return Err(Drop::KeyRequestLimited);
        }
        self.settle(out);
        let current = self.group.sender.epoch();
        // Epochs count up from the relay's start; wrapping is compared as such.
        let since = self.clients.get(slot).map_or(current, |c| c.member_since);
        let member_then = epoch.wrapping_sub(since) < 1 << 31;
        let older = (epoch != current && member_then)
            .then(|| self.group.sender.key_text_of(epoch, now))
            .flatten()
            .map(|k| (epoch, k));
        let keys = older
            .into_iter()
            .chain([(current, self.group.sender.key_text())]);
        let Relay {
            clients,
            emitter,
            sealed,
            stats,
            rng,
            unix,
            ..
        } = self;
        let c = clients.get_mut(slot).ok_or(Drop::Stranger)?;
        let mut d = Vec::with_capacity(512);
        for (e, key) in keys {
            let token = c.seal(unix.unix_secs(), rng.random(), sealed, |p| {
                put_group_key(p, e, key.as_bytes())
            });
            tlv::put(&mut d, outer::DATA, token);
        }
        let n = emitter
            .again(c.id.addr(), &d, out, stats)
            .map_err(|_| Drop::Oversize)?;
        c.count_out(n);
        c.key_answered = Some(now);
        stats.key_requests_answered += 1;
        Ok(())
    }

    /// A probe was asked for: sent now if the last one is old enough, else
    /// once it is (every request until then shares that one).
    fn request_probe(&mut self, now: Instant, out: &mut Transmits) {
        if now >= self.group.next_probe {
            self.send_probe(now, out);
        } else if !self.group.probe_pending {
            self.group.probe_pending = true;
            self.timers.insert(self.group.next_probe, Timer::Probe);
        }
    }

    /// The probe timer: sends the pending probe when its time has come.
    pub(super) fn probe_due(&mut self, now: Instant, out: &mut Transmits) {
        if !self.group.probe_pending {
            return;
        }
        if now < self.group.next_probe {
            // Fired early (timer wheel resolution): wait for the real time.
            self.timers.insert(self.group.next_probe, Timer::Probe);
            return;
        }
        self.send_probe(now, out);
    }

    /// A GROUP_DATA `GSEQ PROBE` to every downlink with members.
    fn send_probe(&mut self, now: Instant, out: &mut Transmits) {
        self.group.probe_pending = false;
        self.group.next_probe = now + PROBE_INTERVAL;
        self.settle(out);
        let kept = std::mem::take(&mut self.tail);
        tlv::put(&mut self.tail, inner::PROBE, &[]);
        match self.group_send(None, out) {
            Ok(_) => self.stats.probes_answered += 1,
            Err(why) => self.dropped(None, why, 1, out),
        }
        self.tail = kept;
    }
}
