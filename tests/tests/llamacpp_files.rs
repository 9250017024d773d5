//! Files made the way llama.cpp's converter makes them (`tests/python/make_llamacpp_gguf.py`,
//! written with PyPI's `gguf` writer, llama.cpp's tensor order and no unmask keys) are read by
//! unmask: they requantize, the result passes the independent checker, libllama loads both, and
//! the tokenizer rebuilt from the `tokenizer.ggml.*` arrays encodes exactly like the original.

use std::str::FromStr;
use unmask_dream::tokenizer::{load_tokenizer, TokenizerSource};
use unmask_kernels::gguf::GgufFile;
use unmask_kernels::llama::probe_model;
use unmask_tests::{convert_to, describe, run_python, write_tiny_hf};

const SAMPLES: [&str; 6] = [
    "def add(a, b):\n    return a + b\n",
    "<|im_start|>user\nWrite a function.\n<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces, tabs\tand\r\nwindows newlines  ",
    "naïve café, 数字 123456, emoji 🙂",
    "<|mask|><|mask|><|dlm_pad|><|endoftext|>",
    "",
];

#[test]
fn llama_cpp_style_files_requantize_and_keep_their_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 41);
    let original = tokenizers::Tokenizer::from_file(hf.join("tokenizer.json")).unwrap();
    for outtype in ["f16", "f32", "bf16", "q8_0"] {
        let llama_file = dir.path().join(format!("llama-{outtype}.gguf"));
        let made = run_python(
            "make_llamacpp_gguf.py",
            &[
                hf.to_str().unwrap(),
                llama_file.to_str().unwrap(),
                "--outtype",
                outtype,
            ],
        );
        assert!(made.status.success(), "{}", describe(&made));
        assert_eq!(probe_model(&llama_file).unwrap().architecture, "dream");

        let (rebuilt, source) = load_tokenizer(&GgufFile::open(&llama_file).unwrap()).unwrap();
        assert_eq!(source, TokenizerSource::Rebuilt);
        for text in SAMPLES {
            let want = original.encode(text, false).unwrap();
            let got = rebuilt.encode(text, false).unwrap();
            assert_eq!(want.get_ids(), got.get_ids(), "{outtype}: {text:?}");
            assert_eq!(rebuilt.decode(got.get_ids(), false).unwrap(), text);
        }

        for target in ["q8_0", "q4_k_m"] {
            let ours = dir.path().join(format!("ours-{outtype}-{target}.gguf"));
            convert_to(&llama_file, &ours, target);
            assert_eq!(probe_model(&ours).unwrap().architecture, "dream");
            // f16 / q8_0 sources already lost precision; judge the requantized file against the
            // HF source only where the source was lossless.
            if outtype == "f32" || outtype == "bf16" {
                let check = run_python(
                    "check_gguf.py",
                    &[
                        "--gguf",
                        ours.to_str().unwrap(),
                        "--hf",
                        hf.to_str().unwrap(),
                        "--expect-type",
                        target,
                        "--no-tokenizer-json",
                    ],
                );
                assert!(
                    check.status.success(),
                    "{outtype} -> {target}: {}",
                    describe(&check)
                );
            }
        }
    }
}

#[test]
fn our_files_carry_the_verbatim_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 42);
    let out = dir.path().join("ours.gguf");
    convert_to(&hf, &out, "q8_0");
    let (tokenizer, source) = load_tokenizer(&GgufFile::open(&out).unwrap()).unwrap();
    assert_eq!(source, TokenizerSource::Verbatim);
    let original = tokenizers::Tokenizer::from_str(
        &std::fs::read_to_string(hf.join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    for text in SAMPLES {
        assert_eq!(
            tokenizer.encode(text, false).unwrap().get_ids(),
            original.encode(text, false).unwrap().get_ids()
        );
    }
}

#[test]
fn the_runtime_runs_llama_cpp_files_like_ours() {
    // Same f16 weights written by llama.cpp's converter layout and by us: identical logits and
    // identical generations, with the tokenizer rebuilt from the arrays.
    use std::sync::Arc;
    use unmask_runtime::{Control, GenerateParams, Generator, Model};
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 43);
    let llama_file = dir.path().join("llama-f16.gguf");
    let made = run_python(
        "make_llamacpp_gguf.py",
        &[
            hf.to_str().unwrap(),
            llama_file.to_str().unwrap(),
            "--outtype",
            "f16",
        ],
    );
    assert!(made.status.success(), "{}", describe(&made));
    let ours_file = dir.path().join("ours-f16.gguf");
    convert_to(&hf, &ours_file, "f16");
    let theirs = Arc::new(Model::load(&llama_file).unwrap());
    let ours = Arc::new(Model::load(&ours_file).unwrap());
    assert_eq!(theirs.special, ours.special);
    let ids: Vec<u32> = (0..20).map(|i| (i * 29 + 3) % 456).collect();
    let (mut a, mut b) = (
        Generator::new(theirs, 1).unwrap(),
        Generator::new(ours, 1).unwrap(),
    );
    assert_eq!(a.logits(&ids).unwrap(), b.logits(&ids).unwrap());
    let params = GenerateParams {
        max_new_tokens: 16,
        steps: 8,
        temperature: 0.0,
        top_p: None,
        ..Default::default()
    };
    let ga = a
        .generate(&ids[..5], &params, &mut |_| Control::Continue)
        .unwrap();
    let gb = b
        .generate(&ids[..5], &params, &mut |_| Control::Continue)
        .unwrap();
    assert_eq!(ga.tokens, gb.tokens);
}
