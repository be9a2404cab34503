//! cargo-fuzz target; the body lives in `mcrelay::sim::fuzz_federation` so
//! the corpus also replays under `cargo test` (src/sim/corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mcrelay::sim::fuzz_federation::federation(data));
