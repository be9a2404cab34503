//! The handshake: HELLO answered with SERVER_KEY+COOKIE, COOKIE+SESSION_KEY
//! checked cheapest first (cookie, replay, per-address and per-IP limits,
//! table room, RSA budget: see `admission`) before the RSA decryption, then
//! the client registered and welcomed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::info;

use rand::RngExt;

use crate::relay::clients::{Client, ClientId};
use crate::relay::cookie::ct_eq;
use crate::relay::dispatch::Turn;
use crate::relay::drop::Drop;
use crate::relay::seen;
use crate::relay::{Event, Relay, Timer, Transmits};
use crate::session::Session;
use crate::wire::outer::{self, Keyed};
use crate::wire::{self, inner, tlv};
use crate::wire::{FERNET_KEY_LEN, MIN_HELLO_LEN};

/// The protocol versions this relay speaks: the VERSIONS value (v2 §2).
pub(super) const VERSIONS: [u8; 2] = [1, 2];

/// How often a lost WELCOME may be sent again.
const WELCOME_RESEND: Duration = Duration::from_secs(1);

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
        // v2 §2: the versions spoken, so that a v2 client knows to use
        // SESSION_KEY2 (and never falls back); v1 clients skip the type.
        tlv::put(d, outer::VERSIONS, &VERSIONS);
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
        // windows restart, so old tokens pass again) or register the key
        // again elsewhere or later. Before RSA, and silent, except to the
        // client it registered, whose WELCOME may have been lost.
        let digest = seen::digest(ciphertext);
        if self.seen_session_keys.contains(now, digest) {
            return self.welcome_again(now, src, digest, out);
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
        let plain = self
            .key
            .decrypt(&mut self.rng, ciphertext)
            .ok_or(Drop::RsaDecrypt)?;
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
        self.seen_session_keys.insert(now, digest);
        self.register(now, src, session, digest, existing, out);
        Ok(())
    }

    /// A repeat of a SESSION_KEY ciphertext: if it registered the session
    /// still live at `src`, its WELCOME datagram goes out again, as it was
    /// (at most once a second), and nothing else changes.
    fn welcome_again(
        &mut self,
        now: Instant,
        src: SocketAddr,
        digest: u64,
        out: &mut Transmits,
    ) -> Result<(), Drop> {
        let c = self
            .clients
            .lookup(&src)
            .and_then(|slot| self.clients.get_mut(slot))
            .filter(|c| c.session_key == digest && !c.welcome.is_empty())
            .ok_or(Drop::ReplayedSessionKey)?;
        if now < c.welcome_sent + WELCOME_RESEND {
            return Err(Drop::WelcomeResendLimited);
        }
        c.welcome_sent = now;
        let n = self
            .emitter
            .again(src, &c.welcome, out, &mut self.stats)
            .map_err(|_| Drop::Oversize)?;
        c.msgs_out += 1;
        c.bytes_out += n as u64;
        self.stats.welcomes_resent += 1;
        Ok(())
    }

    fn register(
        &mut self,
        now: Instant,
        src: SocketAddr,
        session: Session,
        session_key: u64,
        existing: Option<usize>,
        out: &mut Transmits,
    ) {
        let generation = self.clients.next_generation();
        let (slot, rekeyed) = match existing.and_then(|s| self.clients.get_mut(s).map(|c| (s, c))) {
            Some((slot, c)) => {
                self.reassembler.remove_owner(c.generation);
                c.session = session;
                c.session_key = session_key;
                c.generation = generation;
                c.last_seen = now;
                (slot, true)
            }
            None => {
                let slot = self.clients.insert(Client {
                    id: ClientId::new(src),
                    id_text: src.to_string(),
                    session,
                    session_key,
                    welcome: Box::default(),
                    welcome_sent: now,
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
        let (unix_secs, iv) = (self.unix.unix_secs(), self.rng.random());
        let token = c.session.seal(unix_secs, iv, plain, |p| {
            tlv::put(p, inner::CLIENT_ID, c.id_text.as_bytes())
        });
        let id = c.id.clone();
        self.tail.clear();
        tlv::put(&mut self.tail, inner::PEER_JOINED, c.id_text.as_bytes());
        c.welcome = Box::default();
        match self
            .emitter
            .token(src, outer::WELCOME, &token, out, &mut self.stats)
        {
            Ok(n) => {
                c.msgs_out += 1;
                c.bytes_out += n as u64;
                c.welcome = self.emitter.datagram.as_slice().into();
                c.welcome_sent = now;
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
