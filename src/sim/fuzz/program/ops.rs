//! The composite ops of the `core` program: replays, handshakes, bodies
//! (fragmented, reordered), harness-built SESSION_KEYs and tokens, time.

use std::time::Duration;

use rand::RngExt;
use rsa::sha2::Sha256;

use crate::reassembly::CHUNK_OVERHEAD;
use crate::session::fernet::{self, FernetKey};
use crate::wire::fragment::{self, FRAGMENT_OVERHEAD};
use crate::wire::tlv::{self, Reader};
use crate::wire::{self, inner, outer, Inner};

use super::{
    has_type, server_public, spends_rsa, stranger_addr, Origin, Sim, BODY_MAGIC, CLIENTS,
    STRANGERS, TIMER_SLACK, UNIX_START,
};

impl Sim {
    /// Op 6: sends recorded datagram `k` again from its own address, another
    /// client's or a stranger's (`s`); with `rewrap`, its first TLV's value
    /// goes in another outer type, possibly fragmented. What the relay sent
    /// must never be accepted back (tokens are sealed under the receiver's
    /// own key, so only the direction tells them apart).
    pub(super) fn replay(&mut self, k: usize, s: u8, rewrap: Option<u8>) {
        if self.history.is_empty() {
            return;
        }
        let rec = self.history[k % self.history.len()].clone();
        let src = match s % 8 {
            // The kernel drops datagrams from a multicast source (a
            // martian): one recorded on the downlink comes from a stranger.
            0..=3 if self.is_downlink(rec.addr) => stranger_addr((s >> 3) % STRANGERS),
            0..=3 => rec.addr,
            4..=5 => self.clients[usize::from(s >> 3) % CLIENTS].addr,
            _ => stranger_addr((s >> 3) % STRANGERS),
        };
        let mut datagrams = vec![rec.data];
        if let Some(w) = rewrap {
            let Some(value) = Reader::new(&datagrams[0]).flatten().next().map(|t| t.value) else {
                return;
            };
            let kind = [
                outer::DATA,
                outer::KEEPALIVE,
                outer::BYE,
                outer::WELCOME,
                outer::HELLO,
                outer::SESSION_KEY,
                outer::FRAGMENT,
                0x00ff,
            ][usize::from(w & 7)];
            let mut d = Vec::new();
            tlv::put(&mut d, kind, value);
            if w & 8 != 0 && d.len() > FRAGMENT_OVERHEAD + 1 {
                let room = (usize::from(w >> 4) * 16).max(FRAGMENT_OVERHEAD + 1);
                let mut frags = Vec::new();
                fragment::split(&d, room, u32::from(w), |f| frags.push(f.to_vec()));
                datagrams = frags;
            } else {
                datagrams = vec![d];
            }
        }
        for d in datagrams {
            if spends_rsa(&d) {
                if self.rsa_left == 0 {
                    return;
                }
                self.rsa_left -= 1;
            }
            let st = self.net.relay.stats();
            let before = (
                st.messages_relayed,
                st.clients_left,
                st.handshakes_completed,
            );
            self.deliver_to_relay(src, d, Origin::Other);
            let st = self.net.relay.stats();
            let after = (
                st.messages_relayed,
                st.clients_left,
                st.handshakes_completed,
            );
            if rec.from_relay {
                assert_eq!(
                    before, after,
                    "the relay accepted its own datagram sent back (relayed, left, joined)"
                );
            }
        }
    }

    /// HELLO from client i's ClientCore; the relay's answers are delivered
    /// to the ClientCores, whose SESSION_KEY goes back to the relay.
    pub(super) fn handshake(&mut self, i: usize) {
        let c = &mut self.clients[i];
        c.tx_ok = false;
        c.rx_ok = false;
        let hello = c.core.hello();
        let addr = c.addr;
        self.deliver_to_relay(addr, hello, Origin::Core(i));
    }

    /// Client i sends a fresh, unique body of `len` filler bytes. With a
    /// `pattern`, its datagrams are sent in the order/multiplicity the pattern
    /// picks; without, all are sent in order and delivery is checked.
    pub(super) fn send_body(&mut self, i: usize, len: usize, pattern: Option<&[u8]>) {
        let mut body = BODY_MAGIC.to_vec();
        body.extend_from_slice(&self.next_body.to_be_bytes());
        self.next_body += 1;
        body.extend((0..len).map(|k| (k as u8).wrapping_mul(7) ^ (self.next_body as u8)));
        let mut datagrams = Vec::new();
        if !self.clients[i].core.send(&body, &mut datagrams) {
            return;
        }
        let sender = self.sender_id(i);
        self.legit.insert(body.clone(), i);
        let addr = self.clients[i].addr;
        let order: Vec<usize> = match pattern {
            Some(p) if !datagrams.is_empty() => p
                .iter()
                .map(|&k| usize::from(k) % datagrams.len())
                .collect(),
            Some(_) => Vec::new(),
            None => (0..datagrams.len()).collect(),
        };
        let may_publish = self.relay_view(addr).is_some_and(|(_, p, _)| p.publish);
        let expect = pattern.is_none()
            && self.clients[i].tx_ok
            && may_publish
            && self.clients[i].drop_next == 0
            && self.fits(i, &datagrams);
        let receivers: Vec<usize> = (0..CLIENTS)
            .filter(|&j| j != i && self.sure_receiver(j))
            .collect();
        // If the relay relays it now, only today's members may open it
        // from the downlink, then or later. Nobody else's membership
        // changes while the sender's datagrams are handled.
        let relayed_before = self.net.relay.stats().messages_relayed;
        let members = self.group_members();
        self.eligible.insert(body.clone(), members);
        for k in order {
            self.deliver_to_relay(addr, datagrams[k].clone(), Origin::Core(i));
        }
        if self.net.relay.stats().messages_relayed == relayed_before {
            // Not relayed (yet): a replayed fragment may complete it later.
            self.eligible.remove(&body);
        }
        if expect {
            for j in receivers {
                let c = &self.clients[j];
                if !c.rx_ok {
                    continue; // it was removed meanwhile
                }
                let n = c.received.get(&(sender.clone(), body.clone())).copied();
                assert_eq!(
                    n,
                    Some(1),
                    "body of {len} bytes from in-sync {sender} not delivered once to in-sync {}",
                    c.id
                );
            }
        }
    }

