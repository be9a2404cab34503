//! The TCP admin channel against the real server: every command, access
//! control, abuse, shutdown, sessions that never read or flood, netcat-style
//! one-shot commands, and SIGHUP token reloads.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mcrelay::wire::{LeaveReason, RejectReason};
use mcrelay::ClientEvent;

const QUIET: Duration = Duration::from_millis(300);

#[test]
fn help_version_fingerprint_stats_clients_log_tail() {
    let server = Server::start(&[]);
    let mut a = server.admin();
    a.ok("log off");
    let help = a.ok("help").join("\n");
    for cmd in [
        "help",
        "clients",
        "stats",
        "kick",
        "log",
        "fingerprint",
        "version",
        "shutdown",
        "quit",
    ] {
        assert!(
            help.lines().any(|l| l.starts_with(cmd)),
            "help lists {cmd}:\n{help}"
        );
    }
    assert_eq!(
        a.ok("version"),
        [format!("mcrelay {}", env!("CARGO_PKG_VERSION"))]
    );
    let fp = a.ok("fingerprint");
    assert!(server
        .find_log("fingerprint (sha256)")
        .unwrap()
        .ends_with(&fp[0]));

    let mut c1 = server.client();
    let mut c2 = server.client();
    drain(&mut c1, QUIET);
    c1.send(b"hello").unwrap();
    expect_message(&mut c2, b"hello");
    let clients = a.ok("clients");
    assert_eq!(clients.len(), 2, "{clients:?}");
    let line = clients
        .iter()
        .find(|l| l.starts_with(c1.id().unwrap()))
        .unwrap();
    assert!(
        line.contains(" idle=") && line.contains(" in=1/") && line.contains(" partials=0"),
        "{line}"
    );

    let stats = a.ok("stats");
    for name in [
        "uptime",
        "clients",
        "datagrams_in",
        "bytes_in",
        "datagrams_out",
        "bytes_out",
        "handshakes_completed",
        "drop_handshake_bad_cookie",
        "rejects_sent",
        "drop_wire_framing",
        "drop_wire_unknown_type",
        "drop_token_replay",
        "drop_token_reflected",
        "drop_token_bad",
        "fragments_in",
        "drop_reassembly_expired",
        "deliveries",
        "admin_sessions",
        "log_lines_dropped",
    ] {
        assert!(
            stats.iter().any(|l| l.split(' ').next() == Some(name)),
            "stats has {name}: {stats:?}"
        );
    }
    assert!(stats
        .iter()
        .all(|l| l.split(' ').count() == 2 && l.split(' ').nth(1).unwrap().parse::<u64>().is_ok()));
    assert_eq!(a.stat("clients"), 2);
    assert_eq!(a.stat("handshakes_completed"), 2);
    assert!(a.stat("deliveries") >= 1);

    let (tail, end) = a.cmd_all("log tail 50");
    assert_eq!(end, "OK");
    assert!(
        tail.iter().any(|l| is_log_line(l) && l.contains("joined")),
        "{tail:?}"
    );
    assert_eq!(a.cmd_all("log tail 1").0.len(), 1);
    assert!(a.cmd("log tail x").1.starts_with("ERR"));
    assert!(a.cmd("log loud").1.starts_with("ERR"));
    assert!(a.cmd("frobnicate").1.starts_with("ERR"));
    assert_eq!(a.cmd("kick").1.split(' ').next(), Some("ERR"));
    a.send(b"quit\r\n");
    assert_eq!(a.line().as_deref(), Some("OK"));
    assert_eq!(a.line(), None, "quit closes the session");
}

#[test]
fn live_log_lines_follow_the_session_level() {
    let server = Server::start(&[]);
    let mut a = server.admin();
    let _c = server.client();
    let end = Instant::now() + DEADLINE;
    loop {
        let l = a.line().unwrap();
        if is_log_line(&l) && l.contains("[INFO]") && l.contains("joined") {
            break;
        }
        assert!(Instant::now() < end);
    }
    a.ok("log off");
    let _d = server.client();
    let (body, _) = a.cmd("version");
    assert_eq!(body.len(), 1);
}

