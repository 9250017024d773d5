//! The GGUF reader on arbitrary bytes: every input is parsed and validated or refused with an
//! error, never a panic, an overflow or an allocation the input does not pay for.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = unmask_kernels::gguf::parse_header(data);
});
