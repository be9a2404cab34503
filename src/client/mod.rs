//! The client side of the protocol (v1, and v2's bound handshake, raw
//! tokens and group mode), sans-IO: [`ClientCore`] turns the server's
//! datagrams into [`ClientEvent`]s and user actions into datagrams for the
//! server. [`crate::client::udp::UdpClient`] puts it on sockets and drives
//! its clock; this module owns the rules that decide what a datagram means
//! and when a timer is due.
//!
//! # Protocol v2
//!
//! - A SERVER_KEY answer carrying VERSIONS with 2 gets a SESSION_KEY2 (the
//!   bound handshake: Fernet key, BIND = the answer's COOKIE, CAPS asked,
//!   the access token as CREDENTIAL), unless the token is longer than a
//!   CREDENTIAL may be; then, and when there is no VERSIONS, a v1
//!   SESSION_KEY exactly as before. Once an accepted answer listed 2 the
//!   core never sends a v1 SESSION_KEY again: an answer without VERSIONS
//!   is ignored ([`ClientCore::downgrades`]), so no forged or lost
//!   datagram can push it back to v1.
//! - CAPS asks for RAW always and for GROUP unless
//!   [`ClientOptions::group`] is off or the downlink proved silent. Once
//!   RAW is granted the client's tokens go out raw; tokens in either form
//!   are accepted always.
//! - When GROUP is granted, [`ClientEvent::Downlink`] names the downlink
//!   ([`ClientCore::downlink`]) and the shell feeds what arrives there to
//!   [`ClientCore::handle_downlink`]. GROUP_KEYs come in pairwise DATA;
//!   key requests and downlink probes go out from
//!   [`ClientCore::handle_timeout`], due at [`ClientCore::poll_timeout`].
//!   A downlink silent through the probes ends group mode
//!   ([`ClientEvent::DownlinkSilent`]) with a background handshake that
//!   does not ask for GROUP; the next handshake from scratch asks again.
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

pub mod group;
#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod tests;
pub mod udp;

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::PublicKey;

use self::group::{Downlink, DownlinkStats, Probe};
use crate::reassembly::{Outcome, Reassembler, ReassemblyLimits};
use crate::session::group::{GroupError, GroupMember};
use crate::session::{fernet, key};
use crate::session::{Direction, Session, UnixClock};
use crate::wire::fragment;
use crate::wire::group::GroupData;
use crate::wire::handshake::{Handshake, CAP_GROUP, CAP_RAW, MAX_CREDENTIAL_LEN};
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
    /// v2 group mode was granted: join this downlink (group and port) and
    /// hand what arrives there to [`ClientCore::handle_downlink`].
    Downlink(SocketAddr),
    /// Nothing correctly signed arrived on this downlink within the probes
    /// (multicast does not reach us): group mode ends, and a handshake
    /// without GROUP is under way so that the relay serves this client
    /// per recipient. Worth a log line.
    DownlinkSilent(SocketAddr),
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

/// Why [`ClientCore::try_send`] sent nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No session is established.
    NotEstablished,
    /// The body does not fit in one token.
    TooLarge {
        /// The body's length.
        len: usize,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotEstablished => write!(f, "no session is established"),
            SendError::TooLarge { len } => {
                write!(f, "a message of {len} bytes does not fit in one token")
            }
        }
    }
}

impl std::error::Error for SendError {}

/// Options of a client session.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Access token to present, if the server wants one.
    pub access_token: Option<Vec<u8>>,
    /// Expected server fingerprint (hex SHA-256), if pinned.
    pub pin: Option<String>,
    /// Largest datagram to send; larger ones are fragmented.
    pub max_datagram: usize,
    /// Ask a v2 server for group mode (default on).
    pub group: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            access_token: None,
            pin: None,
            max_datagram: 1200,
            group: true,
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
    /// The CAPS asked for in a SESSION_KEY2; None for a v1 SESSION_KEY.
    asked: Option<u32>,
}

