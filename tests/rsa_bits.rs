//! `--rsa-bits` and key files of 2048, 3072 and 4096 bits: the relay
//! generates, stores, reloads and decrypts with each size.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::*;

fn fingerprint_logged(server: &Server) -> String {
    let line = server.find_log("fingerprint (sha256)").unwrap();
    line.rsplit(' ').next().unwrap().to_string()
}

#[test]
fn a_4096_bit_key_end_to_end_and_kept_across_restarts() {
    let dir = std::env::temp_dir().join(format!("mcrelay-rsa-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let key = key.to_str().unwrap();
    let server = Server::start(&["--rsa-bits", "4096", "--key-file", key]);
    assert!(
        server
            .find_log("server key RSA-4096, at most 25 decryptions/s")
            .is_some(),
        "{}",
        server.log_text()
    );
    let fp = fingerprint_logged(&server);
    // Two clients handshake against it (a 512-byte SESSION_KEY) and talk.
    let mut a = server.client();
    let mut b = server.client();
    drain(&mut a, std::time::Duration::from_millis(300));
    a.send(b"over a 4096-bit handshake").unwrap();
    expect_message(&mut b, b"over a 4096-bit handshake");
    assert_eq!(a.fingerprint(), Some(fp.as_str()));
    drop(server);

    // The file keeps its size whatever --rsa-bits says now.
    let server = Server::start(&["--rsa-bits", "2048", "--key-file", key]);
    assert_eq!(fingerprint_logged(&server), fp);
    assert!(server.find_log("server key RSA-4096").is_some());
    let mut c = server.client();
    c.send(b"again").unwrap();
    drop(server);
    let out = Command::new(bin())
        .args(["fingerprint", "--key-file", key])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), fp);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_3072_bit_key_in_memory_with_an_explicit_budget() {
    let server = Server::start(&["--rsa-bits", "3072", "--rsa-rate", "90"]);
    assert!(
        server
            .find_log("server key RSA-3072, at most 90 decryptions/s")
            .is_some(),
        "{}",
        server.log_text()
    );
    let mut a = server.client();
    let mut b = server.client();
    drain(&mut a, std::time::Duration::from_millis(300));
    b.send(b"3072").unwrap();
    expect_message(&mut a, b"3072");
}

#[test]
fn other_sizes_are_refused() {
    for bits in ["1024", "8192", "2047"] {
        let out = Command::new(bin())
            .args(["serve", "--rsa-bits", bits, "--print-config"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("2048, 3072 or 4096"), "{err}");
    }
}
