//! Federation: several relays share one group through NATS.
//!
//! - [`nats`]: the NATS client protocol as bytes (sans-IO codec);
//!   [`json`]: its INFO and CONNECT objects.
//! - [`msg`]: what relays say to each other on the federation subject,
//!   sealed with the federation key; [`inbox`]: the replay and origin
//!   checks on what they hear.
//! - [`link`]: the sans-IO state machine of one relay's NATS connection:
//!   server list, reconnects, keepalive, the outbound buffer, remote
//!   membership and relay liveness; [`config`]: its settings;
//!   [`members`]: what it knows of the other relays' members.
//!
//! The socket itself is `net::nats`; the relay core knows none of this and
//! talks to [`link::Link`] through its publish calls and events.

pub mod config;
pub mod inbox;
pub mod json;
pub mod link;
pub mod members;
pub mod msg;
pub mod nats;
#[cfg(test)]
mod tests;
