//! Tunables of the relay core, each with the safe default the protocol or
//! the project chose. The CLI maps flags onto these fields.
//!
//! [`credentials`]: the named clients a clients file lists.

pub mod credentials;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use self::credentials::Credentials;

use crate::reassembly::ReassemblyLimits;

/// Everything the sans-IO core needs to know besides its key.
#[derive(Clone, Debug)]
pub struct Config {
    /// Silence after which a client is forgotten.
    pub client_timeout: Duration,
    /// Largest datagram sent; larger ones are fragmented.
    pub max_datagram: usize,
    /// Registered clients at most; more get REJECT 3.
    pub max_clients: usize,
    /// Registered clients per host (IPv4 address or IPv6 /64) at most; more
    /// get REJECT 3. 0: no limit.
    pub max_clients_per_ip: usize,
    /// Bounds on fragment reassembly.
    pub reassembly: ReassemblyLimits,
    /// Token every SESSION_KEY must carry, if set.
    pub access_token: Option<Vec<u8>>,
    /// Named clients (`--clients-file`), if set. With a table, a client must
    /// present a token it lists or, when `access_token` is set too, that
    /// shared token; anything else is REJECT 2.
    pub credentials: Option<Arc<Credentials>>,
    /// Handshakes per second per source address, ip and port (after the cookie check).
    pub handshake_rate: u32,
    /// Burst of handshakes per source address.
    pub handshake_burst: u32,
    /// RSA decryptions per second for all sources together; one host may
    /// use a quarter of them, and the last quarter is kept for clients that
    /// re-key (see `relay::admission`).
    pub rsa_rate: u32,
    /// REJECTs per second per source address.
    pub reject_rate: u32,
    /// REJECTs per second in total.
    pub reject_global_rate: u32,
    /// Grant group mode (protocol v2 §4) to v2 clients that ask for it.
    pub group_mode: bool,
    /// Where GROUP_DATA goes, at most one address per family: a member is
    /// told the downlink of its own address family (and is granted group
    /// mode only if there is one). The shell sends each datagram for a
    /// downlink once per served interface.
    pub downlinks: Vec<SocketAddr>,
    /// The relay is federated: relayed local messages also come out as
    /// `Event::Relayed` (off: no body is copied for nothing).
    pub federation: bool,
}

/// The default downlink: the default group 239.255.0.77 at the default
/// port 5007 + 2 (the shell derives it from the real group and port).
pub const DEFAULT_DOWNLINK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(239, 255, 0, 77)), 5009);

impl Default for Config {
    fn default() -> Self {
        Config {
            client_timeout: Duration::from_secs(60),
            max_datagram: 1200,
            max_clients: 1024,
            max_clients_per_ip: 64,
            reassembly: ReassemblyLimits::default(),
            access_token: None,
            credentials: None,
            handshake_rate: 5,
            handshake_burst: 10,
            // One RSA-2048 decryption costs ~2.3 ms here: 200/s keeps the
            // loop at under half a core even under a handshake flood.
            rsa_rate: 200,
            reject_rate: 2,
            reject_global_rate: 1000,
            group_mode: true,
            downlinks: vec![DEFAULT_DOWNLINK],
            federation: false,
        }
    }
}
