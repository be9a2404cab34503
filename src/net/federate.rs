//! The federation in the server loop: the sans-IO [`Link`] and its
//! [`NatsSocket`], and the glue between them and the relay core. Per loop
//! turn the server calls [`Federation::handle_event`] for the NATS token's
//! readiness, then [`Federation::turn`]: the link's timers, its events
//! into the relay ([`Relay::handle_remote`]), the relay's events out to
//! the link (`publish_*`), and the socket's reads and writes. Also what the
//! admin channel shows of it ([`Federation::view`]).

use std::time::{Duration, Instant};

use log::{debug, info};
use mio::event::Event as MioEvent;
use mio::{Registry, Token};

use crate::federation::link::{Link, LinkState};
use crate::federation::members::LinkEvent;
use crate::net::admin::{FederationView, REMOTE_MEMBERS_SHOWN};
use crate::net::nats::NatsSocket;
use crate::relay::{Event, Relay, RemoteInput, Transmits};
use crate::wire::LeaveReason;

/// Longest wait at shutdown for the last leaves to reach NATS.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(500);

/// A relay's federation link and its socket.
pub struct Federation {
    link: Link,
    nats: NatsSocket,
}

impl Federation {
    /// Wraps a link; its socket registers under `token` once the link
    /// asks for a connection.
    pub fn new(link: Link, token: Token) -> Self {
        Federation {
            link,
            nats: NatsSocket::new(token),
        }
    }

    /// True for the NATS socket's token.
    pub fn owns(&self, token: Token) -> bool {
        self.nats.token() == token
    }

    /// When the loop must wake up for the link at the latest: now when the
    /// socket has unread bytes left by the read budget.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.nats.has_pending_read() {
            Some(now)
        } else {
            self.link.poll_timeout()
        }
    }

    /// Readiness of the NATS socket.
    pub fn handle_event(&mut self, registry: &Registry, ev: &MioEvent, now: Instant) {
        self.nats.handle_event(registry, ev, &mut self.link, now);
    }

    /// One loop turn after the readiness events: the link's timers, what
    /// the other relays said into the relay (its datagrams into `out`),
    /// what the relay did out to them, then the socket.
    pub fn turn(
        &mut self,
        registry: &Registry,
        relay: &mut Relay,
        out: &mut Transmits,
        now: Instant,
    ) {
        if self.link.poll_timeout().is_some_and(|t| t <= now) {
            self.link.handle_timeout(now);
        }
        while let Some(ev) = self.link.poll_event() {
            let input = match &ev {
                LinkEvent::RemoteMessage {
                    sender_id, body, ..
                } => RemoteInput::Message { sender_id, body },
                LinkEvent::RemoteJoined { id } => RemoteInput::Joined { id },
                LinkEvent::RemoteLeft { id, reason } => RemoteInput::Left {
                    id,
                    reason: *reason,
                },
                LinkEvent::RelayGone { relay } => {
                    info!("federation: relay {relay} is unreachable");
                    continue;
                }
            };
            relay.handle_remote(now, input, out);
        }
        self.publish(relay, now);
        self.nats.drive(registry, &mut self.link, now);
    }

    /// The relay's events since the last turn, published.
    fn publish(&mut self, relay: &mut Relay, now: Instant) {
        for ev in relay.drain_events() {
            match ev {
                Event::Joined { id, rekeyed } => {
                    if !rekeyed {
                        self.link.publish_joined(now, &id.to_string());
                    }
                }
                Event::Left { id, reason } => {
                    self.link.publish_left(now, &id.to_string(), reason as u8)
                }
                Event::Relayed { sender, body } => self.link.publish_message(now, &sender, &body),
            }
        }
    }

    /// Leaves the federation for a relay shutting down: its members (taken
    /// before the relay forgot them) leave with REASON 4, the link
    /// unsubscribes, and the loop waits up to half a second for that to be
    /// written.
    pub fn shutdown(&mut self, registry: &Registry, relay: &mut Relay, members: &[String]) {
        let now = Instant::now();
        self.publish(relay, now);
        for id in members {
            self.link.publish_left(now, id, LeaveReason::Shutdown as u8);
        }
        self.link.shutdown(now);
        let deadline = now + SHUTDOWN_FLUSH;
        loop {
            let now = Instant::now();
            self.nats.drive(registry, &mut self.link, now);
            let connected = matches!(self.link.state(), LinkState::Connected { .. });
            if !connected || self.link.pending_output().is_empty() || now >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        debug!(
            "federation: left with {} bytes unwritten",
            self.link.pending_output().len()
        );
    }

    /// What the admin channel shows: [`Federation::describe`], the
    /// counters, and the first remote members for `clients remote`.
    pub fn view(&self, now: Instant) -> FederationView {
        FederationView {
            lines: self.describe(now),
            counters: self.counters(),
            remote_members: self.link.remote_members_first(REMOTE_MEMBERS_SHOWN),
            remote_total: self.link.remote_member_count(),
        }
    }

    /// What the admin `federation` command prints: the link state and
    /// server, then one line per remote relay, then the counters.
    pub fn describe(&self, now: Instant) -> Vec<String> {
        let mut lines = vec![match self.link.state() {
            LinkState::Connected { server } => format!("state connected server {server}"),
            LinkState::Connecting { server } => format!("state connecting server {server}"),
            LinkState::Waiting { retry_at } => format!(
                "state waiting retry-in-ms {}",
                retry_at.saturating_duration_since(now).as_millis()
            ),
            LinkState::Closed => "state closed".to_string(),
        }];
        for r in self.link.remote_relays(now) {
            lines.push(format!(
                "relay {} members {} last-heard {} {}",
                r.name,
                r.members,
                r.silent_for.as_secs(),
                if r.alive { "alive" } else { "unreachable" }
            ));
        }
        for (name, v) in self.counters() {
            lines.push(format!("{name} {v}"));
        }
        lines
    }

    /// The link's counters and gauges as `stats` names (`federation_`).
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut v = Vec::with_capacity(16);
        self.link
            .stats()
            .for_each(|name, n| v.push((format!("federation_{name}"), n)));
        v.push(("federation_buffered".into(), self.link.buffered() as u64));
        v.push((
            "federation_connected".into(),
            u64::from(matches!(self.link.state(), LinkState::Connected { .. })),
        ));
        v
    }
}
