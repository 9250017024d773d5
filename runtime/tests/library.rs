//! The library API: the step callback sees every step and can cancel; a generator stays usable
//! after a cancelled run and gives the same result as a fresh one; deterministic for a seed.

use std::sync::Arc;
use unmask_quantize::convert::{convert_synth, ConvertOptions};
use unmask_quantize::synth::{Preset, SynthModel};
use unmask_runtime::{Control, GenerateParams, Generator, Model};

fn tiny() -> (tempfile::TempDir, Arc<Model>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let options = ConvertOptions {
        target: "f16".parse().unwrap(),
        overwrite: true,
        progress: false,
        allow_requantize: false,
        throttle: Default::default(),
    };
    convert_synth(&SynthModel::new(Preset::Tiny, 17).unwrap(), &path, &options).unwrap();
    let model = Arc::new(Model::load(&path).unwrap());
    (dir, model)
}

#[test]
fn callback_sees_every_step_and_can_cancel() {
    let (_dir, model) = tiny();
    let mut generator = Generator::new(model.clone(), 1).unwrap();
    let prompt = [5u32, 6, 7, 8];
    let params = GenerateParams {
        max_new_tokens: 24,
        steps: 12,
        temperature: 0.7,
        seed: 3,
        ..Default::default()
    };

    let mut seen = Vec::new();
    let full = generator
        .generate(&prompt, &params, &mut |e| {
            assert_eq!(e.canvas.len(), prompt.len() + 24);
            assert_eq!(&e.canvas[..4], &prompt, "the prompt is never changed");
            seen.push((e.step, e.committed.len()));
            Control::Continue
        })
        .unwrap();
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        (0..12).collect::<Vec<_>>()
    );
    assert_eq!(
        seen.iter().map(|s| s.1).sum::<usize>(),
        full.commits.iter().map(Vec::len).sum::<usize>()
    );
    assert!(!full.cancelled);

    let cancelled = generator
        .generate(&prompt, &params, &mut |e| {
            if e.step == 4 {
                Control::Cancel
            } else {
                Control::Continue
            }
        })
        .unwrap();
    assert!(cancelled.cancelled);
    assert_eq!(cancelled.steps, 5, "steps 0..=4 ran, then the run stopped");

    // Reusable after cancelling, and deterministic for a seed across generators.
    let again = generator
        .generate(&prompt, &params, &mut |_| Control::Continue)
        .unwrap();
    let fresh = Generator::new(model, 1)
        .unwrap()
        .generate(&prompt, &params, &mut |_| Control::Continue)
        .unwrap();
    assert_eq!(again.tokens, full.tokens);
    assert_eq!(fresh.tokens, full.tokens);
    let other_seed = GenerateParams { seed: 4, ..params };
    let different = generator
        .generate(&prompt, &other_seed, &mut |_| Control::Continue)
        .unwrap();
    assert_ne!(different.tokens, full.tokens);
}

#[test]
fn canvases_of_different_lengths_share_one_generator() {
    let (_dir, model) = tiny();
    let mut generator = Generator::new(model, 1).unwrap();
    for (n, steps) in [(8usize, 8usize), (16, 4), (8, 2)] {
        let params = GenerateParams {
            max_new_tokens: n,
            steps,
            temperature: 0.0,
            top_p: None,
            ..Default::default()
        };
        let g = generator
            .generate(&[1, 2, 3], &params, &mut |_| Control::Continue)
            .unwrap();
        assert_eq!(g.tokens.len(), n);
        assert_eq!(g.steps, steps);
    }
}
