//! libFuzzer target: `x402_gateway::fuzzing::facilitator_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| x402_gateway::fuzzing::facilitator_response(data));
