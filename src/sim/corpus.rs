//! Replays every file of `fuzz/corpus/<target>/` through the matching
//! `crate::sim::fuzz` function, so crashes the fuzzers found (and the seeds
//! that reach deep states) stay fixed under a plain `cargo test`.
//!
//! `cargo test --lib sim::corpus -- --ignored generate_seeds` rewrites the
//! hand-made seed files (`seed-*`) from real handshakes and relays.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::sim::fuzz as fuzzing;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The corpus files of one target, sorted; panics if there are none.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("read corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus {} is empty: the replay would prove nothing",
        dir.display()
    );
    files
}

/// Runs `body` on every file; reports all failing files, not just the first.
fn replay(target: &str, body: fn(&[u8])) {
    let files = corpus(target);
    let mut failed = Vec::new();
    for path in &files {
        let data = fs::read(path).expect("read corpus file");
        if panic::catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn corpus_federation() {
    replay("federation", crate::sim::fuzz_federation::federation);
}

#[test]
fn corpus_tlv() {
    replay("tlv", fuzzing::tlv);
}

#[test]
fn corpus_inner() {
    replay("inner", fuzzing::inner);
}

#[test]
fn corpus_reassembly() {
    replay("reassembly", fuzzing::reassembly);
}

#[test]
fn corpus_core() {
    replay("core", fuzzing::core);
}

/// The core harness must actually reach registered clients and relaying,
/// or fuzzing it would only ever exercise the stranger paths.
#[test]
fn core_seeds_reach_deep_states() {
    let run = |name: &str| {
        let path = corpus_dir("core").join(name);
        let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        fuzzing::core_report(&data)
    };
    let r = run("seed-relay");
    assert!(r.handshakes >= 3 && r.welcomes >= 3, "{r:?}");
    assert!(r.messages >= 6, "{r:?}");
    assert!(r.left >= 1, "{r:?}");
    let r = run("seed-fragmented");
    assert!(r.reassembled >= 1 && r.messages >= 2, "{r:?}");
}

/// The v2 seeds must reach group mode: GROUP_DATA opened by members,
/// rekeys and ratchets, key requests and probes answered, forgeries refused.
#[test]
fn core_v2_seeds_reach_group_mode() {
    let run = |name: &str| {
        let path = corpus_dir("core").join(name);
        let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        fuzzing::core_report(&data)
    };
    let r = run("seed-v2-group");
    println!("seed-v2-group: {r:?}");
    assert!(r.group_data >= 4 && r.group_messages >= 4, "{r:?}");
    assert!(r.rekeys >= 2 && r.ratchets >= 4, "{r:?}");
    let r = run("seed-v2-kicked");
    println!("seed-v2-kicked: {r:?}");
    assert!(
        r.left >= 2 && r.rekeys >= 2 && r.group_messages >= 3,
        "{r:?}"
    );
    let r = run("seed-v2-downlink");
    println!("seed-v2-downlink: {r:?}");
    assert!(r.group_messages >= 4 && r.forgeries_refused >= 6, "{r:?}");
    let r = run("seed-v2-keys");
    println!("seed-v2-keys: {r:?}");
    assert!(r.key_answers >= 1 && r.probes >= 1, "{r:?}");
    let r = run("seed-v2-named");
    println!("seed-v2-named: {r:?}");
    assert!(r.group_messages >= 2 && r.rekeys >= 1, "{r:?}");
    let r = run("seed-v2-harness");
    println!("seed-v2-harness: {r:?}");
    assert!(r.key_answers >= 1 && r.probes >= 1, "{r:?}");
}

// ---------------------------------------------------------------------------
// Seed generation

/// Encodes programs for `fuzzing::core` (see its op table).
#[derive(Default)]
struct Program(Vec<u8>);

impl Program {
    /// Config bytes: `a` (max datagram, clients, timeout, token), `b` (limits), client
    /// max-datagram index (0..8: 64,100,200,548,1200,1500,9000,65507).
    fn new(a: u8, b: u8, client_max: u8) -> Self {
        Program(vec![a, b, client_max])
    }
    fn op(mut self, op: u8, client: u8, args: &[u8]) -> Self {
        self.0.push(op | (client << 4));
        self.0.extend_from_slice(args);
        self
    }
    fn handshake(self, i: u8) -> Self {
        self.op(0, i, &[])
    }
    fn send(self, i: u8, len: u16) -> Self {
        self.op(1, i, &len.to_be_bytes())
    }
    fn keepalive(self, i: u8) -> Self {
        self.op(2, i, &[])
    }
    fn bye(self, i: u8) -> Self {
        self.op(3, i, &[])
    }
    /// `bytes.len()` must be even (the length byte counts pairs).
    fn raw(self, i: u8, bytes: &[u8]) -> Self {
        let mut a = vec![(bytes.len() / 2) as u8];
        a.extend_from_slice(bytes);
        self.op(4, i, &a)
    }
    fn stranger(self, s: u8, bytes: &[u8]) -> Self {
        let mut a = vec![s, (bytes.len() / 2) as u8];
        a.extend_from_slice(bytes);
        self.op(5, 0, &a)
    }
    fn replay(self, k: u8, src: u8) -> Self {
        self.op(6, 0, &[k, src])
    }
    fn scrambled(self, i: u8, len: u16, pattern: &[u8]) -> Self {
        let mut a = len.to_be_bytes().to_vec();
        a.push(pattern.len() as u8);
        a.extend_from_slice(pattern);
        self.op(7, i, &a)
    }
    fn advance_ms(self, ms: u16) -> Self {
        self.op(8, 0, &ms.to_be_bytes())
    }
    fn advance_100ms(self, n: u16) -> Self {
        self.op(8, 4, &n.to_be_bytes())
    }
    fn kick(self, i: u8) -> Self {
        self.op(9, i, &[])
    }
    fn kick_id(self, id: &str) -> Self {
        let mut a = vec![id.len() as u8];
        a.extend_from_slice(id.as_bytes());
        self.op(9, 4, &a)
    }
    fn shutdown(self) -> Self {
        self.op(10, 0, &[])
    }
    fn session_key(self, i: u8, mode: u8, blob: &[u8]) -> Self {
        let mut a = vec![mode, blob.len() as u8];
        a.extend_from_slice(blob);
        self.op(11, i, &a)
    }
    /// Token under the op-11 key: SEQ (u16) then `tail` (even length), as BODY if `as_body`.
    fn crafted(self, i: u8, kind: u8, seq: u16, as_body: bool, tail: &[u8]) -> Self {
        let mut a = vec![kind, 2 | if as_body { 8 } else { 0 }];
        a.extend_from_slice(&seq.to_be_bytes());
        a.push((tail.len() / 2) as u8);
        a.extend_from_slice(tail);
        self.op(12, i, &a)
    }
    /// Config bytes as [`Program::new`], `b` with its top bit set, then the
    /// client kinds byte (2 bits per client: 0 v2 pairwise, 1 v1, 2 v2 group).
    fn v2(a: u8, b: u8, client_max: u8, kinds: [u8; 4]) -> Self {
        let k = kinds.iter().enumerate().map(|(i, k)| k << (2 * i)).sum();
        Program(vec![a, b | 0x80, client_max, k])
    }
    /// Op 14, v2 op `sub` for client `i`, with the op byte's `flag` bits.
    fn sub(mut self, sub: u8, i: u8, flag: u8, args: &[u8]) -> Self {
        self.0.push(14 | (i << 4) | (flag << 6));
        self.0.push(sub);
        self.0.extend_from_slice(args);
        self
    }
    fn hold(self, on: bool) -> Self {
        self.sub(0, 0, u8::from(on), &[])
    }
    fn release(self, mask: u8, pattern: &[u8]) -> Self {
        let mut a = vec![mask, pattern.len() as u8];
        a.extend_from_slice(pattern);
        self.sub(1, 0, 0, &a)
    }
    /// The next `n` (1..=4) relay datagrams to client i are lost.
    fn lose(self, i: u8, n: u8) -> Self {
        self.sub(2, i, n - 1, &[])
    }
    /// Variant: 0 bad signature, 1 member-signed, 2 wrong epoch, 3 replay, 4 truncated.
    fn forge(self, i: u8, variant: u8, k: u8, mask: u8, blob: &[u8]) -> Self {
        let mut a = vec![variant, k, mask, blob.len() as u8];
        a.extend_from_slice(blob);
        self.sub(3, i, 0, &a)
    }
    fn timers(self, i: u8) -> Self {
        self.sub(4, i, 0, &[])
    }
    fn leave_group(self, i: u8) -> Self {
        self.sub(5, i, 0, &[])
    }
    fn rejoin(self, i: u8) -> Self {
        self.sub(6, i, 0, &[])
    }
    /// Mode: bits 0–1 BIND (right, wrong, another's, none), 2–3 credential.
    fn session_key2(self, i: u8, mode: u8, caps: u8, blob: &[u8]) -> Self {
        let mut a = vec![mode, caps, blob.len() as u8];
        a.extend_from_slice(blob);
        self.sub(7, i, 0, &a)
    }
    /// Mode: bits 0–1 epoch (current, −1, older, given), bit 2 KEY_REQUEST, bit 3 PROBE.
    fn request(self, i: u8, mode: u8, epoch: u32) -> Self {
        let mut a = vec![mode];
        if mode & 3 == 3 {
            a.extend_from_slice(&epoch.to_be_bytes());
        }
        self.sub(8, i, 0, &a)
    }
    fn raw_v2(self, i: u8, flag: u8, kinds: u8, count: u8, value: &[u8]) -> Self {
        let mut a = vec![kinds, count, value.len() as u8];
        a.extend_from_slice(value);
        self.sub(9, i, flag, &a)
    }
    /// `v`: bits 0–1 unchanged, k → pub, k removed, k → sub; bits 2–3 k.
    fn reload(self, none: bool, v: u8) -> Self {
        self.sub(10, 0, u8::from(none), &[v])
    }
    fn churn(self, i: u8) -> Self {
        self.sub(11, i, 0, &[])
    }
    /// `chunk.len()` must be a multiple of 4.
    fn fragment(self, i: u8, msg_id: u8, index: u8, count: u8, chunk: &[u8]) -> Self {
        let mut a = vec![msg_id, index, count, (chunk.len() / 4) as u8];
        a.extend_from_slice(chunk);
        self.op(13, i, &a)
    }
}

/// Config byte `a`: max-datagram index (0..8: 548,576,600,900,1200,1500,9000,65507),
/// max clients 1..=4, timeout index (60 s, 5 s, 1 s, 120 ms), access token.
fn cfg(max_idx: u8, clients: u8, timeout_idx: u8, token: bool) -> u8 {
    max_idx | ((clients - 1) << 3) | (timeout_idx << 5) | if token { 0x80 } else { 0 }
}

/// Client kinds of [`Program::v2`].
const PAIR: u8 = 0;
const V1: u8 = 1;
const GROUP: u8 = 2;
/// Config byte `b` bits: group mode granted, a clients table.
const GROUP_MODE: u8 = 0x10;
const NAMED: u8 = 0x20;

/// Seeds of the v2 ops and group mode.
fn core_v2_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "seed-v2-group",
            // Three members and a v1 client; a fragmented GROUP_DATA, a
            // leave (rekey), churn (rekey and ratchet), a re-join.
            Program::v2(
                cfg(4, 4, 0, false),
                GROUP_MODE,
                4,
                [GROUP, GROUP, GROUP, V1],
            )
            .handshake(0)
            .handshake(1)
            .handshake(2)
            .handshake(3)
            .send(0, 10)
            .send(3, 20)
            .send(1, 1500)
            .bye(2)
            .send(0, 5)
            .churn(1)
            .send(1, 7)
            .leave_group(0)
            .send(3, 9)
            .rejoin(1)
            .send(1, 3)
            .0,
        ),
        (
            "seed-v2-kicked",
            // A kicked member and a timed-out one keep their keys (their
            // ClientCores do not know): what follows must not open for them.
            Program::v2(
                cfg(4, 4, 1, false),
                GROUP_MODE,
                4,
                [GROUP, GROUP, GROUP, PAIR],
            )
            .handshake(0)
            .handshake(1)
            .handshake(2)
            .send(0, 41)
            .kick(2)
            .send(0, 42)
            .send(1, 43)
            .advance_ms(3000)
            .keepalive(0)
            .keepalive(1)
            .advance_ms(3000)
            .keepalive(0)
            .advance_ms(3000)
            .send(0, 44)
            .0,
        ),
        (
            "seed-v2-downlink",
            // Group datagrams held, then reordered, duplicated and lost per
            // member; forgeries and replays of each kind.
            Program::v2(
                cfg(4, 4, 0, false),
                GROUP_MODE,
                4,
                [GROUP, GROUP, GROUP, PAIR],
            )
            .handshake(0)
            .handshake(1)
            .handshake(2)
            .handshake(3)
            .hold(true)
            .send(0, 11)
            .send(3, 12)
            .send(1, 13)
            .release(0b0110, &[2, 0, 0, 1])
            .send(2, 14)
            .hold(false)
            .release(0, &[])
            .send(0, 15)
            .forge(0, 0, 0, 0, &[9])
            .forge(0, 1, 0, 0, b"forged")
            .forge(0, 2, 1, 0, &[0])
            .forge(0, 3, 2, 0, &[])
            .forge(0, 4, 3, 0x10, &[20])
            .0,
        ),
        (
            "seed-v2-keys",
            // A member misses its GROUP_KEY, holds what it cannot open and
            // asks (KEY_REQUEST); a silent newcomer probes the downlink.
            Program::v2(
                cfg(4, 4, 0, false),
                GROUP_MODE,
                4,
                [GROUP, GROUP, GROUP, GROUP],
            )
            .handshake(0)
            .handshake(1)
            .handshake(2)
            .send(0, 1)
            .lose(1, 1)
            .bye(2)
            .send(0, 2)
            .send(0, 3)
            .advance_ms(300)
            .send(1, 4)
            .handshake(3)
            .advance_ms(2100)
            .advance_ms(600)
            .timers(3)
            .advance_ms(1000)
            .send(3, 5)
            .0,
        ),
        (
            "seed-v2-named",
            // alice pubsub, bob pub, carol sub, dave pubsub, all asking for
            // GROUP; then reloads narrow, revoke and drop the table.
            Program::v2(
                cfg(4, 4, 0, false),
                GROUP_MODE | NAMED,
                4,
                [GROUP, GROUP, GROUP, GROUP],
            )
            .handshake(0)
            .handshake(1)
            .handshake(2)
            .handshake(3)
            .send(0, 21)
            .send(1, 22)
            .send(2, 23)
            .reload(false, 1 | (3 << 2))
            .send(0, 24)
            .send(3, 25)
            .reload(false, 2)
            .send(1, 26)
            .reload(false, 3 | (1 << 2))
            .reload(true, 0)
            .send(3, 27)
            .0,
        ),
        (
            "seed-v2-harness",
            // The harness's own v2 sessions: BIND mismatch, no BIND, a
            // member it drives itself (KEY_REQUESTs, PROBE), a forgery
            // signed by that member, raw v2 TLVs.
            Program::v2(
                cfg(4, 4, 0, false),
                GROUP_MODE,
                4,
                [GROUP, GROUP, PAIR, PAIR],
            )
            .handshake(0)
            .session_key2(1, 0, 3, &[])
            .session_key2(2, 1, 3, &[5])
            .session_key2(3, 3, 1, &[])
            .send(0, 31)
            .request(1, 4, 0)
            .request(1, 4 | 1, 0)
            .advance_ms(1100)
            .request(1, 4 | 3, 77)
            .request(1, 8, 0)
            .request(1, 8, 0)
            .forge(0, 1, 1, 0, b"as a member")
            .raw_v2(0, 0, 0, 8, &[1, 2, 3, 4])
            .raw_v2(2, 1, 4, 3, &[0; 16])
            .raw_v2(0, 2, 1, 2, &[0xff; 70])
            .0,
        ),
    ]
}

