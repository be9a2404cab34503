//! The TCP admin channel against the real server: every command, access
//! control, abuse, shutdown, and a session that never reads.

mod common;

use std::io::Write;
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

    // The stalled session asks for everything and then never reads again.
    let mut stalled = server.admin();
    stalled.send(b"log debug\n");
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
    assert!(
        dropped > 50_000,
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

#[test]
fn sighup_re_reads_both_token_files() {
    let dir = std::env::temp_dir().join(format!("mcrelay-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (relay_tok, admin_tok) = (dir.join("relay"), dir.join("admin"));
    std::fs::write(&relay_tok, "one\n").unwrap();
    std::fs::write(&admin_tok, "adm1\n").unwrap();
    let mut server = Server::start(&[
        "--token-file",
        relay_tok.to_str().unwrap(),
        "--admin-token-file",
        admin_tok.to_str().unwrap(),
    ]);
    std::fs::write(&relay_tok, "two\n").unwrap();
    std::fs::write(&admin_tok, "adm2\n").unwrap();
    signal(&server, 1);
    server.wait_log("re-read admin token file", DEADLINE);
    server.wait_log("re-read token file", DEADLINE);
    let mut a = server.admin();
    assert_eq!(a.cmd("auth adm1").1, "ERR bad token");
    assert_eq!(a.cmd("auth adm2").1, "OK");
    let with = |t: &[u8]| mcrelay::ClientOptions {
        access_token: Some(t.to_vec()),
        ..Default::default()
    };
    assert!(server.client_with(with(b"two")).connect(DEADLINE).is_ok());
    assert!(server.client_with(with(b"one")).connect(DEADLINE).is_err());
    let _ = std::fs::remove_dir_all(dir);
}
