//! unmask-kernels: the one crate that talks to GGML.
//!
//! Everything unsafe in unmask lives here (and in `ffi/`): the bindings of `llama-cpp-sys-2`
//! (which vendors ggml and llama.cpp) are wrapped in a small safe API: tensor types and their
//! block layout ([`GgmlType`]), quantization with ggml's own routines ([`quant`]), a compute
//! context/graph/backend wrapper ([`graph`]), and a probe of libllama ([`llama`]). The GGUF
//! container format ([`gguf`]) is implemented here in plain Rust because it is ggml's file format
//! and shares its type table.

pub mod backend;
pub mod device;
mod error;
pub mod finite;
mod ggml_type;
pub mod gguf;
pub mod graph;
mod graph_qgemm;
pub mod heap;
pub mod llama;
pub mod mapping;
pub mod params;
pub mod qgemm;
pub mod quant;
pub mod score;
pub mod temp_files;
pub mod vmath;
pub mod weights;

pub use error::{Error, Result};
pub use ggml_type::GgmlType;
