//! unmask-quantize: turns a Hugging Face DiffuCoder/Dream checkpoint folder (config.json, sharded
//! safetensors, tokenizer files) into one memory-mapped GGUF file that both unmask and llama.cpp's
//! `dream` architecture read, streaming tensor by tensor in bounded memory. Also writes synthetic
//! models of the same architecture for tests and benchmarks, and describes GGUF files.
#![forbid(unsafe_code)]

pub mod config;
pub mod convert;
pub mod dream;
mod error;
pub mod gguf_tokenizer;
pub mod hf;
pub mod info;
pub mod policy;
pub mod safetensors;
pub mod sniff;
pub mod synth;
pub mod synth_tokenizer;
pub mod tokenizer_meta;
pub mod validate;

pub use error::{Error, Result};