fn core_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hello = {
        let mut v = vec![0, 1, 0, 252, 1];
        v.resize(256, 0);
        v
    };
    vec![
        (
            "seed-relay",
            Program::new(cfg(4, 4, 0, false), 0, 4)
                .handshake(0)
                .handshake(1)
                .handshake(2)
                .send(0, 10)
                .send(1, 0)
                .send(2, 900)
                .keepalive(1)
                .bye(2)
                .send(0, 3)
                .kick(1)
                .0,
        ),
        (
            "seed-fragmented",
            Program::new(cfg(0, 4, 0, false), 0, 0)
                .handshake(0)
                .handshake(1)
                .send(0, 300)
                .send(1, 2000)
                .scrambled(0, 400, &[3, 2, 1, 0, 0, 5, 4, 6, 7, 8, 9])
                .advance_ms(800)
                .0,
        ),
        (
            "seed-full-and-token",
            Program::new(cfg(4, 1, 0, true), 2, 4)
                .handshake(3)
                .handshake(0)
                .handshake(1)
                .send(0, 5)
                .0,
        ),
        (
            "seed-timeouts",
            Program::new(cfg(1, 3, 3, false), 1, 3)
                .handshake(0)
                .handshake(1)
                .fragment(0, 7, 0, 3, b"abcdefgh")
                .advance_ms(50)
                .keepalive(0)
                .advance_ms(100)
                .advance_ms(1000)
                .advance_100ms(1300)
                .handshake(0)
                .0,
        ),
        (
            "seed-strangers",
            Program::new(cfg(4, 4, 0, false), 8, 4)
                .stranger(0, &[0, 5, 0, 2, 1, 2])
                .stranger(1, &hello)
                .stranger(2, &[0, 3, 0, 0, 0, 10, 0, 0])
                .stranger(2, &[0, 6, 0, 10, 0, 0, 0, 1, 0, 0, 0, 2, 9, 9])
                .raw(0, &[0, 7, 0, 4, 1, 2, 3, 4])
                .raw(0, &hello)
                .0,
        ),
        (
            "seed-replay",
            Program::new(cfg(4, 4, 0, false), 0, 4)
                .handshake(0)
                .handshake(1)
                .send(0, 20)
                .replay(0, 0)
                .replay(1, 0)
                .replay(2, 0)
                .replay(3, 4 | (1 << 3))
                .replay(4, 6)
                .replay(6, 0)
                .replay(7, 0)
                .0,
        ),
        (
            "seed-crafted",
            Program::new(cfg(0, 4, 0, false), 0, 2)
                .handshake(0)
                .session_key(1, 0, &[])
                .crafted(1, 0, 1, true, b"crafted!")
                .crafted(1, 0, 1, true, b"again...")
                .crafted(1, 0, 2, false, &[1, 2, 0, 0])
                .crafted(1, 4, 3, false, &[])
                .crafted(1, 0, 900, true, &[7; 300])
                .crafted(1, 5, 4, false, &[])
                .session_key(2, 1, b"bad token")
                .session_key(2, 3, &[])
                .0,
        ),
        (
            "seed-admin",
            Program::new(cfg(4, 4, 1, false), 0, 4)
                .handshake(0)
                .handshake(1)
                .kick(0)
                .kick_id("10.0.0.2:4001")
                .kick_id("nonsense")
                .handshake(0)
                .handshake(1)
                .shutdown()
                .send(0, 4)
                .0,
        ),
        (
            "seed-fragments-raw",
            Program::new(cfg(0, 4, 0, false), 1, 1)
                .handshake(0)
                .fragment(0, 1, 0, 2, b"\x00\x05\x00\x10")
                .fragment(0, 1, 1, 2, &[0; 16])
                .fragment(0, 2, 1, 2, b"abcd")
                .fragment(0, 2, 1, 2, b"abcd")
                .fragment(0, 3, 5, 2, b"abcd")
                .fragment(0, 4, 0, 200, &[1; 40])
                .fragment(0, 5, 0, 1, b"\x00\x06\x00\x00")
                .advance_ms(800)
                .0,
        ),
    ]
}

