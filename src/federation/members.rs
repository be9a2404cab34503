//! What this relay knows about the members of the other relays, built
//! from the messages the inbox accepted: joins, leaves, announce rounds
//! (a whole round replaces the list, so a lost leave is repaired within one
//! period) and relays gone silent. It turns them into [`LinkEvent`]s for
//! the relay and keeps the link's counters. Bounded: at most
//! `max_remote_members` members over all relays, the excess counted.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use log::info;

use crate::federation::inbox::{Accepted, Refused};
use crate::federation::msg::Kind;

/// The REASON a member of a silent relay leaves with (protocol v2).
pub const REASON_UNREACHABLE: u8 = 6;

/// What the relay learns from the federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A member of another relay sent a message.
    RemoteMessage {
        /// The relay it came through.
        relay: String,
        /// `RELAY/ID`: the SENDER_ID to relay it under.
        sender_id: String,
        /// The application bytes.
        body: Vec<u8>,
    },
    /// A member of another relay joined (or was first heard of).
    RemoteJoined {
        /// `RELAY/ID`.
        id: String,
    },
    /// A member of another relay left.
    RemoteLeft {
        /// `RELAY/ID`.
        id: String,
        /// REASON code; [`REASON_UNREACHABLE`] when its relay went silent,
        /// restarted, or stopped listing it.
        reason: u8,
    },
    /// A relay was silent for [`SILENT_PERIODS`] announce periods; the
    /// `RemoteLeft` events of its members came just before.
    RelayGone {
        /// Its name.
        relay: String,
    },
}

/// Counters since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Federation messages written to NATS.
    pub published: u64,
    /// Federation messages accepted from NATS.
    pub received: u64,
    /// Dropped: not a well-formed federation message.
    pub dropped_malformed: u64,
    /// Dropped: not sealed with the federation key.
    pub dropped_unsealed: u64,
    /// Dropped: replayed, too old, or from an earlier run of its relay.
    pub dropped_replayed: u64,
    /// Dropped: sent under our own name.
    pub dropped_own: u64,
    /// Dropped: the oldest buffered message, when the buffer was full.
    pub dropped_overflow: u64,
    /// Dropped: larger than a payload may be (sent or received), or a
    /// local id that is no valid member id.
    pub dropped_oversize: u64,
    /// Dropped: from a new relay while the relay table was full.
    pub dropped_too_many_relays: u64,
    /// Remote members not tracked because the member table was full.
    pub dropped_members_full: u64,
    /// Connections established after the first.
    pub reconnects: u64,
    /// -ERR lines from servers.
    pub server_errors: u64,
}

impl LinkStats {
    /// Calls `f` with each counter's name and value.
    pub fn for_each(&self, mut f: impl FnMut(&str, u64)) {
        f("published", self.published);
        f("received", self.received);
        f("dropped_malformed", self.dropped_malformed);
        f("dropped_unsealed", self.dropped_unsealed);
        f("dropped_replayed", self.dropped_replayed);
        f("dropped_own", self.dropped_own);
        f("dropped_overflow", self.dropped_overflow);
        f("dropped_oversize", self.dropped_oversize);
        f("dropped_too_many_relays", self.dropped_too_many_relays);
        f("dropped_members_full", self.dropped_members_full);
        f("reconnects", self.reconnects);
        f("server_errors", self.server_errors);
    }
}

/// A remote relay as the admin channel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRelay {
    /// Its name.
    pub name: String,
    /// Members known.
    pub members: usize,
    /// Time since it was last heard.
    pub silent_for: Duration,
    /// Heard within the last two announce periods.
    pub alive: bool,
}

/// A remote relay's members, and the announce round being received.
#[derive(Default, Debug)]
pub struct Remote {
    members: BTreeSet<String>,
    round: Option<Round>,
}

#[derive(Debug)]
struct Round {
    round: u32,
    next_part: u16,
    parts: u16,
    members: BTreeSet<String>,
}

/// The parts of the link that handle accepted messages, apart from the
/// decoder so both can be borrowed at once.
pub struct Book {
    /// Events not yet taken by the relay.
    pub events: VecDeque<LinkEvent>,
    /// Counters.
    pub stats: LinkStats,
    /// Members of all remote relays together.
    remote_total: usize,
    max_remote: usize,
}

impl Remote {
    /// The member ids known (without the relay name).
    pub fn members(&self) -> &BTreeSet<String> {
        &self.members
    }
}

impl Book {
    /// No members, no events, counters at zero.
    pub fn new(max_remote: usize) -> Self {
        Book {
            events: VecDeque::new(),
            stats: LinkStats::default(),
            remote_total: 0,
            max_remote,
        }
    }

