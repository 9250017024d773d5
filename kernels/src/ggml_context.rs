//! An owned ggml context: [`Context`] creates a `ggml_context` and frees it exactly once, when it
//! is dropped, so no code path (early returns on errors included) calls `ggml_free` by hand.
//!
//! Every context unmask makes holds tensor descriptions only (`no_alloc`): the data of those
//! tensors lives in backend buffers or, for weights, in the memory-mapped file. Owners that also
//! hold such a buffer free the buffer first (in their own `Drop`) and let the context go after.

use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::ptr::NonNull;

/// A ggml context of tensor descriptions, freed on drop.
pub(crate) struct Context(NonNull<sys::ggml_context>);

// SAFETY: a ggml context has no thread affinity; `Context` owns it exclusively, and every use
// goes through the owner (a graph, weights, a parameter store), whose own `Send`/`Sync` impls
// state how it is shared.
unsafe impl Send for Context {}

impl Context {
    /// A context with `mem_size` bytes for tensor and graph descriptions (`ggml_tensor_overhead`
    /// per tensor, `ggml_graph_overhead_custom` per graph), allocating no tensor data.
    pub(crate) fn descriptions(mem_size: usize) -> Result<Self> {
        let params = sys::ggml_init_params {
            mem_size,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        // SAFETY: valid parameters (ggml allocates `mem_size` bytes itself); NULL is handled.
        NonNull::new(unsafe { sys::ggml_init(params) })
            .map(Context)
            .ok_or_else(|| Error::Init(format!("a context of {mem_size} bytes")))
    }

    /// The raw context, for ggml calls that create tensors and graphs in it. It stays valid as
    /// long as `self`.
    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_context {
        self.0.as_ptr()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context was created by `ggml_init` in `descriptions`, is owned by `self`
        // alone and is freed here exactly once; tensors described in it are not used after their
        // owner drops this value.
        unsafe { sys::ggml_free(self.0.as_ptr()) }
    }
}
