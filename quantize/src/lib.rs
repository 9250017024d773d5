//! unmask-quantize: turns a Hugging Face DiffuCoder/Dream checkpoint folder (config.json, sharded
//! safetensors, tokenizer files) into one memory-mapped GGUF file that both unmask and llama.cpp's
//! `dream` architecture read, streaming tensor by tensor in bounded memory. Also writes synthetic
//! models of the same architecture for tests and benchmarks, and describes GGUF files. The model
//! format itself (configuration, tensor table, tokenizer, checkpoint readers) is `unmask-dream`'s.
#![forbid(unsafe_code)]

pub mod convert;
mod error;
pub mod info;
pub mod mix;
pub mod restamp;
pub mod synth;
pub mod synth_tokenizer;
pub mod validate;

pub use error::{Error, Result};
