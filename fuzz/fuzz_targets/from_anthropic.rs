#![no_main]
//! See `stockyard::fuzzing::from_anthropic` for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stockyard::fuzzing::from_anthropic(data));
