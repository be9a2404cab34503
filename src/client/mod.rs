//! The client side of protocol v1, sans-IO: [`ClientCore`] turns the
//! server's datagrams into [`ClientEvent`]s and user actions into datagrams
//! for the server. [`crate::client::udp::UdpClient`] puts it on a socket
//! and owns the timers; this module owns the rules that decide what a
//! datagram means.
//!
//! Like the relay core it draws no OS randomness and reads no clock: the
//! caller seeds its generator (session keys, RSA-OAEP padding, Fernet IVs,
//! message ids) and gives the Unix time once, at [`ClientCore::new`].
//!
//! # REJECT is a hint
//!
//! A REJECT carries no authentication: anyone who can send to the client's
//! port can forge one, and the server's own REJECTs share a global budget
//! that strangers can spend. So the core never ends a session on a REJECT.
//! The rules, simplest first:
//!
//! - A REJECT 1 or 2 while a session is established is a *hint* that the
//!   server forgot us ([`ClientCore::take_hint`]). The caller answers it
//!   with [`ClientCore::rehandshake`], a handshake in the background: the
//!   established session keeps sending and receiving until the new one is
//!   welcomed, so a forged hint costs one re-key and loses nothing.
//! - While that background handshake has not yet sent its SESSION_KEY, an
//!   authentic token under the established session proves the hint false
//!   and cancels it. Once the SESSION_KEY is out it is completed instead:
//!   the server may already hold the new key.
//! - A token that opens under the pending key completes the handshake even
//!   if its WELCOME was lost: only the server could have read that key.
//! - A REJECT 2, 3 or 4 that arrives while the current handshake waits for
//!   its WELCOME answers that handshake ([`ClientCore::refusal`]); it is
//!   kept, not acted on, because a forged one may race the real WELCOME.
//!   The caller gives up only when an attempt saw a refusal and no WELCOME.
//! - A SERVER_KEY whose fingerprint is not the pinned one is ignored and
//!   counted ([`ClientCore::pin_mismatches`]); the handshake keeps waiting
//!   for the pinned key until the caller's timeout.
//!
//! How often the caller may act on hints (at most about once a second, and
//! never less often than that, so that forged hints can neither make it
//! hammer the server nor push a real recovery back) is the shell's timing
//! policy, documented in [`crate::client::udp`].

#[cfg(test)]
mod tests;
pub mod udp;

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::PublicKey;

use crate::reassembly::{Outcome, Reassembler, ReassemblyLimits};
use crate::session::{fernet, key};
use crate::session::{Direction, Session, UnixClock};
use crate::wire::fragment;
use crate::wire::outer::{Datagram, Item, Keyed, TokenKind};
use crate::wire::tlv;
use crate::wire::{self, inner, outer, Inner, LeaveReason, RejectReason, MIN_HELLO_LEN};

/// Something the server told the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server's key arrived; the session key is on its way.
    ServerKey {
        /// SHA-256 of the server's DER public key, hex.
        fingerprint: String,
    },
    /// The server registered us under this id.
    Welcome {
        /// Our id as the others see it.
        id: String,
    },
    /// A relayed message.
    Message {
        /// Original sender's id.
        sender: String,
        /// Application bytes.
        body: Vec<u8>,
    },
    /// Another client joined.
    PeerJoined(String),
    /// Another client left.
    PeerLeft {
        /// Its id.
        id: String,
        /// Why (None if the server sent an unknown reason byte).
        reason: Option<LeaveReason>,
    },
    /// The server is shutting down.
    ServerClosing,
    /// The server refused us.
    Rejected(RejectReason),
}

/// A handshake problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// A server key with another fingerprint than the pinned one (ignored).
    PinMismatch {
        /// The pinned fingerprint.
        expected: String,
        /// What the server presented.
        got: String,
    },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::PinMismatch { expected, got } => write!(
                f,
                "server key fingerprint {got} does not match the pinned {expected}"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

/// Options of a client session.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Access token to present, if the server wants one.
    pub access_token: Option<Vec<u8>>,
    /// Expected server fingerprint (hex SHA-256), if pinned.
    pub pin: Option<String>,
    /// Largest datagram to send; larger ones are fragmented.
    pub max_datagram: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            access_token: None,
            pin: None,
            max_datagram: 1200,
        }
    }
}

