//! The relay's memory, read from /proc, so a regression shows up in
//! `cargo test`. The limits are for the stripped release binary (idle at
//! most 4 MiB, at most 8 MiB with 1000 clients); `cargo test` runs the
//! debug build, whose code pages alone are larger, so it checks the part
//! that does not depend on the build (anonymous memory: heap and stacks)
//! and the whole VmRSS only when the tests run against a release build.
//! `mcrelay bench --footprint` checks the release binary itself: its size,
//! idle RSS and RSS with 1000 clients.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Idle VmRSS of the release binary at most.
const MAX_IDLE_RSS_KIB: u64 = 4 * 1024;
/// Heap and stacks of an idle relay at most (release: ~0.45 MiB, debug:
/// ~0.65 MiB): the 4 MiB budget less the ~2.6 MiB of code and libraries.
const MAX_IDLE_ANON_KIB: u64 = 1024;
/// Growth per registered client at most: (8 MiB - 4 MiB) / 1000 clients
/// for a release build (measured ~1.3 KiB). A debug build's RSA
/// temporaries leave the heap more fragmented (measured ~4 KiB per client
/// over 100 clients), so it gets twice the room.
const MAX_KIB_PER_CLIENT: f64 = if cfg!(debug_assertions) { 8.0 } else { 4.0 };
/// Clients the growth is measured over: enough to average out the
/// allocator's step size, few enough for a debug build's RSA (~20-50 ms
/// per handshake).
const CLIENTS: usize = 100;

/// Waits until the server has used no CPU for a few polls (its key made,
/// its join notices sent).
fn settle(server: &Server) {
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.child.id())).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        f[0] + f[1]
    };
    let end = Instant::now() + DEADLINE;
    let (mut last, mut quiet) = (cpu(), 0);
    while quiet < 3 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu();
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
}

#[test]
fn an_idle_relay_is_small() {
    let server = Server::start(&["--log-level", "info"]);
    settle(&server);
    let (rss, anon) = (server.rss_kib(), server.status_kib("RssAnon:"));
    eprintln!("idle relay: VmRSS {rss} KiB, RssAnon {anon} KiB");
    assert!(
        anon <= MAX_IDLE_ANON_KIB,
        "idle heap and stacks {anon} KiB > {MAX_IDLE_ANON_KIB} KiB"
    );
    if !cfg!(debug_assertions) {
        assert!(
            rss <= MAX_IDLE_RSS_KIB,
            "idle VmRSS {rss} KiB > {MAX_IDLE_RSS_KIB} KiB"
        );
    }
}

#[test]
fn each_registered_client_costs_little_memory() {
    let server = Server::start(&[
        "--log-level",
        "info",
        "--rsa-rate",
        "10000",
        // All the clients come from 127.0.0.1.
        "--max-clients-per-ip",
        "0",
    ]);
    // The first handshake pages in code and sizes buffers once: measure
    // from there, so only what grows with the client count is counted.
    let mut clients = vec![server.client()];
    settle(&server);
    let before = server.status_kib("RssAnon:");
    clients.extend((1..CLIENTS).map(|_| server.client()));
    settle(&server);
    let after = server.status_kib("RssAnon:");
    let per_client = after.saturating_sub(before) as f64 / (CLIENTS - 1) as f64;
    eprintln!(
        "{CLIENTS} clients: RssAnon {before} -> {after} KiB, {per_client:.2} KiB per client, VmRSS {} KiB",
        server.rss_kib()
    );
    assert!(
        per_client <= MAX_KIB_PER_CLIENT,
        "{per_client:.2} KiB per client > {MAX_KIB_PER_CLIENT} (1000 clients would not fit in 8 MiB)"
    );
    assert_eq!(admin_clients(&server), CLIENTS);
}

/// Registered clients as the admin channel counts them.
fn admin_clients(server: &Server) -> usize {
    server.admin().stat("clients") as usize
}
