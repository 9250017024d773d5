//! llama.cpp agrees: the libllama inside `llama-cpp-sys-2` loads our tiny GGUF for every type,
//! reports the `dream` architecture and exactly our parameter count and shape.

use unmask_kernels::llama::probe_model;
use unmask_tests::{convert_to, write_tiny_hf, ALL_TARGETS};

#[test]
fn libllama_loads_every_type_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 21);
    for target in ALL_TARGETS {
        let out = dir.path().join(format!("tiny-{target}.gguf"));
        let report = convert_to(&hf, &out, target);
        let info = probe_model(&out).unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(info.architecture, "dream", "{target}");
        assert_eq!(info.n_params, report.n_parameters, "{target}");
        assert_eq!(
            (info.n_vocab, info.n_layer, info.n_embd, info.n_ctx_train),
            (512, 2, 256, 4096),
            "{target}"
        );
    }
}

#[test]
fn libllama_rejects_what_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.gguf");
    std::fs::write(&path, b"GGUF but not really").unwrap();
    assert!(probe_model(&path).is_err());
}
