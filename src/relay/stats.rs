//! Counters for everything the relay does and everything it drops. The
//! admin channel prints them as `name value` lines.

use crate::reassembly::DropReason;

/// Why a handshake was refused, for per-reason counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Missing, wrong or stale cookie.
    BadCookie,
    /// Per-source handshake rate limit.
    RateLimited,
    /// Global RSA decryption budget spent.
    RsaBudget,
    /// Client table full.
    ServerFull,
    /// RSA decryption failed, bad Fernet key or wrong access token.
    AuthFailed,
}

impl Refusal {
    /// Every reason, in display order.
    pub const ALL: [Refusal; 5] = [
        Refusal::BadCookie,
        Refusal::RateLimited,
        Refusal::RsaBudget,
        Refusal::ServerFull,
        Refusal::AuthFailed,
    ];

    /// snake_case name used in `stats`.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::BadCookie => "bad_cookie",
            Refusal::RateLimited => "rate_limited",
            Refusal::RsaBudget => "rsa_budget",
            Refusal::ServerFull => "server_full",
            Refusal::AuthFailed => "auth_failed",
        }
    }
}

/// Monotonic counters since start.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Datagrams queued for sending.
    pub datagrams_out: u64,
    /// Bytes queued for sending.
    pub bytes_out: u64,
    /// Datagrams the socket refused to send.
    pub send_errors: u64,
    /// Datagrams with broken TLV framing or broken fields.
    pub malformed: u64,
    /// Outer TLVs of unknown type (skipped).
    pub unknown_types: u64,
    /// HELLOs ignored (too short, wrong version).
    pub hellos_ignored: u64,
    /// HELLOs answered with SERVER_KEY + COOKIE.
    pub hellos_answered: u64,
    /// Handshakes that ended in WELCOME.
    pub handshakes_completed: u64,
    /// Handshakes refused, indexed like [`Refusal::ALL`].
    pub handshakes_refused: [u64; 5],
    /// REJECT datagrams sent.
    pub rejects_sent: u64,
    /// REJECTs not sent because of the rate limits.
    pub rejects_suppressed: u64,
    /// Datagrams from unregistered addresses that needed a session.
    pub strangers: u64,
    /// Tokens that failed authentication.
    pub bad_tokens: u64,
    /// Replays: a seen or too-old SEQ, a token reflected from the other
    /// direction, or a SESSION_KEY that already registered a client.
    pub replays: u64,
    /// FRAGMENT TLVs received from registered clients.
    pub fragments_in: u64,
    /// FRAGMENT datagrams sent.
    pub fragments_out: u64,
    /// Messages reassembled from fragments.
    pub reassembled: u64,
    /// Messages dropped by reassembly, indexed like [`DropReason::ALL`].
    pub reassembly_drops: [u64; DropReason::ALL.len()],
    /// Messages that could not be sent because they exceed the protocol's limits.
    pub oversize: u64,
    /// DATA messages received from clients and relayed.
    pub messages_relayed: u64,
    /// Relayed copies sent (one per receiver).
    pub deliveries: u64,
    /// Clients that said BYE.
    pub clients_left: u64,
    /// Clients removed for idleness.
    pub clients_timed_out: u64,
    /// Clients kicked by an operator.
    pub clients_kicked: u64,
}

impl Stats {
    /// Counts a refused handshake.
    pub fn refuse(&mut self, r: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|x| *x == r) {
            self.handshakes_refused[i] += 1;
        }
    }

    /// Counts `n` messages dropped by reassembly for reason `r`.
    pub fn reassembly_drop(&mut self, r: DropReason, n: u64) {
        if let Some(i) = DropReason::ALL.iter().position(|x| *x == r) {
            self.reassembly_drops[i] += n;
        }
    }

    /// Visits every counter as (name, value), in a stable order.
    pub fn for_each(&self, mut f: impl FnMut(&str, u64)) {
        let plain: [(&str, u64); 22] = [
            ("datagrams_in", self.datagrams_in),
            ("bytes_in", self.bytes_in),
            ("datagrams_out", self.datagrams_out),
            ("bytes_out", self.bytes_out),
            ("send_errors", self.send_errors),
            ("malformed", self.malformed),
            ("unknown_types", self.unknown_types),
            ("hellos_ignored", self.hellos_ignored),
            ("hellos_answered", self.hellos_answered),
            ("handshakes_completed", self.handshakes_completed),
            ("rejects_sent", self.rejects_sent),
            ("rejects_suppressed", self.rejects_suppressed),
            ("strangers", self.strangers),
            ("bad_tokens", self.bad_tokens),
            ("replays", self.replays),
            ("fragments_in", self.fragments_in),
            ("fragments_out", self.fragments_out),
            ("reassembled", self.reassembled),
            ("oversize", self.oversize),
            ("messages_relayed", self.messages_relayed),
            ("deliveries", self.deliveries),
            ("clients_left", self.clients_left),
        ];
        for (name, v) in plain {
            f(name, v);
        }
        f("clients_timed_out", self.clients_timed_out);
        f("clients_kicked", self.clients_kicked);
        for (r, v) in Refusal::ALL.iter().zip(self.handshakes_refused) {
            f(&format!("handshakes_refused_{}", r.name()), v);
        }
        for (r, v) in DropReason::ALL.iter().zip(self.reassembly_drops) {
            f(&format!("reassembly_drops_{}", r.name()), v);
        }
    }
}
