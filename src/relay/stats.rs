//! Counters for everything the relay does and everything it drops. The
//! admin channel prints them as `name value` lines: the activity counters
//! first, then one `drop_<cause>` line per [`Drop`] cause.

use crate::relay::drop::Drop;

/// Monotonic counters since start.
#[derive(Clone, Debug)]
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
    /// HELLOs answered with SERVER_KEY + COOKIE.
    pub hellos_answered: u64,
    /// Handshakes that ended in WELCOME.
    pub handshakes_completed: u64,
    /// WELCOMEs sent again for a repeated SESSION_KEY.
    pub welcomes_resent: u64,
    /// REJECT datagrams sent.
    pub rejects_sent: u64,
    /// REJECTs not sent because of the rate limits.
    pub rejects_suppressed: u64,
    /// FRAGMENT TLVs received from registered clients.
    pub fragments_in: u64,
    /// FRAGMENT datagrams sent.
    pub fragments_out: u64,
    /// Messages reassembled from fragments.
    pub reassembled: u64,
    /// DATA messages received from clients and relayed.
    pub messages_relayed: u64,
    /// Receivers relayed messages reached: one per single DATA copy, and
    /// one per group member a GROUP_DATA was for.
    pub deliveries: u64,
    /// Clients that said BYE.
    pub clients_left: u64,
    /// Clients removed for idleness.
    pub clients_timed_out: u64,
    /// Clients kicked by an operator.
    pub clients_kicked: u64,
    /// GROUP_DATA sealed and signed (v2 group mode): one per message or
    /// notice, whatever the number of members; each goes out once per
    /// downlink with members, and the shell sends that once per served
    /// interface.
    pub group_data_sent: u64,
    /// Fresh group keys drawn after leaves (each sent to every member).
    pub rekeys: u64,
    /// Join ratchets (one per WELCOME that grants group mode).
    pub ratchets: u64,
    /// KEY_REQUESTs answered.
    pub key_requests_answered: u64,
    /// PROBE GROUP_DATAs sent (probes asked for together share one).
    pub probes_answered: u64,
    /// Group members now (a gauge).
    pub members_group: u64,
    /// The group key's current epoch (a gauge).
    pub group_epoch: u64,
    /// Inputs dropped, indexed by [`Drop::index`].
    drops: [u64; Drop::COUNT],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            datagrams_in: 0,
            bytes_in: 0,
            datagrams_out: 0,
            bytes_out: 0,
            send_errors: 0,
            hellos_answered: 0,
            handshakes_completed: 0,
            welcomes_resent: 0,
            rejects_sent: 0,
            rejects_suppressed: 0,
            fragments_in: 0,
            fragments_out: 0,
            reassembled: 0,
            messages_relayed: 0,
            deliveries: 0,
            clients_left: 0,
            clients_timed_out: 0,
            clients_kicked: 0,
            group_data_sent: 0,
            rekeys: 0,
            ratchets: 0,
            key_requests_answered: 0,
            probes_answered: 0,
            members_group: 0,
            group_epoch: 0,
            drops: [0; Drop::COUNT],
        }
    }
}

impl Stats {
    /// Inputs dropped for `why`.
    pub fn dropped(&self, why: Drop) -> u64 {
        self.drops[why.index()]
    }

    /// Inputs dropped for any cause.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Counts `n` inputs dropped for `why`; only [`crate::relay::Relay`]'s
    /// one drop path calls this.
    pub(super) fn count(&mut self, why: Drop, n: u64) {
        self.drops[why.index()] += n;
    }

    /// Visits every counter as (name, value), in a stable order.
    pub fn for_each(&self, mut f: impl FnMut(&str, u64)) {
        let activity: [(&str, u64); 25] = [
            ("datagrams_in", self.datagrams_in),
            ("bytes_in", self.bytes_in),
            ("datagrams_out", self.datagrams_out),
            ("bytes_out", self.bytes_out),
            ("send_errors", self.send_errors),
            ("hellos_answered", self.hellos_answered),
            ("handshakes_completed", self.handshakes_completed),
            ("welcomes_resent", self.welcomes_resent),
            ("rejects_sent", self.rejects_sent),
            ("rejects_suppressed", self.rejects_suppressed),
            ("fragments_in", self.fragments_in),
            ("fragments_out", self.fragments_out),
            ("reassembled", self.reassembled),
            ("messages_relayed", self.messages_relayed),
            ("deliveries", self.deliveries),
            ("clients_left", self.clients_left),
            ("clients_timed_out", self.clients_timed_out),
            ("clients_kicked", self.clients_kicked),
            ("group_data_sent", self.group_data_sent),
            ("rekeys", self.rekeys),
            ("ratchets", self.ratchets),
            ("key_requests_answered", self.key_requests_answered),
            ("probes_answered", self.probes_answered),
            ("members_group", self.members_group),
            ("group_epoch", self.group_epoch),
        ];
        for (name, v) in activity {
            f(name, v);
        }
        let mut name = String::new();
        for (why, v) in Drop::ALL.iter().zip(self.drops) {
            name.clear();
            name.push_str("drop_");
            name.push_str(why.name());
            f(&name, v);
        }
    }
}
