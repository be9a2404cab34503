//! The handshake: HELLO answered with SERVER_KEY+COOKIE+VERSIONS,
//! COOKIE+SESSION_KEY (v1) or COOKIE+SESSION_KEY2 (v2 §3, bound to its
//! cookie) checked cheapest first (cookie, replay, per-address and per-IP
//! limits, table room, RSA budget: see `admission`) before the RSA
//! decryption, then the client registered and welcomed; a v2 WELCOME
//! carries the capabilities granted and, in group mode, the group's key,
//! downlink and signer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;

use rand::RngExt;

use crate::relay::clients::{Client, ClientId};
use crate::relay::config::credentials::Perms;
use crate::relay::cookie::ct_eq;
use crate::relay::dispatch::Turn;
use crate::relay::drop::Drop;
use crate::relay::seen;
use crate::relay::{Event, Relay, Timer, Transmits};
use crate::session::Session;
use crate::wire::handshake::{self, Handshake, CAP_GROUP};
use crate::wire::inner::{put_group_addr, put_group_key};
use crate::wire::outer::{self, Keyed};
use crate::wire::{self, inner, tlv, LeaveReason};
use crate::wire::{FERNET_KEY_LEN, MIN_HELLO_LEN};

/// The protocol versions this relay speaks: the VERSIONS value (v2 §2).
pub(super) const VERSIONS: [u8; 2] = [1, 2];

/// Who a handshake's credential admitted (v2 §5).
#[derive(Clone, Debug)]
pub(super) struct Admitted {
    /// The clients file's name for it, if any.
    name: Option<Arc<str>>,
    /// What it may do.
    perms: Perms,
    /// SHA-256 of the named token (zero when unnamed).
    credential: [u8; 32],
}

