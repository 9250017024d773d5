//! The PyTorch reference of the training losses (coupled-GRPO and masked-diffusion SFT) proves
//! itself before it judges the trainer: autograd gradients against an independent weighted
//! cross-entropy route (docs/training.md §5), finite differences, mask properties and its own
//! command line (`tests/python/grpo_reference_selftest.py`).

use std::process::Command;
use unmask_tests::{describe, python, repo_root, unmask_bin};

#[test]
fn grpo_reference_selftest_passes() {
    let quantize = unmask_bin().with_file_name("unmask-quantize");
    assert!(quantize.exists(), "{} not built", quantize.display());
    let out = Command::new(python())
        .arg(repo_root().join("tests/python/grpo_reference_selftest.py"))
        .env("UNMASK_QUANTIZE", &quantize)
        .output()
        .expect("run grpo_reference_selftest.py");
    assert!(out.status.success(), "selftest failed: {}", describe(&out));
}
