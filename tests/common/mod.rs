//! Test harness: starts the real `mcrelay serve` binary on a free loopback
//! port and drives it with real UDP clients. Multicast is pinned to
//! 127.0.0.1 with TTL 0, so no datagram leaves the host.
#![allow(dead_code)] // each test binary uses a different part of it

/// The library's deterministic test RNG, shared as source (the library
/// compiles its simulator only for its own tests and for fuzzing).
#[allow(dead_code)]
#[path = "../../src/sim/testrng.rs"]
pub mod testrng;

pub mod nats;
pub mod netns;
pub mod raw;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcrelay::{ClientEvent, ClientOptions};
use mcrelay::{Target, UdpClient};

/// Generous: CI is a noisy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// The default group; tests differ by port.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 77);

/// A running server process; killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub admin_port: Option<u16>,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mcrelay")
}

impl Server {
    /// Starts `mcrelay serve --port 0 --iface 127.0.0.1 --admin-port 0 ARGS`.
    pub fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--port", "0", "--iface", "127.0.0.1"]);
        if !args.contains(&"--log-level") {
            cmd.args(["--log-level", "debug"]);
        }
        if !args.contains(&"--admin-port") && !args.contains(&"--no-admin") {
            cmd.args(["--admin-port", "0"]);
        }
        cmd.args(args);
        Self::spawn(cmd)
    }

    /// Spawns a prepared command and waits until it reports its ports.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mcrelay");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = Server {
            child,
            port: 0,
            admin_port: None,
            log,
        };
        // The fingerprint is the last start-up line: once it is there, so are the ports.
        server.wait_log("fingerprint (sha256)", DEADLINE);
        let line = server.find_log("listening on udp").expect("udp port line");
        server.port = line
            .rsplit_once("listening on udp 0.0.0.0:")
            .unwrap()
            .1
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        if let Some(l) = server.find_log("admin listening on") {
            server.admin_port = Some(l.rsplit_once(':').unwrap().1.trim().parse().unwrap());
        }
        server
    }

    /// The first log line containing `needle`, if any yet.
    pub fn find_log(&self, needle: &str) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// Polls the log until a line contains `needle`.
    pub fn wait_log(&mut self, needle: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            if let Some(l) = self.find_log(needle) {
                return l;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "server exited ({status}) before logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < end,
                "no log line {needle:?} within {within:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The server's unicast address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// An unconnected client aimed at the server's unicast address.
    pub fn client_with(&self, opts: ClientOptions) -> UdpClient {
        UdpClient::new(Target::Unicast(self.addr()), opts).unwrap()
    }

    /// A connected unicast client.
    pub fn client(&self) -> UdpClient {
        let mut c = self.client_with(ClientOptions::default());
        c.connect(DEADLINE).expect("handshake");
        c
    }

    /// A client that reaches the server through the multicast group.
    pub fn group_client(&self) -> UdpClient {
        let target = Target::Multicast {
            group: GROUP.into(),
            port: self.port,
            iface: Ipv4Addr::LOCALHOST.into(),
            ttl: 0,
        };
        UdpClient::new(target, ClientOptions::default()).unwrap()
    }

    /// A `kB` field of the server's /proc/PID/status (VmRSS, VmHWM, ...), in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Opens an admin session (the server must have been started with an admin port).
    pub fn admin(&self) -> AdminConn {
        AdminConn::connect(self.admin_port.expect("admin port"))
    }

    /// Waits for the process to exit; None if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mcrelay ARGS` to completion with empty stdin: its exit status,
/// stdout and stderr.
pub fn run(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Receives until `pred` matches an event (returned) or the deadline passes
/// (panics). Events that don't match are collected in `skipped`.
pub fn expect_event(
    c: &mut UdpClient,
    what: &str,
    pred: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    let end = Instant::now() + DEADLINE;
    let mut skipped = Vec::new();
    while Instant::now() < end {
        match c.recv(Duration::from_millis(200)).unwrap() {
            Some(e) if pred(&e) => return e,
            Some(e) => skipped.push(e),
            None => {}
        }
    }
    panic!("no {what} within {DEADLINE:?}; got {skipped:?}");
}

/// Collects every event that arrives within `quiet` of the previous one.
pub fn drain(c: &mut UdpClient, quiet: Duration) -> Vec<ClientEvent> {
    let mut v = Vec::new();
    while let Some(e) = c.recv(quiet).unwrap() {
        v.push(e);
    }
    v
}

/// The message bodies among `events`, with senders.
pub fn messages(events: &[ClientEvent]) -> Vec<(String, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message { sender, body } => Some((sender.clone(), body.clone())),
            _ => None,
        })
        .collect()
}

/// Waits for a message with `body` and returns its sender.
pub fn expect_message(c: &mut UdpClient, body: &[u8]) -> String {
    match expect_event(
        c,
        "message",
        |e| matches!(e, ClientEvent::Message { body: b, .. } if b == body),
    ) {
        ClientEvent::Message { sender, .. } => sender,
        _ => unreachable!(),
    }
}

/// A line-oriented admin session, as a script would use it.
pub struct AdminConn {
    pub reader: std::io::BufReader<std::net::TcpStream>,
    pub stream: std::net::TcpStream,
}

impl AdminConn {
    /// Connects and reads the greeting line.
    pub fn connect(port: u16) -> AdminConn {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut c = AdminConn { reader, stream };
        let greeting = c.line().expect("greeting");
        assert!(
            greeting.starts_with("mcrelay ") || greeting.starts_with("ERR"),
            "{greeting}"
        );
        c
    }

    /// The next line without its newline; None at EOF.
    pub fn line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => None,
            Ok(_) => Some(l.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => None,
            Err(e) => panic!("admin read: {e}"),
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends a command; returns the reply lines before the final `OK`/`ERR ..`
    /// line, and that line. Live log lines (timestamped) are skipped.
    pub fn cmd(&mut self, line: &str) -> (Vec<String>, String) {
        self.send(format!("{line}\n").as_bytes());
        self.reply()
    }

    /// Like `cmd`, but keeps timestamped lines (for `log tail`; use after `log off`).
    pub fn cmd_all(&mut self, line: &str) -> (Vec<String>, String) {
        self.send(format!("{line}\n").as_bytes());
        self.read_reply(true)
    }

    /// Reads one reply (see `cmd`).
    pub fn reply(&mut self) -> (Vec<String>, String) {
        self.read_reply(false)
    }

    fn read_reply(&mut self, keep_log_lines: bool) -> (Vec<String>, String) {
        let mut body = Vec::new();
        loop {
            let l = self.line().expect("admin session closed mid-reply");
            if l == "OK" || l.starts_with("ERR") {
                return (body, l);
            }
            if keep_log_lines || !is_log_line(&l) {
                body.push(l);
            }
        }
    }

    /// Runs a command that must succeed; returns its lines.
    pub fn ok(&mut self, line: &str) -> Vec<String> {
        let (body, end) = self.cmd(line);
        assert_eq!(end, "OK", "{line}: {body:?}");
        body
    }

    /// `stats` as a name → value lookup.
    pub fn stat(&mut self, name: &str) -> u64 {
        self.ok("stats")
            .iter()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(' '))
                    .map(|v| v.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no stat {name}"))
    }
}

/// Live log lines start with a timestamp like `2026-`.
pub fn is_log_line(l: &str) -> bool {
    l.len() > 24 && l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'T'
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Sends a signal to the server process.
pub fn signal(server: &Server, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { kill(server.child.id() as i32, sig) }, 0);
}

/// The lines a child writes to a pipe, delivered on a channel by a reader
/// thread (so a test can wait for a line with a deadline).
pub fn line_channel(
    pipe: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}
