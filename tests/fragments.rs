//! Spoofed fragments cannot starve a member (issue 10, item 6), against the
//! real `mcrelay serve` process over loopback UDP.
//!
//! Anyone can forge FRAGMENTs with a member's source address: the relay
//! reassembles before it authenticates, so what the forger sends lands in
//! the member's own partial-message slots and byte budget. Spoofing a
//! source address over loopback needs raw sockets, so here the member's own
//! socket plays the forger: it sends the bogus fragments itself
//! ([`UdpClient::send_raw`]), then its genuine message, sealed by the
//! library ([`UdpClient::prepare`]) and sent datagram by datagram. To the
//! relay that is exactly what a forger racing the member looks like.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use mcrelay::wire::fragment::{parse_fragment, FRAGMENT_HEADER_LEN};
use mcrelay::wire::{outer, tlv};
use mcrelay::UdpClient;

const QUIET: Duration = Duration::from_millis(300);
/// `--reassembly-partials` default.
const SLOTS: u32 = 8;
/// `--reassembly-client-bytes` default.
const CLIENT_BYTES: usize = 256 * 1024;
/// What the relay charges per buffered chunk on top of its bytes.
const CHUNK_OVERHEAD: usize = 32;
/// The genuine message: 2,000 bytes, several fragments at the client's
/// default 1,200-byte datagrams.
const BODY_LEN: usize = 2000;

/// A FRAGMENT datagram.
fn fragment(msg_id: u32, index: u16, count: u16, chunk: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(FRAGMENT_HEADER_LEN + chunk.len());
    value.extend_from_slice(&msg_id.to_be_bytes());
    value.extend_from_slice(&index.to_be_bytes());
    value.extend_from_slice(&count.to_be_bytes());
    value.extend_from_slice(chunk);
    let mut d = Vec::new();
    tlv::put(&mut d, outer::FRAGMENT, &value);
    d
}

/// The relay, an admin session, the member M and the receiver R.
struct Setup {
    server: Server,
    admin: AdminConn,
    m: UdpClient,
    r: UdpClient,
}

impl Setup {
    fn new() -> Setup {
        let server = Server::start(&[]);
        let mut admin = server.admin();
        admin.ok("log off");
        let mut m = server.client();
        let r = server.client();
        drain(&mut m, QUIET); // R's join notice
        Setup {
            server,
            admin,
            m,
            r,
        }
    }

    /// M's genuine message, sealed and split, and its msg_id.
    fn genuine(&mut self, body: &[u8]) -> (Vec<Vec<u8>>, u32) {
        let ds = self.m.prepare(body);
        assert!(
            ds.len() >= 2,
            "a {}-byte body was not fragmented",
            body.len()
        );
        let id = parse_fragment(&ds[0][tlv::HEADER_LEN..])
            .expect("a FRAGMENT")
            .msg_id;
        (ds, id)
    }

