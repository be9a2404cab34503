//! Real `nats-server` processes for the federation tests (Debian package
//! `nats-server`), on free loopback ports and killed on drop, and a bare
//! NATS client speaking the text protocol over a blocking socket: it reads
//! what travels on a subject, or publishes what no relay would send.
//!
//! A machine without nats-server fails each test with one line saying so
//! and how to get it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// What a test says when nats-server cannot be run.
const MISSING: &str = "nats-server is missing: these tests need it on PATH \
                       (install it with `apt-get install nats-server`)";

/// Fails the test with the one line of [`MISSING`]: unwinding without the
/// panic hook, so no backtrace buries it even with `RUST_BACKTRACE` set.
fn missing() -> ! {
    eprintln!("{MISSING}");
    std::panic::resume_unwind(Box::new(MISSING))
}

/// A free TCP port on loopback (free when asked; the caller binds it soon).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// 127.0.0.1:`port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One nats-server process; killed on drop.
pub struct Nats {
    child: Option<Child>,
    /// Client port.
    pub port: u16,
    /// Cluster (route) port.
    pub cluster_port: u16,
    /// Monitoring (HTTP) port.
    pub http_port: u16,
    log: PathBuf,
}

impl Nats {
    /// A server on new free ports, routed to the cluster ports in `routes`,
    /// with `extra` flags.
    pub fn start(routes: &[u16], extra: &[&str]) -> Nats {
        Self::start_on(free_port(), free_port(), routes, extra)
    }

    /// A server on these client and cluster ports (a restart in place).
    pub fn start_on(port: u16, cluster_port: u16, routes: &[u16], extra: &[&str]) -> Nats {
        let http_port = free_port();
        let log = std::env::temp_dir().join(format!(
            "mcrelay-test-nats-{}-{port}.log",
            std::process::id()
        ));
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &http_port.to_string()])
            .args(["-cluster", &format!("nats://127.0.0.1:{cluster_port}")])
            .args(["-l", log.to_str().expect("UTF-8 temp dir")]);
        if !routes.is_empty() {
            let r: Vec<String> = routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args(["-routes", &r.join(",")]);
        }
        cmd.args(extra).stdout(Stdio::null()).stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing(),
            Err(e) => panic!("cannot run nats-server: {e}"),
        };
        let mut nats = Nats {
            child: Some(child),
            port,
            cluster_port,
            http_port,
            log,
        };
        let end = Instant::now() + DEADLINE;
        while TcpStream::connect(local(port)).is_err() {
            if let Some(Ok(Some(status))) = nats.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(&nats.log).unwrap_or_default();
                let last = log.lines().last().unwrap_or("(no log)");
                panic!("nats-server on port {port} exited ({status}): {last}");
            }
            assert!(
                Instant::now() < end,
                "nats-server on port {port} not accepting clients within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nats
    }

    /// Its client address.
    pub fn addr(&self) -> SocketAddr {
        local(self.port)
    }

    /// Its client URL, as `--federate` takes it.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Routes this server has (from its monitoring port's /routez).
    pub fn routes(&self) -> usize {
        let Ok(mut s) = TcpStream::connect(local(self.http_port)) else {
            return 0;
        };
        let _ = s.write_all(b"GET /routez HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        let n = body.split("\"num_routes\":").nth(1).unwrap_or("");
        let digits: String = n
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap_or(0)
    }

    /// Stops the server now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A cluster of `n` servers routed to the first, waited on until each has
/// a route to every other.
pub fn cluster(n: usize) -> Vec<Nats> {
    let first = Nats::start(&[], &[]);
    let seed = first.cluster_port;
    let mut servers = vec![first];
    for _ in 1..n {
        servers.push(Nats::start(&[seed], &[]));
    }
    let end = Instant::now() + DEADLINE;
    while !servers.iter().all(|s| s.routes() == n - 1) {
        assert!(Instant::now() < end, "the NATS cluster did not form");
        std::thread::sleep(Duration::from_millis(20));
    }
    servers
}

/// A bare NATS client on a blocking socket, subscribed to one subject.
pub struct Raw {
    r: BufReader<TcpStream>,
    subject: String,
}

impl Raw {
    /// Connects to `server` and subscribes to `subject`; returns once the
    /// server has answered a PING after the SUB (so the subscription is in
    /// place).
    pub fn connect(server: SocketAddr, subject: &str) -> Raw {
        let s = TcpStream::connect(server).expect("connect to nats-server");
        s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        let mut raw = Raw {
            r: BufReader::new(s),
            subject: subject.to_owned(),
        };
        assert!(raw.line().starts_with("INFO "));
        raw.send(
            format!("CONNECT {{\"verbose\":false}}\r\nSUB {subject} 9\r\nPING\r\n").as_bytes(),
        );
        assert_eq!(raw.line(), "PONG");
        raw
    }

    /// The next protocol line, without its line ending.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read from nats-server");
        l.trim_end().to_owned()
    }

    /// Writes raw protocol bytes.
    pub fn send(&mut self, b: &[u8]) {
        self.r.get_mut().write_all(b).expect("write to nats-server");
    }

    /// Publishes `payload` on the subject.
    pub fn publish(&mut self, payload: &[u8]) {
        let mut m = format!("PUB {} {}\r\n", self.subject, payload.len()).into_bytes();
        m.extend_from_slice(payload);
        m.extend_from_slice(b"\r\n");
        self.send(&m);
    }

    /// The next MSG as (its protocol line, its payload), answering the
    /// server's PINGs meanwhile; None when nothing came within `within`.
    pub fn next_msg(&mut self, within: Duration) -> Option<(String, Vec<u8>)> {
        self.r
            .get_ref()
            .set_read_timeout(Some(within))
            .expect("read timeout");
        let got = loop {
            let mut l = String::new();
            match self.r.read_line(&mut l) {
                Ok(0) => break None,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None
                }
                Err(e) => panic!("read from nats-server: {e}"),
            }
            let l = l.trim_end().to_owned();
            if l == "PING" {
                self.send(b"PONG\r\n");
                continue;
            }
            if let Some(rest) = l.strip_prefix("MSG ") {
                let n: usize = rest
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("MSG size");
                let mut p = vec![0; n + 2];
                self.r.read_exact(&mut p).expect("MSG payload");
                p.truncate(n);
                break Some((l, p));
            }
        };
        self.r
            .get_ref()
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        got
    }

    /// The next MSG's payload (waiting up to the test deadline).
    pub fn next_payload(&mut self) -> Vec<u8> {
        self.next_msg(DEADLINE).expect("a message on the subject").1
    }
}
