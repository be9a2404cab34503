//! Test and fuzz support, compiled only for `cargo test` and cargo-fuzz
//! (`--cfg fuzzing`), never into the shipped library. [`net`] is the one
//! simulated network (relay core, client cores, fake clock, cached key,
//! seeds) that the relay, client and clock unit tests and the `core` fuzz
//! program build on.

#[cfg(test)]
mod corpus;
pub mod fuzz;
pub mod fuzz_federation;
pub mod net;
pub mod testrng;
