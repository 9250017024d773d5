//! unmask-runtime: maps a DiffuCoder/Dream GGUF file and runs the masked-diffusion denoising loop
//! on GGML (MODEL.md §3–§6): a bidirectional Qwen2 forward pass with the logits shift, Dream's
//! sampling and confidence rules, the f32 step schedule, block-wise scheduling, and a step
//! callback that can observe and cancel generation.
#![forbid(unsafe_code)]

pub mod chat;
mod error;
pub mod forward;
pub mod generate;
pub mod model;
pub mod order;
pub mod rng;
pub mod schedule;

pub use error::{Error, Result};
pub use generate::{Algorithm, Control, GenerateParams, Generation, Generator, StepEvent, Timings};
pub use model::Model;
