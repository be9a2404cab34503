//! The client side of protocol v1, sans-IO: [`ClientCore`] turns the
//! server's datagrams into [`ClientEvent`]s and user actions into datagrams
//! for the server. [`crate::client::udp::UdpClient`] puts it on a socket.
//!
//! Like the relay core it draws no OS randomness and reads no clock: the
//! caller seeds its generator (session keys, RSA-OAEP padding, Fernet IVs,
//! message ids) and gives the Unix time once, at [`ClientCore::new`].

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
use crate::wire::tlv::{self, Reader};
use crate::wire::{
    self, inner, outer, Inner, LeaveReason, RejectReason, COOKIE_LEN, MIN_HELLO_LEN,
};

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

/// A fatal handshake problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The server's key has another fingerprint than the pinned one.
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

enum State {
    Idle,
    AwaitKey,
    AwaitWelcome(Session),
    Established { session: Session, id: String },
}

/// One client's protocol state.
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

    /// Starts (or restarts) the handshake: returns the HELLO datagram.
    pub fn hello(&mut self) -> Vec<u8> {
        self.state = State::AwaitKey;
        let mut d = Vec::with_capacity(MIN_HELLO_LEN);
        let mut value = vec![0u8; MIN_HELLO_LEN - tlv::HEADER_LEN];
        value[0] = wire::VERSION;
        tlv::put(&mut d, outer::HELLO, &value);
        d
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
        if tlv::validate(data).is_err() {
            self.dropped += 1;
            return Ok(());
        }
        for t in Reader::new(data).flatten() {
            match t.kind {
                outer::SERVER_KEY => {
                    let cookie = Reader::new(data)
                        .flatten()
                        .find(|c| c.kind == outer::COOKIE);
                    self.on_server_key(t.value, cookie.map(|c| c.value), out, events)?;
                }
                outer::REJECT => match t.value {
                    [r] => {
                        if let Some(r) = RejectReason::from_u8(*r) {
                            events.push(ClientEvent::Rejected(r));
                        }
                    }
                    _ => self.dropped += 1,
                },
                outer::WELCOME | outer::DATA => self.on_token(t.kind, t.value, events),
                outer::FRAGMENT if !reassembled => {
                    self.reassembler.expire(now);
                    let Some(f) = fragment::parse_fragment(t.value) else {
                        self.dropped += 1;
                        continue;
                    };
                    match self.reassembler.insert(now, 0, &f) {
                        Outcome::Complete(p) => self.handle_payload(now, &p, true, out, events)?,
                        Outcome::Incomplete => {}
                        Outcome::Dropped(_) => self.dropped += 1,
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn on_server_key(
        &mut self,
        der: &[u8],
        cookie: Option<&[u8]>,
        out: &mut Vec<Vec<u8>>,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), ClientError> {
        if !matches!(self.state, State::AwaitKey) {
            return Ok(()); // a late or duplicate answer to an earlier HELLO
        }
        let (Some(cookie), Ok(public)) = (cookie, PublicKey::from_public_key_der(der)) else {
            self.dropped += 1;
            return Ok(());
        };
        if cookie.len() != COOKIE_LEN {
            self.dropped += 1;
            return Ok(());
        }
        let fingerprint = key::fingerprint(der);
        if let Some(pin) = &self.opts.pin {
            if !pin.eq_ignore_ascii_case(&fingerprint) {
                self.state = State::Idle;
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
        if let Some(s) = Session::new(&key) {
            self.state = State::AwaitWelcome(s);
        }
        events.push(ClientEvent::ServerKey { fingerprint });
        Ok(())
    }

    fn on_token(&mut self, kind: u16, token: &[u8], events: &mut Vec<ClientEvent>) {
        let session = match &mut self.state {
            State::AwaitWelcome(s) if kind == outer::WELCOME => s,
            State::Established { session, .. } => session,
            _ => {
                self.dropped += 1;
                return;
            }
        };
        let Ok(plain) = session.open(token, Direction::ToClient) else {
            self.dropped += 1;
            return;
        };
        let Ok(m) = Inner::parse(&plain) else { return };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if kind == outer::WELCOME {
            let id = text(m.client_id.unwrap_or_default());
            if let State::AwaitWelcome(_) = self.state {
                let State::AwaitWelcome(session) = std::mem::replace(&mut self.state, State::Idle)
                else {
                    return;
                };
                self.state = State::Established {
                    session,
                    id: id.clone(),
                };
            }
            events.push(ClientEvent::Welcome { id });
        } else if let (Some(sender), Some(body)) = (m.sender_id, m.body) {
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