impl Attempt {
    fn new() -> Self {
        Attempt {
            session: None,
            refused: None,
            asked: None,
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
        /// RAW was granted: our tokens go out as raw bytes.
        raw: bool,
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
    downgrades: u64,
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
    /// Group mode of the established session, if granted.
    group: Option<Downlink>,
    /// An accepted SERVER_KEY answer listed version 2: never v1 again.
    server_v2: bool,
    /// The downlink proved silent: background handshakes do not ask for
    /// GROUP until the next handshake from scratch.
    group_off: bool,
    reassembler: Reassembler,
    /// Downlink FRAGMENTs, per source.
    downlink_reassembler: Reassembler,
    /// Keys the hash that turns a downlink source into a reassembly owner.
    owner_salt: [u8; 16],
    downlink_stats: DownlinkStats,
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
            group: None,
            server_v2: false,
            group_off: false,
            reassembler: Reassembler::new(ReassemblyLimits::default()),
            downlink_reassembler: Reassembler::new(ReassemblyLimits::default()),
            owner_salt: rng.random(),
            downlink_stats: DownlinkStats::default(),
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

    /// The downlink to listen on while group mode is on (v2).
    pub fn downlink(&self) -> Option<SocketAddr> {
        self.group.as_ref().map(|g| g.addr)
    }

    /// The group key epoch the member is at, while group mode is on.
    pub fn group_epoch(&self) -> Option<u32> {
        self.group.as_ref().map(|g| g.member.epoch())
    }

    /// Group datagrams held for a key not received yet, while group mode
    /// is on.
    pub fn group_held(&self) -> Option<usize> {
        self.group.as_ref().map(|g| g.member.held())
    }

    /// What arrived on the downlink and what became of it.
    pub fn downlink_stats(&self) -> DownlinkStats {
        self.downlink_stats
    }

    /// SERVER_KEY answers without VERSIONS ignored because an earlier one
    /// listed version 2 (a downgrade, forged or by a server rolled back).
    pub fn downgrades(&self) -> u64 {
        self.seen.downgrades
    }

    /// Starts a new handshake from scratch, forgetting any session:
    /// returns the HELLO datagram. It asks for GROUP again (when the
    /// options do) even after a silent downlink.
    pub fn hello(&mut self) -> Vec<u8> {
        self.state = State::Connecting(Attempt::new());
        self.group = None;
        self.group_off = false;
        hello_datagram()
    }

    /// Ends group mode at the shell's request (it could not join the
    /// downlink): the group is forgotten and a background handshake that
    /// does not ask for GROUP starts, so that the relay serves this client
    /// per recipient. Returns its HELLO, or None without group mode.
    pub fn leave_group(&mut self) -> Option<Vec<u8>> {
        self.group.take()?;
        self.group_off = true;
        Some(self.rehandshake())
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
    /// False (nothing sent) when no session is established or the body
    /// does not fit ([`ClientCore::try_send`] says which).
    pub fn send(&mut self, body: &[u8], out: &mut Vec<Vec<u8>>) -> bool {
        self.try_send(body, out).is_ok()
    }

    /// Seals a DATA token with `body`; the datagrams go to `out`.
    ///
    /// # Errors
    /// [`SendError`], and nothing sent, when no session is established or
    /// the body does not fit in one token (a TLV carries at most 65,535
    /// bytes; the relay's copy needs room for the sender's id too, which
    /// `UdpClient`'s `MAX_BODY_LEN` accounts for).
    pub fn try_send(&mut self, body: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), SendError> {
        if body.len() > tlv::MAX_VALUE_LEN {
            return Err(SendError::TooLarge { len: body.len() });
        }
        self.send_token(outer::DATA, out, |p| tlv::put(p, inner::BODY, body))
            .map_err(|e| match e {
                SendError::TooLarge { .. } => SendError::TooLarge { len: body.len() },
                e => e,
            })
    }

    /// A KEEPALIVE for the server's idle timer.
    pub fn keepalive(&mut self, out: &mut Vec<Vec<u8>>) -> bool {
        self.send_token(outer::KEEPALIVE, out, |_| {}).is_ok()
    }

    /// A BYE; the session ends.
    pub fn bye(&mut self, out: &mut Vec<Vec<u8>>) -> bool {
        let sent = self.send_token(outer::BYE, out, |_| {}).is_ok();
        self.state = State::Idle;
        self.group = None;
        sent
    }

    /// Seals `SEQ` and what `fill` appends into a token of `kind` (raw
    /// once RAW was granted); fragments it when it is too large for one
    /// datagram.
    fn send_token(
        &mut self,
        kind: u16,
        out: &mut Vec<Vec<u8>>,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SendError> {
        let State::Established { session, raw, .. } = &mut self.state else {
            return Err(SendError::NotEstablished);
        };
        let (unix_secs, iv) = (self.clock.unix_secs(), self.rng.random());
        let text;
        let token: &[u8] = if *raw {
            session.seal_raw(unix_secs, iv, &mut self.scratch, fill)
        } else {
            text = session.seal(unix_secs, iv, &mut self.scratch, fill);
            text.as_bytes()
        };
        if token.len() > tlv::MAX_VALUE_LEN {
            return Err(SendError::TooLarge { len: token.len() });
        }
        let mut d = Vec::with_capacity(token.len() + tlv::HEADER_LEN);
        tlv::put(&mut d, kind, token);
        if d.len() <= self.opts.max_datagram {
            out.push(d);
        } else {
            let id = self.next_msg_id;
            self.next_msg_id = self.next_msg_id.wrapping_add(1);
            fragment::split(&d, self.opts.max_datagram, id, |f| out.push(f.to_vec()));
        }
        Ok(())
    }

    /// When [`ClientCore::handle_timeout`] next has work: a key request,
    /// a downlink probe, keys or held datagrams or downlink fragments to
    /// expire. None when nothing is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.group.as_ref().and_then(Downlink::poll_timeout),
            self.downlink_reassembler.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers due at `now`: expiries, a KEEPALIVE carrying a
    /// KEY_REQUEST for a held epoch (after 250 ms, at most one a second),
    /// the downlink probes, and the end of group mode when the downlink is
    /// silent (then [`ClientEvent::DownlinkSilent`], and the HELLO of a
    /// background handshake without GROUP goes to `out`). Early or repeated
    /// calls do nothing.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        out: &mut Vec<Vec<u8>>,
        events: &mut Vec<ClientEvent>,
    ) {
        self.clock.advance(now);
        self.downlink_reassembler.expire(now);
        self.count_downlink_evictions();
        let Some(g) = &mut self.group else { return };
        g.member.expire(now);
        let request = g.member.key_request(now);
        let probe = g.probe(now);
        if let Some(epoch) = request {
            let sent = self.send_token(outer::KEEPALIVE, out, |p| {
                tlv::put(p, inner::KEY_REQUEST, &epoch.to_be_bytes())
            });
            self.downlink_stats.key_requests += u64::from(sent.is_ok());
        }
        match probe {
            Probe::Wait => {}
            Probe::Send => {
                let sent =
                    self.send_token(outer::KEEPALIVE, out, |p| tlv::put(p, inner::PROBE, &[]));
                self.downlink_stats.probes += u64::from(sent.is_ok());
            }
            Probe::Silent => {
                if let Some(addr) = self.downlink() {
                    events.push(ClientEvent::DownlinkSilent(addr));
                }
                out.extend(self.leave_group());
            }
        }
    }

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

    fn downlink_payload(
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

    fn count_downlink_evictions(&mut self) {
        for (_, n) in self.downlink_reassembler.take_evictions() {
            self.downlink_stats.fragments_dropped += n;
        }
    }

    /// The reassembly owner of a downlink source: a keyed hash, so that
    /// nobody can pick an address that shares the relay's slots.
    fn owner_of(&self, src: SocketAddr) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.owner_salt.hash(&mut h);
        src.hash(&mut h);
        h.finish()
    }

    fn on_group_data(&mut self, now: Instant, g: &GroupData<'_>, events: &mut Vec<ClientEvent>) {
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
    fn on_group_plain(&mut self, plain: &[u8], events: &mut Vec<ClientEvent>) {
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
    fn notice(&mut self, m: &Inner<'_>, events: &mut Vec<ClientEvent>) {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
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
            self.group = None;
            events.push(ClientEvent::ServerClosing);
        }
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
            result = self.on_server_key(k, d.versions, out, events);
        }
        if let Some(r) = d.reject.and_then(RejectReason::from_u8) {
            self.on_reject(r, events);
        }
        for item in d.items() {
            match item {
                Item::Token(kind @ (TokenKind::Welcome | TokenKind::Data), token) => {
                    self.on_token(now, kind, token, events)
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
        versions: Option<&[u8]>,
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
        let token = self.opts.access_token.as_deref().unwrap_or_default();
        // A token too long for CREDENTIAL can only travel in v1's SESSION_KEY.
        let v2_possible = token.len() <= MAX_CREDENTIAL_LEN;
        let offers_v2 = versions.is_some_and(|v| v.contains(&2));
        if v2_possible && self.server_v2 && !offers_v2 {
            // v2 was offered before: an answer without it is a downgrade
            // (forged, or a relay rolled back); wait on for a v2 answer.
            self.seen.downgrades += 1;
            self.dropped += 1;
            return Ok(());
        }
        self.server_v2 |= offers_v2;
        let key = fernet::encode_key(&self.rng.random());
        let mut plain = Vec::with_capacity(190);
        let asked = if v2_possible && offers_v2 {
            let caps = self.caps_wanted();
            let Ok(bind) = cookie.try_into() else {
                return Ok(()); // cookie_len_ok: 16 bytes
            };
            Handshake {
                fernet_key: key.as_bytes(),
                bind,
                caps,
                credential: (!token.is_empty()).then_some(token),
            }
            .emit(&mut plain);
            Some(caps)
        } else {
            plain.extend_from_slice(key.as_bytes());
            plain.extend_from_slice(token);
            None
        };
        let Ok(ct) = public.oaep_encrypt_with_rng::<Sha256, _>(&mut self.rng, &plain) else {
            self.dropped += 1;
            return Ok(());
        };
        let mut d = Vec::new();
        tlv::put(&mut d, outer::COOKIE, cookie);
        let kind = if asked.is_some() {
            outer::SESSION_KEY2
        } else {
            outer::SESSION_KEY
        };
        tlv::put(&mut d, kind, &ct);
        out.push(d);
        if let Some(attempt) = self.attempt_mut() {
            attempt.session = Session::new(&key);
            attempt.asked = asked;
        }
        events.push(ClientEvent::ServerKey { fingerprint });
        Ok(())
    }

    /// The CAPS a SESSION_KEY2 asks for.
    fn caps_wanted(&self) -> u32 {
        let group = self.opts.group && !self.group_off;
        CAP_RAW | if group { CAP_GROUP } else { 0 }
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

    /// Makes the pending session the established one, under `id`, with
    /// the v2 fields of its WELCOME (None when a token under the new key
    /// overtook a lost WELCOME).
    fn promote(
        &mut self,
        now: Instant,
        id: String,
        welcome: Option<&Inner<'_>>,
        events: &mut Vec<ClientEvent>,
    ) {
        let pending = match std::mem::replace(&mut self.state, State::Idle) {
            State::Connecting(a) => Some(a),
            State::Established { rekey, .. } => rekey.map(|a| *a),
            State::Idle => None,
        };
        // Only called once a token opened under the pending session.
        let Some(Attempt {
            session: Some(session),
            asked,
            ..
        }) = pending
        else {
            self.group = None;
            return;
        };
        self.seen.hint = None; // about the session just replaced
        let granted = match (asked, welcome) {
            (Some(asked), Some(m)) => m.caps.unwrap_or(0) & asked,
            // WELCOME lost: RAW is unknown, so text; group mode as asked
            // stays as it was (the relay keeps a member that asked again).
            (Some(asked), None) if self.group.is_some() => asked & CAP_GROUP,
            (Some(_), None) | (None, _) => 0,
        };
        self.state = State::Established {
            session,
            id,
            rekey: None,
            raw: granted & CAP_RAW != 0,
        };
        events.push(ClientEvent::Welcome {
            id: self.id().unwrap_or_default().to_owned(),
        });
        if granted & CAP_GROUP == 0 {
            self.group = None;
            return;
        }
        let Some(m) = welcome else { return };
        let (Some((epoch, key)), Some(addr), Some(signer)) =
            (m.group_key, m.group_addr, m.group_signer)
        else {
            self.group = None; // GROUP granted without its fields: broken
            self.dropped += 1;
            return;
        };
        if let Some(g) = self
            .group
            .as_mut()
            .filter(|g| g.addr == addr && g.member.same_signer(signer))
        {
            // A re-handshake: same group, the join moved the key on.
            let released = g.member.set_key(now, epoch, key);
            self.release(released, events);
            return;
        }
        // A new signer is a new GSEQ space: a new member.
        let Some(member) = GroupMember::new(signer, epoch, key) else {
            self.group = None;
            self.dropped += 1;
            return;
        };
        self.group = Some(Downlink::new(member, addr, now));
        events.push(ClientEvent::Downlink(addr));
    }

    /// Delivers held group datagrams a GROUP_KEY released, in order.
    fn release(&mut self, released: Vec<Vec<u8>>, events: &mut Vec<ClientEvent>) {
        for plain in released {
            self.downlink_stats.released += 1;
            self.on_group_plain(&plain, events);
        }
    }

    fn on_token(
        &mut self,
        now: Instant,
        kind: TokenKind,
        token: &[u8],
        events: &mut Vec<ClientEvent>,
    ) {
        let Some((plain, by)) = self.open(kind, token) else {
            self.dropped += 1;
            return;
        };
        self.seen.authentic += 1;
        let Ok(m) = Inner::parse(&plain) else { return };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match by {
            Opened::Pending => {
                if kind == TokenKind::Welcome {
                    let id = text(m.client_id.unwrap_or_default());
                    self.promote(now, id, Some(&m), events);
                    return;
                }
                // A DATA under the new key: its WELCOME was lost, the id stays.
                let id = self.id().unwrap_or_default().to_owned();
                self.promote(now, id, None, events);
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
        if let (Some((epoch, key)), Some(g)) = (m.group_key, &mut self.group) {
            // A rekey, or the answer to a KEY_REQUEST.
            let released = g.member.set_key(now, epoch, key);
            self.release(released, events);
        }
        self.notice(&m, events);
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
