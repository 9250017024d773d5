//! Gradient parity of the trainer with the independent PyTorch autograd reference
//! (`tests/python/grpo_reference.py`, GRPO_REFERENCE.md): for the same tiny checkpoint and the
//! same input file, `unmask-train grad` (run in-process through the library function the command
//! calls) gives the reference's loss, per-token tensors and the gradient of EVERY parameter
//! tensor within `TOLERANCE` (relative max-abs error per tensor: max |ours - ref| / max |ref|).
//! Every case runs on both training devices: the built-in CPU backend (`--device cpu`, blocked
//! GEMM products) and the device pipeline a GPU runs (`--device ggml-cpu`: parameters in the
//! backend's buffers, ggml's products, results copied out), each against the reference and the
//! two against each other.
//! Both losses are covered: coupled-GRPO (with old and ref log-probs, both clip branches; and
//! without old_logp, mu == 1) and masked-diffusion SFT (both normalisations). A negative control
//! (perturbed advantages) must miss the reference gradients by far.

use std::collections::BTreeMap;
use std::path::Path;
use unmask_kernels::backend::Backend;
use unmask_tests::{describe, run_python, write_tiny_hf};
use unmask_train::grad::{coupled_grpo, run_files, GradOutput, LossKind};
use unmask_train::policy::Policy;
use unmask_train::tensor_file::{read_arrays, Array};

/// f32 on both sides; observed about 4e-6 (reductions in a different order).
const TOLERANCE: f64 = 2e-5;
/// Parameter tensors of the tiny model (2 layers x 12 + embedding, final norm, lm_head).
const N_PARAMS: usize = 27;

