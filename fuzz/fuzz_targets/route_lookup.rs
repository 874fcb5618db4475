//! libFuzzer target: `x402_gateway::fuzzing::route_lookup`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| x402_gateway::fuzzing::route_lookup(data));
