//! `mcrelay chat`, `send` and `listen` as users and scripts run them:
//! real processes talking through pipes, against the real server started by
//! tests/common, next to the Python client of interop/python. Everything is
//! on loopback; the multicast path is pinned to 127.0.0.1 with TTL 0.

#[path = "support/cli.rs"]
mod cli;
mod common;

use std::io::Write;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli::*;
use common::*;
use mcrelay::wire::LeaveReason;
use mcrelay::{ClientEvent, ClientOptions};

fn fingerprint_of(server: &Server) -> String {
    let line = server.find_log("fingerprint (sha256)").unwrap();
    line.rsplit(' ').next().unwrap().to_string()
}

/// A fresh directory for this test's files.
fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mcrelay-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn two_chats_and_a_python_client_talk_through_the_server() {
    let server = Server::start(&[]);
    let mut a = Cli::chat(&server, &[]);
    let a_id = a.connected_id();
    let mut b = Cli::chat(&server, &[]);
    let b_id = b.connected_id();
    a.expect_line(&format!("* {b_id} joined"));
    let port = unicast(&server);
    let mut py = Cli::python(&["listen", "--server", &port]);
    let py_join = a.expect("python's join", |l| l.ends_with(" joined"));
    b.expect_line(&py_join);

    a.type_line(b"hello from chat a");
    let from_a = format!("[{a_id}] hello from chat a");
    b.expect_line(&from_a);
    py.expect_line(&from_a);

    b.type_line(b"hello from chat b");
    let from_b = format!("[{b_id}] hello from chat b");
    a.expect_line(&from_b);
    py.expect_line(&from_b);

    let st = python()
        .args(["-m", "mcrelay_client", "send", "--server", &port])
        .arg("hello from python")
        .status()
        .unwrap();
    assert!(st.success());
    for c in [&mut a, &mut b] {
        c.expect("python's message", |l| {
            l.starts_with("[127.0.0.1:") && l.ends_with("] hello from python")
        });
    }

    // Untrusted bytes cannot garble the terminal: escaped, one line.
    a.type_line(b"caf\xe9 \x1b[31mred\x07 back\\slash");
    b.expect_line(&format!(
        "[{a_id}] caf\\xe9 \\x1b[31mred\\x07 back\\\\slash"
    ));

    // End of input says BYE and exits 0.
    b.close_stdin();
    assert!(b.wait().success());
    a.expect_line(&format!("* {b_id} left (bye)"));
    py.expect_line(&format!("* {b_id} left (bye)"));

    // So does Ctrl-C.
    a.signal(SIGINT);
    assert!(a.wait().success());
    py.expect_line(&format!("* {a_id} left (bye)"));
}

#[test]
fn twenty_kib_messages_cross_chat_in_both_directions() {
    let server = Server::start(&[]);
    let mut a = Cli::chat(&server, &[]);
    let a_id = a.connected_id();
    let mut b = Cli::chat(&server, &[]);
    b.connected_id();
    a.expect("b's join", |l| l.ends_with(" joined"));

    // Typed into chat: fragmented by the chat, reassembled by the server,
    // fragmented again for b and reassembled by b's chat.
    let big = "0123456789abcdef".repeat(20 * 1024 / 16);
    a.type_line(big.as_bytes());
    b.expect_line(&format!("[{a_id}] {big}"));

    // From the Python client (its own fragmentation) into a chat.
    let big_py = "p".repeat(20 * 1024);
    let st = python()
        .args(["-m", "mcrelay_client", "send", "--server"])
        .arg(unicast(&server))
        .arg(&big_py)
        .status()
        .unwrap();
    assert!(st.success());
    a.expect("python's 20 KiB", |l| l.ends_with(&format!("] {big_py}")));
}

#[test]
fn pin_accepted_and_pin_refused() {
    let server = Server::start(&[]);
    let fp = fingerprint_of(&server);
    let port = unicast(&server);

    let mut pinned = Cli::mcrelay(&["listen", "--server", &port, "--pin", &fp]);
    pinned.connected_id();
    pinned.signal(SIGTERM);
    let (st, err) = pinned.wait_with_stderr();
    assert!(st.success() && !err.contains("not pinned"), "{err}");

    // Pinning upper-case hex works too.
    let (st, _, err) = run(&["send", "--server", &port, "--pin", &fp.to_uppercase(), "x"]);
    assert!(st.success(), "{err}");

    let wrong = "ab".repeat(32);
    let (st, _, err) = run(&["send", "--server", &port, "--pin", &wrong, "x"]);
    assert!(!st.success());
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    assert!(err.contains(&fp) && err.contains(&wrong), "{err}");

    let mut chat = Cli::chat(&server, &["--pin", &wrong]);
    let (st, err) = chat.wait_with_stderr();
    assert!(!st.success());
    assert!(err.contains(&fp) && err.contains(&wrong), "{err}");

    // Unpinned: the fingerprint is shown so that the user can pin it.
    let (st, _, err) = run(&["send", "--server", &port, "x"]);
    assert!(st.success());
    assert!(err.contains(&format!("--pin {fp}")), "{err}");
}

