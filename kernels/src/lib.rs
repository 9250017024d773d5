//! unmask-kernels: the one crate that talks to GGML.
//!
//! Everything unsafe in unmask lives here (and in `ffi/`): the bindings of `llama-cpp-sys-2`
//! (which vendors ggml and llama.cpp) are wrapped in a small safe API. The GGUF container format
//! ([`gguf`]) is implemented here in plain Rust because it is ggml's file format and shares its
//! type table. Where to find what:
//!
//! | module | what it holds |
//! |---|---|
//! | [`graph`] | the compute graph ([`graph::Graph`], [`graph::TensorId`], [`graph::TensorSource`]): its operations, automatic differentiation, trainable parameters ([`graph::param_store`]) and AdamW ([`graph::adamw`]), data transfer, device-side scoring ([`graph::scoring`]) and the int8 GEMM as ggml custom ops |
//! | [`backend`], [`device`], [`cpu_code`] | where graphs run: the CPU backend with its thread pool, or a device (CUDA) from a loaded backend library; which CPU instruction sets the build uses and the machine offers |
//! | [`weights`] | a GGUF file's tensors as ggml tensors: memory-mapped (CPU) or uploaded (device) |
//! | [`simd`] | hand-written SIMD on host memory, without ggml: the int8 GEMM ([`simd::qgemm`]) and vectorised exp/ln ([`simd::vmath`]) |
//! | [`gguf`], [`mapping`], [`temp_files`] | GGUF reading and writing, mapped byte ranges, temporary output files |
//! | [`GgmlType`], [`quant`], [`finite`] | tensor types and their block layout, quantization with ggml's routines, finiteness checks |
//! | [`llama`], [`heap`] | a probe of libllama, returning freed heap memory to the system |
//! | [`log`] | where ggml's messages and the libraries' warnings go (a host's sink, or standard error) |
//!
//! Errors are one [`Error`] type with a variant per kind of failure a caller can act on.

pub mod backend;
pub mod cpu_code;
pub mod device;
mod error;
pub mod finite;
mod ggml_context;
mod ggml_type;
pub mod gguf;
pub mod graph;
pub mod heap;
pub mod llama;
pub mod log;
pub mod mapping;
pub mod quant;
pub mod simd;
pub mod temp_files;
pub mod weights;

pub use error::{Error, Result};
pub use ggml_type::GgmlType;
