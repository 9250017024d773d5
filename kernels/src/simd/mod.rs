//! Hand-written SIMD arithmetic on host memory, with no ggml in it: the int8 GEMM that the
//! graph runs as ggml custom operations ([`qgemm`], wrapped by `graph/qgemm_op.rs`) and the
//! vectorised `exp`/`ln`/top-2 passes over logits rows ([`vmath`], used by the runtime's
//! sampler). Each has an AVX2 path and a scalar fallback that compute the same values in the
//! same order, so results do not depend on the CPU.

pub mod qgemm;
pub mod vmath;
