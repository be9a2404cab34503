//! Everything that touches a socket or the file system: the one mio loop,
//! socket setup, the group mode downlink, sendmmsg batching, admin
//! sessions, the log ring, and the key, clients and config files. The
//! protocol decisions live in the sans-IO cores. Also the NATS socket of the
//! federation link and the federation key file.

pub mod admin;
pub mod batch;
pub mod clientsfile;
pub mod configfile;
pub mod downlink;
pub mod federate;
pub mod fedkey;
pub mod iface;
pub mod keyfile;
pub mod logring;
pub mod nats;
pub mod prometheus;
pub mod server;
pub mod socket;
