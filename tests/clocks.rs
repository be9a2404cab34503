//! Real processes under wrong wall clocks (issue 10, "Clocks"): clients
//! whose clocks run 10 minutes ahead and 10 minutes behind talk through a
//! relay whose clock is right, and a relay whose clock is behind serves
//! clients whose clocks are right. No end checks a Fernet timestamp, so all
//! of them must work (the `fernet` crate refused tokens stamped more than
//! 60 s ahead of the receiver's clock).
//!
//! The clocks are shifted with libfaketime (Debian package `faketime`),
//! preloaded into the process itself rather than through the `faketime`
//! wrapper, which forks: killing the wrapper would leave the client running.
//! Without the library the tests print a note and pass without running.
//! Only the wall clock moves: `FAKETIME_DONT_FAKE_MONOTONIC` keeps the
//! monotonic clock, which drives every timer, untouched.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::*;

const AHEAD: &str = "+10m";
const BEHIND: &str = "-10m";

/// libfaketime's multi-threaded build, where Debian-like systems put it.
fn libfaketime() -> Option<PathBuf> {
    let name = "faketime/libfaketimeMT.so.1";
    let multiarch = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(name));
    ["/usr/lib", "/usr/local/lib"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .chain(multiarch)
        .find(|p| p.is_file())
}

/// The library when it is installed; otherwise prints why `test` is skipped.
fn have_faketime(test: &str) -> Option<PathBuf> {
    let lib = libfaketime();
    if lib.is_none() {
        eprintln!("{test}: skipped, libfaketime is not installed (apt-get install faketime)");
    }
    lib
}

/// `program` with its wall clock shifted by `offset` ("+10m", "-10m").
fn shifted(lib: &Path, offset: &str, program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("LD_PRELOAD", lib)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    c
}

fn python_shifted(lib: &Path, offset: &str) -> Command {
    let mut c = shifted(lib, offset, "python3");
    c.env(
        "PYTHONPATH",
        concat!(env!("CARGO_MANIFEST_DIR"), "/interop/python"),
    )
    .args(["-m", "mcrelay_client"]);
    c
}

/// A long-running client whose stdout lines arrive on a channel; killed on drop.
struct Listener {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Listener {
    fn spawn(mut cmd: Command) -> Listener {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn listener");
        let lines = line_channel(child.stdout.take().unwrap());
        Listener {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(l) => self.seen.push(l),
                Err(_) => break,
            }
        }
        panic!("no {what} within {DEADLINE:?}; printed {:?}", self.seen);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a one-shot sender to completion; it must succeed.
fn run(mut cmd: Command) {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn sender");
    assert!(
        out.status.success(),
        "sender failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cli_clients_ten_minutes_ahead_and_behind_talk_through_a_relay_on_time() {
    let Some(lib) = have_faketime("cli_clients_ten_minutes_ahead_and_behind") else {
        return;
    };
    let server = Server::start(&[]);
    let target = format!("127.0.0.1:{}", server.port);
    let listener = |offset| {
        let mut cmd = shifted(&lib, offset, bin());
        cmd.args(["listen", "--server", &target]);
        let mut l = Listener::spawn(cmd);
        l.expect("connection", |l| l.starts_with("* connected as "));
        l
    };
    // The relay's tokens are 10 minutes in the future for one listener and
    // 10 minutes old for the other.
    let mut ahead = listener(AHEAD);
    let mut behind = listener(BEHIND);
    let mut on_time = server.client();

    for (offset, body) in [
        (AHEAD, "sent 10 minutes ahead"),
        (BEHIND, "sent 10 minutes behind"),
    ] {
        let mut cmd = shifted(&lib, offset, bin());
        cmd.args(["send", "--server", &target, body]);
        run(cmd);
        let suffix = format!("] {body}");
        ahead.expect(body, |l| l.ends_with(&suffix));
        behind.expect(body, |l| l.ends_with(&suffix));
        expect_message(&mut on_time, body.as_bytes());
    }
}

#[test]
fn python_clients_ten_minutes_ahead_and_behind_talk_through_a_relay_on_time() {
    let Some(lib) = have_faketime("python_clients_ten_minutes_ahead_and_behind") else {
        return;
    };
    let server = Server::start(&[]);
    let target = format!("127.0.0.1:{}", server.port);
    // The Python listener's clock is behind: every token of the relay's is
    // 10 minutes in its future.
    let mut cmd = python_shifted(&lib, BEHIND);
    cmd.args(["listen", "--server", &target]);
    let mut listener = Listener::spawn(cmd);
    let mut on_time = server.client();
    expect_event(&mut on_time, "the python listener's join", |e| {
        matches!(e, mcrelay::ClientEvent::PeerJoined(_))
    });
    // The Python sender's clock is ahead: its tokens are 10 minutes in the
    // relay's future.
    let body = "python, 10 minutes ahead";
    let mut cmd = python_shifted(&lib, AHEAD);
    cmd.args(["send", "--server", &target, body]);
    run(cmd);
    expect_message(&mut on_time, body.as_bytes());
    let suffix = format!("] {body}");
    listener.expect(body, |l| l.ends_with(&suffix));
}

#[test]
fn a_relay_ten_minutes_behind_serves_clients_on_time() {
    let Some(lib) = have_faketime("a_relay_ten_minutes_behind") else {
        return;
    };
    let mut cmd = shifted(&lib, BEHIND, bin());
    cmd.args(["serve", "--port", "0", "--iface", "127.0.0.1", "--no-admin"]);
    let server = Server::spawn(cmd);
    // The shift is real: the relay's log is stamped about 10 minutes ago.
    let line = server.find_log("fingerprint (sha256)").unwrap();
    let logged = rfc3339_secs(&line).expect("an RFC 3339 time at the start of the line");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lag = now.saturating_sub(logged);
    assert!(
        (540..=660).contains(&lag),
        "log stamped {lag} s before now, not about 600: {line}"
    );

    // Its tokens are 10 minutes old to these clients, theirs 10 minutes
    // ahead of it: both ways must work.
    let mut a = server.client();
    let mut b = server.client();
    a.send(b"on time").unwrap();
    assert_eq!(expect_message(&mut b, b"on time"), a.id().unwrap());
    b.send(b"also on time").unwrap();
    assert_eq!(expect_message(&mut a, b"also on time"), b.id().unwrap());
}

/// Unix seconds of the `YYYY-MM-DDTHH:MM:SS` that starts `line` (UTC).
fn rfc3339_secs(line: &str) -> Option<u64> {
    let num = |r: std::ops::Range<usize>| line.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}
