//! libFuzzer target: `x402_gateway::fuzzing::payment_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| x402_gateway::fuzzing::payment_header(data));