    /// Whether a message relayed now must reach client j: its ClientCore
    /// holds the relay's session there and may subscribe, nothing to it is
    /// being lost, and a group member has caught up with the group's epoch
    /// and hears the downlink at once.
    fn sure_receiver(&self, j: usize) -> bool {
        let c = &self.clients[j];
        let Some((mode, perms, _)) = self.relay_view(c.addr) else {
            return false;
        };
        if !c.rx_ok || c.drop_next > 0 || !perms.subscribe {
            return false;
        }
        let epoch = self.net.relay.stats().group_epoch;
        match (mode == "group", c.core.downlink()) {
            (false, None) => true,
            (true, Some(_)) => {
                !self.downlink_hold && c.core.group_epoch().map(u64::from) == Some(epoch)
            }
            _ => false,
        }
    }

    /// Whether the relay must accept these datagrams from client i: a single
    /// unfragmented one, or fragments that fit the reassembly limits.
    pub(super) fn fits(&self, i: usize, datagrams: &[Vec<u8>]) -> bool {
        let Some(first) = datagrams.first() else {
            return false;
        };
        if datagrams.len() == 1 && !has_type(first, outer::FRAGMENT) {
            return true;
        }
        let limits = &self.config.reassembly;
        let chunks: usize = datagrams.iter().map(|d| d.len() - FRAGMENT_OVERHEAD).sum();
        let cost = chunks + datagrams.len() * CHUNK_OVERHEAD;
        let addr = self.clients[i].addr;
        let partials = self
            .net
            .relay
            .clients(self.net.now)
            .into_iter()
            .find(|c| c.id.addr() == addr)
            .map_or(usize::MAX, |c| c.partials);
        partials == 0
            && limits.max_partials_per_owner > 0
            && chunks <= limits.max_message_bytes
            && cost <= limits.max_bytes_per_owner
            && self.net.relay.reassembly_bytes() + cost <= limits.max_total_bytes
    }

    /// The cookie the relay gave client i's address, fetched with a HELLO
    /// of the harness's own when there is none yet or `fresh` asks for it.
    /// The answer also reaches the ClientCore, which ignores it unless it
    /// awaits a key.
    pub(super) fn harness_cookie(
        &mut self,
        i: usize,
        fresh: bool,
    ) -> Option<[u8; crate::wire::COOKIE_LEN]> {
        if self.clients[i].cookie.is_none() || fresh {
            let mut hello = Vec::new();
            let mut v = vec![0u8; wire::MIN_HELLO_LEN - tlv::HEADER_LEN];
            v[0] = wire::VERSION;
            tlv::put(&mut hello, outer::HELLO, &v);
            self.deliver_to_relay(self.clients[i].addr, hello, Origin::Other);
        }
        self.clients[i].cookie
    }

    /// Op 11: COOKIE + SESSION_KEY built by the harness for client i's
    /// address (fetching a cookie with a HELLO first if needed).
    pub(super) fn harness_session_key(&mut self, i: usize, mode: u8, blob: &[u8]) {
        if self.rsa_left == 0 {
            return;
        }
        let Some(cookie) = self.harness_cookie(i, mode & 0x80 != 0) else {
            return;
        };
        let key_bytes: [u8; 32] = self.rng.random();
        let fernet_key = fernet::encode_key(&key_bytes);
        let ciphertext = match mode & 3 {
            3 => {
                // Raw ciphertext, usually of the modulus size so RSA runs.
                let mut ct = blob.to_vec();
                if mode & 4 == 0 {
                    ct.resize(256, 0);
                }
                ct
            }
            m => {
                let mut plain = Vec::new();
                match m {
                    0 => {
                        plain.extend_from_slice(fernet_key.as_bytes());
                        if let Some(t) = &self.config.access_token {
                            plain.extend_from_slice(t);
                        }
                    }
                    1 => {
                        plain.extend_from_slice(fernet_key.as_bytes());
                        plain.extend_from_slice(blob);
                    }
                    _ => plain.extend_from_slice(blob),
                }
                plain.truncate(190); // OAEP-SHA256 limit for RSA-2048
                match server_public().oaep_encrypt_with_rng::<Sha256, _>(&mut self.rng, &plain) {
                    Ok(ct) => ct,
                    Err(_) => return,
                }
            }
        };
        let mut d = Vec::new();
        tlv::put(&mut d, outer::COOKIE, &cookie);
        tlv::put(&mut d, outer::SESSION_KEY, &ciphertext);
        // The HELLO's answer may have made a ClientCore spend the rest.
        if self.rsa_left == 0 {
            return;
        }
        self.rsa_left -= 1;
        let key = (mode & 3 != 3).then(|| FernetKey::from_bytes(&key_bytes));
        self.harness_handshake(i, d, key);
    }