#[test]
fn kick_tells_the_others_and_the_kicked_address_gets_reject() {
    let server = Server::start(&[]);
    let mut a = server.admin();
    a.ok("log off");
    let mut stay = server.client();
    let mut gone = server.client();
    let id = gone.id().unwrap().to_string();
    a.ok(&format!("kick {id}"));
    expect_event(&mut stay, "PEER_LEFT kicked", |e| {
        *e == ClientEvent::PeerLeft {
            id: id.clone(),
            reason: Some(LeaveReason::Kicked),
        }
    });
    gone.send(b"still here?").unwrap();
    expect_event(&mut gone, "REJECT 1", |e| {
        *e == ClientEvent::Rejected(RejectReason::UnknownSession)
    });
    assert!(messages(&drain(&mut stay, QUIET)).is_empty());
    assert_eq!(a.stat("clients_kicked"), 1);
    let (_, err) = a.cmd(&format!("kick {id}"));
    assert!(err.starts_with("ERR"), "{err}");
}

#[test]
fn shutdown_command_closes_clients_and_exits_0() {
    let mut server = Server::start(&[]);
    let mut a = server.admin();
    let mut watcher = server.admin();
    watcher.ok("log off");
    let mut c = server.client();
    a.ok("log off");
    let t = Instant::now();
    a.ok("shutdown");
    expect_event(&mut c, "SERVER_CLOSING", |e| {
        *e == ClientEvent::ServerClosing
    });
    let status = server.wait_exit(DEADLINE).expect("exits");
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        t.elapsed()
    );
    let mut last = Vec::new();
    while let Some(l) = watcher.line() {
        last.push(l);
    }
    assert_eq!(
        last.last().map(String::as_str),
        Some("server shutting down"),
        "{last:?}"
    );
}