fn reassembly_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Small insert: [op(0|owner<<2), msg&3, index&7 | (count-1)<<3, len/3, fill].
    let small = |owner: u8, msg: u8, index: u8, count: u8, len3: u8| {
        vec![owner << 2, msg, index | ((count - 1) << 3), len3, 0x41]
    };
    let mut in_order = Vec::new();
    for i in 0..4 {
        in_order.extend(small(1, 0, i, 4, 2));
    }
    let mut shuffled = Vec::new();
    for i in [2, 0, 3, 1] {
        shuffled.extend(small(2, 1, i, 4, 10));
    }
    shuffled.extend(small(2, 2, 1, 3, 1));
    shuffled.extend(small(2, 2, 1, 3, 1)); // duplicate
    shuffled.extend(small(2, 3, 0, 2, 1));
    shuffled.extend(small(2, 3, 0, 5, 1)); // count mismatch
    let mut limits = Vec::new();
    for m in 0..4 {
        limits.extend(small(3, m, 0, 8, 60));
    }
    limits.extend([2 | 4, 0x03, 0xE8]); // advance 1000 ms and expire
    limits.extend(small(0, 0, 0, 1, 255)); // too large single
    limits.extend([3 | (3 << 2)]); // remove owner 3
    let mut wide = vec![1 | (4 << 2)];
    wide.extend(0xDEAD_BEEFu32.to_be_bytes());
    wide.extend(0u16.to_be_bytes());
    wide.extend(u16::MAX.to_be_bytes());
    wide.extend([0, 0x10]);
    wide.extend([2, 0, 10]); // advance without expiring
    vec![
        ("seed-in-order", in_order),
        ("seed-shuffled", shuffled),
        ("seed-limits", limits),
        ("seed-wide", wide),
    ]
}

