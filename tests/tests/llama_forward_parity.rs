//! Forward parity with llama.cpp: for the same GGUF, the logits libllama computes (non-causal
//! Dream, logits for every position) and the logits unmask computes agree. Both run ggml's
//! kernels on the same weights; they differ in graph details (llama.cpp's flash attention keeps
//! K/V in f16), hence the tolerance.

use std::sync::Arc;
use unmask_kernels::llama::LlamaForward;
use unmask_runtime::{Generator, Model};
use unmask_tests::{convert_to, rel_max_abs, write_tiny_hf};

/// Relative max-abs error allowed, per weight type (measured: 1.5e-3, 1.8e-3, 1.9e-2, 3.3e-2).
const TOLERANCE: [(&str, f64); 4] = [("f32", 3e-3), ("f16", 3e-3), ("q8_0", 3e-2), ("q4_k", 5e-2)];

#[test]
fn logits_agree_with_libllama() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 51);
    let sequences: [Vec<u32>; 3] = [
        (0..40).map(|i| (i * 37 + 5) % 456).collect(),
        vec![460; 17].into_iter().chain([3, 99, 200]).collect(),
        (0..7)
            .map(|i| 100 + i)
            .chain(std::iter::repeat_n(460, 57))
            .collect(),
    ];
    for (ty, tolerance) in TOLERANCE {
        let path = dir.path().join(format!("tiny-{ty}.gguf"));
        convert_to(&hf, &path, ty);
        let model = Arc::new(Model::load(&path).unwrap());
        let mut ours = Generator::new(model, 2).unwrap();
        let mut theirs = LlamaForward::new(&path, 64, 2).unwrap();
        for seq in &sequences {
            let a = ours.logits(seq).unwrap();
            let ids: Vec<i32> = seq.iter().map(|&t| t as i32).collect();
            let b = theirs.logits(&ids).unwrap();
            let err = rel_max_abs(&a, b);
            println!("{ty} len {}: relative max-abs error {err:.2e}", seq.len());
            assert!(err <= tolerance, "{ty}: {err:.3e} > {tolerance:.0e}");
        }
    }
}
