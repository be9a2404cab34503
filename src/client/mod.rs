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
//! - A token that opens under the pending key completes a background
//!   re-key that did not ask for GROUP even if its WELCOME was lost: only
//!   the server could have read that key, and the id stays. A handshake
//!   from scratch, or one that asked for GROUP, needs its WELCOME (the id,
//!   the group's key and signer): such a token is dropped and the retry
//!   brings the WELCOME.
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

mod downlink;
pub mod group;
#[cfg(test)]
mod group_tests;
mod handshake;
mod receive;
#[cfg(test)]
mod tests;
pub mod udp;

use std::net::SocketAddr;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use self::group::{Downlink, DownlinkStats, Probe};
use crate::reassembly::{Reassembler, ReassemblyLimits};
use crate::session::{Session, UnixClock};
use crate::wire::fragment;
use crate::wire::tlv;
use crate::wire::{self, inner, outer, LeaveReason, RejectReason, MIN_HELLO_LEN};

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
    /// The server revoked our credential and ended the session (our own
    /// PEER_LEFT, reason 5, under the session key): handshaking again
    /// with the same credential can only be refused.
    revoked: bool,
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
            revoked: false,
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
        self.revoked = false;
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

    /// True once the server told us, under our session key, that it ended
    /// the session because our credential was revoked. The session is
    /// over; a new handshake with the same credential would be refused.
    pub fn is_revoked(&self) -> bool {
        self.revoked
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
}

/// A HELLO: version byte and the padding that makes it worth answering.
fn hello_datagram() -> Vec<u8> {
    let mut d = Vec::with_capacity(MIN_HELLO_LEN);
    let mut value = vec![0u8; MIN_HELLO_LEN - tlv::HEADER_LEN];
    value[0] = wire::VERSION;
    tlv::put(&mut d, outer::HELLO, &value);
    d
}
