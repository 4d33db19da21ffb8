#![no_main]
//! See `stockyard::fuzzing::body` for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stockyard::fuzzing::body(data));
