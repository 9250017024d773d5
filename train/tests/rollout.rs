//! Rollouts on the f32 policy run the runtime's denoising loop: token for token what the runtime
//! generates from an f32 GGUF file converted from the same checkpoint, with the same seeds.

use std::path::Path;
use std::sync::Arc;
use unmask_quantize::convert::{convert, ConvertOptions};
use unmask_quantize::synth::{Preset, SynthModel};
use unmask_runtime::rng::Rng;
use unmask_runtime::{Control, Generator, Model, ModelSpec};
use unmask_train::policy::Policy;
use unmask_train::rollout::{prompt_ids, rollouts, RolloutParams, PROMPT_TOKENS};

fn tiny_hf(dir: &Path, seed: u64) {
    SynthModel::new(Preset::Tiny, seed)
        .expect("synth tiny")
        .write_hf(dir, 1 << 30)
        .expect("write tiny HF folder");
}

fn small_params() -> RolloutParams {
    RolloutParams {
        max_new_tokens: 24,
        steps: 12,
        threads: 2,
        ..RolloutParams::default()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    policy: Policy,
    spec: ModelSpec,
    prompts: Vec<Vec<u32>>,
    gguf: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    tiny_hf(&hf, 5);
    let gguf = dir.path().join("tiny-f32.gguf");
    let options = ConvertOptions {
        target: "f32".parse().unwrap(),
        overwrite: true,
        progress: false,
        allow_requantize: false,
        throttle: Default::default(),
    };
    convert(&hf, &gguf, &options).expect("convert to f32");
    let policy = Policy::load_hf(&hf).unwrap();
    let spec = ModelSpec::from_hf(&hf).unwrap();
    let prompts = ["Write a function that reverses a string", "def add(a, b):"]
        .iter()
        .map(|t| prompt_ids(&spec, t, PROMPT_TOKENS).unwrap())
        .collect();
    Setup {
        _dir: dir,
        policy,
        spec,
        prompts,
        gguf,
    }
}

#[test]
fn rollouts_equal_the_runtime_on_the_converted_f32_file() {
    let s = setup();
    let params = small_params();
    let mut rng = Rng::new(11);
    let got = rollouts(&s.policy, &s.spec, &s.prompts, 3, &params, &mut rng).unwrap();
    assert_eq!(got.len(), 6);

    let model = Arc::new(Model::load(&s.gguf).unwrap());
    assert_eq!(model.special, s.spec.special);
    // GGUF stores rms_norm_eps as f32; the graph uses it as f32 either way.
    assert_eq!(
        model.config.rms_norm_eps as f32,
        s.spec.config.rms_norm_eps as f32
    );
    let same_eps = unmask_dream::DreamConfig {
        rms_norm_eps: s.spec.config.rms_norm_eps,
        ..model.config.clone()
    };
    assert_eq!(same_eps, s.spec.config);
    assert_eq!(model.defaults, s.spec.defaults);
    let mut generator = Generator::new(model, 2).unwrap();
    let mut seeds = Rng::new(11);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.prompt_index, i / 3);
        assert_eq!(r.prompt_ids, s.prompts[i / 3]);
        assert_eq!(
            r.seed,
            seeds.next_u64(),
            "seeds come from the rollout generator in order"
        );
        let reference = generator
            .generate(&r.prompt_ids, &params.generate_params(r.seed), &mut |_| {
                Control::Continue
            })
            .unwrap();
        assert_eq!(
            r.completion_ids, reference.tokens,
            "rollout {i}: f32 parameters and the f32 GGUF file disagree"
        );
        assert_eq!(r.completion_ids.len(), params.max_new_tokens);
        assert!(r.completion_ids.iter().all(|&t| t != s.spec.special.mask));
    }
}

#[test]
fn the_rollout_seed_decides_the_completions() {
    let s = setup();
    let params = small_params();
    let run = |seed: u64| {
        let mut rng = Rng::new(seed);
        rollouts(&s.policy, &s.spec, &s.prompts[..1], 4, &params, &mut rng)
            .unwrap()
            .into_iter()
            .map(|r| r.completion_ids)
            .collect::<Vec<_>>()
    };
    let a = run(3);
    assert_eq!(a, run(3), "same rollout seed, same completions");
    let b = run(4);
    assert_ne!(a, b, "another rollout seed, other completions");
    // The completions of one prompt differ from each other (each has its own seed).
    assert!(a.iter().skip(1).any(|c| *c != a[0]));
    // After the call the trainer owns its parameters alone again.
    assert_eq!(Arc::strong_count(&s.policy.params), 1);
}

#[test]
fn completion_mask_ends_at_the_first_im_end() {
    let s = setup();
    let im_end = s
        .spec
        .special
        .im_end
        .expect("the tiny tokenizer has <|im_end|>");
    let mut rng = Rng::new(21);
    let got = rollouts(&s.policy, &s.spec, &s.prompts, 4, &small_params(), &mut rng).unwrap();
    for r in &got {
        assert_eq!(r.completion_mask.len(), r.completion_ids.len());
        let expect = match r.completion_ids.iter().position(|&t| t == im_end) {
            Some(i) => i + 1,
            None => r.completion_ids.len(),
        };
        let ones = r.completion_mask.iter().take_while(|&&m| m == 1.0).count();
        assert_eq!(ones, expect);
        assert!(r.completion_mask[ones..].iter().all(|&m| m == 0.0));
    }
}

#[test]
fn prompts_keep_their_last_tokens() {
    let s = setup();
    let text = "word ".repeat(400);
    let full = prompt_ids(&s.spec, &text, usize::MAX).unwrap();
    assert!(full.len() > PROMPT_TOKENS);
    let kept = prompt_ids(&s.spec, &text, PROMPT_TOKENS).unwrap();
    assert_eq!(kept.len(), PROMPT_TOKENS);
    assert_eq!(kept[..], full[full.len() - PROMPT_TOKENS..]);
    // The chat prompt ends with the assistant header.
    let short = prompt_ids(&s.spec, "hi", PROMPT_TOKENS).unwrap();
    assert_eq!(
        short,
        s.spec
            .encode(&unmask_dream::chat::instruct_prompt("hi"))
            .unwrap()
    );
}
