//! Routing of what the relay sends in the `core` program, and the
//! invariants checked after every datagram and op.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

use crate::client::ClientEvent;
use crate::reassembly::Outcome;
use crate::relay::config::credentials::Perms;
use crate::relay::{ClientId, Event};
use crate::wire::fragment;
use crate::wire::group::GroupData;
use crate::wire::tlv::{self, Reader};
use crate::wire::{self, outer, Inner};

use super::{cookie_of, has_type, spends_rsa, Kind, Origin, Recorded, Sim, HISTORY, RELAY_ADDR};

/// Held group datagrams at most (the oldest is lost first).
const QUEUE: usize = 64;
/// Recorded GROUP_DATA at most.
const GROUP_HISTORY: usize = 16;
/// Least time between two probes the relay sends (v2 §4: two a second).
const PROBE_GAP: std::time::Duration = std::time::Duration::from_millis(500);
/// Least time between two key-request answers to one member.
const KEY_ANSWER_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// `d` without its VERSIONS TLVs: what a v1 relay would have said, so that
/// a ClientCore behind it speaks v1.
fn strip_versions(d: &[u8]) -> Vec<u8> {
    if tlv::validate(d).is_err() || !has_type(d, outer::VERSIONS) {
        return d.to_vec();
    }
    let mut out = Vec::with_capacity(d.len());
    for t in Reader::new(d)
        .flatten()
        .filter(|t| t.kind != outer::VERSIONS)
    {
        tlv::put(&mut out, t.kind, t.value);
    }
    out
}

impl Sim {
    pub(super) fn is_registered(&self, a: SocketAddr) -> bool {
        self.registered.contains_key(&a)
    }

    pub(super) fn is_downlink(&self, a: SocketAddr) -> bool {
        self.config.downlinks.contains(&a)
    }

    /// Everything queued goes to registered clients or to a downlink.
    pub(super) fn registered_transmits_only(&self) -> bool {
        self.net
            .tx
            .iter()
            .all(|(dst, _)| self.is_registered(dst) || self.is_downlink(dst))
    }

    /// The relay's view of the client at `addr`: mode, permissions, id.
    pub(super) fn relay_view(&self, addr: SocketAddr) -> Option<(&'static str, Perms, ClientId)> {
        self.net
            .relay
            .clients(self.net.now)
            .into_iter()
            .find(|c| c.id.addr() == addr)
            .map(|c| (c.mode, c.perms, c.id))
    }

    /// The addresses the relay serves through the group now.
    pub(super) fn group_members(&self) -> HashSet<SocketAddr> {
        self.net
            .relay
            .clients(self.net.now)
            .into_iter()
            .filter(|c| c.mode == "group")
            .map(|c| c.id.addr())
            .collect()
    }

    /// The id client i's messages are relayed under now.
    pub(super) fn sender_id(&self, i: usize) -> String {
        let c = &self.clients[i];
        self.registered
            .get(&c.addr)
            .map_or_else(|| c.id.clone(), ToString::to_string)
    }

    /// Hands one datagram to the relay, checks its answers, then delivers
    /// them; ClientCore replies (SESSION_KEY) go back to the relay.
    pub(super) fn deliver_to_relay(&mut self, src: SocketAddr, d: Vec<u8>, origin: Origin) {
        let mut queue = VecDeque::from([(src, d, origin)]);
        while let Some((src, d, origin)) = queue.pop_front() {
            if let Origin::Core(_) = origin {
                if spends_rsa(&d) {
                    if self.rsa_left == 0 {
                        continue; // over this input's RSA budget: "lost"
                    }
                    self.rsa_left -= 1;
                }
                if let Some(c) = cookie_of(&d) {
                    if let Some(i) = self.clients.iter().position(|c| c.addr == src) {
                        self.clients[i].cookie = Some(c);
                    }
                }
            }
            self.record(src, false, &d);
            let unvalidated = !self.is_registered(src);
            if self.trace {
                let types: Vec<u16> = Reader::new(&d).flatten().map(|t| t.kind).collect();
                eprintln!("  {src} -> relay: {} bytes, types {types:x?}", d.len());
            }
            self.net.tx.clear();
            self.net
                .relay
                .handle_datagram(self.net.now, src, &d, &mut self.net.tx);
            let replies = self.after_relay(Some(src), d.len(), unvalidated);
            queue.extend(replies);
        }
    }

