//! Protocol v2 interop with the Python client (interop/python, written from
//! the spec with only `cryptography`) through the real Rust server: group
//! mode both ways with a Rust member (messages reach Python as signed
//! GROUP_DATA on its downlink), a Python client forced to v1 in the same
//! group, a relay with a 4096-bit key, and a named Python client whose
//! credential is revoked.

#[path = "support/cli.rs"]
mod cli;
mod common;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cli::*;
use common::*;
use mcrelay::credentials::token_digest;
use mcrelay::{hex, ClientEvent};

/// A scratch directory of this test process, removed by the test.
fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mcrelay-pyv2-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Polls a Python listener's stderr for its `connected as ID, ...` line;
/// returns ID and the whole line.
fn py_connected(py: &Cli) -> (String, String) {
    let end = Instant::now() + DEADLINE;
    loop {
        let err = py.stderr_text();
        if let Some(line) = err.lines().find(|l| l.starts_with("connected as ")) {
            let id = line["connected as ".len()..]
                .split(',')
                .next()
                .unwrap()
                .to_string();
            return (id, line.to_string());
        }
        assert!(Instant::now() < end, "python never connected: {err}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The mode the admin `clients` command shows for `id` (`v1`, `v2` or
/// `group`), polled until the client is listed.
fn admin_mode(server: &Server, id: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let clients = server.admin().ok("clients");
        let line = clients.iter().find(|l| l.starts_with(&format!("{id} ")));
        if let Some(mode) = line.and_then(|l| l.rsplit_once(" mode=")) {
            return mode.1.to_string();
        }
        assert!(Instant::now() < end, "{id} not listed: {clients:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `python3 -m mcrelay_client send --server 127.0.0.1:PORT EXTRA MESSAGE`, to completion.
fn py_send(server: &Server, extra: &[&str], message: &str) {
    let out = python()
        .args(["-m", "mcrelay_client", "send", "--server", &unicast(server)])
        .args(extra)
        .arg(message)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGTERMs a Python listener and returns its `downlink:` counters.
fn py_downlink_stats(py: &mut Cli) -> Vec<(String, u64)> {
    py.signal(SIGTERM);
    let (status, stderr) = py.wait_with_stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("downlink: "))
        .unwrap_or_else(|| panic!("no downlink counters: {stderr}"));
    line.split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {stats:?}"))
        .1
}

/// A Python member reaching the relay through its multicast group (which
/// asks for group mode by default) and a Rust member: messages from Rust,
/// small and 20 KiB (fragmented on the downlink), reach Python as signed
/// GROUP_DATA; Python's messages, sent in group mode too, reach Rust.
#[test]
fn python_and_rust_group_members_relay_both_ways_through_signed_group_data() {
    let server = Server::start(&[]);
    let mut rust = server.client();
    assert!(rust.downlink().is_some(), "the Rust client is a member");
    let rust_id = rust.id().unwrap().to_string();
    let port = server.port.to_string();
    let target = format!("127.0.0.1:{port}");
    let mut py = Cli::python(&[
        "listen",
        "--server",
        &target,
        "--group",
        "239.255.0.77",
        "--keepalive",
        "2",
    ]);
    let (py_id, line) = py_connected(&py);
    assert!(
        line.contains("protocol v2, group mode (downlink 239.255.0.77:"),
        "{line}"
    );
    assert_eq!(admin_mode(&server, &py_id), "group");
    expect_event(
        &mut rust,
        "python's join",
        |e| matches!(e, ClientEvent::PeerJoined(id) if *id == py_id),
    );
    let sent_before = server.admin().stat("group_data_sent");

    rust.send(b"hello from rust").unwrap();
    py.expect_line(&format!("[{rust_id}] hello from rust"));
    let big = "r".repeat(20 * 1024);
    rust.send(big.as_bytes()).unwrap();
    py.expect_line(&format!("[{rust_id}] {big}"));
    // Both were sealed and signed once, as GROUP_DATA (the big one then
    // went out in fragments).
    assert!(server.admin().stat("group_data_sent") >= sent_before + 2);

    // Python → Rust from a one-shot group-mode sender, small and 20 KiB.
    for msg in ["hello from python".to_string(), "p".repeat(20 * 1024)] {
        py_send(&server, &["--group-mode"], &msg);
        let sender = expect_message(&mut rust, msg.as_bytes());
        assert!(sender.starts_with("127.0.0.1:") && sender != py_id);
        // The listener hears it too, through the group.
        py.expect(&format!("{} bytes from the sender", msg.len()), |l| {
            l == format!("[{sender}] {msg}")
        });
    }
    // Rust's leave rekeys the group: its PEER_LEFT goes out under a fresh
    // key that reached Python in its own session.
    let rekeys = server.admin().stat("rekeys");
    rust.bye().unwrap();
    py.expect_line(&format!("* {rust_id} left (bye)"));
    assert!(server.admin().stat("rekeys") > rekeys);

    let stats = py_downlink_stats(&mut py);
    // Rust's two messages, the sender's joins, messages and leaves, Rust's leave.
    assert!(stat(&stats, "opened") >= 8, "{stats:?}");
    for refused in ["bad_signature", "bad_token", "bad_inner", "replayed"] {
        assert_eq!(stat(&stats, refused), 0, "{refused}: {stats:?}");
    }
    println!("python downlink: {stats:?}");
}

/// One group, three kinds of members: a Python client forced to v1
/// (reaching the relay through the uplink group), a Python client in group
/// mode over unicast, and a Rust member. Everyone hears everyone.
#[test]
fn a_python_client_forced_to_v1_shares_the_group_with_python_and_rust_members() {
    let server = Server::start(&[]);
    let target = unicast(&server);
    let mut v1 = Cli::python(&[
        "listen",
        "--server",
        &target,
        "--group",
        "239.255.0.77",
        "--v1",
    ]);
    let (v1_id, v1_line) = py_connected(&v1);
    assert!(v1_line.contains("protocol v1, per recipient"), "{v1_line}");
    let mut member = Cli::python(&["listen", "--server", &target, "--group-mode"]);
    let (member_id, member_line) = py_connected(&member);
    assert!(
        member_line.contains("protocol v2, group mode"),
        "{member_line}"
    );
    // A unicast Python client without the flag stays outside group mode.
    let mut plain = Cli::python(&["listen", "--server", &target]);
    let (plain_id, plain_line) = py_connected(&plain);
    assert!(
        plain_line.contains("protocol v2, per recipient"),
        "{plain_line}"
    );
    let mut rust = server.client();
    let rust_id = rust.id().unwrap().to_string();
    assert_eq!(admin_mode(&server, &v1_id), "v1");
    assert_eq!(admin_mode(&server, &member_id), "group");
    assert_eq!(admin_mode(&server, &plain_id), "v2");
    assert_eq!(admin_mode(&server, &rust_id), "group");

    rust.send(b"from rust").unwrap();
    for py in [&mut v1, &mut member, &mut plain] {
        py.expect_line(&format!("[{rust_id}] from rust"));
    }
    for (flags, msg) in [
        (&["--v1"][..], "from a v1 sender"),
        (&["--group-mode"][..], "from a group sender"),
    ] {
        py_send(&server, flags, msg);
        let sender = expect_message(&mut rust, msg.as_bytes());
        for py in [&mut v1, &mut member, &mut plain] {
            py.expect_line(&format!("[{sender}] {msg}"));
        }
    }
    // The v1 listener leaves (it never held the group key); the rest go on.
    v1.signal(SIGTERM);
    assert!(v1.wait().success());
    expect_event(
        &mut rust,
        "the v1 client's leave",
        |e| matches!(e, ClientEvent::PeerLeft { id, .. } if *id == v1_id),
    );
    rust.send(b"after a leave").unwrap();
    member.expect_line(&format!("[{rust_id}] after a leave"));
    plain.expect_line(&format!("[{rust_id}] after a leave"));
    let stats = py_downlink_stats(&mut member);
    assert!(stat(&stats, "opened") >= 4, "{stats:?}");
}

/// A Python member whose downlink hears nothing (its join is pointed at a
/// group the relay never sends to) probes, gives group mode up by itself
/// and is served per recipient from then on, without losing its session.
#[test]
fn a_python_member_that_hears_nothing_on_the_downlink_falls_back_per_recipient() {
    const SCRIPT: &str = r#"
import sys, time
from mcrelay_client import Client, client, events
join = client._join_downlink
# A group nobody sends to: multicast "does not reach" this member.
client._join_downlink = lambda host, port, v4, index: join("239.255.0.99", port, v4, index)
c = Client(server=("127.0.0.1", int(sys.argv[1])), group_mode=True, timeout=10)
c.connect()
print("mode", c.mode, c.client_id, flush=True)
end = time.monotonic() + 30
reported = False
while time.monotonic() < end:
    ev = c.recv(0.2)
    if isinstance(ev, events.DownlinkSilent):
        print("silent", ev.addr, flush=True)
    elif isinstance(ev, events.Message):
        print(f"[{ev.sender}] {ev.body.decode()}", flush=True)
        break
    if c.mode == "v2" and not c.rehandshaking and not reported:
        print("mode v2", c.client_id, flush=True)
        reported = True
print("stats", c.downlink_stats["probes"], c.mode, flush=True)
"#;
    let server = Server::start(&[]);
    let mut rust = server.client();
    let rust_id = rust.id().unwrap().to_string();
    let mut cmd = python();
    cmd.args(["-c", SCRIPT, &server.port.to_string()]);
    let mut py = Cli::spawn(cmd);
    let line = py.expect("the group mode line", |l| l.starts_with("mode "));
    let py_id = line.rsplit(' ').next().unwrap().to_string();
    assert!(line.starts_with("mode group "), "{line}");
    let silent = py.expect("the fallback", |l| l.starts_with("silent "));
    assert!(silent.starts_with("silent 239.255.0.77:"), "{silent}");
    // Printed once the handshake without GROUP was welcomed.
    py.expect("per recipient", |l| l == format!("mode v2 {py_id}"));
    // Same session, same id, now served one DATA at a time.
    assert_eq!(admin_mode(&server, &py_id), "v2");
    rust.send(b"per recipient now").unwrap();
    py.expect_line(&format!("[{rust_id}] per recipient now"));
    py.expect_line("stats 3 v2");
}

/// The bound handshake with a 4096-bit relay key: a 512-byte SESSION_KEY2
/// ciphertext from Python, then group mode as usual; and a v1 sender.
#[test]
fn a_python_client_speaks_v2_to_a_relay_with_a_4096_bit_key() {
    let server = Server::start(&["--rsa-bits", "4096"]);
    assert!(server.find_log("server key RSA-4096").is_some());
    let mut rust = server.client();
    let rust_id = rust.id().unwrap().to_string();
    let mut py = Cli::python(&["listen", "--server", &unicast(&server), "--group-mode"]);
    let (py_id, line) = py_connected(&py);
    assert!(line.contains("protocol v2, group mode"), "{line}");
    assert_eq!(admin_mode(&server, &py_id), "group");
    rust.send(b"over 4096 bits").unwrap();
    py.expect_line(&format!("[{rust_id}] over 4096 bits"));
    py_send(&server, &["--v1"], "v1 over 4096 bits");
    expect_message(&mut rust, b"v1 over 4096 bits");
}

/// A named Python client in group mode (its token as CREDENTIAL): known
/// by `NAME@address`, it hears the group; removing it from the clients
/// file and reloading ends its session, and the listener exits 1 saying so
/// instead of handshaking again.
#[test]
fn a_named_python_member_is_known_by_name_and_stops_when_revoked() {
    let dir = tempdir("named");
    let clients = dir.join("clients");
    let token = "py-member-token-0a1b2c3d4e5f";
    let write = |lines: &[(&str, &str)]| {
        let text: String = lines
            .iter()
            .map(|(n, t)| format!("{n} {} pubsub\n", hex(&token_digest(t.as_bytes()))))
            .collect();
        fs::write(&clients, text).unwrap();
        let mut perms = fs::metadata(&clients).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        fs::set_permissions(&clients, perms).unwrap();
    };
    let rust_token = "rust-member-token-9f8e7d6c5b4a";
    write(&[("pymember", token), ("rustmember", rust_token)]);
    let token_file = dir.join("token");
    fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut server = Server::start(&["--clients-file", clients.to_str().unwrap()]);
    let mut rust = server.client_with(mcrelay::ClientOptions {
        access_token: Some(rust_token.as_bytes().to_vec()),
        ..Default::default()
    });
    rust.connect(DEADLINE).unwrap();
    let mut py = Cli::python(&[
        "listen",
        "--server",
        &unicast(&server),
        "--group-mode",
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    let (py_id, line) = py_connected(&py);
    assert!(py_id.starts_with("pymember@127.0.0.1:"), "{line}");
    assert!(line.contains("group mode"), "{line}");
    rust.send(b"to a named member").unwrap();
    py.expect("the message", |l| l.ends_with("] to a named member"));

    write(&[("rustmember", rust_token)]);
    signal(&server, 1); // SIGHUP: reload the clients file
    let (status, stderr) = py.wait_with_stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("revoked"), "{stderr}");
    // The Rust member goes on under the rekeyed group.
    expect_event(
        &mut rust,
        "the revocation notice",
        |e| matches!(e, ClientEvent::PeerLeft { id, .. } if *id == py_id),
    );
    assert!(server.wait_exit(Duration::from_millis(10)).is_none());
    let _ = fs::remove_dir_all(dir);
}
