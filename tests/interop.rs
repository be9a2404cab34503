//! Byte compatibility with a third-party implementation: the Python client
//! in interop/python (written from the spec with only `cryptography`)
//! talks to Rust clients through the real Rust server.

#[path = "support/cli.rs"]
mod cli;
mod common;
#[path = "support/proxy.rs"]
mod proxy;

use std::process::Command;
use std::time::{Duration, Instant};

use cli::*;
use common::*;
use mcrelay::wire::{reject_datagram, RejectReason};
use mcrelay::{ClientEvent, ServerKey};
use proxy::Proxy;

/// `python3 -m mcrelay_client listen --server 127.0.0.1:PORT EXTRA`.
fn py_listen(server: &Server, extra: &[&str]) -> Cli {
    let target = unicast(server);
    let mut args = vec!["listen", "--server", &target];
    args.extend_from_slice(extra);
    Cli::python(&args)
}

#[test]
fn python_protocol_selftest_passes() {
    let out = python()
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/interop/python/selftest.py"
        ))
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn python_and_rust_clients_relay_both_ways_through_the_rust_server() {
    let server = Server::start(&[]);
    let mut rust = server.client();
    let mut py = py_listen(&server, &[]);
    let py_id = match expect_event(&mut rust, "python join", |e| {
        matches!(e, mcrelay::ClientEvent::PeerJoined(_))
    }) {
        mcrelay::ClientEvent::PeerJoined(id) => id,
        _ => unreachable!(),
    };
    let rust_id = rust.id().unwrap().to_string();

    rust.send(b"hello from rust").unwrap();
    py.expect_line(&format!("[{rust_id}] hello from rust"));

    // 20 KiB from Rust: fragmented by the server, reassembled by Python.
    let big = "r".repeat(20 * 1024);
    rust.send(big.as_bytes()).unwrap();
    py.expect_line(&format!("[{rust_id}] {big}"));

    // Python → Rust, small and 20 KiB (fragmented by Python, reassembled by the server).
    let port = format!("127.0.0.1:{}", server.port);
    for msg in ["hello from python".to_string(), "p".repeat(20 * 1024)] {
        let st = python()
            .args(["-m", "mcrelay_client", "send", "--server", &port, &msg])
            .status()
            .unwrap();
        assert!(st.success());
        let sender = expect_message(&mut rust, msg.as_bytes());
        assert!(
            sender.starts_with("127.0.0.1:") && sender != py_id,
            "a separate python sender"
        );
    }
    rust.bye().unwrap();
    py.expect_line(&format!("* {rust_id} left (bye)"));
}