/// One handshake attempt, from HELLO to WELCOME.
struct Attempt {
    /// The session offered in our SESSION_KEY; None until the server's key
    /// arrived.
    session: Option<Session>,
    /// A REJECT 2, 3 or 4 that arrived after our SESSION_KEY went out.
    refused: Option<RejectReason>,
}

impl Attempt {
    fn new() -> Self {
        Attempt {
            session: None,
            refused: None,
        }
    }
}

enum State {
    Idle,
    /// A handshake with no session to fall back on.
    Connecting(Attempt),
    Established {
        session: Session,
        id: String,
        /// A re-handshake in the background; `session` stays in use until
        /// it is welcomed.
        rekey: Option<Box<Attempt>>,
    },
}

/// Which session opened a token.
enum Opened {
    Established,
    Pending,
}

/// What the core saw that the caller's recovery policy reads.
#[derive(Default)]
struct Seen {
    hint: Option<RejectReason>,
    authentic: u64,
    pin_mismatches: u64,
}

/// One client's protocol state.
///
/// Unauthenticated answers never end a session: a REJECT 1 or 2 while
/// established is a hint ([`ClientCore::take_hint`]) that the caller may
/// answer with [`ClientCore::rehandshake`] while the session keeps working;
/// a REJECT after our SESSION_KEY is only recorded
/// ([`ClientCore::refusal`]); a SERVER_KEY that does not match the pin is
/// ignored and counted ([`ClientCore::pin_mismatches`]), and
/// [`ClientCore::handle_datagram`] reports it as
/// [`ClientError::PinMismatch`] for the caller's log.
pub struct ClientCore {
    opts: ClientOptions,
    state: State,
    reassembler: Reassembler,
    next_msg_id: u32,
    scratch: Vec<u8>,
    /// Seeded by the caller: every random value the client uses.
    rng: StdRng,
    /// Fernet timestamps; advanced by the `now` of each datagram handled.
    clock: UnixClock,
    seen: Seen,
    /// Datagrams dropped as malformed, unauthentic or replayed.
    pub dropped: u64,
}

impl ClientCore {
    /// A client that has not started its handshake, created at `now` when
    /// the wall clock reads `unix_secs`. `rng_seed` seeds every random value
    /// the client uses: the shell passes 32 bytes from the OS generator,
    /// tests a fixed value.
    pub fn new(opts: ClientOptions, now: Instant, unix_secs: u64, rng_seed: [u8; 32]) -> Self {
        let mut rng = StdRng::from_seed(rng_seed);
        ClientCore {
            opts,
            state: State::Idle,
            reassembler: Reassembler::new(ReassemblyLimits::default()),
            next_msg_id: rng.random(),
            scratch: Vec::new(),
            rng,
            clock: UnixClock::new(now, unix_secs),
            seen: Seen::default(),
            dropped: 0,
        }
    }

    /// Our id once the server welcomed us.
    pub fn id(&self) -> Option<&str> {
        match &self.state {
            State::Established { id, .. } => Some(id),
            _ => None,
        }
    }

    /// True once WELCOME arrived.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// Starts a new handshake from scratch, forgetting any session:
    /// returns the HELLO datagram.
    pub fn hello(&mut self) -> Vec<u8> {
        self.state = State::Connecting(Attempt::new());
        hello_datagram()
    }

    /// Starts a handshake in the background when a session is established
    /// (the session stays in use until the new one is welcomed, see the
    /// module doc); otherwise the same as [`ClientCore::hello`]. A new call
    /// replaces the previous attempt. Returns the HELLO datagram.
    pub fn rehandshake(&mut self) -> Vec<u8> {
        match &mut self.state {
            State::Established { rekey, .. } => *rekey = Some(Box::new(Attempt::new())),
            _ => self.state = State::Connecting(Attempt::new()),
        }
        hello_datagram()
    }

