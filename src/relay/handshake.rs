//! The handshake: HELLO answered with SERVER_KEY+COOKIE, COOKIE+SESSION_KEY
//! checked cheapest first (cookie, replay, per-address and per-IP limits,
//! table room, RSA budget: see `admission`) before the RSA decryption, then
//! the client registered and welcomed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::info;

use crate::relay::clients::{Client, ClientId};
use crate::relay::cookie::{self, ct_eq};
use crate::relay::dispatch::Turn;
use crate::relay::drop::Drop;
use crate::relay::{Event, Relay, Timer, Transmits};
use crate::session::Session;
use crate::wire::outer::{self, Keyed};
use crate::wire::{self, inner, tlv};
use crate::wire::{FERNET_KEY_LEN, MIN_HELLO_LEN};

/// SESSION_KEY ciphertexts that registered a client, kept for as long as
/// the cookie that came with them can be valid, so that a captured
/// COOKIE + SESSION_KEY cannot be replayed to re-key an address (which
/// resets its SEQ windows and lets old tokens through again) or to register
/// it again after it left. Two generations of at least two cookie epochs
/// each; entries are 8 bytes of SHA-256, so memory is bounded by the RSA
/// budget times four epochs.
pub(super) struct SeenSessionKeys {
    current: HashSet<u64>,
    previous: HashSet<u64>,
    since: Instant,
}

impl SeenSessionKeys {
    /// A cookie is valid for at most two epochs after it was issued.
    const GENERATION: Duration = Duration::from_secs(2 * cookie::EPOCH.as_secs());

    pub(super) fn new(now: Instant) -> Self {
        SeenSessionKeys {
            current: HashSet::new(),
            previous: HashSet::new(),
            since: now,
        }
    }

    fn digest(ciphertext: &[u8]) -> u64 {
        use rsa::sha2::{Digest, Sha256};
        let d = Sha256::digest(ciphertext);
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_be_bytes(b)
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.since);
        if age >= Self::GENERATION {
            self.previous = std::mem::take(&mut self.current);
            if age >= 2 * Self::GENERATION {
                self.previous.clear();
            }
            self.since = now;
        }
    }

    fn contains(&mut self, now: Instant, ciphertext: &[u8]) -> bool {
        self.rotate(now);
        let d = Self::digest(ciphertext);
        self.current.contains(&d) || self.previous.contains(&d)
    }

    fn insert(&mut self, now: Instant, ciphertext: &[u8]) {
        self.rotate(now);
        self.current.insert(Self::digest(ciphertext));
    }
}

impl Relay {
    /// Answers the datagram's first HELLO (`version` is its first byte) with
    /// SERVER_KEY+COOKIE, if the datagram (`len` bytes) is long enough and
    /// nothing answered it yet.
    pub(super) fn handle_hello(
        &mut self,
        turn: &mut Turn,
        version: Option<u8>,
        len: usize,
        out: &mut Transmits,
    ) -> Result<(), Drop> {
        if len < MIN_HELLO_LEN {
            return Err(Drop::ShortHello);
        }
        if version != Some(wire::VERSION) {
            return Err(Drop::BadVersion);
        }
        if turn.answered {
            return Err(Drop::HelloRepeated);
        }
        let d = &mut self.emitter.datagram;
        d.clear();
        tlv::put(d, outer::SERVER_KEY, self.key.public_der());
        tlv::put(d, outer::COOKIE, &self.cookies.issue(turn.src));
        // Anti-amplification: never more than 3× what an unvalidated address sent.
        if d.len() > len.saturating_mul(3) {
            return Err(Drop::Amplification);
        }
        out.push(turn.src, d);
        turn.answered = true;
        self.stats.hellos_answered += 1;
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += d.len() as u64;
        Ok(())
    }

    /// Handles the datagram's first SESSION_KEY and the COOKIE beside it.
    pub(super) fn handle_session_key(
        &mut self,
        now: Instant,
        src: SocketAddr,
        k: Keyed<'_>,
        out: &mut Transmits,
    ) -> Result<(), Drop> {
        let ciphertext = k.value;
        // Cheap checks first; RSA (~2 ms) only for validated, rate-limited sources.
        if !k.cookie.is_some_and(|c| self.cookies.check(src, c)) {
            return Err(Drop::BadCookie);
        }
        // A SESSION_KEY is accepted once: a replay would re-key (both SEQ
        // windows restart, so old tokens pass again) or re-register a client
        // that left. Silent, and before RSA.
        if self.seen_session_keys.contains(now, ciphertext) {
            return Err(Drop::ReplayedSessionKey);
        }
        self.admission.limit(now, &src)?;
        let existing = self.clients.lookup(&src);
        if existing.is_none() {
            if self.clients.len() >= self.config.max_clients {
                return Err(Drop::ServerFull);
            }
            let cap = self.config.max_clients_per_ip;
            if cap > 0 && self.clients.at_host(&src) >= cap {
                return Err(Drop::IpFull);
            }
        }
        self.admission.spend(now, existing.is_some())?;
        let plain = self.key.decrypt(ciphertext).ok_or(Drop::RsaDecrypt)?;
        let session = plain
            .get(..FERNET_KEY_LEN)
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(Session::new)
            .ok_or(Drop::BadFernetKey)?;
        let token = plain.get(FERNET_KEY_LEN..).unwrap_or_default();
        if let Some(want) = &self.config.access_token {
            if !ct_eq(want, token) {
                return Err(Drop::BadAccessToken);
            }
        }
        self.seen_session_keys.insert(now, ciphertext);
        self.register(now, src, session, existing, out);
        Ok(())
    }

    fn register(
        &mut self,
        now: Instant,
        src: SocketAddr,
        session: Session,
        existing: Option<usize>,
        out: &mut Transmits,
    ) {
        let generation = self.clients.next_generation();
        let (slot, rekeyed) = match existing.and_then(|s| self.clients.get_mut(s).map(|c| (s, c))) {
            Some((slot, c)) => {
                self.reassembler.remove_owner(c.generation);
                c.session = session;
                c.generation = generation;
                c.last_seen = now;
                (slot, true)
            }
            None => {
                let slot = self.clients.insert(Client {
                    id: ClientId::new(src),
                    id_text: src.to_string(),
                    session,
                    generation,
                    last_seen: now,
                    msgs_in: 0,
                    bytes_in: 0,
                    msgs_out: 0,
                    bytes_out: 0,
                });
                (slot, false)
            }
        };
        self.timers.insert(
            now + self.config.client_timeout,
            Timer::Idle { slot, generation },
        );
        self.stats.handshakes_completed += 1;
        let Some(c) = self.clients.get_mut(slot) else {
            return;
        };
        let plain = &mut self.emitter.plain;
        let token = c.session.seal(plain, |p| {
            tlv::put(p, inner::CLIENT_ID, c.id_text.as_bytes())
        });
        let id = c.id.clone();
        self.tail.clear();
        tlv::put(&mut self.tail, inner::PEER_JOINED, c.id_text.as_bytes());
        match self
            .emitter
            .token(src, outer::WELCOME, &token, out, &mut self.stats)
        {
            Ok(n) => {
                c.msgs_out += 1;
                c.bytes_out += n as u64;
            }
            Err(_) => self.dropped(None, Drop::Oversize, 1, out),
        }
        info!(
            "client {id} {}",
            if rekeyed { "re-keyed" } else { "joined" }
        );
        if !rekeyed {
            self.notify(Some(slot), out);
        }
        self.events.push(Event::Joined { id, rekeyed });
    }
}