fn rel_err(ours: &[f64], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let diff = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let scale = theirs.iter().map(|b| b.abs()).fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

fn reference(args: &[&str]) {
    let out = run_python("grpo_reference.py", args);
    assert!(
        out.status.success(),
        "grpo_reference.py {args:?}: {}",
        describe(&out)
    );
}

/// Compares every tensor of the reference output with ours; returns the worst gradient error.
fn compare(label: &str, ours: &BTreeMap<String, Array>, theirs: &BTreeMap<String, Array>) -> f64 {
    println!("{label}: tensor, relative max-abs error, max |ref|");
    let mut worst: f64 = 0.0;
    let mut n_grads = 0;
    for (name, want) in theirs {
        let got = ours
            .get(name)
            .unwrap_or_else(|| panic!("{label}: our output lacks `{name}`"));
        assert_eq!(got.shape, want.shape, "{label}: shape of `{name}`");
        let err = rel_err(&got.data, &want.data);
        let scale = want.data.iter().map(|v| v.abs()).fold(0.0, f64::max);
        println!("  {name:56} {err:.2e}  {scale:.3e}");
        assert!(
            err <= TOLERANCE,
            "{label}: `{name}` differs by {err:.3e} > {TOLERANCE:.0e}"
        );
        if name.starts_with("grad.") {
            n_grads += 1;
            worst = worst.max(err);
        }
    }
    assert_eq!(n_grads, N_PARAMS, "{label}: every parameter has a gradient");
    println!("{label}: worst gradient error {worst:.2e} over {n_grads} tensors");
    worst
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The training devices every case runs on.
const DEVICES: [&str; 2] = ["cpu", "ggml-cpu"];

/// `unmask-train grad` on every device into `dir/ours-<label>-<device>.safetensors`, each
/// compared with the reference output `theirs`, then the devices with each other (the same
/// bound: different product kernels round differently). Returns the reference arrays.
fn run_on_devices(
    label: &str,
    hf: &Path,
    inputs: &Path,
    theirs: &Path,
    kind: LossKind,
) -> BTreeMap<String, Array> {
    let want = read_arrays(theirs).unwrap();
    let mut outputs = Vec::new();
    for device in DEVICES {
        let ours = theirs.with_file_name(format!(
            "ours-{}-{device}.safetensors",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        run_files(hf, inputs, &ours, kind, 2, Some(device)).expect("unmask-train grad");
        let got = read_arrays(&ours).unwrap();
        compare(&format!("{label} on {device}"), &got, &want);
        outputs.push(got);
    }
    let mut worst: f64 = 0.0;
    for (name, cpu) in &outputs[0] {
        let err = rel_err(&outputs[1][name].data, &cpu.data);
        assert!(
            err <= TOLERANCE,
            "{label}: `{name}` differs between the devices by {err:.3e}"
        );
        worst = worst.max(err);
    }
    println!("{label}: devices {DEVICES:?} agree within {worst:.2e}");
    want
}

#[test]
fn coupled_grpo_gradients_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 71);
    for (label, extra) in [("old+ref", &[][..]), ("no old (mu=1)", &["--no-old"][..])] {
        let inputs = dir.path().join("in.safetensors");
        let theirs = dir.path().join("ref.safetensors");
        let mut args = vec![
            "make-inputs",
            "--hf",
            s(&hf),
            "--out",
            s(&inputs),
            "--kind",
            "coupled-grpo",
            "--seed",
            "5",
            "--n",
            "4",
            "--prompt-len",
            "6",
            "--completion-len",
            "10",
        ];
        args.extend_from_slice(extra);
        reference(&args);
        reference(&[
            "coupled-grpo",
            "--hf",
            s(&hf),
            "--inputs",
            s(&inputs),
            "--out",
            s(&theirs),
        ]);
        let want = run_on_devices(label, &hf, &inputs, &theirs, LossKind::CoupledGrpo);

        if extra.is_empty() {
            // Negative control: the same inputs with perturbed advantages must give a clearly
            // different gradient (the check above can fail).
            let mut arrays = read_arrays(&inputs).unwrap();
            let adv = arrays.get_mut("advantages").unwrap();
            for (i, a) in adv.data.iter_mut().enumerate() {
                *a += if i % 2 == 0 { 0.3 } else { -0.3 };
            }
            let policy = Policy::load_hf(&hf).unwrap();
            let mut backend = Backend::new(2).unwrap();
            let GradOutput { grads, .. } = coupled_grpo(&policy, &arrays, &mut backend).unwrap();
            let mut worst: f64 = 0.0;
            for spec in &policy.specs {
                let got: Vec<f64> = grads.by_name[&spec.gguf_name]
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect();
                worst = worst.max(rel_err(&got, &want[&format!("grad.{}", spec.hf_name)].data));
            }
            println!("negative control (perturbed advantages): worst gradient error {worst:.2e}");
            assert!(
                worst > 1e3 * TOLERANCE,
                "perturbed advantages went unnoticed: {worst:.2e}"
            );
        }
    }
}

#[test]
fn sft_gradients_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 72);
    let inputs = dir.path().join("in.safetensors");
    reference(&[
        "make-inputs",
        "--hf",
        s(&hf),
        "--out",
        s(&inputs),
        "--kind",
        "sft",
        "--seed",
        "6",
        "--n",
        "4",
        "--prompt-len",
        "6",
        "--completion-len",
        "10",
    ]);
    for (norm, per_row) in [("tokens", false), ("rows", true)] {
        let theirs = dir.path().join(format!("ref-{norm}.safetensors"));
        reference(&[
            "sft",
            "--hf",
            s(&hf),
            "--inputs",
            s(&inputs),
            "--out",
            s(&theirs),
            "--norm",
            norm,
        ]);
        run_on_devices(
            &format!("sft ({norm})"),
            &hf,
            &inputs,
            &theirs,
            LossKind::Sft { per_row },
        );
    }
}

/// The pretraining form of the loss (`unmask-train sft --pack true`): windows whose only
/// "prompt" is token 0, every later token maskable, `tokens` normalisation.
#[test]
fn pretraining_loss_gradients_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 73);
    let inputs = dir.path().join("in.safetensors");
    reference(&[
        "make-inputs",
        "--hf",
        s(&hf),
        "--out",
        s(&inputs),
        "--kind",
        "sft",
        "--seed",
        "8",
        "--n",
        "4",
        "--prompt-len",
        "1",
        "--completion-len",
        "23",
    ]);
    let arrays = read_arrays(&inputs).unwrap();
    assert!(
        arrays["prompt_len"].data.iter().all(|&p| p == 1.0),
        "every window's prompt is its first token"
    );
    let theirs = dir.path().join("ref.safetensors");
    reference(&[
        "sft",
        "--hf",
        s(&hf),
        "--inputs",
        s(&inputs),
        "--out",
        s(&theirs),
        "--norm",
        "tokens",
    ]);
    run_on_devices(
        "pretraining (prompt 1)",
        &hf,
        &inputs,
        &theirs,
        LossKind::Sft { per_row: false },
    );
}