    /// True while a background handshake started by
    /// [`ClientCore::rehandshake`] is pending. It ends when welcomed, or
    /// when the established session proves the hint false before the
    /// SESSION_KEY went out.
    pub fn is_rehandshaking(&self) -> bool {
        matches!(self.state, State::Established { rekey: Some(_), .. })
    }

    /// The REJECT 1 or 2 received since the last call while a session was
    /// established and that did not answer our own SESSION_KEY: a hint,
    /// possibly forged, that the server no longer knows the session.
    pub fn take_hint(&mut self) -> Option<RejectReason> {
        self.seen.hint.take()
    }

    /// The REJECT 2, 3 or 4 that arrived while the current handshake (from
    /// scratch or in the background) waited for its WELCOME: the server's
    /// answer to our SESSION_KEY, unless forged. None once welcomed.
    pub fn refusal(&self) -> Option<RejectReason> {
        self.attempt().and_then(|a| a.refused)
    }

    /// Tokens that authenticated so far, under any session: the caller
    /// compares two readings to learn whether the server spoke meanwhile.
    pub fn authentic(&self) -> u64 {
        self.seen.authentic
    }

    /// SERVER_KEYs ignored because their fingerprint was not the pinned one.
    pub fn pin_mismatches(&self) -> u64 {
        self.seen.pin_mismatches
    }

    fn attempt(&self) -> Option<&Attempt> {
        match &self.state {
            State::Connecting(a) => Some(a),
            State::Established { rekey, .. } => rekey.as_deref(),
            State::Idle => None,
        }
    }

    fn attempt_mut(&mut self) -> Option<&mut Attempt> {
        match &mut self.state {
            State::Connecting(a) => Some(a),
            State::Established { rekey, .. } => rekey.as_deref_mut(),
            State::Idle => None,
        }
    }

    /// Seals a DATA token with `body`; the datagrams go to `out`.
    /// False (nothing sent) when no session is established.
    pub fn send(&mut self, body: &[u8], out: &mut Vec<Vec<u8>>) -> bool {
        self.send_token(outer::DATA, Some(body), out)
    }

    /// A KEEPALIVE for the server's idle timer.
    pub fn keepalive(&mut self, out: &mut Vec<Vec<u8>>) -> bool {
        self.send_token(outer::KEEPALIVE, None, out)
    }

    /// A BYE; the session ends.
    pub fn bye(&mut self, out: &mut Vec<Vec<u8>>) -> bool {
        let sent = self.send_token(outer::BYE, None, out);
        self.state = State::Idle;
        sent
    }

    fn send_token(&mut self, kind: u16, body: Option<&[u8]>, out: &mut Vec<Vec<u8>>) -> bool {
        let State::Established { session, .. } = &mut self.state else {
            return false;
        };
        let (unix_secs, iv) = (self.clock.unix_secs(), self.rng.random());
        let token = session.seal(unix_secs, iv, &mut self.scratch, |p| {
            if let Some(b) = body {
                tlv::put(p, inner::BODY, b);
            }
        });
        if token.len() > tlv::MAX_VALUE_LEN {
            return false;
        }
        let mut d = Vec::with_capacity(token.len() + tlv::HEADER_LEN);
        tlv::put(&mut d, kind, token.as_bytes());
        if d.len() <= self.opts.max_datagram {
            out.push(d);
        } else {
            let id = self.next_msg_id;
            self.next_msg_id = self.next_msg_id.wrapping_add(1);
            fragment::split(&d, self.opts.max_datagram, id, |f| out.push(f.to_vec()));
        }
        true
    }

