//! Opens and vets what the federation subject delivers, cheapest refusal
//! first: not sealed with the federation key, malformed, sent under our
//! own name (NATS `echo:false` does not cover every path, e.g. a second
//! relay misconfigured with our name), then the SEQ window of the (origin,
//! instance). It keeps a bounded table of origins.
//!
//! An instance that started earlier than the one known for its origin is a
//! replay: a restarted relay always starts later, and accepting an old
//! instance would reopen its whole sequence space. (A relay restarted with
//! its clock set back is heard again once its old run has been declared
//! gone, three announce periods later.)

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use crate::federation::msg::{FedMsg, MsgError};
use crate::session::fernet::FernetKey;
use crate::session::replay::ReplayWindow;

/// Why a received payload was dropped; each is a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a token under the federation key (garbage, other key, forged).
    Unsealed,
    /// Authentic, but the plaintext breaks the rules.
    Malformed(MsgError),
    /// Sent under this relay's own name.
    Own,
    /// Seen before, older than the window, or from an earlier instance.
    Replayed,
    /// A new origin while the origin table is full.
    TooManyOrigins,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Unsealed => f.write_str("unsealed"),
            Refused::Malformed(e) => write!(f, "malformed ({e:?})"),
            Refused::Own => f.write_str("own"),
            Refused::Replayed => f.write_str("replayed"),
            Refused::TooManyOrigins => f.write_str("too many relays"),
        }
    }
}

/// What the inbox knows about one remote relay, plus the caller's `T`.
#[derive(Debug)]
pub struct Origin<T> {
    /// The run messages are accepted from.
    pub instance: u64,
    /// When that run started (Unix ms).
    pub started_ms: u64,
    window: ReplayWindow,
    /// When the latest accepted message arrived.
    pub last_heard: Instant,
    /// The caller's state for this relay (members, announce rounds).
    pub data: T,
}

/// An accepted message and its origin's state.
pub struct Accepted<'b, T> {
    /// The message.
    pub msg: FedMsg<'b>,
    /// Its origin, already marked heard.
    pub origin: &'b mut Origin<T>,
    /// True for the first message of a relay not known before.
    pub new_origin: bool,
    /// The previous run's state when this message starts a new run.
    pub restarted: Option<T>,
}

/// Opens and vets what the federation subject delivers.
pub struct Inbox<T> {
    key: FernetKey,
    own: String,
    origins: HashMap<String, Origin<T>>,
    max_origins: usize,
    plain: Vec<u8>,
}

impl<T: Default> Inbox<T> {
    /// An inbox for the relay named `own`, tracking at most `max_origins`.
    pub fn new(key: FernetKey, own: &str, max_origins: usize) -> Self {
        Inbox {
            key,
            own: own.to_owned(),
            origins: HashMap::new(),
            max_origins,
            plain: Vec::with_capacity(1024),
        }
    }

