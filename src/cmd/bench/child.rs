//! The relay under test as a child process: started with `serve` on free
//! loopback ports, its ports read from its log, stopped with SIGTERM.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a starting relay may take (key generation is ~60–130 ms in a
/// release build, far more in a debug one).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines kept to explain a failure.
const LOG_TAIL: usize = 20;

/// Flags for a relay under measurement: handshake limits out of the way
/// (the bench connects all its clients at once) and room for `clients`.
pub fn generous_args(clients: usize) -> Vec<String> {
    let mut a: Vec<String> = [
        "--rsa-rate",
        "100000",
        "--handshake-rate",
        "100000",
        "--handshake-burst",
        "100000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("--max-clients".into());
    a.push((clients + 64).to_string());
    // Every bench client comes from one address. Only when the default
    // per-IP cap is too small, so that relays older than the flag still run.
    if clients > mcrelay::Config::default().max_clients_per_ip {
        a.push("--max-clients-per-ip".into());
        a.push("0".into());
    }
    a
}

/// A running relay started by the benchmark; stopped on drop.
pub struct Relay {
    child: std::process::Child,
    /// Its UDP address (127.0.0.1:port).
    pub addr: SocketAddr,
    /// Its process id, for /proc.
    pub pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// The executable to start: `exe` if given, else this very binary.
pub fn resolve_exe(exe: Option<&Path>) -> Result<PathBuf, String> {
    match exe {
        Some(p) => Ok(p.to_path_buf()),
        None => std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}")),
    }
}

impl Relay {
    /// Starts `exe serve --port 0 --iface 127.0.0.1 --admin-port 0 ARGS`
    /// and waits until it reports its UDP port.
    pub fn start(exe: &Path, args: &[String]) -> Result<Relay, String> {
        let mut cmd = Command::new(exe);
        cmd.args([
            "serve",
            "--port",
            "0",
            "--iface",
            "127.0.0.1",
            "--admin-port",
            "0",
        ]);
        if !args.iter().any(|a| a == "--log-level") {
            // The port is learnt from an info line.
            cmd.args(["--log-level", "info"]);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let keep = tail.clone();
        // The pipe must be drained for the child's whole life, or its log
        // writes would block the relay mid-benchmark.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = port_of(&line) {
                    let _ = tx.send(port);
                }
                let mut t = keep.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == LOG_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let pid = child.id();
        let mut relay = Relay {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
            tail,
        };
        let end = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(port) => {
                    relay.addr.set_port(port);
                    return Ok(relay);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < end => {
                    if let Ok(Some(status)) = relay.child.try_wait() {
                        return Err(format!(
                            "{} serve exited ({status}):\n{}",
                            exe.display(),
                            relay.log_tail()
                        ));
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "{} serve reported no port within {START_TIMEOUT:?}:\n{}",
                        exe.display(),
                        relay.log_tail()
                    ))
                }
            }
        }
    }

    /// The last lines the relay logged.
    pub fn log_tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Asks the relay to stop (SIGTERM) and waits briefly, then kills it.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// The UDP port in `... listening on udp 0.0.0.0:PORT, group ...`.
fn port_of(line: &str) -> Option<u16> {
    let rest = line.split_once("listening on udp ")?.1;
    let addr = rest.split([',', ' ']).next()?;
    addr.parse::<SocketAddr>().ok().map(|a| a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_from_the_start_line() {
        let l = "2026-01-01T00:00:00Z [INFO] mcrelay 0.1.0 listening on udp 0.0.0.0:40123, group 239.255.0.77 on 127.0.0.1";
        assert_eq!(port_of(l), Some(40123));
        assert_eq!(port_of("admin listening on 127.0.0.1:5008"), None);
    }
}