    /// Handles a datagram from the server: events go to `events`, replies
    /// (the SESSION_KEY) to `out`.
    ///
    /// # Errors
    /// [`ClientError::PinMismatch`] when the datagram's SERVER_KEY was
    /// ignored because of the pin. Nothing is wrong with the core: the
    /// handshake goes on waiting for the pinned key, so callers log or
    /// count it and carry on.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        data: &[u8],
        out: &mut Vec<Vec<u8>>,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        self.clock.advance(now);
        self.handle_payload(now, data, false, out, events)
    }

    fn handle_payload(
        &mut self,
        now: Instant,
        data: &[u8],
        reassembled: bool,
        out: &mut Vec<Vec<u8>>,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        // One pass over the bytes; a broken datagram is dropped as a whole.
        let Ok(d) = Datagram::parse(data) else {
            self.dropped += 1;
            return Ok(());
        };
        if d.overflow > 0 {
            self.dropped += 1; // more session items than any server sends
        }
        let mut result = Ok(());
        if let Some(k) = d.server_key {
            result = self.on_server_key(k, out, events);
        }
        if let Some(r) = d.reject.and_then(RejectReason::from_u8) {
            self.on_reject(r, events);
        }
        for item in d.items() {
            match item {
                Item::Token(kind @ (TokenKind::Welcome | TokenKind::Data), token) => {
                    self.on_token(kind, token, events)
                }
                // KEEPALIVE and BYE only travel towards the server.
                Item::Token(TokenKind::Keepalive | TokenKind::Bye, _) => {}
                Item::Fragment(f) if !reassembled => {
                    self.reassembler.expire(now);
                    match self.reassembler.insert(now, 0, &f) {
                        Outcome::Complete(p) => {
                            let r = self.handle_payload(now, &p, true, out, events);
                            result = result.and(r);
                        }
                        Outcome::Incomplete => {}
                        Outcome::Dropped(_) => self.dropped += 1,
                    }
                }
                // A fragment inside a reassembled message would let one message recurse.
                Item::Fragment(_) => self.dropped += 1,
                // GROUP_DATA comes on the downlink, not on the session socket.
                Item::Group(_) => self.dropped += 1,
            }
        }
        result
    }

    fn on_server_key(
        &mut self,
        k: Keyed<'_>,
        out: &mut Vec<Vec<u8>>,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        if self.attempt().is_none_or(|a| a.session.is_some()) {
            return Ok(()); // a late or duplicate answer to an earlier HELLO
        }
        let (Some(cookie), true, Ok(public)) = (
            k.cookie,
            Datagram::cookie_len_ok(&k),
            PublicKey::from_public_key_der(k.value),
        ) else {
            self.dropped += 1;
            return Ok(());
        };
        let der = k.value;
        let fingerprint = key::fingerprint(der);
        if let Some(pin) = &self.opts.pin {
            if !pin.eq_ignore_ascii_case(&fingerprint) {
                // Anyone can answer a HELLO: wait on for the pinned key.
                self.seen.pin_mismatches += 1;
                return Err(ClientError::PinMismatch {
                    expected: pin.clone(),
                    got: fingerprint,
                });
            }
        }
        let key = fernet::encode_key(&self.rng.random());
        let mut plain = key.clone().into_bytes();
        plain.extend_from_slice(self.opts.access_token.as_deref().unwrap_or_default());
        let Ok(ct) = public.oaep_encrypt_with_rng::<Sha256, _>(&mut self.rng, &plain) else {
            self.dropped += 1;
            return Ok(());
        };
        let mut d = Vec::new();
        tlv::put(&mut d, outer::COOKIE, cookie);
        tlv::put(&mut d, outer::SESSION_KEY, &ct);
        out.push(d);
        if let Some(attempt) = self.attempt_mut() {
            attempt.session = Session::new(&key);
        }
        events.push(ClientEvent::ServerKey { fingerprint });
        Ok(())
    }

    fn on_reject(&mut self, r: RejectReason, events: &mut Vec<ClientEvent>) {
        events.push(ClientEvent::Rejected(r));
        let answers_ours = matches!(
            r,
            RejectReason::AuthFailed | RejectReason::ServerFull | RejectReason::BadCookie
        );
        if let Some(a) = self.attempt_mut().filter(|a| a.session.is_some()) {
            if answers_ours {
                a.refused = Some(r);
                return;
            }
        }
        let hint = matches!(r, RejectReason::UnknownSession | RejectReason::AuthFailed);
        if hint && self.is_established() {
            self.seen.hint = Some(r);
        }
    }

    /// Opens a token with the established session, or with the pending
    /// one (only a WELCOME while there is no established session).
    fn open(&mut self, kind: TokenKind, token: &[u8]) -> Option<(Vec<u8>, Opened)> {
        let (established, pending) = match &mut self.state {
            State::Idle => (None, None),
            State::Connecting(a) => (
                None,
                a.session.as_mut().filter(|_| kind == TokenKind::Welcome),
            ),
            State::Established { session, rekey, .. } => (
                Some(session),
                rekey.as_mut().and_then(|a| a.session.as_mut()),
            ),
        };
        if let Some(Ok(plain)) = established.map(|s| s.open(token, Direction::ToClient)) {
            return Some((plain, Opened::Established));
        }
        let plain = pending?.open(token, Direction::ToClient).ok()?;
        Some((plain, Opened::Pending))
    }

    /// Makes the pending session the established one, under `id`.
    fn promote(&mut self, id: String) {
        let pending = match std::mem::replace(&mut self.state, State::Idle) {
            State::Connecting(a) => a.session,
            State::Established { rekey, .. } => rekey.and_then(|a| a.session),
            State::Idle => None,
        };
        // Only called once a token opened under the pending session.
        if let Some(session) = pending {
            self.seen.hint = None; // about the session just replaced
            self.state = State::Established {
                session,
                id,
                rekey: None,
            };
        }
    }

    fn on_token(&mut self, kind: TokenKind, token: &[u8], events: &mut Vec<ClientEvent>) {
        let Some((plain, by)) = self.open(kind, token) else {
            self.dropped += 1;
            return;
        };
        self.seen.authentic += 1;
        let Ok(m) = Inner::parse(&plain) else { return };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match by {
            Opened::Pending => {
                // A DATA under the new key: its WELCOME was lost, the id stays.
                let id = match m.client_id {
                    Some(id) if kind == TokenKind::Welcome => text(id),
                    _ => self.id().unwrap_or_default().to_owned(),
                };
                self.promote(id.clone());
                events.push(ClientEvent::Welcome { id });
                if kind == TokenKind::Welcome {
                    return;
                }
            }
            Opened::Established => {
                if let State::Established { rekey, .. } = &mut self.state {
                    if rekey.as_ref().is_some_and(|a| a.session.is_none()) {
                        *rekey = None; // the server still knows us: the hint was false
                    }
                }
                if kind == TokenKind::Welcome {
                    events.push(ClientEvent::Welcome {
                        id: text(m.client_id.unwrap_or_default()),
                    });
                    return;
                }
            }
        }
        if let (Some(sender), Some(body)) = (m.sender_id, m.body) {
            events.push(ClientEvent::Message {
                sender: text(sender),
                body: body.to_vec(),
            });
        } else if let Some(id) = m.peer_joined {
            events.push(ClientEvent::PeerJoined(text(id)));
        } else if let Some(id) = m.peer_left {
            events.push(ClientEvent::PeerLeft {
                id: text(id),
                reason: m.reason.and_then(LeaveReason::from_u8),
            });
        } else if m.server_closing {
            self.state = State::Idle;
            events.push(ClientEvent::ServerClosing);
        }
    }
}

/// A HELLO: version byte and the padding that makes it worth answering.
fn hello_datagram() -> Vec<u8> {
    let mut d = Vec::with_capacity(MIN_HELLO_LEN);
    let mut value = vec![0u8; MIN_HELLO_LEN - tlv::HEADER_LEN];
    value[0] = wire::VERSION;
    tlv::put(&mut d, outer::HELLO, &value);
    d
}
