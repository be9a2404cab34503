//! The client table: registered clients by slot and by address, their
//! [`ClientId`], and the snapshot the admin channel shows.

use std::collections::HashMap;
use std::fmt;
use std::net::{AddrParseError, IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::relay::admission::host_of;
use crate::relay::config::credentials::{valid_name, Perms};
use crate::session::{fernet, Session};
use crate::wire::handshake::{CAP_GROUP, CAP_RAW};

/// Who a client is, as the relay and its peers name it: its source address
/// as the relay sees it, and for a client the clients file names (v2 §5)
/// that name. Written `ip:port` (`[v6addr]:port` for IPv6), or
/// `NAME@ip:port`: the text that CLIENT_ID, SENDER_ID and the peer notices
/// carry and `kick` takes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientId {
    addr: SocketAddr,
    name: Option<Arc<str>>,
}

impl ClientId {
    /// The id of the unnamed client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        ClientId { addr, name: None }
    }

    /// The id of the client at `addr` named `name` (None: unnamed).
    pub fn named(name: Option<Arc<str>>, addr: SocketAddr) -> Self {
        ClientId { addr, name }
    }

    /// The client's source address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client's name, if the clients file gave it one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.name {
            write!(f, "{name}@")?;
        }
        self.addr.fmt(f)
    }
}

/// Why a text is not a [`ClientId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientIdError {
    /// The part after `@` (or the whole) is not `ip:port`.
    Addr(AddrParseError),
    /// The part before `@` is not a valid client name.
    Name,
}

impl fmt::Display for ClientIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientIdError::Addr(e) => e.fmt(f),
            ClientIdError::Name => f.write_str("invalid client name"),
        }
    }
}

impl std::error::Error for ClientIdError {}

impl FromStr for ClientId {
    type Err = ClientIdError;

    /// Parses the text [`ClientId`]'s `Display` writes: `ip:port` or
    /// `NAME@ip:port`. Names never hold `@`, and IPv6 scope ids never do
    /// either, so the first `@` splits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addr) = match s.split_once('@') {
            Some((name, addr)) if valid_name(name) => (Some(Arc::from(name)), addr),
            Some(_) => return Err(ClientIdError::Name),
            None => (None, s),
        };
        let addr = addr.parse().map_err(ClientIdError::Addr)?;
        Ok(ClientId { addr, name })
    }
}

/// A registered client.
pub(super) struct Client {
    pub(super) id: ClientId,
    /// `id` as text, as sealed into CLIENT_ID, SENDER_ID and notices.
    pub(super) id_text: String,
    pub(super) session: Session,
    /// Digest of the SESSION_KEY ciphertext that registered `session`.
    pub(super) session_key: u64,
    /// The WELCOME datagram of `session`, to send again if it was lost.
    pub(super) welcome: Box<[u8]>,
    /// When WELCOME was last sent.
    pub(super) welcome_sent: Instant,
    /// Distinguishes registrations that reuse a slab slot, so stale timers
    /// and fragment buffers never touch a newer client.
    pub(super) generation: u64,
    pub(super) last_seen: Instant,
    pub(super) msgs_in: u64,
    pub(super) bytes_in: u64,
    pub(super) msgs_out: u64,
    pub(super) bytes_out: u64,
    /// The handshake that made `session`: 1 (SESSION_KEY) or 2 (SESSION_KEY2).
    pub(super) version: u8,
    /// Capabilities granted by a v2 handshake (0 for v1).
    pub(super) caps: u32,
    /// The downlink (index into `Config::downlinks`) it listens on while it
    /// is a group member; None outside group mode.
    pub(super) downlink: Option<usize>,
    /// When its last KEY_REQUEST was answered (one answer a second).
    pub(super) key_answered: Option<Instant>,
    /// The epoch its WELCOME gave it when it last entered the group: a
    /// KEY_REQUEST never hands it an older key, so a newcomer cannot read
    /// what was multicast in the grace before it joined.
    pub(super) member_since: u32,
    /// What it may do: from its clients-file line (narrowed by reloads),
    /// `pubsub` for an unnamed client.
    pub(super) perms: Perms,
    /// SHA-256 of the token that named it (a reload that changes the
    /// name's token ends the session); unused for unnamed clients.
    pub(super) credential: [u8; 32],
}

impl Client {
    /// Counts a datagram of `bytes` sent to this client.
    pub(super) fn count_out(&mut self, bytes: usize) {
        self.msgs_out += 1;
        self.bytes_out += bytes as u64;
    }

