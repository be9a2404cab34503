//! mcrelay: a small, hardened relay that turns an open UDP multicast group
//! into a secure, managed relay (protocols v1 and v2, see PROTOCOL.md).
//!
//! The layers, from the bytes up:
//! - [`wire`]: bytes to values and back; no state, no clock, no crypto.
//! - `session`: the pairwise Fernet session, its replay window, the RSA key,
//!   and the Fernet token format itself ([`fernet`]: no timestamp checks,
//!   IV and time from the caller).
//! - `relay`: the server's sans-IO core, [`Relay`]. It takes the caller's
//!   time, randomness and datagrams and returns datagrams to send; it owns
//!   no socket and reads no clock, so tests and fuzzers drive it
//!   deterministically.
//! - `client`: the client's sans-IO core, [`ClientCore`], and its blocking
//!   socket shell, [`UdpClient`].
//! - `federation`: several relays share one group through NATS: the NATS
//!   codec, the sealed federation messages and the sans-IO [`Link`].
//! - `net`: the one mio loop ([`Server`]) and everything else that touches
//!   a socket or a file: sendmmsg batching, the admin channel, the log ring,
//!   the key files, the NATS socket ([`NatsSocket`]).
//!
//! Shared by both cores: reassembly, the timer wheel and the rate limiters.
#![warn(missing_docs)]

mod client;
mod federation;
mod net;
mod ratelimit;
mod reassembly;
mod relay;
mod session;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod sim;
mod timer;
pub mod wire;

pub use client::group::DownlinkStats;
pub use client::udp::{
    ConnectError, MulticastIface, Target, UdpClient, DEFAULT_KEEPALIVE, MAX_BODY_LEN,
};
pub use client::{ClientCore, ClientError, ClientEvent, ClientOptions, SendError};
pub use federation::config::{ConfigError as FederationConfigError, LinkConfig};
pub use federation::json::Auth as NatsAuth;
pub use federation::link::{Action as LinkAction, Link, LinkState};
pub use federation::members::{LinkEvent, LinkStats, RemoteRelay, REASON_UNREACHABLE};
pub use net::admin::{Admin, AdminConfig};
pub use net::batch::{send_all, send_each, BATCH};
pub use net::clientsfile::{self, ClientsFileError};
pub use net::configfile;
pub use net::fedkey::{load_federation_key, new_federation_key};
pub use net::iface::IfaceSpec;
pub use net::keyfile::{load as load_key, load_or_create, KeyError};
pub use net::logring;
pub use net::nats::{load_auth as load_nats_auth, NatsSocket};
pub use net::server::{Server, Signals};
pub use net::socket::{open_udp, Listen, UdpSockets, DEFAULT_GROUP_V4, DEFAULT_GROUP_V6};
pub use reassembly::{DropReason as ReassemblyDrop, ReassemblyLimits};
pub use relay::config::credentials::{
    self, Credentials, CredentialsDiff, Entry as ClientEntry, Perms,
};
pub use relay::config::Config;
pub use relay::drop::Drop as RelayDrop;
pub use relay::stats::Stats;
pub use relay::{ClientId, ClientIdError, ClientInfo, Event, Relay, Transmits};
pub use session::fernet;
pub use session::group;
pub use session::key::{fingerprint, hex, ServerKey, KEY_SIZES};

/// The client library: a session with the relay on its own UDP socket.
pub use client::udp::UdpClient as Client;