    /// Delivers a harness-built handshake datagram from client i's address;
    /// `key` (the Fernet key it offers, if known) becomes the crafted key
    /// when the relay registers it. What the relay sends this address
    /// meanwhile (the WELCOME) is also tried under it.
    pub(super) fn harness_handshake(&mut self, i: usize, d: Vec<u8>, key: Option<FernetKey>) {
        let addr = self.clients[i].addr;
        self.clients[i].crafted_pending = key;
        let joined_before = self.net.relay.stats().handshakes_completed;
        self.deliver_to_relay(addr, d, Origin::Other);
        let c = &mut self.clients[i];
        let key = c.crafted_pending.take();
        if self.net.relay.stats().handshakes_completed > joined_before && key.is_some() {
            c.crafted_key = key;
            c.crafted_seq = 0;
        }
    }

    /// Op 12: an outer TLV of a chosen type whose value is a Fernet token,
    /// under the key registered by op 11, over an arbitrary plaintext.
    pub(super) fn crafted_token(
        &mut self,
        i: usize,
        kind: u8,
        seq_mode: u8,
        seq: u64,
        tail: &[u8],
    ) {
        let Some(f) = &self.clients[i].crafted_key else {
            return;
        };
        let mut plain = Vec::new();
        if seq_mode & 4 == 0 {
            wire::put_seq(&mut plain, seq);
        }
        if seq_mode & 8 != 0 {
            tlv::put(&mut plain, inner::BODY, tail);
        } else {
            plain.extend_from_slice(tail);
        }
        let token = f.seal_text(UNIX_START, self.rng.random(), &plain);
        let fragmented = kind & 8 != 0;
        let kind = match kind % 8 {
            0..=3 => outer::DATA,
            4 => outer::KEEPALIVE,
            5 => outer::BYE,
            6 => outer::WELCOME,
            _ => u16::from(kind),
        };
        let c = &mut self.clients[i];
        c.tx_ok = false; // the relay's SEQ window for this address moved
        c.crafted_seq = c.crafted_seq.max(seq);
        let addr = c.addr;
        if let Ok(m) = Inner::parse(&plain) {
            if let Some(body) = m.body {
                self.crafted.entry(body.to_vec()).or_default().insert(i);
            }
        }
        let mut d = Vec::new();
        tlv::put(&mut d, kind, token.as_bytes());
        if fragmented && d.len() > self.client_max_datagram {
            let mut frags = Vec::new();
            fragment::split(&d, self.client_max_datagram, u32::from(kind), |f| {
                frags.push(f.to_vec())
            });
            for f in frags {
                self.deliver_to_relay(addr, f, Origin::Other);
            }
        } else {
            self.deliver_to_relay(addr, d, Origin::Other);
        }
    }

    /// Runs the relay's timers after moving the clock.
    pub(super) fn advance(&mut self, by: Duration) {
        let quiet_since = self.net.now;
        self.net.now += by;
        let now = self.net.now;
        let mut rounds = 0;
        loop {
            self.net.tx.clear();
            self.net.relay.handle_timeout(now, &mut self.net.tx);
            assert!(self.registered_transmits_only(), "timer sent to strangers");
            self.after_relay(None, 0, false);
            match self.net.relay.poll_timeout() {
                Some(t) if t <= now => {
                    rounds += 1;
                    assert!(
                        rounds < 4,
                        "handle_timeout keeps a timer due ({rounds} rounds)"
                    );
                }
                Some(_) => break,
                None => panic!("poll_timeout is None (cookie rotation is always pending)"),
            }
        }
        // Nothing arrived since `quiet_since`: idle clients and stale partial
        // messages must be gone once their deadlines passed.
        if now.saturating_duration_since(quiet_since) >= self.config.client_timeout + TIMER_SLACK {
            assert_eq!(
                self.net.relay.client_count(),
                0,
                "idle clients not timed out"
            );
        }
        if now.saturating_duration_since(quiet_since)
            >= self.config.reassembly.max_age + TIMER_SLACK
        {
            assert_eq!(self.net.relay.reassembly_bytes(), 0, "stale fragments kept");
        }
        // Then the clients' own timers: key requests, probes, a silent
        // downlink given up.
        for j in 0..CLIENTS {
            self.client_timers(j);
        }
    }
}
