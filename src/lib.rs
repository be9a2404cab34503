//! mcrelay: a small, hardened relay that turns an open UDP multicast group
//! into a secure, managed relay (protocol v1, see PROTOCOL.md).
//!
//! The protocol logic is sans-IO: [`relay::Relay`] (server) and
//! [`client::ClientCore`] (client) take the caller's time and datagrams and
//! return datagrams to send; they own no socket and read no clock. The thin
//! IO shells are [`server::Server`] (one mio loop) and
//! [`udp_client::UdpClient`] (blocking std socket).
#![warn(missing_docs)]

pub mod admin;
pub mod batch;
pub mod client;
pub mod config;
pub mod cookie;
pub mod fragment;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod logring;
pub mod ratelimit;
pub mod relay;
#[cfg(test)]
mod relay_tests;
pub mod replay;
pub mod server;
pub mod session;
pub mod stats;
#[doc(hidden)]
pub mod testrng;
pub mod timer;
pub mod tlv;
pub mod udp_client;
pub mod wire;

/// The client library: a session with the relay on its own UDP socket.
pub use udp_client::UdpClient as Client;
