//! unmask-runtime: maps a DiffuCoder/Dream GGUF file and runs the masked-diffusion denoising loop
//! on GGML (docs/model.md §3–§6): a bidirectional Qwen2 forward pass with the logits shift, Dream's
//! sampling and confidence rules, the f32 step schedule, block-wise scheduling, and a step
//! callback that can observe and cancel generation.
//!
//! A [`Model`] is a [`ModelSpec`] (hyper-parameters, tokenizer, special tokens) plus the tensors
//! the graphs read: a GGUF file's mapped weights ([`Model::load`]) or any other
//! `unmask_kernels::graph::TensorSource` ([`Model::from_parts`]), such as the trainer's f32
//! parameters, which thus run the very same denoising loop ([`Generator`]).
//!
//! Where a logit becomes a token: [`canvas`] runs the layers over the canvas, [`head`] projects
//! the rows that predict masked positions, [`sampler`] turns each row into a token and a
//! confidence (Dream's filters and confidence rules), [`positions`] chooses which positions
//! commit, and [`generate`] (exact) or the fast modes (`fast.rs`, [`kv_cache`]) run the loop.
#![forbid(unsafe_code)]

pub mod canvas;
mod error;
mod fast;
pub mod generate;
pub mod head;
pub mod kv_cache;
pub mod model;
pub mod order;
pub mod params;
pub mod positions;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod settings;

pub use error::{Error, Result};
pub use generate::{
    Algorithm, CacheMode, Canceller, Control, GenerateParams, Generation, Generator, StepEvent,
    Timings,
};
pub use model::{Model, ModelSpec};
