//! `bench --footprint`: what the relay costs a router, read from the file
//! system and /proc and checked against the project's limits: the binary's
//! size, the resident memory of an idle relay with its 2048-bit key, and
//! with many registered clients.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::child::{self, Relay};
use super::{procfs, swarm};

/// The stripped release binary at most (bytes).
pub const MAX_BINARY: u64 = 5 * 1024 * 1024 / 2;
/// Resident memory of an idle relay at most (KiB).
pub const MAX_IDLE_RSS_KIB: u64 = 4 * 1024;
/// Resident memory with 1000 registered clients at most (KiB).
pub const MAX_CLIENTS_RSS_KIB: u64 = 8 * 1024;

/// What was measured.
#[derive(Clone, Debug)]
pub struct Footprint {
    /// The relay binary's size in bytes.
    pub binary_bytes: u64,
    /// VmRSS of a freshly started idle relay (KiB).
    pub idle_rss_kib: u64,
    /// Clients registered for the second measurement.
    pub clients: usize,
    /// VmRSS with `clients` registered (KiB).
    pub clients_rss_kib: u64,
    /// Time the handshakes took.
    pub handshake_secs: f64,
}

impl Footprint {
    /// The limits this footprint exceeds, as sentences (empty: all met).
    /// The client limit is for 1000 clients and is checked only then.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.binary_bytes > MAX_BINARY {
            v.push(format!(
                "binary {} bytes > {MAX_BINARY} (is it a stripped release build?)",
                self.binary_bytes
            ));
        }
        if self.idle_rss_kib > MAX_IDLE_RSS_KIB {
            v.push(format!(
                "idle RSS {} KiB > {MAX_IDLE_RSS_KIB} KiB",
                self.idle_rss_kib
            ));
        }
        if self.clients >= 1000 && self.clients_rss_kib > MAX_CLIENTS_RSS_KIB {
            v.push(format!(
                "RSS with {} clients {} KiB > {MAX_CLIENTS_RSS_KIB} KiB",
                self.clients, self.clients_rss_kib
            ));
        }
        v
    }
}

/// Measures `exe`: its size, an idle relay, then a relay with `clients`
/// registered clients.
pub fn measure(exe: &Path, clients: usize) -> Result<Footprint, String> {
    let binary_bytes = std::fs::metadata(exe)
        .map_err(|e| format!("{}: {e}", exe.display()))?
        .len();

    let idle = Relay::start(exe, &[])?;
    settle(idle.pid);
    let idle_rss_kib = procfs::rss_kib(idle.pid).ok_or("cannot read the relay's VmRSS")?;
    idle.stop();

    // Generous handshake limits: this measures memory, not the defences.
    let args = child::generous_args(clients);
    let busy = Relay::start(exe, &args)?;
    let t = Instant::now();
    let swarm = swarm::connect(
        busy.addr,
        clients,
        0,
        Duration::from_secs(30 + clients as u64 / 10),
    )?;
    let handshake_secs = t.elapsed().as_secs_f64();
    // Every join is announced to every earlier client: let that finish.
    settle(busy.pid);
    let clients_rss_kib = procfs::rss_kib(busy.pid).ok_or("cannot read the relay's VmRSS")?;
    drop(swarm);
    busy.stop();
    Ok(Footprint {
        binary_bytes,
        idle_rss_kib,
        clients,
        clients_rss_kib,
        handshake_secs,
    })
}

/// Waits until the process stops using CPU (at most 15 s).
fn settle(pid: u32) {
    let end = Instant::now() + Duration::from_secs(15);
    let mut last = procfs::process_cpu(pid);
    let mut quiet = 0;
    while Instant::now() < end && quiet < 3 {
        thread::sleep(Duration::from_millis(100));
        let now = procfs::process_cpu(pid);
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
}