fn inner_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::wire::tlv::{put, put_u8};
    use crate::wire::{inner::*, put_seq};
    let build = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = Vec::new();
        f(&mut v);
        v
    };
    vec![
        (
            "seed-data",
            build(&|v| {
                put_seq(v, 1);
                put(v, BODY, b"hello");
            }),
        ),
        (
            "seed-relayed",
            build(&|v| {
                put_seq(v, 7);
                put(v, SENDER_ID, b"10.0.0.1:4000");
                put(v, BODY, b"hi");
            }),
        ),
        (
            "seed-welcome",
            build(&|v| {
                put_seq(v, 1);
                put(v, CLIENT_ID, b"127.0.0.1:5000");
            }),
        ),
        (
            "seed-left",
            build(&|v| {
                put_seq(v, 3);
                put(v, PEER_LEFT, b"10.0.0.2:4001");
                put_u8(v, REASON, 2);
                put(v, PEER_JOINED, b"x");
                put(v, SERVER_CLOSING, b"");
                put(v, 0x0109, b"future");
            }),
        ),
        (
            "seed-dup",
            build(&|v| {
                put_seq(v, 1);
                put_seq(v, 2);
            }),
        ),
        ("seed-noseq", build(&|v| put(v, BODY, b"x"))),
        (
            "seed-badreason",
            build(&|v| {
                put_seq(v, 1);
                put(v, REASON, b"");
            }),
        ),
        ("seed-trailing", vec![1, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
    ]
}

/// Real datagrams of both directions from a sans-IO relay and two clients.
fn tlv_seeds() -> Vec<(String, Vec<u8>)> {
    use crate::session::key::ServerKey;
    use crate::Config;
    use crate::{ClientCore, ClientOptions};
    use crate::{Relay, Transmits};
    use std::net::SocketAddr;
    use std::time::Instant;

    let now = Instant::now();
    let config = Config {
        max_datagram: 548,
        ..Config::default()
    };
    let mut relay = Relay::new(
        config,
        ServerKey::generate().unwrap(),
        now,
        1_700_000_000,
        [0x5e; 32],
    );
    let addrs: Vec<SocketAddr> = (0..2)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i)))
        .collect();
    let mut clients: Vec<ClientCore> = (0..2)
        .map(|i| {
            ClientCore::new(
                ClientOptions {
                    max_datagram: 200,
                    ..ClientOptions::default()
                },
                now,
                1_700_000_000,
                [i; 32],
            )
        })
        .collect();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    // Deliver until quiet: client datagrams to the relay, relay datagrams to clients.
    let mut pump = |relay: &mut Relay, clients: &mut Vec<ClientCore>, from: usize, d: Vec<u8>| {
        let mut queue = vec![(from, d)];
        while let Some((i, d)) = queue.pop() {
            seen.push(d.clone());
            let mut out = Transmits::new();
            relay.handle_datagram(now, addrs[i], &d, &mut out);
            for (dst, d) in out.iter() {
                seen.push(d.to_vec());
                // The downlink: these clients ask for GROUP, nobody listens.
                let Some(j) = addrs.iter().position(|a| *a == dst) else {
                    continue;
                };
                let mut replies = Vec::new();
                let mut events = Vec::new();
                clients[j]
                    .handle_datagram(now, d, &mut replies, &mut events)
                    .unwrap();
                queue.extend(replies.into_iter().map(|r| (j, r)));
            }
        }
    };
    for i in 0..2 {
        let h = clients[i].hello();
        pump(&mut relay, &mut clients, i, h);
    }
    for (i, body) in [(0, &b"short"[..]), (1, &[b'x'; 500][..])] {
        let mut out = Vec::new();
        clients[i].send(body, &mut out);
        for d in out {
            pump(&mut relay, &mut clients, i, d);
        }
    }
    let mut out = Vec::new();
    clients[0].keepalive(&mut out);
    clients[1].bye(&mut out);
    for d in out {
        pump(&mut relay, &mut clients, 0, d);
    }
    seen.push(crate::wire::reject_datagram(crate::wire::RejectReason::BadCookie).to_vec());
    seen.sort();
    seen.dedup();
    // Keep one datagram per leading type (and length class) to stay small.
    let mut keep: Vec<(String, Vec<u8>)> = Vec::new();
    let mut classes = std::collections::HashSet::new();
    for d in seen {
        let kind = u16::from_be_bytes([d[0], d[1]]);
        if classes.insert((kind, d.len() > 100)) {
            keep.push((format!("seed-type{kind:04x}-{}", d.len()), d));
        }
    }
    keep.push(("seed-truncated".into(), vec![0, 5, 0, 9, 1, 2]));
    keep.push(("seed-trailing".into(), vec![0, 5, 0, 1, 1, 0, 0]));
    keep
}

#[test]
#[ignore = "writes the seed files into fuzz/corpus; run by hand"]
fn generate_seeds() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), data).unwrap();
    };
    for (name, d) in tlv_seeds() {
        write("tlv", &name, &d);
        // Op 4: the datagram as raw bytes from client 0's address.
        let d = &d[..d.len().min(510) & !1];
        let program = [&[4, 0, 4, 4, (d.len() / 2) as u8][..], d].concat();
        write("core", &format!("raw-{name}"), &program);
    }
    for (name, d) in inner_seeds() {
        write("inner", name, &d);
    }
    for (name, d) in reassembly_seeds() {
        write("reassembly", name, &d);
    }
    for (name, d) in core_seeds().into_iter().chain(core_v2_seeds()) {
        write("core", name, &d);
    }
}
