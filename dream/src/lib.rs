//! unmask-dream: the Dream/DiffuCoder model, its format and its definition, in one place.
//!
//! - [`config`]: the hyper-parameters ([`DreamConfig`]), from a Hugging Face `config.json` or
//!   from GGUF metadata, checked before anything is sized by them;
//! - [`layout`]: the one table of GGUF metadata keys and tensor names (shared with llama.cpp's
//!   `dream` loader), with each layer's tensors resolved into a typed [`layout::Layer`];
//! - [`tokenizer`]: the tokenizer of a GGUF file, and [`tokenizer_meta`]: the `tokenizer.ggml.*`
//!   arrays written from, and rebuilt into, a `tokenizer.json`;
//! - [`tokens`]: the special tokens generation relies on (mask, end markers);
//! - [`hf`] and [`safetensors`]: Hugging Face checkpoint folders and their weight files;
//! - [`sniff`]: what kind of file a user passed, to say so when it is the wrong one;
//! - [`chat`]: the Instruct prompt format and how an answer is cut out of the canvas;
//! - [`forward`]: the layer stack as a GGML graph (docs/model.md §3), the project's one model
//!   definition, built by inference and by training alike.
//!
//! The runtime (`unmask-runtime`), the converter (`unmask-quantize`) and the trainer
//! (`unmask-train`) all build on this crate; it builds on `unmask-kernels` for GGUF and GGML.
#![forbid(unsafe_code)]

pub mod chat;
pub mod config;
mod error;
pub mod forward;
pub mod hf;
pub mod layout;
pub mod safetensors;
pub mod sniff;
pub mod tokenizer;
pub mod tokenizer_meta;
pub mod tokens;

pub use config::DreamConfig;
pub use error::{Error, Result};
pub use tokens::SpecialTokens;
