//! The tokenizer a GGUF file describes (`tokenizer_json`, or llama.cpp's token, type and merge
//! arrays): a file that parses is read and built into a tokenizer or refused with an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use unmask_dream::tokenizer::TokenizerSpec;

fuzz_target!(|data: &[u8]| {
    let Ok((metadata, _)) = unmask_kernels::gguf::parse_header(data) else {
        return;
    };
    let get = |key: &str| metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    if let Ok(spec) = TokenizerSpec::from_metadata(&get) {
        if let Ok(tokenizer) = spec.build() {
            let _ = tokenizer.encode("def f(x):\n    return x", false);
        }
    }
});
