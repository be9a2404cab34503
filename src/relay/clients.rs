//! The client table: registered clients by slot and by address, and the
//! snapshot the admin channel shows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::session::Session;

/// A registered client.
pub(super) struct Client {
    pub(super) addr: SocketAddr,
    pub(super) id: String,
    pub(super) session: Session,
    /// Distinguishes registrations that reuse a slab slot, so stale timers
    /// and fragment buffers never touch a newer client.
    pub(super) generation: u64,
    pub(super) last_seen: Instant,
    pub(super) msgs_in: u64,
    pub(super) bytes_in: u64,
    pub(super) msgs_out: u64,
    pub(super) bytes_out: u64,
}

/// A client as the admin channel shows it.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// `ip:port`.
    pub id: String,
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
}

/// Registered clients in a slab (stable slots for timers), indexed by address.
pub(super) struct ClientTable {
    slab: Slab<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    next_generation: u64,
}

impl ClientTable {
    pub(super) fn new() -> Self {
        ClientTable {
            slab: Slab::new(),
            by_addr: HashMap::new(),
            next_generation: 1,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slab.len()
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
        let addr = client.addr;
        let slot = self.slab.insert(client);
        self.by_addr.insert(addr, slot);
        slot
    }

    /// Forgets the client in `slot`, if any.
    pub(super) fn remove(&mut self, slot: usize) -> Option<Client> {
        let c = self.slab.try_remove(slot)?;
        self.by_addr.remove(&c.addr);
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
        for c in self.slab.drain() {
            f(c);
        }
    }
}
