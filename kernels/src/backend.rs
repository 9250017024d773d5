//! The GGML CPU backend: a persistent pool of worker threads, and the SIMD features the linked
//! ggml was compiled with.

use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::ptr::NonNull;

/// The CPU backend with a persistent pool of worker threads (ggml would otherwise start and
/// join its threads for every graph computation, twice per denoising step).
pub struct CpuBackend {
    pub(crate) raw: NonNull<sys::ggml_backend>,
    pool: Option<NonNull<sys::ggml_threadpool>>,
}

// SAFETY: a ggml backend and its thread pool may move between threads; they are used by one
// thread at a time (every computation takes `&mut CpuBackend`).
unsafe impl Send for CpuBackend {}

impl CpuBackend {
    pub fn new(n_threads: usize) -> Result<Self> {
        // SAFETY: plain constructor; a NULL result is handled.
        let raw = NonNull::new(unsafe { sys::ggml_backend_cpu_init() })
            .ok_or_else(|| Error::Ggml("cannot create the CPU backend".into()))?;
        let mut backend = CpuBackend { raw, pool: None };
        backend.set_threads(n_threads)?;
        Ok(backend)
    }

    pub fn set_threads(&mut self, n_threads: usize) -> Result<()> {
        let n = n_threads.clamp(1, 512) as i32;
        // SAFETY: default parameters for `n` threads; the new pool is owned by us, attached to
        // our live backend, and the previous one is freed only after it has been replaced.
        unsafe {
            let mut params = sys::ggml_threadpool_params_default(n);
            // Between two graph computations the runtime scores logits on its own threads; a
            // polling ggml worker would spin through that time on a core the scoring needs.
            // Without polling the workers sleep until the next graph (a wake-up costs tens of
            // microseconds, twice per denoising step).
            params.poll = 0;
            let pool = NonNull::new(sys::ggml_threadpool_new(&mut params))
                .ok_or_else(|| Error::Ggml(format!("cannot start {n} ggml threads")))?;
            sys::ggml_backend_cpu_set_n_threads(self.raw.as_ptr(), n);
            sys::ggml_backend_cpu_set_threadpool(self.raw.as_ptr(), pool.as_ptr());
            if let Some(old) = self.pool.replace(pool) {
                sys::ggml_threadpool_free(old.as_ptr());
            }
        }
        Ok(())
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        // SAFETY: we own backend and pool and free each exactly once, the backend first.
        unsafe {
            sys::ggml_backend_free(self.raw.as_ptr());
            if let Some(pool) = self.pool.take() {
                sys::ggml_threadpool_free(pool.as_ptr());
            }
        }
    }
}

/// Which SIMD paths the linked ggml was compiled with (they are fixed at build time).
pub fn cpu_features() -> Vec<&'static str> {
    // SAFETY: these report compile-time flags and take no arguments.
    let flags = unsafe {
        [
            ("AVX2", sys::ggml_cpu_has_avx2()),
            ("FMA", sys::ggml_cpu_has_fma()),
            ("F16C", sys::ggml_cpu_has_f16c()),
            ("AVX512", sys::ggml_cpu_has_avx512()),
            ("AVX512_VNNI", sys::ggml_cpu_has_avx512_vnni()),
            ("AVX512_BF16", sys::ggml_cpu_has_avx512_bf16()),
            ("AMX_INT8", sys::ggml_cpu_has_amx_int8()),
        ]
    };
    flags
        .into_iter()
        .filter(|(_, on)| *on != 0)
        .map(|(name, _)| name)
        .collect()
}
