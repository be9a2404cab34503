//! The settings of a federation link: the fixed ones (timers and bounds)
//! and the configurable ones ([`LinkConfig`]), and what can be wrong with
//! the latter.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::federation::json::Auth;
use crate::federation::nats;

/// Silent announce periods after which a relay is gone.
pub const SILENT_PERIODS: u32 = 3;
/// Our keepalive PING interval.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered PINGs that end a connection.
pub const MAX_PINGS_OUT: u8 = 2;
/// Longest wait from asking for a connection to the handshake's PONG.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Delay before the second attempt in a row; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(2);
/// Servers kept (seeds first, then learned ones).
pub const MAX_SERVERS: usize = 32;
/// Plaintext budget of one announce part.
pub const ANNOUNCE_PART_BYTES: usize = 16 * 1024;
/// Output bytes queued for the socket above which publishes wait in the
/// buffer instead (so a stalled socket costs bounded memory).
pub const OUT_HIGH_WATER: usize = 1024 * 1024;

/// Settings of a link; [`LinkConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Seed servers, tried first and always kept.
    pub servers: Vec<SocketAddr>,
    /// The federation subject.
    pub subject: String,
    /// This relay's name, unique in the federation.
    pub relay_name: String,
    /// Credentials for CONNECT.
    pub auth: Auth,
    /// How often the member list is announced [default 5 s].
    pub announce_period: Duration,
    /// Messages kept while no server is up [default 4096].
    pub buffer_messages: usize,
    /// Bytes kept while no server is up [default 4 MiB].
    pub buffer_bytes: usize,
    /// Remote relays tracked [default 64].
    pub max_relays: usize,
    /// Remote members tracked, all relays together [default 100000].
    pub max_remote_members: usize,
    /// Largest payload buffered when received [default 1 MiB].
    pub max_payload: usize,
}

impl LinkConfig {
    /// A configuration with the defaults.
    pub fn new(servers: Vec<SocketAddr>, subject: &str, relay_name: &str) -> Self {
        LinkConfig {
            servers,
            subject: subject.to_owned(),
            relay_name: relay_name.to_owned(),
            auth: Auth::None,
            announce_period: Duration::from_secs(5),
            buffer_messages: 4096,
            buffer_bytes: 4 * 1024 * 1024,
            max_relays: 64,
            max_remote_members: 100_000,
            max_payload: nats::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// A configuration the link refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// No seed server.
    NoServers,
    /// The subject is not a plain NATS subject (`nats::valid_subject`).
    BadSubject(String),
    /// The relay name is not `[A-Za-z0-9._-]{1,64}`.
    BadRelayName(String),
    /// A zero announce period.
    BadPeriod,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoServers => f.write_str("no NATS server given"),
            ConfigError::BadSubject(s) => write!(
                f,
                "federation subject '{s}': use dot-separated letters, digits, '-' and '_'"
            ),
            ConfigError::BadRelayName(s) => {
                write!(
                    f,
                    "relay name '{s}': use 1-64 letters, digits, '.', '-' and '_'"
                )
            }
            ConfigError::BadPeriod => f.write_str("the announce period must be positive"),
        }
    }
}

impl std::error::Error for ConfigError {}
