//! cargo-fuzz target; the body lives in `mcrelay::sim::fuzz::reassembly` so the
//! corpus also replays under `cargo test` (tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mcrelay::sim::fuzz::reassembly(data));
