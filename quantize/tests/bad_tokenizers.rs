//! The converter refuses files whose tokenizer the runtime could not build, instead of writing
//! them: a stored `tokenizer.json` that is not JSON, and 10^6 tokens with 512 token types. No
//! output (and no temporary file) is left behind. A good file converts and its tokenizer builds.

use std::path::Path;
use unmask_dream::layout::keys;
use unmask_dream::tokenizer::load_tokenizer;
use unmask_kernels::gguf::{GgufArray, GgufFile, GgufValue, GgufWriter};
use unmask_quantize::convert::{convert, convert_synth, ConvertOptions};
use unmask_quantize::synth::{Preset, SynthModel};

fn options(target: &str) -> ConvertOptions {
    ConvertOptions {
        target: target.parse().unwrap(),
        overwrite: true,
        progress: false,
        allow_requantize: false,
        throttle: Default::default(),
    }
}

/// A copy of `src` with its metadata changed by `edit`, tensors byte for byte.
fn copy_with(src: &Path, dst: &Path, edit: impl Fn(&mut Vec<(String, GgufValue)>)) {
    let f = GgufFile::open(src).unwrap();
    let mut meta = f.metadata().to_vec();
    edit(&mut meta);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.set(&k, v);
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, &t.shape, t.ty).unwrap();
    }
    let mut d = w.begin(dst, true).unwrap();
    for t in f.tensors() {
        d.write(f.tensor_data(t)).unwrap();
    }
    d.finish().unwrap();
}

fn set(meta: &mut Vec<(String, GgufValue)>, key: &str, v: GgufValue) {
    meta.retain(|(k, _)| k != key);
    meta.push((key.to_string(), v));
}

fn assert_refused(input: &Path, dir: &Path, why: &str) {
    let out = dir.join("out.gguf");
    let e = convert(input, &out, &options("q8_0")).expect_err("converted a bad tokenizer");
    let msg = e.to_string();
    assert!(msg.contains(why), "error {msg:?} does not mention {why:?}");
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("out"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn bad_tokenizers_are_refused_at_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    convert_synth(
        &SynthModel::new(Preset::Tiny, 3).unwrap(),
        &good,
        &options("f16"),
    )
    .unwrap();

    // Control: the good file re-converts and its tokenizer builds.
    let ok = dir.path().join("ok.gguf");
    convert(&good, &ok, &options("q8_0")).unwrap();
    load_tokenizer(&GgufFile::open(&ok).unwrap()).unwrap();

    let not_json = dir.path().join("not-json.gguf");
    copy_with(&good, &not_json, |m| {
        set(
            m,
            keys::TOKENIZER_JSON,
            GgufValue::String("{ this is not json".into()),
        )
    });
    assert_refused(&not_json, dir.path(), "tokenizer_json");

    let mismatched = dir.path().join("mismatched.gguf");
    copy_with(&good, &mismatched, |m| {
        m.retain(|(k, _)| k != keys::TOKENIZER_JSON);
        let tokens: Vec<String> = (0..1_000_000).map(|i| format!("t{i}")).collect();
        set(m, keys::TOKENS, GgufValue::Array(GgufArray::String(tokens)));
        set(
            m,
            keys::TOKEN_TYPE,
            GgufValue::Array(GgufArray::I32(vec![1; 512])),
        );
    });
    assert_refused(&mismatched, dir.path(), "tokens");
}
