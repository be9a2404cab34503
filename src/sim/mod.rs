//! Test and fuzz support, compiled only for `cargo test` and cargo-fuzz
//! (`--cfg fuzzing`), never into the shipped library.

#[cfg(test)]
mod corpus;
pub mod fuzz;
pub mod fuzz_federation;
pub mod net;
pub mod testrng;
