//! Everything that touches a socket or the file system: the one mio loop,
//! socket setup, the group mode downlink, sendmmsg batching, admin
//! sessions, the log ring and the key file. The protocol decisions live in
//! the sans-IO cores.

pub mod admin;
pub mod batch;
pub mod downlink;
pub mod iface;
pub mod keyfile;
pub mod logring;
pub mod server;
pub mod socket;
