//! `unmask-train grad` on bad inputs: a typed error naming the problem and exit status 1, never a
//! panic or a ggml abort.

use std::path::Path;
use std::process::Command;
use unmask_quantize::synth::{Preset, SynthModel};
use unmask_train::tensor_file::write_f32;

fn grad(hf: &Path, inputs: &Path, loss: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_unmask-train"))
        .args(["grad", "--threads", "1", "--loss", loss, "--hf"])
        .arg(hf)
        .arg("--inputs")
        .arg(inputs)
        .arg("--out")
        .arg(hf.with_file_name("out.safetensors"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    SynthModel::new(Preset::Tiny, 3)
        .unwrap()
        .write_hf(&hf, 1 << 30)
        .unwrap();
    let inputs = dir.path().join("in.safetensors");
    let sft = |seqs: Vec<f32>, prompt_len: f32, mask: Vec<f32>| {
        write_f32(
            &inputs,
            &[
                ("seqs".into(), vec![1, 4], seqs),
                ("prompt_len".into(), vec![], vec![prompt_len]),
                ("t".into(), vec![], vec![0.5]),
                ("mask".into(), vec![1, 4], mask),
            ],
        )
        .unwrap();
    };
    let cases: [(Vec<f32>, f32, Vec<f32>, &str); 4] = [
        (
            vec![1., 2., 3., 4.],
            0.0,
            vec![0., 0., 1., 0.],
            "prompt_len",
        ),
        (
            vec![1., 2., 3., 9999.],
            1.0,
            vec![0., 0., 1., 0.],
            "vocabulary",
        ),
        (
            vec![1., 2., 3., 4.],
            2.0,
            vec![0., 1., 1., 0.],
            "prompt position",
        ),
        (vec![1., 2., 3., 4.], 1.0, vec![0., 1.], "mask"),
    ];
    for (seqs, p, mask, needle) in cases {
        let n = mask.len();
        if n == 4 {
            sft(seqs, p, mask);
        } else {
            write_f32(
                &inputs,
                &[
                    ("seqs".into(), vec![1, 4], seqs),
                    ("prompt_len".into(), vec![], vec![p]),
                    ("t".into(), vec![], vec![0.5]),
                    ("mask".into(), vec![1, n], mask),
                ],
            )
            .unwrap();
        }
        let (code, err) = grad(&hf, &inputs, "sft");
        assert_eq!(code, Some(1), "{needle}: {err}");
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
    // coupled-grpo without its inputs.
    sft(vec![1., 2., 3., 4.], 1.0, vec![0., 1., 1., 0.]);
    let (code, err) = grad(&hf, &inputs, "coupled-grpo");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("mask_a"), "{err}");
    // A valid SFT input works.
    let (code, err) = grad(&hf, &inputs, "sft");
    assert_eq!(code, Some(0), "{err}");
}
