//! The trainer's data reader (`unmask-train sft --data FILE`): JSON lines, JSON arrays of pairs
//! or text, detected and tokenized with the synthetic tokenizer, or refused with an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use unmask_train::sft::{load_data, DataOptions};

/// The tokenizer file every run reads (written once per process).
fn tokenizer_json() -> &'static PathBuf {
    static PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PATH
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let path = dir.path().join("tokenizer.json");
            std::fs::write(
                &path,
                unmask_quantize::synth_tokenizer::synth_tokenizer_json(),
            )
            .expect("write the tokenizer");
            (dir, path)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).and_then(|()| file.flush()).is_err() {
        return;
    }
    let options = DataOptions {
        tokenizer_json: tokenizer_json(),
        max_len: 64,
        eos: Some(0),
        chat: data.first().is_some_and(|b| b & 1 == 1),
        pack: data.first().is_some_and(|b| b & 2 == 2),
        response_len: data.first().is_some_and(|b| b & 4 == 4).then_some(16),
    };
    if let Ok((examples, _report)) = load_data(&[file.path().to_path_buf()], &options) {
        for e in &examples {
            // The reader's documented invariant: a prompt and at least one response token.
            assert!(e.prompt_len >= 1 && e.prompt_len < e.tokens.len());
        }
    }
});
