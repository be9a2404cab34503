//! Routing of what the relay sends in the `core` program, and the
//! invariants checked after every datagram and op.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::client::ClientEvent;
use crate::relay::Event;
use crate::wire::tlv::{self, Reader};
use crate::wire::{self, outer};

use super::{cookie_of, has_type, Origin, Recorded, Sim, HISTORY};

impl Sim {
    pub(super) fn is_registered(&self, a: SocketAddr) -> bool {
        self.registered.contains(&a.to_string())
    }

    pub(super) fn registered_transmits_only(&self) -> bool {
        self.net.tx.iter().all(|(dst, _)| self.is_registered(dst))
    }

    /// Hands one datagram to the relay, checks its answers, then delivers
    /// them; ClientCore replies (SESSION_KEY) go back to the relay.
    pub(super) fn deliver_to_relay(&mut self, src: SocketAddr, d: Vec<u8>, origin: Origin) {
        let mut queue = VecDeque::from([(src, d, origin)]);
        while let Some((src, d, origin)) = queue.pop_front() {
            if let Origin::Core(_) = origin {
                if has_type(&d, outer::SESSION_KEY) {
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
        let mut registered_before = self.registered.clone();
        registered_before.extend(std::mem::take(&mut self.unregistered_by_shutdown));
        // Events first: they say who is registered now.
        let events: Vec<Event> = self.net.relay.drain_events().collect();
        for e in events {
            if self.trace {
                eprintln!("  relay event {e:?}");
            }
            match e {
                Event::Joined { id, rekeyed } => {
                    let id = id.to_string();
                    let i = self.clients.iter().position(|c| c.id == id);
                    assert!(i.is_some(), "a non-client address {id} registered");
                    assert_eq!(
                        rekeyed,
                        self.registered.contains(&id),
                        "Joined {{ rekeyed }} wrong for {id}"
                    );
                    self.registered.insert(id);
                    if let Some(i) = i {
                        // In sync again only if its ClientCore gets the WELCOME.
                        self.clients[i].tx_ok = false;
                        self.clients[i].rx_ok = false;
                    }
                }
                Event::Left { id, reason } => {
                    let id = id.to_string();
                    assert!(
                        self.registered.remove(&id),
                        "{id} left ({reason:?}) unregistered"
                    );
                    if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
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
            if Some(*dst) == src {
                to_src += d.len();
            } else {
                let known =
                    registered_before.contains(&dst.to_string()) || self.is_registered(*dst);
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

        // Deliver to the ClientCores.
        let mut replies = Vec::new();
        for (dst, d) in sent {
            if self.trace {
                let types: Vec<u16> = Reader::new(&d).flatten().map(|t| t.kind).collect();
                eprintln!("  relay -> {dst}: {} bytes, types {types:x?}", d.len());
            }
            self.record(dst, true, &d);
            let Some(j) = self.clients.iter().position(|c| c.addr == dst) else {
                continue;
            };
            let mut out = Vec::new();
            let mut events = Vec::new();
            let c = &mut self.clients[j];
            c.sniff_cookie(self.net.now, &d);
            let _ = c
                .core
                .handle_datagram(self.net.now, &d, &mut out, &mut events);
            for e in events {
                self.client_event(j, e);
            }
            replies.extend(out.into_iter().map(|d| (dst, d, Origin::Core(j))));
        }
        replies
    }

    pub(super) fn client_event(&mut self, j: usize, e: ClientEvent) {
        if self.trace {
            eprintln!("  {} event {e:?}", self.clients[j].id);
        }
        let c = &mut self.clients[j];
        match e {
            ClientEvent::Welcome { id } => {
                assert_eq!(id, c.id, "WELCOME with a foreign id");
                self.report.welcomes += 1;
                c.tx_ok = true;
                c.rx_ok = true;
            }
            ClientEvent::Message { sender, body } => {
                assert_ne!(sender, c.id, "message echoed to its sender");
                self.report.messages += 1;
                let key = (sender, body);
                let legit = self.legit.contains(&key);
                let crafted = self.crafted.contains(&key);
                assert!(
                    legit || crafted,
                    "{} got a body {} never sent ({} bytes)",
                    c.id,
                    key.0,
                    key.1.len()
                );
                let n = c.received.entry(key).or_insert(0);
                *n += 1;
                assert!(*n == 1 || crafted, "{} got one message {n} times", c.id);
            }
            ClientEvent::PeerJoined(id) => assert_ne!(id, c.id, "told about its own join"),
            ClientEvent::ServerClosing => {
                c.tx_ok = false;
                c.rx_ok = false;
            }
            ClientEvent::ServerKey { .. } | ClientEvent::PeerLeft { .. } => {}
            ClientEvent::Rejected(_) => {}
            // The simulated relay speaks v1: no group mode.
            ClientEvent::Downlink(_) | ClientEvent::DownlinkSilent(_) => {
                panic!("group mode from a v1 relay")
            }
        }
    }

    /// Invariants that hold between ops.
    pub(super) fn check_state(&self) {
        let limits = &self.config.reassembly;
        assert!(
            self.net.relay.reassembly_bytes() <= limits.max_total_bytes,
            "reassembly holds {} > {}",
            self.net.relay.reassembly_bytes(),
            limits.max_total_bytes
        );
        assert!(self.net.relay.client_count() <= self.config.max_clients);
        assert_eq!(self.net.relay.client_count(), self.registered.len());
        for c in self.net.relay.clients(self.net.now) {
            assert!(c.partials <= limits.max_partials_per_owner);
            assert!(self.registered.contains(&c.id.to_string()));
        }
        assert!(self.net.relay.poll_timeout().is_some());
    }
}
