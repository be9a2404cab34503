//! Byte compatibility with a third-party implementation: the Python client
//! in interop/python (written from the spec with only `cryptography`)
//! talks to Rust clients through the real Rust server.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use common::*;

fn python() -> Command {
    let mut c = Command::new("python3");
    c.env(
        "PYTHONPATH",
        concat!(env!("CARGO_MANIFEST_DIR"), "/interop/python"),
    );
    c
}

/// A `python3 -m mcrelay_client listen` child whose stdout lines arrive on a channel.
struct Listener {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Listener {
    fn start(server: &Server, extra: &[&str]) -> Listener {
        let port = server.port.to_string();
        let mut child = python()
            .args([
                "-m",
                "mcrelay_client",
                "listen",
                "--server",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 must be installed (with cryptography)");
        let lines = line_channel(child.stdout.take().unwrap());
        Listener { child, lines }
    }

    fn expect_line(&self, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("python listener never printed the expected line; printed {seen:?}");
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let py = Listener::start(&server, &[]);
    let py_id = match expect_event(&mut rust, "python join", |e| {
        matches!(e, mcrelay::ClientEvent::PeerJoined(_))
    }) {
        mcrelay::ClientEvent::PeerJoined(id) => id,
        _ => unreachable!(),
    };
    let rust_id = rust.id().unwrap().to_string();

    rust.send(b"hello from rust").unwrap();
    py.expect_line(|l| l == format!("[{rust_id}] hello from rust"));

    // 20 KiB from Rust: fragmented by the server, reassembled by Python.
    let big = "r".repeat(20 * 1024);
    rust.send(big.as_bytes()).unwrap();
    py.expect_line(|l| l == format!("[{rust_id}] {big}"));

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
    py.expect_line(|l| l == format!("* {rust_id} left (bye)"));
}

#[test]
fn python_client_handshakes_through_the_multicast_group_with_a_pin_and_token() {
    let dir = std::env::temp_dir().join(format!("mcrelay-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "open sesame\n").unwrap();
    let token = token.to_str().unwrap();
    let server = Server::start(&["--token-file", token]);
    let fp = server.find_log("fingerprint (sha256)").unwrap();
    let fp = fp.rsplit(' ').next().unwrap();
    let opts = mcrelay::ClientOptions {
        access_token: Some(b"open sesame".to_vec()),
        ..Default::default()
    };
    let mut rust = server.client_with(opts);
    rust.connect(DEADLINE).unwrap();
    let py = Listener::start(
        &server,
        &[
            "--group",
            "239.255.0.77",
            "--token-file",
            token,
            "--pin",
            fp,
        ],
    );
    expect_event(&mut rust, "python join", |e| {
        matches!(e, mcrelay::ClientEvent::PeerJoined(_))
    });
    rust.send(b"pinned").unwrap();
    py.expect_line(|l| l.ends_with("] pinned"));

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