    pub(super) fn record(&mut self, addr: SocketAddr, from_relay: bool, d: &[u8]) {
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Recorded {
            addr,
            from_relay,
            data: d.to_vec(),
        });
    }

    /// Checks what the relay just queued in `self.net.tx` and did (events), then
    /// delivers the datagrams to the ClientCores. Returns their replies.
    /// `src`/`len`/`unvalidated` describe the datagram that caused this.
    pub(super) fn after_relay(
        &mut self,
        src: Option<SocketAddr>,
        len: usize,
        unvalidated: bool,
    ) -> Vec<(SocketAddr, Vec<u8>, Origin)> {
        let mut registered_before: HashSet<SocketAddr> = self.registered.keys().copied().collect();
        registered_before.extend(std::mem::take(&mut self.unregistered_by_shutdown));
        // Events first: they say who is registered now.
        let events: Vec<Event> = self.net.relay.drain_events().collect();
        for e in events {
            if self.trace {
                eprintln!("  relay event {e:?}");
            }
            match e {
                Event::Joined { id, rekeyed } => {
                    let addr = id.addr();
                    let i = self.clients.iter().position(|c| c.addr == addr);
                    assert!(i.is_some(), "a non-client address {id} registered");
                    assert_eq!(
                        rekeyed,
                        self.registered.contains_key(&addr),
                        "Joined {{ rekeyed }} wrong for {id}"
                    );
                    if rekeyed {
                        // Another name at an address is a leave and a join.
                        assert_eq!(self.registered.get(&addr), Some(&id), "re-keyed as another");
                    }
                    self.ids_ever.insert(id.to_string());
                    // A new session may ask for keys at once (the relay's
                    // limit is per session).
                    self.last_key_answer.remove(&addr);
                    if let Some(i) = i {
                        // In sync again only if its ClientCore gets the WELCOME.
                        self.clients[i].id = id.to_string();
                        self.clients[i].tx_ok = false;
                        self.clients[i].rx_ok = false;
                    }
                    self.registered.insert(addr, id);
                }
                Event::Left { id, reason } => {
                    assert_eq!(
                        self.registered.remove(&id.addr()).as_ref(),
                        Some(&id),
                        "{id} left ({reason:?}) unregistered"
                    );
                    if let Some(c) = self.clients.iter_mut().find(|c| c.addr == id.addr()) {
                        c.tx_ok = false;
                        c.rx_ok = false;
                    }
                }
                // The fuzzed relays are not federated.
                Event::Relayed { .. } => panic!("Relayed without federation"),
            }
        }
        assert_eq!(
            self.net.relay.client_count(),
            self.registered.len(),
            "client count differs from Joined/Left events"
        );
        self.check_group_counters(src);

        let sent: Vec<(SocketAddr, Vec<u8>)> =
            self.net.tx.iter().map(|(a, d)| (a, d.to_vec())).collect();
        let mut to_src = 0usize;
        for (dst, d) in &sent {
            assert!(
                d.len() <= self.config.max_datagram,
                "{}-byte datagram over max_datagram {} (types {:?})",
                d.len(),
                self.config.max_datagram,
                Reader::new(d).flatten().map(|t| t.kind).collect::<Vec<_>>()
            );
            assert!(tlv::validate(d).is_ok(), "relay sent a malformed datagram");
            if has_type(d, outer::REJECT) {
                assert_eq!(d.len(), 5, "REJECT datagram of {} bytes", d.len());
                assert!(
                    wire::RejectReason::from_u8(d[4]).is_some(),
                    "REJECT reason {}",
                    d[4]
                );
            }
            if self.is_downlink(*dst) {
                assert!(self.config.group_mode, "group datagram with group mode off");
                let kinds: Vec<u16> = Reader::new(d).flatten().map(|t| t.kind).collect();
                assert!(
                    kinds == [outer::GROUP_DATA] || kinds == [outer::FRAGMENT],
                    "the downlink got {kinds:x?}"
                );
            } else if Some(*dst) == src {
                to_src += d.len();
            } else {
                let known = registered_before.contains(dst) || self.is_registered(*dst);
                assert!(known, "datagram to unregistered {dst} (not the source)");
            }
        }
        if let Some(src) = src {
            // One datagram, one answer: at most one SERVER_KEY and one REJECT.
            let to = |kind| {
                sent.iter()
                    .filter(|(dst, d)| *dst == src && has_type(d, kind))
                    .count()
            };
            assert!(
                to(outer::SERVER_KEY) <= 1,
                "several SERVER_KEYs for one datagram"
            );
            assert!(to(outer::REJECT) <= 1, "several REJECTs for one datagram");
            if unvalidated {
                assert!(
                    to_src <= len.saturating_mul(3),
                    "amplification: {to_src} bytes answered {len} from unvalidated {src}"
                );
            }
            if !self.clients.iter().any(|c| c.addr == src) {
                assert!(
                    sent.iter().all(|(dst, _)| *dst == src),
                    "a stranger's datagram caused traffic to others"
                );
            }
        }

        // Deliver to the ClientCores and the downlink.
        let mut replies = Vec::new();
        for (dst, d) in sent {
            if self.trace {
                let types: Vec<u16> = Reader::new(&d).flatten().map(|t| t.kind).collect();
                eprintln!("  relay -> {dst}: {} bytes, types {types:x?}", d.len());
            }
            self.record(dst, true, &d);
            if self.is_downlink(dst) {
                self.group_datagram(dst, d);
                continue;
            }
            let Some(j) = self.clients.iter().position(|c| c.addr == dst) else {
                continue;
            };
            self.learn_group_key(j, &d);
            if self.clients[j].drop_next > 0 {
                self.clients[j].drop_next -= 1;
                if self.trace {
                    eprintln!("  (lost on the way to {dst})");
                }
                continue;
            }
            let d = if self.clients[j].kind == Kind::V1 {
                strip_versions(&d)
            } else {
                d
            };
            let mut out = Vec::new();
            let mut events = Vec::new();
            let c = &mut self.clients[j];
            c.sniff_cookie(self.net.now, &d);
            let had_group = c.core.downlink().is_some();
            let _ = c
                .core
                .handle_datagram(self.net.now, &d, &mut out, &mut events);
            let got_group = !had_group && c.core.downlink().is_some();
            for e in events {
                self.client_event(j, e, false);
            }
            if got_group {
                self.check_group_granted(j);
            }
            replies.extend(out.into_iter().map(|d| (dst, d, Origin::Core(j))));
        }
        replies
    }

    /// The relay's group counters after an input: the epoch never goes
    /// back, key requests and probes are answered at most once per input
    /// and within their rate limits.
    fn check_group_counters(&mut self, src: Option<SocketAddr>) {
        let now = self.net.now;
        let st = self.net.relay.stats();
        assert!(
            st.group_epoch >= self.epoch_seen,
            "group epoch went back from {} to {}",
            self.epoch_seen,
            st.group_epoch
        );
        self.epoch_seen = st.group_epoch;
        let answers = st.key_requests_answered - self.report.key_answers;
        let probes = st.probes_answered - self.report.probes;
        self.report.key_answers = st.key_requests_answered;
        self.report.probes = st.probes_answered;
        assert!(answers <= 1, "{answers} key-request answers for one input");
        if answers == 1 {
            let src = src.expect("key requests come in datagrams");
            if let Some(last) = self.last_key_answer.insert(src, now) {
                assert!(
                    now >= last + KEY_ANSWER_GAP,
                    "key requests answered too often"
                );
            }
        }
        assert!(probes <= 1, "{probes} probes for one input");
        if probes == 1 {
            if let Some(last) = self.last_probe.replace(now) {
                assert!(now >= last + PROBE_GAP, "probes sent too often");
            }
        }
    }

    /// A ClientCore just got the group key in a WELCOME: it asked for
    /// GROUP, the relay grants it, and a client that may not subscribe
    /// never gets a key it could read anything new with (a resent WELCOME
    /// may carry one that a rekey made stale).
    fn check_group_granted(&self, j: usize) {
        let c = &self.clients[j];
        assert_eq!(c.kind, Kind::Group, "{} got a group key unasked", c.id);
        assert!(self.config.group_mode, "group key with group mode off");
        let subscribes = self.relay_view(c.addr).is_some_and(|(_, p, _)| p.subscribe);
        if !subscribes {
            let epoch = c.core.group_epoch().map_or(0, u64::from);
            assert!(
                epoch < self.net.relay.stats().group_epoch,
                "{} may not subscribe but got the current group key",
                c.id
            );
        }
    }

    /// What the relay sent to a downlink: verified, then delivered to the
    /// members or held back (v2 ops).
    fn group_datagram(&mut self, dst: SocketAddr, d: Vec<u8>) {
        let whole = self.verify_group(&d);
        if self.downlink_hold {
            if self.downlink_queue.len() >= QUEUE {
                self.downlink_queue.pop_front();
            }
            self.downlink_queue.push_back((dst, d));
            return;
        }
        self.deliver_downlink(dst, &d, whole, u8::MAX);
    }

    /// Checks the GROUP_DATA in `d` (or the one its fragment completes);
    /// returns its epoch when `d` is a whole GROUP_DATA.
    fn verify_group(&mut self, d: &[u8]) -> Option<u32> {
        let mut whole = None;
        for t in Reader::new(d).flatten() {
            if t.kind == outer::GROUP_DATA {
                whole = Some(self.check_group_data(t.value));
                continue;
            }
            let Some(f) = fragment::parse_fragment(t.value) else {
                panic!("the relay sent a bad fragment to the downlink");
            };
            if let Outcome::Complete(p) = self.group_sniffer.insert(self.net.now, 0, &f) {
                let items: Vec<(u16, Vec<u8>)> = Reader::new(&p)
                    .flatten()
                    .map(|t| (t.kind, t.value.to_vec()))
                    .collect();
                assert!(
                    items.len() == 1 && items[0].0 == outer::GROUP_DATA,
                    "fragments on the downlink made no GROUP_DATA"
                );
                self.check_group_data(&items[0].1);
            }
        }
        whole
    }

    /// A GROUP_DATA value the relay sent: signed by its signer, at an
    /// epoch neither older than the last one nor newer than the group's.
    fn check_group_data(&mut self, value: &[u8]) -> u32 {
        let g = GroupData::parse(value).expect("the relay's GROUP_DATA parses");
        let mut message = Vec::new();
        GroupData::signed_message(g.epoch, g.token, &mut message);
        let signer = VerifyingKey::from_bytes(&self.net.relay.group_signer())
            .expect("the relay's signer is a valid key");
        assert!(
            signer
                .verify(&message, &Signature::from_bytes(g.signature))
                .is_ok(),
            "GROUP_DATA not signed by the relay's signer"
        );
        assert!(
            g.epoch >= self.group_data_epoch,
            "GROUP_DATA at epoch {} after one at {}",
            g.epoch,
            self.group_data_epoch
        );
        assert!(
            u64::from(g.epoch) <= self.net.relay.stats().group_epoch,
            "GROUP_DATA from a future epoch"
        );
        self.group_data_epoch = g.epoch;
        if self.group_history.len() >= GROUP_HISTORY {
            self.group_history.pop_front();
        }
        let mut d = Vec::new();
        tlv::put(&mut d, outer::GROUP_DATA, value);
        self.group_history.push_back(d);
        g.epoch
    }

    /// Delivers `d` from the downlink `dst` to the members among the
    /// clients in `mask`. With `fresh` (a whole GROUP_DATA the relay just
    /// sent, at that epoch), every member at that epoch must open it.
    pub(super) fn deliver_downlink(
        &mut self,
        dst: SocketAddr,
        d: &[u8],
        fresh: Option<u32>,
        mask: u8,
    ) {
        for j in 0..self.clients.len() {
            if mask & (1 << j) == 0 || self.clients[j].core.downlink() != Some(dst) {
                continue;
            }
            let c = &mut self.clients[j];
            let caught_up = fresh.is_some() && c.core.group_epoch() == fresh;
            let opened = c.core.downlink_stats().opened;
            let mut events = Vec::new();
            c.core
                .handle_downlink(self.net.now, RELAY_ADDR, d, &mut events);
            let opened_now = c.core.downlink_stats().opened;
            if caught_up {
                assert_eq!(
                    opened_now,
                    opened + 1,
                    "{} at epoch {fresh:?} did not open the relay's GROUP_DATA ({:?})",
                    c.id,
                    c.core.downlink_stats()
                );
            }
            for e in events {
                self.client_event(j, e, true);
            }
        }
    }

    /// Remembers a group key the relay sent the harness's own session at
    /// client j's address (WELCOME or rekey), for forging as a member.
    fn learn_group_key(&mut self, j: usize, d: &[u8]) {
        let c = &mut self.clients[j];
        let keys = [c.crafted_key.as_ref(), c.crafted_pending.as_ref()];
        for t in Reader::new(d).flatten() {
            if t.kind != outer::WELCOME && t.kind != outer::DATA {
                continue;
            }
            for k in keys.iter().flatten() {
                let Ok(plain) = k.open(t.value) else { continue };
                if let Ok(Some((epoch, key))) = Inner::parse(&plain).map(|m| m.group_key) {
                    c.crafted_group = Some((epoch, String::from_utf8_lossy(key).into_owned()));
                }
            }
        }
    }

    /// Client j's ClientCore timers at the current time; what they send
    /// goes to the relay.
    pub(super) fn client_timers(&mut self, j: usize) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        let now = self.net.now;
        self.clients[j]
            .core
            .handle_timeout(now, &mut out, &mut events);
        for e in events {
            self.client_event(j, e, false);
        }
        let addr = self.clients[j].addr;
        for d in out {
            self.deliver_to_relay(addr, d, Origin::Core(j));
        }
    }

    /// After a shutdown: a real relay exits here, and a new one has a new
    /// signer and key. This one goes on with the same group key, so the
    /// ClientCores that missed SERVER_CLOSING (lost, or held back on the
    /// downlink) forget their group, and held group datagrams are lost.
    pub(super) fn after_shutdown(&mut self) {
        for c in &mut self.clients {
            if c.core.downlink().is_some() {
                let _ = c.core.leave_group();
            }
        }
        self.downlink_queue.clear();
    }

    /// `via_group`: the event came from the downlink.
    pub(super) fn client_event(&mut self, j: usize, e: ClientEvent, via_group: bool) {
        if self.trace {
            eprintln!("  {} event {e:?}", self.clients[j].id);
        }
        let addr = self.clients[j].addr;
        match e {
            ClientEvent::Welcome { id } => {
                // Empty: a token under the new key overtook a lost WELCOME
                // and the id is not known yet.
                if !id.is_empty() {
                    let want = self.registered.get(&addr).map(ToString::to_string);
                    assert_eq!(Some(&id), want.as_ref(), "WELCOME with a foreign id");
                    self.clients[j].id = id;
                }
                self.report.welcomes += 1;
                self.clients[j].tx_ok = true;
                self.clients[j].rx_ok = true;
            }
            ClientEvent::Message { sender, body } => self.message(j, sender, body, via_group),
            ClientEvent::PeerJoined(id) => {
                assert_ne!(id, self.clients[j].id, "told about its own join")
            }
            ClientEvent::ServerClosing => {
                self.clients[j].tx_ok = false;
                self.clients[j].rx_ok = false;
            }
            ClientEvent::Downlink(dl) => {
                assert!(
                    self.config.group_mode && self.is_downlink(dl),
                    "told to listen on {dl}"
                );
                assert_eq!(self.clients[j].kind, Kind::Group, "group mode unasked");
            }
            ClientEvent::DownlinkSilent(_)
            | ClientEvent::ServerKey { .. }
            | ClientEvent::PeerLeft { .. }
            | ClientEvent::Rejected(_) => {}
        }
    }

    /// A body client j delivered: authentic (a ClientCore or the harness
    /// sent it from the address its SENDER_ID names, under an id the relay
    /// gave that address), never its own, at most once, only to a client
    /// that may subscribe, and from the downlink only to a client that was
    /// a member when it was relayed.
    fn message(&mut self, j: usize, sender: String, body: Vec<u8>, via_group: bool) {
        let c = &self.clients[j];
        self.report.messages += 1;
        let from = sender
            .parse::<ClientId>()
            .ok()
            .and_then(|id| self.clients.iter().position(|c| c.addr == id.addr()));
        let legit = from.is_some() && self.legit.get(&body) == from.as_ref();
        let crafted = from.is_some_and(|f| self.crafted.get(&body).is_some_and(|s| s.contains(&f)));
        assert!(
            legit || crafted,
            "{} got a body from {sender} it never sent ({} bytes)",
            c.id,
            body.len()
        );
        assert!(
            self.ids_ever.contains(&sender),
            "a body under the id {sender}, never registered"
        );
        assert_ne!(from, Some(j), "{} got its own message", c.id);
        if via_group {
            self.report.group_messages += 1;
            if let Some(members) = self.eligible.get(&body).filter(|_| legit) {
                assert!(
                    members.contains(&c.addr),
                    "{} opened a message relayed while it was no member",
                    c.id
                );
            }
        } else {
            let subscribes = self.relay_view(c.addr).is_some_and(|(_, p, _)| p.subscribe);
            assert!(subscribes, "{} may not subscribe but got a message", c.id);
        }
        let c = &mut self.clients[j];
        let n = c.received.entry((sender, body)).or_insert(0);
        *n += 1;
        assert!(*n == 1 || crafted, "{} got one message {n} times", c.id);
    }

    /// Invariants that hold between ops.
    pub(super) fn check_state(&mut self) {
        let limits = &self.config.reassembly;
        assert!(
            self.net.relay.reassembly_bytes() <= limits.max_total_bytes,
            "reassembly holds {} > {}",
            self.net.relay.reassembly_bytes(),
            limits.max_total_bytes
        );
        assert!(self.net.relay.client_count() <= self.config.max_clients);
        assert_eq!(self.net.relay.client_count(), self.registered.len());
        let mut members = 0;
        for c in self.net.relay.clients(self.net.now) {
            assert!(c.partials <= limits.max_partials_per_owner);
            assert_eq!(self.registered.get(&c.id.addr()), Some(&c.id));
            if c.mode == "group" {
                members += 1;
                assert!(self.config.group_mode, "{} in group mode, off", c.id);
                assert!(c.perms.subscribe, "{} may not subscribe: a member", c.id);
            }
        }
        let st = self.net.relay.stats();
        assert_eq!(st.members_group, members, "members_group gauge");
        assert!(st.group_epoch >= self.epoch_seen, "group epoch went back");
        self.epoch_seen = st.group_epoch;
        assert!(self.net.relay.poll_timeout().is_some());
    }
}
