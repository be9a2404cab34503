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
                let j = addrs.iter().position(|a| *a == dst).unwrap();
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
    for (name, d) in core_seeds() {
        write("core", name, &d);
    }
}
