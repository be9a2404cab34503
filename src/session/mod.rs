//! One end of an established session: the Fernet key, the next SEQ to send
//! and the anti-replay window for SEQs received. Both the server (one per
//! client) and the client use it. Also the cores' wall clock for the
//! Fernet timestamps they write ([`UnixClock`]).

pub mod fernet;
pub mod group;
pub mod key;
pub mod replay;

use std::time::Instant;

use crate::session::fernet::FernetKey;

use crate::session::replay::ReplayWindow;
use crate::wire::{self, Inner, InnerError};

/// Why a received token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Not a valid Fernet token under this key (forged, corrupt, other key).
    BadToken,
    /// The plaintext broke the inner TLV rules.
    Malformed(InnerError),
    /// The SEQ was seen before or is older than the window.
    Replay,
    /// An authentic token going the wrong way: one this end's peer could
    /// only have got from this end itself (a reflection).
    Reflected,
}

/// The way a token travels. Both ends share one key, so [`Session::open`]
/// tells them apart by content: every server plaintext carries a field only
/// the server sends (SENDER_ID, CLIENT_ID, PEER_JOINED, PEER_LEFT, REASON,
/// SERVER_CLOSING, or v2's CAPS, GROUP_KEY, GROUP_ADDR, GROUP_SIGNER) and no
/// client plaintext (`SEQ [BODY | KEY_REQUEST | PROBE]`) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: the relay opening a client's token.
    ToServer,
    /// Server to client: a client opening the relay's token.
    ToClient,
}

/// Wall-clock seconds for the Fernet timestamps a sans-IO core writes,
/// without a wall clock per call: the shell reads the system clock once,
/// when the core starts, and the core adds the monotonic time elapsed
/// since, as of the latest `now` it was given (calls without a `now`, such
/// as a kick or a client's send, stamp the time of the latest input).
///
/// The Fernet timestamp is informational: no receiver of ours checks it
/// (protocol v2 §7), so a wrong or drifting clock costs nothing; freshness
/// comes from the SEQ window.
#[derive(Clone, Copy, Debug)]
pub struct UnixClock {
    anchor: Instant,
    anchor_unix: u64,
    latest: Instant,
}

impl UnixClock {
    /// A clock that reads `unix_secs` at `now`.
    pub fn new(now: Instant, unix_secs: u64) -> Self {
        UnixClock {
            anchor: now,
            anchor_unix: unix_secs,
            latest: now,
        }
    }

    /// Moves the clock to `now` (never backwards).
    pub fn advance(&mut self, now: Instant) {
        self.latest = self.latest.max(now);
    }

    /// Seconds since the Unix epoch as of the latest `now`.
    pub fn unix_secs(&self) -> u64 {
        let elapsed = self.latest.saturating_duration_since(self.anchor);
        self.anchor_unix.saturating_add(elapsed.as_secs())
    }
}

/// Symmetric state of one session.
pub struct Session {
    key: FernetKey,
    next_seq: u64,
    window: ReplayWindow,
}

impl Session {
    /// Creates a session from a 44-byte URL-safe base64 Fernet key; `None`
    /// if the key does not decode to 32 bytes.
    pub fn new(key_b64: &str) -> Option<Self> {
        Some(Session {
            key: FernetKey::from_base64(key_b64)?,
            next_seq: 1,
            window: ReplayWindow::new(),
        })
    }

