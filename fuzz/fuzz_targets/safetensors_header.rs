//! The safetensors reader on arbitrary bytes (a whole file image): the header's length, JSON,
//! dtypes, shapes and offsets are validated or refused with an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = unmask_dream::safetensors::parse_image(data);
});
