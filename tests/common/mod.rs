//! Test harness: starts the real `mcrelay serve` binary on a free loopback
//! port and drives it with real UDP clients. Multicast is pinned to
//! 127.0.0.1 with TTL 0, so no datagram leaves the host.
#![allow(dead_code)] // each test binary uses a different part of it

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcrelay::client::{ClientEvent, ClientOptions};
use mcrelay::udp_client::{Target, UdpClient};

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
        cmd.args([
            "serve",
            "--port",
            "0",
            "--iface",
            "127.0.0.1",
            "--log-level",
            "debug",
        ]);
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
        let line = server.wait_log("listening on udp", DEADLINE);
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
            group: GROUP,
            port: self.port,
            iface: Ipv4Addr::LOCALHOST,
            ttl: 0,
        };
        UdpClient::new(target, ClientOptions::default()).unwrap()
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
