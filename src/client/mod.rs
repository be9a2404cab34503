//! The client side of protocol v1, sans-IO: [`ClientCore`] turns the
//! server's datagrams into [`ClientEvent`]s and user actions into datagrams
//! for the server. [`crate::client::udp::UdpClient`] puts it on a socket.

pub mod udp;

use std::time::Instant;

use fernet::Fernet;
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::PublicKey;

use crate::reassembly::{Outcome, Reassembler, ReassemblyLimits};
use crate::session::key;
use crate::session::{Direction, Session};
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
    /// Datagrams dropped as malformed, unauthentic or replayed.
    pub dropped: u64,
}

impl ClientCore {
    /// A client that has not started its handshake.
    pub fn new(opts: ClientOptions) -> Self {
        ClientCore {
            opts,
            state: State::Idle,
            reassembler: Reassembler::new(ReassemblyLimits::default()),
            next_msg_id: rand::random(),
            scratch: Vec::new(),
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
        let token = session.seal(&mut self.scratch, |p| {
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
        if let Some(r) = d.reject {
            if let Some(r) = RejectReason::from_u8(r) {
                events.push(ClientEvent::Rejected(r));
            }
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
        if !matches!(self.state, State::AwaitKey) {
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
                self.state = State::Idle;
                return Err(ClientError::PinMismatch {
                    expected: pin.clone(),
                    got: fingerprint,
                });
            }
        }
        let key = Fernet::generate_key();
        let mut plain = key.clone().into_bytes();
        plain.extend_from_slice(self.opts.access_token.as_deref().unwrap_or_default());
        let Ok(ct) = public.oaep_encrypt::<Sha256>(&plain) else {
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

    fn on_token(&mut self, kind: TokenKind, token: &[u8], events: &mut Vec<ClientEvent>) {
        let session = match &mut self.state {
            State::AwaitWelcome(s) if kind == TokenKind::Welcome => s,
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
        if kind == TokenKind::Welcome {
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