    /// Counts a refused message.
    pub fn refused(&mut self, r: Refused) {
        let s = &mut self.stats;
        match r {
            Refused::Unsealed => s.dropped_unsealed += 1,
            Refused::Malformed(_) => s.dropped_malformed += 1,
            Refused::Own => s.dropped_own += 1,
            Refused::Replayed => s.dropped_replayed += 1,
            Refused::TooManyOrigins => s.dropped_too_many_relays += 1,
        }
    }

    /// A relay went silent: its members leave as unreachable, then it is gone.
    pub fn relay_gone(&mut self, relay: String, remote: Remote) {
        info!(
            "federation: relay {relay} went silent; its {} members are unreachable",
            remote.members.len()
        );
        self.drop_members(&relay, remote.members);
        self.events.push_back(LinkEvent::RelayGone { relay });
    }

    /// Every member in `members` leaves as unreachable.
    fn drop_members(&mut self, relay: &str, members: BTreeSet<String>) {
        self.remote_total -= members.len();
        for m in members {
            self.events.push_back(LinkEvent::RemoteLeft {
                id: format!("{relay}/{m}"),
                reason: REASON_UNREACHABLE,
            });
        }
    }

    /// Adds a member unless known; reports the join.
    fn join(&mut self, relay: &str, remote: &mut Remote, id: &str) {
        if remote.members.contains(id) {
            return;
        }
        if self.remote_total >= self.max_remote {
            self.stats.dropped_members_full += 1;
            return;
        }
        self.remote_total += 1;
        remote.members.insert(id.to_owned());
        self.events.push_back(LinkEvent::RemoteJoined {
            id: format!("{relay}/{id}"),
        });
    }

    /// Applies an accepted message: events for the relay, membership.
    pub fn apply(&mut self, acc: Accepted<'_, Remote>) {
        let Accepted {
            msg,
            origin,
            new_origin,
            restarted,
        } = acc;
        self.stats.received += 1;
        let relay = msg.header.origin;
        if new_origin {
            info!("federation: hearing relay {relay}");
        }
        if let Some(old) = restarted {
            info!("federation: relay {relay} restarted");
            self.drop_members(relay, old.members);
        }
        let remote = &mut origin.data;
        match msg.kind {
            Kind::Message { sender_id, body } => {
                // A sender not yet announced is a member from now on.
                self.join(relay, remote, sender_id);
                self.events.push_back(LinkEvent::RemoteMessage {
                    relay: relay.to_owned(),
                    sender_id: format!("{relay}/{sender_id}"),
                    body: body.to_vec(),
                });
            }
            Kind::Joined { id } => self.join(relay, remote, id),
            Kind::Left { id, reason } => {
                if remote.members.remove(id) {
                    self.remote_total -= 1;
                    self.events.push_back(LinkEvent::RemoteLeft {
                        id: format!("{relay}/{id}"),
                        reason,
                    });
                }
            }
            Kind::Announce {
                round,
                part,
                parts,
                members,
            } => {
                if part == 0 {
                    remote.round = Some(Round {
                        round,
                        next_part: 0,
                        parts,
                        members: BTreeSet::new(),
                    });
                }
                let Some(r) = remote.round.as_mut() else {
                    return;
                };
                if (r.round, r.next_part, r.parts) != (round, part, parts) {
                    // A part went missing: wait for the next whole round.
                    remote.round = None;
                    return;
                }
                let room = self.max_remote - (self.remote_total - remote.members.len());
                for id in members.iter() {
                    if r.members.len() >= room {
                        self.stats.dropped_members_full += 1;
                        break;
                    }
                    r.members.insert(id.to_owned());
                }
                r.next_part += 1;
                if r.next_part == r.parts {
                    let listed = remote.round.take().map(|r| r.members).unwrap_or_default();
                    self.reconcile(relay, remote, listed);
                }
            }
        }
    }

    /// A whole announce round: whoever it lists is there, nobody else.
    fn reconcile(&mut self, relay: &str, remote: &mut Remote, listed: BTreeSet<String>) {
        for gone in remote.members.difference(&listed) {
            self.events.push_back(LinkEvent::RemoteLeft {
                id: format!("{relay}/{gone}"),
                reason: REASON_UNREACHABLE,
            });
        }
        for new in listed.difference(&remote.members) {
            self.events.push_back(LinkEvent::RemoteJoined {
                id: format!("{relay}/{new}"),
            });
        }
        self.remote_total = self.remote_total - remote.members.len() + listed.len();
        remote.members = listed;
    }
}