#[test]
fn python_client_handshakes_through_the_multicast_group_with_a_pin_and_token() {
    let dir = std::env::temp_dir().join(format!("mcrelay-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "open sesame\n").unwrap();
    let token = token.to_str().unwrap();
    let server = Server::start(&["--token-file", token]);
    let fp = fingerprint_of(&server);
    let opts = mcrelay::ClientOptions {
        access_token: Some(b"open sesame".to_vec()),
        ..Default::default()
    };
    let mut rust = server.client_with(opts);
    rust.connect(DEADLINE).unwrap();
    let mut py = py_listen(
        &server,
        &[
            "--group",
            "239.255.0.77",
            "--token-file",
            token,
            "--pin",
            &fp,
        ],
    );
    expect_event(&mut rust, "python join", |e| {
        matches!(e, mcrelay::ClientEvent::PeerJoined(_))
    });
    // Through the group it asks for group mode: what the relay multicasts
    // before the listener joined the downlink (its WELCOME may still be on
    // the way when the join notice arrives here) never reaches it.
    let end = Instant::now() + DEADLINE;
    while !py.stderr_text().contains("group mode (downlink ") {
        assert!(Instant::now() < end, "{}", py.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    rust.send(b"pinned").unwrap();
    py.expect("the pinned message", |l| l.ends_with("] pinned"));

    // A wrong pin and a wrong token both fail with a one-line error and exit 1.
    let port = format!("127.0.0.1:{}", server.port);
    let wrong_pin = "0".repeat(64);
    let out = python()
        .args([
            "-m",
            "mcrelay_client",
            "send",
            "--server",
            &port,
            "--token-file",
            token,
            "--pin",
            &wrong_pin,
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = python()
        .args(["-m", "mcrelay_client", "send", "--server", &port, "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "no token: refused");
    let _ = std::fs::remove_dir_all(dir);
}

/// The Python client under forged answers (protocol v2 §7): every HELLO of
/// a pinned listener is answered first by a rogue key, forged REJECT 1 and
/// 2 arrive from the server's address, and the relay restarts on the same
/// port. It waits out the rogue keys, handshakes again at most once a
/// second and keeps receiving; it exits only when the relay, back with an
/// access token, refuses its new handshakes.
#[test]
fn python_client_treats_rejects_as_hints_and_waits_out_rogue_keys() {
    let dir = std::env::temp_dir().join(format!("mcrelay-interop-hints-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let key = key.to_str().unwrap();
    let server = Server::start(&["--key-file", key]);
    let port = server.port;
    let fp = fingerprint_of(&server);
    let rogue = ServerKey::generate().unwrap();
    let proxy = Proxy::start(server.addr());
    proxy.set_rogue_key(Some(rogue.public_der()));
    let mut rust = server.client();
    rust.set_auto_reconnect(Some(Duration::from_secs(1)));
    rust.set_keepalive(Some(Duration::from_millis(300)));
    let target = proxy.addr.to_string();
    let mut py = Cli::python(&[
        "listen",
        "--server",
        &target,
        "--pin",
        &fp,
        "--keepalive",
        "0.3",
    ]);
    expect_event(&mut rust, "python's join", |e| {
        matches!(e, ClientEvent::PeerJoined(_))
    });
    let rust_id = rust.id().unwrap().to_string();

    // Forged REJECTs, 20 a second for 3 s: one re-handshake a second at most.
    let hellos = proxy.hellos();
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(3) {
        let reason = [RejectReason::UnknownSession, RejectReason::AuthFailed][(n % 2) as usize];
        assert!(proxy.inject(&reject_datagram(reason)));
        n += 1;
        let _ = rust.recv(Duration::from_millis(50)).unwrap();
    }
    let hellos = proxy.hellos() - hellos;
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        hellos as f64 <= secs + 2.0,
        "{hellos} HELLOs in {secs:.1} s"
    );
    py.expect("the loss notice", |l| l.starts_with("* session lost ("));
    py.expect("the new session", |l| l.starts_with("* reconnected as "));
    rust.send(b"after forged rejects").unwrap();
    py.expect_line(&format!("[{rust_id}] after forged rejects"));

    // A restart: the REJECT 1 answering a keepalive is real this time.
    drop(server);
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--iface", "127.0.0.1", "--admin-port", "0"])
        .args(["--key-file", key, "--port", &port.to_string()]);
    let server = Server::spawn(cmd);
    let end = Instant::now() + DEADLINE;
    while server.admin().ok("clients").len() < 2 {
        assert!(Instant::now() < end, "not rejoined: {:?}", py.seen);
        let _ = rust.recv(Duration::from_millis(100)).unwrap();
    }
    rust.send(b"after the restart").unwrap();
    py.expect_line(&format!("[{rust_id}] after the restart"));
    assert!(
        py.child.try_wait().unwrap().is_none(),
        "{}",
        py.stderr_text()
    );
    println!("python: {n} forged REJECTs in {secs:.1} s, {hellos} HELLOs");

    // A pinned one-shot send through the rogue waits it out too.
    let proxy2 = Proxy::start(server.addr());
    proxy2.set_rogue_key(Some(rogue.public_der()));
    let out = python()
        .args(["-m", "mcrelay_client", "send", "--server"])
        .args([&proxy2.addr.to_string(), "--pin", &fp, "pinned via a rogue"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_message(&mut rust, b"pinned via a rogue");

    // Only a real refusal stops it: back with an access token it lacks.
    let token = dir.join("token");
    std::fs::write(&token, "sesame\n").unwrap();
    drop(server);
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--iface", "127.0.0.1", "--admin-port", "0"])
        .args(["--key-file", key, "--port", &port.to_string()])
        .args(["--token-file", token.to_str().unwrap()]);
    let _server = Server::spawn(cmd);
    let (status, stderr) = py.wait_with_stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("AUTH_FAILED"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

fn fingerprint_of(server: &Server) -> String {
    let line = server.find_log("fingerprint (sha256)").unwrap();
    line.rsplit(' ').next().unwrap().to_string()
}
