//! Federation: several relays share one group through NATS.
//!
//! - [`nats`]: the NATS client protocol as bytes (sans-IO codec).
//! - [`msg`]: what relays say to each other on the federation subject,
//!   sealed with the federation key, and the replay and origin checks on
//!   what they hear.
//! - [`link`]: the sans-IO state machine of one relay's NATS connection:
//!   server list, reconnects, keepalive, the outbound buffer, remote
//!   membership and relay liveness.
//!
//! The socket itself is `net::nats`; the relay core knows none of this and
//! talks to [`link::Link`] through its publish calls and events.

pub mod link;
pub mod msg;
pub mod nats;
#[cfg(test)]
mod tests;