    /// Sends `ds` from M's socket and waits until the relay has handled
    /// them all (its `fragments_in` counter says so), so that a burst never
    /// overruns the relay's receive buffer and every datagram is accounted.
    fn send_from_m(&mut self, ds: &[Vec<u8>]) {
        let want = self.admin.stat("fragments_in") + ds.len() as u64;
        for d in ds {
            self.m.send_raw(d).unwrap();
        }
        let end = Instant::now() + DEADLINE;
        loop {
            let seen = self.admin.stat("fragments_in");
            if seen >= want {
                return;
            }
            assert!(
                Instant::now() < end,
                "the relay handled {seen} of {want} fragments within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Bogus one-chunk-of-two fragments with msg_ids `ids` (never completed).
    fn bogus(&mut self, ids: impl IntoIterator<Item = u32>, chunk: &[u8]) {
        let ds: Vec<_> = ids
            .into_iter()
            .map(|id| fragment(id, 0, 2, chunk))
            .collect();
        for batch in ds.chunks(32) {
            self.send_from_m(batch);
        }
    }

    /// R receives M's message.
    fn expect_delivered(&mut self, body: &[u8]) {
        let sender = expect_message(&mut self.r, body);
        assert_eq!(sender, self.m.id().unwrap());
    }

    /// Every counter `stats` prints.
    fn stats(&mut self) -> HashMap<String, u64> {
        self.admin
            .ok("stats")
            .iter()
            .filter_map(|l| {
                let (name, v) = l.split_once(' ')?;
                Some((name.to_string(), v.parse().ok()?))
            })
            .collect()
    }
}

/// How much counter `name` grew between two snapshots.
fn grew(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    let get = |m: &HashMap<String, u64>| *m.get(name).unwrap_or_else(|| panic!("no stat {name}"));
    get(after) - get(before)
}

/// msg_ids for bogus fragments: a run that avoids the genuine one.
fn ids_avoiding(genuine: u32, from: u32, n: u32) -> impl Iterator<Item = u32> {
    (0..n).map(move |i| {
        let id = genuine.wrapping_add(1_000_000).wrapping_add(from + i);
        assert_ne!(id, genuine);
        id
    })
}

/// 200 bogus msg_ids from M's address fill its 8 slots many times over;
/// M's 2,000-byte message still reassembles and reaches R, even with 7
/// more bogus msg_ids (one fewer than the slots) interleaved between its
/// fragments. Each bogus msg_id beyond the slots evicted the oldest partial.
#[test]
fn spoofed_msg_id_burst_cannot_block_a_members_message() {
    let mut s = Setup::new();
    let body: Vec<u8> = (0..BODY_LEN).map(|i| (i * 7) as u8).collect();
    let (ds, id) = s.genuine(&body);
    let before = s.stats();

    let burst = 200;
    s.bogus(ids_avoiding(id, 0, burst), &[0xEE; 16]);
    assert_eq!(
        s.admin.stat("reassembly_bytes"),
        u64::from(SLOTS) * (16 + CHUNK_OVERHEAD) as u64,
        "M's slots should be full of bogus partials"
    );

    // The genuine fragments, with 7 new bogus msg_ids spread between them.
    let mut interleaved = 0;
    let gaps = ds.len() as u32 - 1;
    for (i, d) in ds.iter().enumerate() {
        s.send_from_m(std::slice::from_ref(d));
        if (i as u32) < gaps {
            let n = (SLOTS - 1 - interleaved) / (gaps - i as u32);
            s.bogus(ids_avoiding(id, burst + interleaved, n), &[0xDD; 16]);
            interleaved += n;
        }
    }
    assert_eq!(interleaved, SLOTS - 1);
    s.expect_delivered(&body);
    let after = s.stats();
    assert_eq!(grew(&before, &after, "reassembled"), 1);
    // Every msg_id beyond the first 8 (the bogus ones and the genuine
    // one) evicted the oldest partial, never the genuine message, which
    // completed; nothing was refused.
    let evicted = grew(&before, &after, "drop_reassembly_evicted");
    assert_eq!(evicted, u64::from(burst + 1 + interleaved - SLOTS));
    assert_eq!(
        grew(&before, &after, "drop_reassembly_too_many_partials"),
        0
    );
    assert_eq!(s.server.child.try_wait().unwrap(), None);
}

/// M's byte budget held almost entirely by 7 big bogus partials (one slot
/// still free, less room left than one genuine fragment): M's message
/// evicts the oldest of them and reaches R.
#[test]
fn spoofed_partials_filling_a_members_byte_budget_cannot_block_its_message() {
    let mut s = Setup::new();
    let body: Vec<u8> = (0..BODY_LEN).map(|i| (i * 13) as u8).collect();
    let (ds, id) = s.genuine(&body);
    let before = s.stats();

    // Leave less room than the first genuine fragment costs.
    let first_cost = ds[0].len() - tlv::HEADER_LEN - FRAGMENT_HEADER_LEN + CHUNK_OVERHEAD;
    let room = first_cost / 2;
    let target = CLIENT_BYTES - room;
    let each = 37_000;
    let last = target - 6 * (each + CHUNK_OVERHEAD) - CHUNK_OVERHEAD;
    for (n, len) in [each, each, each, each, each, each, last]
        .into_iter()
        .enumerate()
    {
        s.bogus(ids_avoiding(id, n as u32, 1), &vec![0xCC; len]);
    }
    assert_eq!(s.admin.stat("reassembly_bytes"), target as u64);

    s.send_from_m(&ds);
    s.expect_delivered(&body);
    let after = s.stats();
    // The first genuine fragment evicted the oldest 37,000-byte partial,
    // which left room for the rest of the message.
    assert_eq!(grew(&before, &after, "drop_reassembly_evicted"), 1);
    assert_eq!(grew(&before, &after, "drop_reassembly_owner_bytes"), 0);
    assert_eq!(grew(&before, &after, "reassembled"), 1);
    assert_eq!(s.server.child.try_wait().unwrap(), None);
}