#[test]
fn chat_recovers_by_itself_after_the_server_restarts_on_the_same_port() {
    let dir = tempdir("restart");
    let key = dir.join("key.pem");
    let key = key.to_str().unwrap();
    let server = Server::start(&["--key-file", key]);
    let port = server.port;
    let fp = fingerprint_of(&server);
    // Keepalives every 0.3 s: the loss is noticed without typing.
    let flags = ["--pin", &fp, "--keepalive", "0.3"];
    let mut a = Cli::chat(&server, &flags);
    a.connected_id();
    let mut b = Cli::chat(&server, &flags);
    let b_id = b.connected_id();
    a.expect_line(&format!("* {b_id} joined"));

    let restart = || {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--iface", "127.0.0.1", "--admin-port", "0"])
            .args(["--log-level", "debug", "--key-file", key])
            .args(["--port", &port.to_string()]);
        Server::spawn(cmd)
    };

    // Killed without a word: the next keepalive gets REJECT UNKNOWN_SESSION.
    drop(server);
    let mut server = restart();
    let mut ids = Vec::new();
    for c in [&mut a, &mut b] {
        c.expect("loss notice", |l| l.starts_with("* session lost"));
        let l = c.expect("recovery", |l| l.starts_with("* reconnected as "));
        ids.push(l["* reconnected as ".len()..].to_string());
    }
    let a_id = &ids[0];
    a.type_line(b"after a restart");
    b.expect_line(&format!("[{a_id}] after a restart"));

    // Shut down properly: SERVER_CLOSING, then HELLO every second until a
    // server answers again.
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc_kill(server.child.id() as i32, SIGTERM) }, 0);
    for c in [&mut a, &mut b] {
        c.expect_line("* server closing; reconnecting");
    }
    assert!(server.wait_exit(DEADLINE).is_some(), "server exits");
    let _server = restart();
    for c in [&mut a, &mut b] {
        c.expect("recovery", |l| l.starts_with("* reconnected as "));
    }
    b.type_line(b"after a shutdown");
    a.expect_line(&format!("[{b_id}] after a shutdown"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn chat_keeps_its_session_alive_past_the_client_timeout() {
    let server = Server::start(&["--client-timeout", "2"]);
    let mut lib = server.client_with(ClientOptions::default());
    lib.set_keepalive(Some(Duration::from_millis(500)));
    lib.connect(DEADLINE).unwrap();
    let mut chat = Cli::chat(&server, &["--keepalive", "0.5"]);
    let chat_id = chat.connected_id();
    expect_event(&mut lib, "chat's join", |e| {
        *e == ClientEvent::PeerJoined(chat_id.clone())
    });
    // Three client timeouts of silence from the user.
    let quiet_until = Instant::now() + Duration::from_secs(6);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        if let Some(e) = lib.recv(left).unwrap() {
            assert!(
                !matches!(e, ClientEvent::PeerLeft { .. }),
                "chat must not time out: {e:?}"
            );
        }
    }
    chat.type_line(b"still here");
    assert_eq!(expect_message(&mut lib, b"still here"), chat_id);
    lib.send(b"welcome back").unwrap();
    chat.expect_line(&format!("[{}] welcome back", lib.id().unwrap()));
    assert!(
        !chat.seen.iter().any(|l| l.contains("session lost")),
        "{:?}",
        chat.seen
    );
}

#[test]
fn send_exit_codes() {
    // Nobody answers on this port: non-zero within the timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap().to_string();
    let t0 = Instant::now();
    let (st, _, err) = run(&["send", "--server", &dead, "--timeout", "1", "x"]);
    assert!(!st.success());
    // Its own timeout is 1 s; 10 s leaves room for a loaded machine.
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "gave up after {:?}",
        t0.elapsed()
    );
    assert!(err.contains("no answer"), "{err}");

    let dir = tempdir("send");
    let good = dir.join("good");
    std::fs::write(&good, "open sesame\n").unwrap();
    let bad = dir.join("bad");
    std::fs::write(&bad, "open barley\n").unwrap();
    let (good, bad) = (good.to_str().unwrap(), bad.to_str().unwrap());
    let server = Server::start(&["--token-file", good]);
    let port = unicast(&server);
    let mut lib = server.client_with(ClientOptions {
        access_token: Some(b"open sesame".to_vec()),
        ..Default::default()
    });
    lib.connect(DEADLINE).unwrap();

    let (st, _, err) = run(&["send", "--server", &port, "--token-file", bad, "x"]);
    assert!(!st.success());
    assert!(err.contains("refused"), "{err}");
    let (st, _, err) = run(&["send", "--server", &port, "x"]);
    assert!(!st.success(), "no token: {err}");

    let (st, _, err) = run(&["send", "--server", &port, "--token-file", good, "alert!"]);
    assert!(st.success(), "{err}");
    let sender = expect_message(&mut lib, b"alert!");
    expect_event(&mut lib, "BYE", |e| {
        *e == ClientEvent::PeerLeft {
            id: sender.clone(),
            reason: Some(LeaveReason::Bye),
        }
    });

    // From stdin, through the multicast group; one trailing newline dropped.
    let out = Command::new(bin())
        .args(["send", "--group", "239.255.0.77", "--port"])
        .arg(server.port.to_string())
        .args(["--iface", "127.0.0.1", "--ttl", "0", "--token-file", good])
        .stdin(Stdio::piped())
        .output_with_stdin("disk full\non /var\n".into());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_message(&mut lib, b"disk full\non /var");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn listen_json_lines_parse_and_carry_the_exact_bodies() {
    let server = Server::start(&[]);
    let port = server.port.to_string();
    let mut listen = Cli::mcrelay(&[
        "listen",
        "--json",
        "--group",
        "239.255.0.77",
        "--port",
        &port,
        "--iface",
        "127.0.0.1",
        "--ttl",
        "0",
    ]);
    listen.expect("connected object", |l| l.contains("\"connected\""));
    let mut lib = server.client();
    let id = lib.id().unwrap().to_string();
    let bodies: [&[u8]; 4] = [
        b"plain",
        b"\"quoted\" back\\slash\nnew line\ttab \x01\x1b",
        "é ✓ \u{2028} 😀".as_bytes(),
        b"not utf-8: \xff\xfe\xe9",
    ];
    for b in bodies {
        lib.send(b).unwrap();
    }
    lib.bye().unwrap();
    listen.expect("left object", |l| l.contains("\"left\""));
    listen.signal(SIGTERM);
    assert!(listen.wait().success());
    while let Ok(l) = listen.lines.recv_timeout(Duration::from_millis(200)) {
        listen.seen.push(l);
    }

    // Python's json module decides whether each line is JSON, and compares
    // the decoded bodies with what was sent.
    let check = r#"
import json, sys
want = [bytes.fromhex(h) for h in sys.argv[2:]]
sender = sys.argv[1]
got, events = [], []
for line in sys.stdin:
    o = json.loads(line)
    events.append(o["event"])
    if o["event"] == "message":
        assert o["from"] == sender, o
        got.append(bytes.fromhex(o["hex"]) if "hex" in o else o["text"].encode())
assert got == want, (got, want)
assert events[0] == "connected" and "joined" in events and events[-1] == "left", events
print("ok", len(events))
"#;
    let mut py = Command::new("python3")
        .args(["-c", check, &id])
        .args(bodies.iter().map(|b| mcrelay::hex(b)))
        .stdin(Stdio::piped())
        .output_with_stdin(listen.seen.join("\n") + "\n");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    py.stdout.truncate(2);
    assert_eq!(py.stdout, b"ok");
}

/// `Command::output` with bytes on stdin.
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: String) -> std::process::Output;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: String) -> std::process::Output {
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        child.wait_with_output().unwrap()
    }
}

