//! A client process as a test drives it: `mcrelay chat|listen|send` or
//! `python3 -m mcrelay_client`, its stdout lines on a channel, its stderr
//! collected, killed on drop. Shared by the test files that run clients.
#![allow(dead_code)] // each test binary uses a different part of it

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{bin, line_channel, Server, DEADLINE};

/// A client process; its stdout lines arrive on a channel, its stderr is
/// collected. Killed on drop.
pub struct Cli {
    pub child: Child,
    stdin: Option<ChildStdin>,
    pub lines: mpsc::Receiver<String>,
    /// Every stdout line read so far, for failure messages.
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Cli {
    /// `mcrelay ARGS` with stdin, stdout and stderr piped.
    pub fn mcrelay(args: &[&str]) -> Cli {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        Cli::spawn(cmd)
    }

    /// `mcrelay chat --server 127.0.0.1:PORT ARGS`.
    pub fn chat(server: &Server, args: &[&str]) -> Cli {
        let target = unicast(server);
        let mut all = vec!["chat", "--server", &target];
        all.extend_from_slice(args);
        Cli::mcrelay(&all)
    }

    /// `python3 -m mcrelay_client ARGS`.
    pub fn python(args: &[&str]) -> Cli {
        let mut cmd = python();
        cmd.args(["-m", "mcrelay_client"]).args(args);
        Cli::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Cli {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let lines = line_channel(child.stdout.take().unwrap());
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Cli {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Polls stdout until a line satisfies `pred`; panics at the deadline.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no {what} within {DEADLINE:?}; stdout {:?}; stderr {:?}",
            self.seen,
            self.stderr_text()
        );
    }

    /// Waits for the exact line `line`.
    pub fn expect_line(&mut self, line: &str) {
        self.expect(&format!("line {line:?}"), |l| l == line);
    }

    /// Waits for `* connected as ID` and returns ID.
    pub fn connected_id(&mut self) -> String {
        let l = self.expect("connected line", |l| l.starts_with("* connected as "));
        l["* connected as ".len()..].to_string()
    }

    /// Types one line.
    pub fn type_line(&mut self, line: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(line).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin: end of input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc_kill(self.child.id() as i32, sig) }, 0);
    }

    /// Polls for the exit status; panics at the deadline.
    pub fn wait(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < end,
                "client still running after {DEADLINE:?}; stdout {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit and for stderr to be read to its end.
    pub fn wait_with_stderr(&mut self) -> (ExitStatus, String) {
        let status = self.wait();
        let end = Instant::now() + DEADLINE;
        // The reader thread drops its clone when stderr reaches EOF.
        while Arc::strong_count(&self.stderr) > 1 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        (status, self.stderr_text())
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ctrl-C.
pub const SIGINT: i32 = 2;
/// What service managers send.
pub const SIGTERM: i32 = 15;

extern "C" {
    /// kill(2).
    #[link_name = "kill"]
    pub fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// `python3` with the Python client on its path.
pub fn python() -> Command {
    let mut c = Command::new("python3");
    c.env(
        "PYTHONPATH",
        concat!(env!("CARGO_MANIFEST_DIR"), "/interop/python"),
    );
    c
}

/// The server's unicast address as a `--server` flag value.
pub fn unicast(server: &Server) -> String {
    format!("127.0.0.1:{}", server.port)
}