    /// Seals `SEQ | fill` in this client's session and returns the token in
    /// the form its session asked for: raw bytes with RAW (v2 §4), base64
    /// text otherwise. `buf` holds the raw token afterwards (followed by
    /// its text form, for a text session): nothing is allocated per token.
    pub(super) fn seal<'b>(
        &mut self,
        unix_secs: u64,
        iv: [u8; 16],
        buf: &'b mut Vec<u8>,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> &'b [u8] {
        self.session.seal_raw(unix_secs, iv, buf, fill);
        if self.caps & CAP_RAW != 0 {
            buf.as_slice()
        } else {
            let at = fernet::append_text(buf, buf.len());
            &buf[at..]
        }
    }

    /// How the admin channel names its mode: `v1`, `v2`, or `group`.
    pub(super) fn mode(&self) -> &'static str {
        match (
            self.version,
            self.caps & CAP_GROUP != 0 && self.downlink.is_some(),
        ) {
            (_, true) => "group",
            (1, _) => "v1",
            _ => "v2",
        }
    }
}

/// A client as the admin channel shows it.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// Who it is.
    pub id: ClientId,
    /// Time since its last authenticated datagram.
    pub idle: Duration,
    /// Tokens received from it.
    pub msgs_in: u64,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Tokens sent to it.
    pub msgs_out: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// Partial fragmented messages held for it.
    pub partials: usize,
    /// `v1`, `v2` (a v2 session outside group mode) or `group`.
    pub mode: &'static str,
    /// What it may do now (`pubsub` for an unnamed client).
    pub perms: Perms,
}

/// Registered clients in a slab (stable slots for timers), indexed by
/// address, with a session count per host for the per-IP cap.
pub(super) struct ClientTable {
    slab: Slab<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Sessions per host ([`host_of`]); hosts with none have no entry, so
    /// this never outgrows the table.
    per_host: HashMap<IpAddr, usize>,
    next_generation: u64,
}

impl ClientTable {
    pub(super) fn new() -> Self {
        ClientTable {
            slab: Slab::new(),
            by_addr: HashMap::new(),
            per_host: HashMap::new(),
            next_generation: 1,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }

    /// Sessions held by the host `addr` belongs to.
    pub(super) fn at_host(&self, addr: &SocketAddr) -> usize {
        self.per_host.get(&host_of(addr)).copied().unwrap_or(0)
    }

    /// The slot of the client registered at `addr`.
    pub(super) fn lookup(&self, addr: &SocketAddr) -> Option<usize> {
        self.by_addr.get(addr).copied()
    }

    pub(super) fn get(&self, slot: usize) -> Option<&Client> {
        self.slab.get(slot)
    }

    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut Client> {
        self.slab.get_mut(slot)
    }

    /// A generation no registration has used yet.
    pub(super) fn next_generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    /// Registers a client at a new address; returns its slot.
    pub(super) fn insert(&mut self, client: Client) -> usize {
        let addr = client.id.addr();
        let slot = self.slab.insert(client);
        self.by_addr.insert(addr, slot);
        *self.per_host.entry(host_of(&addr)).or_default() += 1;
        slot
    }

    /// Forgets the client in `slot`, if any.
    pub(super) fn remove(&mut self, slot: usize) -> Option<Client> {
        let c = self.slab.try_remove(slot)?;
        let addr = c.id.addr();
        self.by_addr.remove(&addr);
        let host = host_of(&addr);
        if let Some(n) = self.per_host.get_mut(&host) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(&host);
            }
        }
        Some(c)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &Client)> {
        self.slab.iter()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Client)> {
        self.slab.iter_mut()
    }

    /// Forgets every client, handing each to `f`.
    pub(super) fn clear(&mut self, mut f: impl FnMut(Client)) {
        self.by_addr.clear();
        self.per_host.clear();
        for c in self.slab.drain() {
            f(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_text_round_trips() {
        for text in ["10.0.0.5:40000", "[2001:db8::5]:40000"] {
            let id: ClientId = text.parse().unwrap();
            assert_eq!(id.to_string(), text);
            assert_eq!(id.addr(), text.parse::<SocketAddr>().unwrap());
        }
        assert!("nonsense".parse::<ClientId>().is_err());
        assert!(
            "10.0.0.5".parse::<ClientId>().is_err(),
            "a port is part of the id"
        );
        for text in ["alice@10.0.0.5:40000", "a.b-c_9@[2001:db8::5]:40000"] {
            let id: ClientId = text.parse().unwrap();
            assert_eq!(id.to_string(), text);
            assert_eq!(id.name(), text.split_once('@').map(|(n, _)| n));
        }
        let plain: ClientId = "10.0.0.5:40000".parse().unwrap();
        assert_eq!(plain.name(), None);
        assert_eq!(
            "bad name@10.0.0.5:40000".parse::<ClientId>(),
            Err(ClientIdError::Name)
        );
        assert!("@10.0.0.5:40000".parse::<ClientId>().is_err());
        assert!("alice@nonsense".parse::<ClientId>().is_err());
    }
}