#[test]
fn bad_flags_fail_with_one_line_and_help_names_every_flag() {
    for args in [
        &["chat", "--bogus"][..],
        &[
            "listen",
            "--server",
            "127.0.0.1:1",
            "--group",
            "239.255.0.77",
        ],
        &["listen", "--group", "10.0.0.1"],
        &["send", "--port", "5007", "x"],
        &["send", "--pin", "abc", "x"],
        &["listen", "--timeout", "0"],
        &["chat", "--keepalive", "-1"],
        &["send", "--max-datagram", "10", "x"],
        &["send", "--server", "no-port-here", "x"],
        &["send", "--token-file", "/nonexistent/token", "x"],
        &["send", "one", "two"],
        &["send"], // empty stdin: nothing to send
    ] {
        let (st, out, err) = run(args);
        assert_eq!(st.code(), Some(2), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("mcrelay: "), "{args:?}: {err}");
    }
    let common = [
        "--server",
        "--group",
        "--port",
        "--iface",
        "--ttl",
        "--pin",
        "--token-file",
        "--max-datagram",
        "--timeout",
    ];
    for (cmd, extra) in [
        ("chat", &["--keepalive"][..]),
        ("listen", &["--keepalive", "--json"]),
        ("send", &[]),
    ] {
        let (st, out, _) = run(&[cmd, "--help"]);
        assert!(st.success());
        for flag in common.iter().chain(extra) {
            assert!(
                out.contains(&format!("    {flag} ")),
                "{cmd} --help: {flag}"
            );
        }
        assert!(
            out.matches("[default:").count() >= common.len() + extra.len(),
            "{cmd} --help: a default for every flag"
        );
    }
}