    /// Opens a payload heard at `now`.
    ///
    /// # Errors
    /// [`Refused`]: the caller counts it; nothing was recorded.
    pub fn open(&mut self, now: Instant, payload: &[u8]) -> Result<Accepted<'_, T>, Refused> {
        let Inbox {
            key,
            own,
            origins,
            max_origins,
            plain,
        } = self;
        key.open_into(payload, plain)
            .map_err(|_| Refused::Unsealed)?;
        let msg = FedMsg::parse(plain).map_err(Refused::Malformed)?;
        let h = msg.header;
        if h.origin == own.as_str() {
            return Err(Refused::Own);
        }
        let mut restarted = None;
        let new_origin = !origins.contains_key(h.origin);
        if new_origin {
            if origins.len() >= *max_origins {
                return Err(Refused::TooManyOrigins);
            }
            origins.insert(
                h.origin.to_owned(),
                Origin {
                    instance: h.instance,
                    started_ms: h.started_ms,
                    window: ReplayWindow::new(),
                    last_heard: now,
                    data: T::default(),
                },
            );
        }
        let o = origins.get_mut(h.origin).ok_or(Refused::TooManyOrigins)?;
        if (o.instance, o.started_ms) != (h.instance, h.started_ms) {
            if h.started_ms <= o.started_ms {
                return Err(Refused::Replayed);
            }
            o.instance = h.instance;
            o.started_ms = h.started_ms;
            o.window = ReplayWindow::new();
            restarted = Some(std::mem::take(&mut o.data));
        }
        if !o.window.update(h.seq) {
            return Err(Refused::Replayed);
        }
        o.last_heard = now;
        Ok(Accepted {
            msg,
            origin: o,
            new_origin,
            restarted,
        })
    }

    /// Forgets a relay (gone silent); returns its state.
    pub fn remove(&mut self, origin: &str) -> Option<Origin<T>> {
        self.origins.remove(origin)
    }

    /// The relays known, by name.
    pub fn origins(&self) -> impl Iterator<Item = (&str, &Origin<T>)> {
        self.origins.iter().map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::msg::{Kind, Sealer};

    const T: u64 = 1_700_000_000;

    fn key() -> FernetKey {
        FernetKey::from_bytes(&[7; 32])
    }

    fn sealed(s: &mut Sealer, kind: Kind<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal(T, [3; 16], kind, &mut out);
        out
    }

    #[test]
    fn inbox_drops_own_replayed_unsealed_and_old_instances() {
        let now = Instant::now();
        let mut inbox: Inbox<u32> = Inbox::new(key(), "home", 2);
        let mut office = Sealer::new(key(), "office", 1, 1000);
        let joined = Kind::Joined { id: "a" };
        let t1 = sealed(&mut office, joined);
        let t2 = sealed(&mut office, joined);
        let a = inbox.open(now, &t1).unwrap();
        assert!(a.new_origin && a.restarted.is_none());
        a.origin.data = 42;
        assert_eq!(inbox.open(now, &t1).err(), Some(Refused::Replayed));
        let a = inbox.open(now, &t2).unwrap();
        assert!(!a.new_origin);
        assert_eq!(a.origin.data, 42);

        let mut me = Sealer::new(key(), "home", 5, 5000);
        assert_eq!(
            inbox.open(now, &sealed(&mut me, joined)).err(),
            Some(Refused::Own)
        );

        let mut wrong = Sealer::new(FernetKey::from_bytes(&[8; 32]), "office", 1, 1000);
        assert_eq!(
            inbox.open(now, &sealed(&mut wrong, joined)).err(),
            Some(Refused::Unsealed)
        );
        assert_eq!(inbox.open(now, b"junk").err(), Some(Refused::Unsealed));
        let mut garbage = Vec::new();
        key().seal_into(T, [0; 16], b"\x03\x01", &mut garbage);
        assert_eq!(
            inbox.open(now, &garbage).err(),
            Some(Refused::Malformed(MsgError::Framing))
        );

        // A restart is a new sequence space; the old run is then a replay.
        let mut office2 = Sealer::new(key(), "office", 2, 2000);
        let a = inbox.open(now, &sealed(&mut office2, joined)).unwrap();
        assert_eq!(a.restarted, Some(42));
        assert_eq!(a.origin.data, 0);
        let t3 = sealed(&mut office, joined);
        assert_eq!(inbox.open(now, &t3).err(), Some(Refused::Replayed));
        let mut same_start = Sealer::new(key(), "office", 3, 2000);
        assert_eq!(
            inbox.open(now, &sealed(&mut same_start, joined)).err(),
            Some(Refused::Replayed)
        );

        // The origin table is bounded.
        let mut lab = Sealer::new(key(), "lab", 1, 1);
        assert!(inbox.open(now, &sealed(&mut lab, joined)).is_ok());
        let mut extra = Sealer::new(key(), "extra", 1, 1);
        assert_eq!(
            inbox.open(now, &sealed(&mut extra, joined)).err(),
            Some(Refused::TooManyOrigins)
        );
        assert!(inbox.remove("lab").is_some());
        assert!(inbox.open(now, &sealed(&mut extra, joined)).is_ok());
        assert_eq!(inbox.origins().count(), 2);
    }
}