    /// Encrypts a plaintext that starts with the next SEQ and continues with
    /// whatever `fill` appends, into a text token stamped `unix_secs` and
    /// encrypted under `iv` (from the caller's CSPRNG). `scratch` is the
    /// caller's reusable buffer; the returned text is the only allocation.
    pub fn seal(
        &mut self,
        unix_secs: u64,
        iv: [u8; 16],
        scratch: &mut Vec<u8>,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> String {
        fernet::to_text(self.seal_raw(unix_secs, iv, scratch, fill))
    }

    /// [`Session::seal`] into a raw token (protocol v2 RAW), which is left
    /// in `scratch` and returned from there: no allocation at all.
    pub fn seal_raw<'s>(
        &mut self,
        unix_secs: u64,
        iv: [u8; 16],
        scratch: &'s mut Vec<u8>,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> &'s [u8] {
        scratch.clear();
        wire::put_seq(scratch, self.next_seq);
        self.next_seq = self.next_seq.saturating_add(1);
        fill(scratch);
        self.key.seal_in_place(unix_secs, iv, scratch);
        scratch
    }

    /// Authenticates and decrypts a token (raw or text) travelling `dir`,
    /// checks the inner rules, the direction and the SEQ window, and
    /// records the SEQ. Returns the plaintext; it is known to parse with
    /// [`Inner::parse`]. The token's timestamp is not looked at: the SEQ
    /// window is what refuses old tokens.
    pub fn open(&mut self, token: &[u8], dir: Direction) -> Result<Vec<u8>, OpenError> {
        let plain = self.key.open(token).map_err(|_| OpenError::BadToken)?;
        let m = Inner::parse(&plain).map_err(OpenError::Malformed)?;
        // v2: CAPS and the group fields travel only in the server's tokens
        // (WELCOME, and `SEQ GROUP_KEY` rekeys).
        let from_server = m.sender_id.is_some()
            || m.client_id.is_some()
            || m.peer_joined.is_some()
            || m.peer_left.is_some()
            || m.reason.is_some()
            || m.server_closing
            || m.caps.is_some()
            || m.group_key.is_some()
            || m.group_addr.is_some()
            || m.group_signer.is_some();
        // Checked before the SEQ is recorded, so a token reflected back to
        // the end that sealed it is neither accepted nor burns a SEQ.
        if from_server != (dir == Direction::ToClient) {
            return Err(OpenError::Reflected);
        }
        let seq = m.seq;
        // Recorded only after authentication so forged tokens cannot burn SEQs.
        if !self.window.update(seq) {
            return Err(OpenError::Replay);
        }
        Ok(plain)
    }

    #[cfg(test)]
    /// The SEQ the next sealed token will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tlv;

    /// Stamped on every test token: any value opens, the clock is never checked.
    const T: u64 = 1_700_000_000;
    const IV: [u8; 16] = [9; 16];

    fn pair_with(key: u8) -> (Session, Session) {
        let key = fernet::encode_key(&[key; 32]);
        (Session::new(&key).unwrap(), Session::new(&key).unwrap())
    }

    fn pair() -> (Session, Session) {
        pair_with(1)
    }

    #[test]
    fn seal_then_open() {
        let (mut a, mut b) = pair();
        let mut scratch = Vec::new();
        let tok = a.seal(T, IV, &mut scratch, |p| {
            tlv::put(p, wire::inner::BODY, b"hello")
        });
        let plain = b.open(tok.as_bytes(), Direction::ToServer).unwrap();
        let m = Inner::parse(&plain).unwrap();
        assert_eq!((m.seq, m.body), (1, Some(&b"hello"[..])));
        assert_eq!(a.next_seq(), 2);
    }

    #[test]
    fn raw_tokens_open_too() {
        let (mut a, mut b) = pair();
        let tok = a.seal(T, IV, &mut Vec::new(), |p| {
            tlv::put(p, wire::inner::BODY, b"raw")
        });
        let raw = base64_decode(&tok);
        assert_eq!(raw[0], fernet::VERSION);
        let plain = b.open(&raw, Direction::ToServer).unwrap();
        assert_eq!(Inner::parse(&plain).unwrap().body, Some(&b"raw"[..]));
        // Same token, other form: a replay all the same.
        assert_eq!(
            b.open(tok.as_bytes(), Direction::ToServer),
            Err(OpenError::Replay)
        );
    }

    fn base64_decode(text: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE
            .decode(text)
            .unwrap()
    }

    #[test]
    fn replay_refused() {
        let (mut a, mut b) = pair();
        let mut s = Vec::new();
        let t1 = a.seal(T, IV, &mut s, |_| {});
        let t2 = a.seal(T, IV, &mut s, |_| {});
        let t3 = a.seal(T, IV, &mut s, |_| {});
        assert!(b.open(t1.as_bytes(), Direction::ToServer).is_ok());
        assert!(b.open(t3.as_bytes(), Direction::ToServer).is_ok());
        assert!(
            b.open(t2.as_bytes(), Direction::ToServer).is_ok(),
            "out of order within the window"
        );
        assert_eq!(
            b.open(t2.as_bytes(), Direction::ToServer),
            Err(OpenError::Replay)
        );
    }

    #[test]
    fn wrong_key_and_garbage_refused() {
        let (mut a, _) = pair();
        let (_, mut other) = pair_with(2);
        let tok = a.seal(T, IV, &mut Vec::new(), |_| {});
        assert_eq!(
            other.open(tok.as_bytes(), Direction::ToServer),
            Err(OpenError::BadToken)
        );
        assert_eq!(
            other.open(b"\xff\xfe", Direction::ToServer),
            Err(OpenError::BadToken)
        );
        assert_eq!(
            other.open(b"", Direction::ToServer),
            Err(OpenError::BadToken)
        );
    }

    #[test]
    fn reflected_tokens_refused_without_burning_seqs() {
        let (mut client, mut server) = pair();
        let mut s = Vec::new();
        // The server's token carries a server-only field; sent back to it, it is refused.
        let relayed = server.seal(T, IV, &mut s, |p| {
            tlv::put(p, wire::inner::SENDER_ID, b"10.0.0.1:4000");
            tlv::put(p, wire::inner::BODY, b"hi");
        });
        assert_eq!(
            server.open(relayed.as_bytes(), Direction::ToServer),
            Err(OpenError::Reflected)
        );
        // A client token sent back to the client is refused too.
        let mine = client.seal(T, IV, &mut s, |p| tlv::put(p, wire::inner::BODY, b"x"));
        assert_eq!(
            client.open(mine.as_bytes(), Direction::ToClient),
            Err(OpenError::Reflected)
        );
        // Neither burnt the SEQ: the genuine tokens with SEQ 1 still open.
        assert!(server.open(mine.as_bytes(), Direction::ToServer).is_ok());
        assert!(client.open(relayed.as_bytes(), Direction::ToClient).is_ok());
    }

    #[test]
    fn a_rekey_travels_to_the_client_only_and_raw_seals_open_as_text_would() {
        let (mut client, mut server) = pair();
        let mut buf = Vec::new();
        // v2 §4: a rekey is `SEQ GROUP_KEY`, nothing else server-only in it.
        server.seal_raw(T, IV, &mut buf, |p| {
            wire::inner::put_group_key(p, 2, &[b'k'; 44])
        });
        assert_eq!(buf[0], fernet::VERSION, "raw");
        assert_eq!(
            server.open(&buf, Direction::ToServer),
            Err(OpenError::Reflected)
        );
        let plain = client.open(&buf, Direction::ToClient).unwrap();
        assert_eq!(Inner::parse(&plain).unwrap().group_key.unwrap().0, 2);
        // A member's KEEPALIVE asking for a key is the client's own kind.
        let ask = client.seal(T, IV, &mut buf, |p| {
            tlv::put(p, wire::inner::KEY_REQUEST, &2u32.to_be_bytes())
        });
        assert!(server.open(ask.as_bytes(), Direction::ToServer).is_ok());
    }

    #[test]
    fn bad_keys_refused() {
        assert!(Session::new("short").is_none());
        assert!(Session::new(&format!("{}=", "A".repeat(43))).is_some());
        assert!(Session::new(&"!".repeat(44)).is_none());
    }
}
