//! A model of our own from nothing: a tokenizer trained on Python standard-library files
//! (`unmask_train::tokenizer_train`) and a fresh model folder of a chosen shape around it
//! (`unmask_train::init`, Qwen2's initialisation) load in transformers' Qwen2 (the independent
//! reference, `tests/python/reference.py`) with the same logits as unmask's f32 GGUF of the same
//! folder, and the initial weights have the initialiser's statistics.

use std::sync::Arc;
use unmask_runtime::{Generator, Model};
use unmask_tests::{convert_to, csv, read_npy, reference, rel_max_abs};
use unmask_train::checkpoint::SaveDtype;
use unmask_train::init::{init_model, ModelShape, INIT_STD};
use unmask_train::tokenizer_train::train_tokenizer;

#[test]
fn a_fresh_model_matches_pytorch_and_has_the_initial_statistics() {
    let lib = unmask_train::corpus::python_stdlib(std::path::Path::new("python3")).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    files.truncate(20);
    let (tokenizer_json, report) = train_tokenizer(&files, 1024, 2).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("fresh");
    let shape = ModelShape {
        hidden: 64,
        intermediate: 160,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: None,
        max_position: 2048,
        rope_theta: 10_000.0,
        tie_embeddings: false,
    };
    let made = init_model(&hf, &shape, &tokenizer_json, 5, SaveDtype::F32).unwrap();
    assert_eq!(
        made.config.vocab_size as usize,
        report.vocab.div_ceil(64) * 64
    );
    assert!(
        init_model(&hf, &shape, &tokenizer_json, 5, SaveDtype::F32).is_err(),
        "exists"
    );
    // No temporary folder is left next to it.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The weights as the trainer loads them: N(0, 0.02^2) matrices, unit norms, zero biases.
    let policy = unmask_train::policy::Policy::load_hf(&hf).unwrap();
    for spec in &policy.specs {
        let v = policy.params.get(&spec.gguf_name).unwrap();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let std =
            (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let name = &spec.hf_name;
        if name.contains("norm") {
            assert!(v.iter().all(|&x| x == 1.0), "{name}");
        } else if name.ends_with(".bias") {
            assert!(v.iter().all(|&x| x == 0.0), "{name}");
        } else {
            assert!(mean.abs() < 3e-3, "{name}: mean {mean}");
            assert!((std / INIT_STD - 1.0).abs() < 0.1, "{name}: std {std}");
        }
    }

    // The same logits as transformers' Qwen2 on the same folder.
    let gguf = dir.path().join("fresh-f32.gguf");
    convert_to(&hf, &gguf, "f32");
    let mut generator = Generator::new(Arc::new(Model::load(&gguf).unwrap()), 2).unwrap();
    let mask = made.config.mask_token_id.unwrap();
    let seq: Vec<u32> = (0..24)
        .map(|i| {
            if i % 3 == 2 {
                mask
            } else {
                (i * 37 + 11) % 900
            }
        })
        .collect();
    let npy = dir.path().join("ref.npy");
    reference(&[
        "logits",
        "--hf",
        hf.to_str().unwrap(),
        "--ids",
        &csv(&seq),
        "--out",
        npy.to_str().unwrap(),
    ]);
    let (want, shape) = read_npy(&npy);
    assert_eq!(shape, vec![seq.len(), made.config.vocab_size as usize]);
    let want: Vec<f32> = want.into_iter().map(|v| v as f32).collect();
    let got = generator.logits(&seq).unwrap();
    let err = rel_max_abs(&got, &want);
    println!("fresh model: relative max-abs logits error {err:.2e}");
    assert!(err <= 1e-4, "{err:.3e}");
}