#[test]
fn fifth_session_gets_busy() {
    let server = Server::start(&[]);
    let mut four: Vec<_> = (0..4).map(|_| server.admin()).collect();
    for s in &mut four {
        s.ok("log off");
    }
    let stream = std::net::TcpStream::connect(("127.0.0.1", server.admin_port.unwrap())).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut &stream, &mut text).unwrap();
    assert_eq!(text, "ERR busy\n");
    four.pop();
    // A slot frees up once a session leaves.
    let end = Instant::now() + DEADLINE;
    loop {
        let s = std::net::TcpStream::connect(("127.0.0.1", server.admin_port.unwrap())).unwrap();
        let mut c = AdminConn {
            reader: std::io::BufReader::new(s.try_clone().unwrap()),
            stream: s,
        };
        c.stream.set_read_timeout(Some(DEADLINE)).unwrap();
        if c.line().is_some_and(|l| l.starts_with("mcrelay")) {
            break;
        }
        assert!(Instant::now() < end, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn auth_required_refused_accepted_and_three_strikes() {
    let dir = std::env::temp_dir().join(format!("mcrelay-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tok = dir.join("admin-token");
    std::fs::write(&tok, "s3cret\n").unwrap();
    let server = Server::start(&["--admin-token-file", tok.to_str().unwrap()]);
    let mut a = server.admin();
    assert_eq!(a.cmd("stats").1, "ERR auth required");
    assert_eq!(a.cmd("help").1, "ERR auth required");
    assert_eq!(a.cmd("auth wrong").1, "ERR bad token");
    assert_eq!(a.cmd("auth s3cret").1, "OK");
    a.ok("log off");
    assert!(a.ok("stats").iter().any(|l| l.starts_with("uptime ")));

    let mut b = server.admin();
    for _ in 0..3 {
        assert_eq!(b.cmd("auth nope").1, "ERR bad token");
    }
    assert_eq!(b.line(), None, "closed after three bad tokens");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn non_loopback_admin_without_token_is_refused_at_start() {
    let out = std::process::Command::new(bin())
        .args([
            "serve",
            "--port",
            "0",
            "--admin-bind",
            "0.0.0.0",
            "--admin-port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--admin-token-file"), "{err}");
}

#[test]
fn long_lines_non_utf8_and_half_lines_do_not_hurt() {
    let server = Server::start(&[]);
    let mut a = server.admin();
    a.ok("log off");
    let mut long = vec![b'x'; 2000];
    long.push(b'\n');
    a.send(&long);
    assert_eq!(a.reply().1, "ERR line too long");
    a.send(b"\xff\xfe stats\n");
    assert_eq!(a.reply().1, "ERR not UTF-8");
    assert_eq!(a.ok("version").len(), 1, "the session survives");

    // A half line and then a close: the server shrugs.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", server.admin_port.unwrap())).unwrap();
    half.write_all(b"sta").unwrap();
    drop(half);

    // Repeated abuse closes the session.
    let mut b = server.admin();
    b.ok("log off");
    for _ in 0..5 {
        b.send(b"\xff\n");
    }
    let mut lines = Vec::new();
    while let Some(l) = b.line() {
        lines.push(l);
    }
    assert!(lines.last().unwrap().contains("closing"), "{lines:?}");
    assert_eq!(a.ok("version").len(), 1, "other sessions are fine");
}

/// Median round trip of `n` messages from `a` to `b`.
fn median_rtt(a: &mut mcrelay::UdpClient, b: &mut mcrelay::UdpClient, n: usize) -> Duration {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let body = format!("rt{i}");
        let t = Instant::now();
        a.send(body.as_bytes()).unwrap();
        expect_message(b, body.as_bytes());
        v.push(t.elapsed());
    }
    v.sort();
    v[n / 2]
}

#[test]
fn a_session_that_never_reads_costs_neither_latency_nor_memory() {
    let server = Server::start(&["--log-level", "info"]);
    let mut a = server.client();
    let mut b = server.client();
    drain(&mut a, QUIET);
    let baseline = median_rtt(&mut a, &mut b, 200);

    // The stalled session asks for everything and then never reads again;
    // its small window keeps the kernel from buffering the lines instead.
    let mut stalled = small_window_session(server.admin_port.unwrap());
    stalled.write_all(b"log debug\n").unwrap();
    let rss_before = server.rss_kib();

    // A second session produces 100,000 log lines (each command is logged at debug).
    let mut busy = server.admin();
    busy.ok("log off");
    let mut writer = busy.stream.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = "version\n".repeat(1000);
        for _ in 0..100 {
            writer.write_all(chunk.as_bytes()).unwrap();
        }
    });
    // Relay while the flood is going on.
    let during = median_rtt(&mut a, &mut b, 200);
    for _ in 0..100_000 {
        let (body, end) = busy.reply();
        assert_eq!((body.len(), end.as_str()), (1, "OK"));
    }
    feeder.join().unwrap();
    let after = median_rtt(&mut a, &mut b, 200);
    let rss_after = server.rss_kib();
    let dropped = busy.stat("log_lines_dropped");
    // Of 100,000 lines the kernel's socket buffers may hold a few MiB (the
    // server's send buffer grows to net.ipv4.tcp_wmem's maximum, 4 MiB by
    // default): the rest must be dropped, not kept by the server.
    assert!(
        dropped > 10_000,
        "the stalled session lost lines instead of buffering them: {dropped}"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} KiB -> {rss_after} KiB"
    );
    // Latency: a blocked loop would mean timeouts; allow for a noisy machine.
    let limit = baseline * 10 + Duration::from_millis(20);
    assert!(
        during < limit && after < limit,
        "baseline {baseline:?}, during {during:?}, after {after:?}"
    );
    eprintln!("rtt p50: baseline {baseline:?}, during flood {during:?}, after {after:?}; rss {rss_before} -> {rss_after} KiB; dropped {dropped}");
    drop(stalled);
}

/// Lines of the server's log so far that contain `needle`.
fn log_count(server: &Server, needle: &str) -> usize {
    server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// Sends SIGHUP and waits until the reload logged `n` lines with `needle`.
fn hup_and_wait(server: &Server, needle: &str, n: usize) {
    signal(server, 1);
    let end = Instant::now() + DEADLINE;
    while log_count(server, needle) < n {
        assert!(
            Instant::now() < end,
            "no {n}th {needle:?}:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_re_reads_both_token_files_and_keeps_the_old_ones_if_invalid() {
    let dir = std::env::temp_dir().join(format!("mcrelay-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (relay_tok, admin_tok) = (dir.join("relay"), dir.join("admin"));
    std::fs::write(&relay_tok, "one\n").unwrap();
    std::fs::write(&admin_tok, "adm1\n").unwrap();
    let server = Server::start(&[
        "--token-file",
        relay_tok.to_str().unwrap(),
        "--admin-token-file",
        admin_tok.to_str().unwrap(),
    ]);
    let with = |t: &[u8]| mcrelay::ClientOptions {
        access_token: Some(t.to_vec()),
        ..Default::default()
    };
    let admin_accepts = |t: &str| server.admin().cmd(&format!("auth {t}")).1 == "OK";

    // Invalid new contents, each with the reason logged: the old tokens stay.
    let invalid: [(&[u8], &[u8], &str, &str); 3] = [
        (b"", b"\n", "is empty", "is empty"),
        (&[b'r'; 147], &[b'a'; 600], "at most 146", "at most 507"),
        (b"two\n", b" adm2 \n", "re-read token file", "whitespace"),
    ];
    for (round, (relay, admin, relay_why, admin_why)) in invalid.iter().enumerate() {
        std::fs::write(&relay_tok, relay).unwrap();
        std::fs::write(&admin_tok, admin).unwrap();
        hup_and_wait(&server, "keeping the old admin token", round + 1);
        let last = |needle: &str| {
            let log = server.log.lock().unwrap();
            log.iter()
                .rev()
                .find(|l| l.contains(needle))
                .cloned()
                .unwrap()
        };
        let relay_line = last(relay_tok.to_str().unwrap());
        let admin_line = last("keeping the old admin token");
        assert!(
            relay_line.contains(relay_why),
            "round {round}: {relay_line}"
        );
        assert!(
            admin_line.contains(admin_why),
            "round {round}: {admin_line}"
        );
        assert!(admin_accepts("adm1"), "round {round}");
    }
    // Round 3 made "two" the relay token; now both files disappear.
    std::fs::remove_file(&relay_tok).unwrap();
    std::fs::remove_file(&admin_tok).unwrap();
    hup_and_wait(&server, "keeping the old admin token", 4);
    assert_eq!(log_count(&server, "keeping the old token"), 3);
    assert!(admin_accepts("adm1"));
    assert!(server.client_with(with(b"two")).connect(DEADLINE).is_ok());

    // Valid new tokens replace the old ones.
    std::fs::write(&relay_tok, "three\n").unwrap();
    std::fs::write(&admin_tok, "adm2\n").unwrap();
    hup_and_wait(&server, "re-read admin token file", 1);
    let mut a = server.admin();
    assert_eq!(a.cmd("auth adm1").1, "ERR bad token");
    assert_eq!(a.cmd("auth adm2").1, "OK");
    assert!(server.client_with(with(b"three")).connect(DEADLINE).is_ok());
    assert!(server.client_with(with(b"two")).connect(DEADLINE).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// An admin connection whose receive buffer (so its TCP window) is small:
/// what it does not read backs up into the server quickly.
fn small_window_session(port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    sock.connect(&addr.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// A command sent the way `printf 'CMD\n' | nc -N` sends it: the bytes, a
/// half-close, then everything the server says until it closes. Returns
/// the lines that are not live log lines.
fn one_shot(port: u16, input: &[u8]) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(input).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("reading the reply to {input:?}: {e}; got {text:?}"));
    text.lines()
        .filter(|l| !is_log_line(l))
        .map(str::to_string)
        .collect()
}

#[test]
fn half_closed_one_shot_commands_get_their_full_reply() {
    let server = Server::start(&[]);
    let port = server.admin_port.unwrap();
    for i in 0..50 {
        let stats = one_shot(port, b"stats\n");
        assert!(stats[0].starts_with("mcrelay "), "run {i}: {stats:?}");
        assert!(
            stats.iter().any(|l| l.starts_with("uptime ")),
            "run {i}: {stats:?}"
        );
        assert!(stats.iter().any(|l| l.starts_with("admin_reply_waits ")));
        assert_eq!(stats.last().unwrap(), "OK", "run {i}: {stats:?}");

        let help = one_shot(port, b"help\n");
        assert!(
            help.iter().any(|l| l.starts_with("auth TOKEN")),
            "run {i}: {help:?}"
        );
        assert_eq!(help.last().unwrap(), "OK", "run {i}: {help:?}");

        let kick = one_shot(port, b"kick 10.9.9.9:9\n");
        assert_eq!(kick.len(), 2, "run {i}: {kick:?}");
        assert_eq!(kick[1], "ERR no client 10.9.9.9:9");
    }
    // Several commands, and a last line without its newline, are all answered.
    let both = one_shot(port, b"version\r\nlog off\nversion");
    let version = format!("mcrelay {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        both[1..],
        [&version, "OK", "OK", &version, "OK"],
        "{both:?}"
    );

    let has_nc = std::process::Command::new("sh")
        .args(["-c", "nc -h 2>&1 | grep -q -- -N"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_nc {
        eprintln!("note: no netcat-openbsd `nc` (with -N) here; skipped the real nc runs");
        return;
    }
    for i in 0..12 {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf 'stats\\n' | nc -N -w 20 127.0.0.1 {port}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().filter(|l| !is_log_line(l)).collect();
        assert!(
            lines.iter().any(|l| l.starts_with("uptime ")),
            "nc run {i}: {text}"
        );
        assert_eq!(lines.last(), Some(&"OK"), "nc run {i}: {text}");
    }
    eprintln!("12 of 12 `nc -N` runs got their full reply");
}

#[test]
fn one_write_of_many_commands_is_answered_in_full() {
    // Far more than one turn's budget arrives at once and nothing follows:
    // the rest must be served on later turns without a new readiness event.
    let server = Server::start(&[]);
    let mut a = server.admin();
    a.ok("log off");
    a.send("version\n".repeat(3000).as_bytes());
    for i in 0..3000 {
        let (body, end) = a.reply();
        assert_eq!((body.len(), end.as_str()), (1, "OK"), "reply {i}");
    }
    assert_eq!(a.ok("version").len(), 1);
}

#[test]
fn lines_before_auth_count_as_abuse_and_are_never_logged() {
    let dir = std::env::temp_dir().join(format!("mcrelay-preauth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tok = dir.join("admin-token");
    std::fs::write(&tok, "s3cret\n").unwrap();
    let mut server = Server::start(&["--admin-token-file", tok.to_str().unwrap()]);

    // A mistyped token sent as a command, an empty line, junk: five strikes.
    let mut a = server.admin();
    for line in ["s3cre7x hello", "", "stats", "help", "junk"] {
        assert_eq!(a.cmd(line).1, "ERR auth required");
    }
    assert_eq!(a.line().as_deref(), Some("ERR too many bad lines; closing"));
    assert_eq!(a.line(), None);
    server.wait_log("closed after 5 bad lines", DEADLINE);
    assert!(
        !server.log_text().contains("s3cre7x"),
        "the first word before auth was logged:\n{}",
        server.log_text()
    );

    // Authenticated: five unknown commands in a row close too; a good
    // command in between starts the count again.
    let mut b = server.admin();
    assert_eq!(b.cmd("auth s3cret").1, "OK");
    b.ok("log off");
    assert_eq!(b.stat("admin_closed_abuse"), 1);
    for _ in 0..4 {
        assert!(b.cmd("frob").1.starts_with("ERR unknown command"));
    }
    b.ok("version");
    for _ in 0..4 {
        assert!(b.cmd("frob").1.starts_with("ERR unknown command"));
    }
    b.send(b"frob\n");
    let mut rest = Vec::new();
    while let Some(l) = b.line() {
        rest.push(l);
    }
    assert_eq!(
        rest.last().map(String::as_str),
        Some("ERR too many bad lines; closing")
    );

    let mut c = server.admin();
    for _ in 0..3 {
        assert_eq!(c.cmd("auth nope").1, "ERR bad token");
    }
    assert_eq!(c.line(), None);
    let mut d = server.admin();
    assert_eq!(d.cmd("auth s3cret").1, "OK");
    d.ok("log off");
    assert_eq!(d.stat("admin_closed_abuse"), 2);
    assert_eq!(d.stat("admin_closed_bad_auth"), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_session_flooding_commands_without_reading_cannot_hurt_the_relay() {
    let server = Server::start(&["--log-level", "info"]);
    let mut a = server.client();
    let mut b = server.client();
    drain(&mut a, QUIET);
    let rss_before = server.rss_kib();

    // The flood: commands with long replies, written as fast as the server
    // takes them, never a byte read.
    let flooder = small_window_session(server.admin_port.unwrap());
    flooder
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (mut w, stop) = (flooder.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let chunk = "stats\nhelp\nclients\nlog tail 1000\n".repeat(100);
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                match w.write(chunk.as_bytes()) {
                    Ok(n) => sent += n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("flood write: {e}"),
                }
            }
            sent
        })
    };
    let mut watcher = server.admin();
    watcher.ok("log off");
    let end = Instant::now() + DEADLINE;
    while watcher.stat("admin_reply_waits") == 0 {
        assert!(Instant::now() < end, "the flood never hit the output cap");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Two clients relay both ways meanwhile.
    let mut rtts = Vec::new();
    for i in 0..200 {
        let body = format!("flood{i}");
        let (from, to) = if i % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let t = Instant::now();
        from.send(body.as_bytes()).unwrap();
        expect_message(to, body.as_bytes());
        rtts.push(t.elapsed());
    }
    let rss_during = server.rss_kib();
    stop.store(true, Ordering::Relaxed);
    let flooded = feeder.join().unwrap();
    let waits = watcher.stat("admin_reply_waits");
    assert_eq!(
        watcher.stat("admin_sessions"),
        2,
        "the flooder is held back, not dropped"
    );
    rtts.sort();
    let (median, max) = (rtts[rtts.len() / 2], *rtts.last().unwrap());
    assert!(max < Duration::from_secs(5), "slowest round trip {max:?}");
    assert!(rss_during < 64 * 1024, "RSS {rss_during} KiB");
    eprintln!(
        "flood of {flooded} command bytes (reply waits {waits}): rtt median {median:?}, max {max:?}; \
         rss {rss_before} -> {rss_during} KiB"
    );
    drop(flooder);
}
