//! Limits enforced before anything goes wrong: `serve` flags outside their
//! ranges fail at start, and a message body over the protocol's maximum is
//! an error in the library and the CLI, never a panic.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mcrelay::MAX_BODY_LEN;

/// Runs the binary to its exit (killed after DEADLINE: a flag that should
/// have been refused would leave a relay running). Returns success and stderr.
fn run(args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin); // a refusal may come before stdin is read
    drop(input);
    let end = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("mcrelay {args:?} still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn out_of_range_serve_flags_fail_at_start_naming_the_flag() {
    for (flag, value) in [
        ("--client-timeout", "0"),
        ("--client-timeout", "86401"),
        ("--reassembly-age", "0"),
        ("--reassembly-age", "3601"),
        ("--rsa-rate", "0"),
        ("--handshake-rate", "0"),
        ("--handshake-burst", "0"),
        ("--max-clients", "0"),
        ("--reassembly-partials", "0"),
        ("--reassembly-total-bytes", "0"),
        ("--admin-max-sessions", "0"),
        ("--log-ring", "0"),
        ("--recv-buffer", "0"),
    ] {
        let args = ["serve", "--port", "0", "--admin-port", "0", flag, value];
        let (ok, err) = run(&args, b"");
        assert!(!ok, "{flag} {value} was accepted");
        assert_eq!(err.lines().count(), 1, "{flag} {value}: {err}");
        assert!(
            err.contains(&format!("{flag} {value} is outside")),
            "{flag} {value}: {err}"
        );
    }
    // The bounds themselves are fine.
    let server = Server::start(&["--client-timeout", "86400", "--reassembly-age", "1"]);
    server.client();
}

#[test]
fn bodies_over_the_maximum_are_an_error_in_the_library() {
    assert_eq!(
        MAX_BODY_LEN, 49_009,
        "the derivation in client/udp.rs changed"
    );
    let server = Server::start(&[]);
    let mut a = server.client();
    let mut b = server.client();
    drain(&mut a, Duration::from_millis(300));
    // The largest body goes through the relay whole.
    let largest = vec![b'm'; MAX_BODY_LEN];
    assert!(a.send(&largest).unwrap());
    expect_message(&mut b, &largest);
    for len in [MAX_BODY_LEN + 1, 65_535, 65_536, 1 << 20] {
        let err = a.send(&vec![b'x'; len]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{len}: {err}");
        assert!(err.to_string().contains("49009"), "{err}");
    }
    a.send(b"still fine").unwrap();
    expect_message(&mut b, b"still fine");
}

#[test]
fn bodies_over_the_maximum_are_an_error_in_the_cli() {
    let server = Server::start(&[]);
    let mut watcher = server.client();
    let addr = server.addr().to_string();
    let over = "x".repeat(MAX_BODY_LEN + 1);
    for (args, stdin) in [
        (vec!["send", "--server", &addr, "--", &over], Vec::new()),
        (vec!["send", "--server", &addr], vec![b'y'; 1 << 20]),
    ] {
        let (ok, err) = run(&args, &stdin);
        assert!(!ok, "accepted: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("at most 49009"), "{err}");
    }
    // The largest message goes out.
    let largest = vec![b'z'; MAX_BODY_LEN];
    let (ok, err) = run(&["send", "--server", &addr], &largest);
    assert!(ok, "{err}");
    expect_message(&mut watcher, &largest);
}