impl Default for Admitted {
    /// An unnamed client: `pubsub`, as every client without a clients file.
    fn default() -> Self {
        Admitted {
            name: None,
            perms: Perms::PUBSUB,
            credential: [0; 32],
        }
    }
}

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

    /// Handles the datagram's first SESSION_KEY (`bound` false) or
    /// SESSION_KEY2 (`bound`, protocol v2 §3) and the COOKIE beside it. The
    /// checks run in the contract's order and stop at the first failure:
    /// cookie, seen ciphertexts, per-source limits (and table room), RSA
    /// budget, RSA decryption, then for v2 BIND, FERNET_KEY, CREDENTIAL.
    pub(super) fn handle_session_key(
        &mut self,
        now: Instant,
        src: SocketAddr,
        k: Keyed<'_>,
        bound: bool,
        out: &mut Transmits,
    ) -> Result<(), Drop> {
        let ciphertext = k.value;
        // Cheap checks first; RSA (~2 ms) only for validated, rate-limited sources.
        let cookie = k
            .cookie
            .filter(|c| self.cookies.check(src, c))
            .ok_or(Drop::BadCookie)?;
        // Address and host bans cost a scan of a short list: before RSA.
        if self.bans.addr_banned(now, &src) {
            return Err(Drop::Banned);
        }
        // A SESSION_KEY is accepted once: a replay would re-key (both SEQ
        // windows restart, so old tokens pass again) or register the key
        // again elsewhere or later. Before RSA, and silent, except to the
        // client it registered, whose WELCOME may have been lost.
        let digest = seen::digest(ciphertext);
        if self.seen_session_keys.contains(now, digest) || self.seen_bound.contains(now, digest) {
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
        if bound && !self.seen_bound.has_room(now) {
            return Err(Drop::SeenFull);
        }
        self.admission.spend(now, existing.is_some())?;
        let plain = self
            .key
            .decrypt(&mut self.rng, ciphertext)
            .ok_or(Drop::RsaDecrypt)?;
        let (session, asked, admitted) = if bound {
            let (session, caps, admitted) = self.open_bound(&plain, cookie)?;
            (session, Some(caps), admitted)
        } else {
            let (session, admitted) = self.open_v1(&plain)?;
            (session, None, admitted)
        };
        if admitted
            .name
            .as_deref()
            .is_some_and(|n| self.bans.name_banned(now, n))
        {
            return Err(Drop::Banned);
        }
        if bound {
            self.seen_bound.insert(now, digest);
        } else {
            self.seen_session_keys.insert(now, digest);
        }
        // A client that may not subscribe is never granted GROUP: the
        // group key would let it read everything (v2 §5).
        let caps = asked.map(|a| {
            let caps = self.grant(a, src);
            if admitted.perms.subscribe {
                caps
            } else {
                caps & !CAP_GROUP
            }
        });
        let existing = match existing {
            // The address holds a session under another name: that one
            // leaves, and this one joins as itself.
            Some(slot)
                if self.clients.get(slot).and_then(|c| c.id.name()) != admitted.name.as_deref() =>
            {
                self.remove(slot, LeaveReason::Bye);
                None
            }
            e => e,
        };
        self.register(now, src, session, digest, existing, caps, admitted, out);
        Ok(())
    }

    /// A v1 plaintext: the 44-byte Fernet key, then the access token.
    fn open_v1(&self, plain: &[u8]) -> Result<(Session, Admitted), Drop> {
        let session = plain
            .get(..FERNET_KEY_LEN)
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(Session::new)
            .ok_or(Drop::BadFernetKey)?;
        let token = plain.get(FERNET_KEY_LEN..).unwrap_or_default();
        let admitted = self.admit((!token.is_empty()).then_some(token))?;
        Ok((session, admitted))
    }

    /// Who the token a handshake presented (`None`: none) admits.
    ///
    /// Without a clients file, the shared `--token-file` token (if set)
    /// must match, and everyone is unnamed with `pubsub`. With one, a
    /// token it lists admits its name with its line's permissions; else the
    /// shared token (if set) admits an unnamed `pubsub` client; else
    /// [`Drop::UnknownCredential`] (REJECT 2).
    fn admit(&self, token: Option<&[u8]>) -> Result<Admitted, Drop> {
        let shared = |t: Option<&[u8]>| match (&self.config.access_token, t) {
            (Some(want), Some(t)) => ct_eq(want, t),
            (Some(_), None) => false,
            (None, _) => true,
        };
        let Some(table) = &self.config.credentials else {
            return if shared(token) {
                Ok(Admitted::default())
            } else {
                Err(Drop::BadAccessToken)
            };
        };
        if let Some(e) = token.and_then(|t| table.lookup(t)) {
            return Ok(Admitted {
                name: Some(Arc::from(e.name.as_str())),
                perms: e.perms,
                credential: e.digest,
            });
        }
        if self.config.access_token.is_some() && shared(token) {
            return Ok(Admitted::default());
        }
        Err(Drop::UnknownCredential)
    }

    /// A v2 plaintext (handshake TLVs) whose BIND must be `cookie`, the
    /// COOKIE of its own datagram. Returns the session and the
    /// capabilities asked for.
    fn open_bound(&self, plain: &[u8], cookie: &[u8]) -> Result<(Session, u32, Admitted), Drop> {
        let h = match Handshake::parse(plain) {
            Ok(h) if ct_eq(h.bind, cookie) => h,
            Ok(_) => return Err(Drop::BindMismatch),
            Err(_) => {
                // BIND is checked before the other fields: a plaintext
                // without this datagram's COOKIE as BIND is a mismatch,
                // whatever else is wrong with it.
                let bound = tlv::Reader::new(plain)
                    .map_while(Result::ok)
                    .any(|t| t.kind == handshake::BIND && ct_eq(t.value, cookie));
                return Err(if bound {
                    Drop::BadHandshake
                } else {
                    Drop::BindMismatch
                });
            }
        };
        let session = std::str::from_utf8(h.fernet_key)
            .ok()
            .and_then(Session::new)
            .ok_or(Drop::BadFernetKey)?;
        let admitted = self.admit(h.credential)?;
        Ok((session, h.caps, admitted))
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
        c.count_out(n);
        self.stats.welcomes_resent += 1;
        Ok(())
    }

    /// Registers (or re-keys) the client at `src` and welcomes it. `caps`
    /// is what a v2 handshake was granted (None for v1). Group mode order
    /// (v2 §4): a pending rekey first; for a new session granted GROUP its
    /// PEER_JOINED under the current epoch, then the ratchet, then the
    /// WELCOME with the new key only; a re-handshake that drops GROUP is a
    /// leave (rekeyed at the end of the input, no PEER_LEFT).
    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        now: Instant,
        src: SocketAddr,
        session: Session,
        session_key: u64,
        existing: Option<usize>,
        caps: Option<u32>,
        admitted: Admitted,
        out: &mut Transmits,
    ) {
        self.settle(out);
        let id = ClientId::named(admitted.name, src);
        let group = caps.is_some_and(|c| c & CAP_GROUP != 0);
        let generation = self.clients.next_generation();
        let (version, caps) = (if caps.is_some() { 2 } else { 1 }, caps.unwrap_or(0));
        let (slot, rekeyed) = match existing.and_then(|s| self.clients.get_mut(s).map(|c| (s, c))) {
            Some((slot, c)) => {
                self.reassembler.remove_owner(c.generation);
                c.session = session;
                c.session_key = session_key;
                c.generation = generation;
                c.last_seen = now;
                c.version = version;
                c.caps = caps;
                c.key_answered = None;
                // A new handshake is where rights a reload added apply.
                c.perms = admitted.perms;
                c.credential = admitted.credential;
                (slot, true)
            }
            None => {
                let slot = self.clients.insert(Client {
                    id_text: id.to_string(),
                    id: id.clone(),
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
                    version,
                    caps,
                    downlink: None,
                    key_answered: None,
                    member_since: 0,
                    perms: admitted.perms,
                    credential: admitted.credential,
                });
                (slot, false)
            }
        };
        self.timers.insert(
            now + self.config.client_timeout,
            Timer::Idle { slot, generation },
        );
        self.stats.handshakes_completed += 1;
        let Some(id_text) = self.clients.get(slot).map(|c| c.id_text.clone()) else {
            return;
        };
        // Out of the group while the notice and the ratchet happen; back in
        // below if this WELCOME grants GROUP.
        let was_member = self.drop_member(slot);
        let joined = |tail: &mut Vec<u8>| {
            tail.clear();
            tlv::put(tail, inner::PEER_JOINED, id_text.as_bytes());
        };
        let downlink = if group {
            if !rekeyed {
                joined(&mut self.tail);
                self.notify(Some(slot), out);
            }
            self.ratchet(out);
            if !was_member {
                let epoch = self.group.sender.epoch();
                if let Some(c) = self.clients.get_mut(slot) {
                    c.member_since = epoch;
                }
            }
            self.add_member(slot)
        } else {
            if was_member {
                self.group.sender.leave();
            }
            None
        };
        self.welcome(now, slot, downlink, out);
        info!(
            "client {id_text} {} ({})",
            if rekeyed { "re-keyed" } else { "joined" },
            self.clients.get(slot).map_or("", |c| c.mode())
        );
        if !rekeyed && !group {
            joined(&mut self.tail);
            self.notify(Some(slot), out);
        }
        self.events.push(Event::Joined { id, rekeyed });
    }

    /// Seals and sends the WELCOME of the session in `slot`, and keeps the
    /// datagram for a resend: `SEQ CLIENT_ID`, and for v2 `CAPS`, with the
    /// group's key, downlink and signer when it is a member on `downlink`.
    fn welcome(
        &mut self,
        now: Instant,
        slot: usize,
        downlink: Option<SocketAddr>,
        out: &mut Transmits,
    ) {
        let (epoch, key) = (self.group.sender.epoch(), self.group.sender.key_text());
        let signer = self.group.sender.signer_public();
        let Relay {
            clients,
            emitter,
            sealed,
            stats,
            rng,
            unix,
            ..
        } = self;
        let Some(c) = clients.get_mut(slot) else {
            return;
        };
        let (version, caps, id_text) = (c.version, c.caps, c.id_text.clone());
        let token = c.seal(unix.unix_secs(), rng.random(), sealed, |p| {
            tlv::put(p, inner::CLIENT_ID, id_text.as_bytes());
            if version < 2 {
                return;
            }
            tlv::put(p, inner::CAPS, &caps.to_be_bytes());
            if let Some(addr) = downlink {
                put_group_key(p, epoch, key.as_bytes());
                put_group_addr(p, addr);
                tlv::put(p, inner::GROUP_SIGNER, &signer);
            }
        });
        c.welcome = Box::default();
        match emitter.token_to(c, outer::WELCOME, token, out, stats) {
            Ok(_) => {
                c.welcome = emitter.datagram.as_slice().into();
                c.welcome_sent = now;
            }
            Err(_) => self.dropped(None, Drop::Oversize, 1, out),
        }
    }
}
