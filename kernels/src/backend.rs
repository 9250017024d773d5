//! GGML compute backends: the built-in CPU backend with a persistent pool of worker threads, or
//! any device a loaded GGML backend library offers (CUDA), and the SIMD features the linked ggml
//! was compiled with.

use crate::device::Device;
use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::ffi::{c_void, CStr};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A GGML backend graphs are computed on: the built-in CPU backend with a persistent pool of
/// worker threads (ggml would otherwise start and join its threads for every graph computation,
/// twice per denoising step), or a device backend ([`Backend::on_device`]).
pub struct Backend {
    pub(crate) raw: NonNull<sys::ggml_backend>,
    pool: Option<NonNull<sys::ggml_threadpool>>,
    /// Name of the device (`CPU`, `CUDA0`, ...).
    name: String,
    /// The flag ggml's abort callback reads (kept alive here while ggml holds its address).
    abort: Option<Arc<AtomicBool>>,
}

// SAFETY: a ggml backend and its thread pool may move between threads; they are used by one
// thread at a time (every computation takes `&mut Backend`).
unsafe impl Send for Backend {}

impl Backend {
    /// The built-in CPU backend with `n_threads` workers.
    pub fn new(n_threads: usize) -> Result<Self> {
        // SAFETY: plain constructor; a NULL result is handled.
        let raw = NonNull::new(unsafe { sys::ggml_backend_cpu_init() })
            .ok_or_else(|| Error::Init("the CPU backend".into()))?;
        let mut backend = Backend {
            raw,
            pool: None,
            name: "CPU".into(),
            abort: None,
        };
        backend.set_threads(n_threads)?;
        Ok(backend)
    }

    /// A backend on `device` (see [`crate::device`]): its graphs' memory lives on the device,
    /// so inputs and outputs are copied with `ggml_backend_tensor_set/get`.
    pub fn on_device(device: &Device, n_threads: usize) -> Result<Self> {
        // SAFETY: `device` holds a device handle from ggml's registry, valid for the process;
        // NULL parameters ask for the device's defaults; a NULL result is handled.
        let raw =
            NonNull::new(unsafe { sys::ggml_backend_dev_init(device.raw(), std::ptr::null()) })
                .ok_or_else(|| {
                    Error::Device(format!("cannot start a backend on {}", device.name()))
                })?;
        let mut backend = Backend {
            raw,
            pool: None,
            name: device.name().to_string(),
            abort: None,
        };
        // A CPU device from a loaded library takes a thread count too.
        // SAFETY: `raw` is live; the check only reads its identity.
        if unsafe { sys::ggml_backend_is_cpu(raw.as_ptr()) } {
            // SAFETY: a CPU backend accepts a thread count.
            unsafe { sys::ggml_backend_cpu_set_n_threads(raw.as_ptr(), n_threads.max(1) as i32) };
        } else if n_threads > 0 {
            backend.set_device_threads(n_threads);
        }
        Ok(backend)
    }

    /// A procedure of this backend's registry by name (ggml's optional, per-backend extensions),
    /// or NULL when the backend does not offer it.
    fn proc_address(&self, name: &CStr) -> *mut c_void {
        // SAFETY: live backend; the registry lookups return NULL when a step is missing.
        unsafe {
            let dev = sys::ggml_backend_get_device(self.raw.as_ptr());
            if dev.is_null() {
                return std::ptr::null_mut();
            }
            let reg = sys::ggml_backend_dev_backend_reg(dev);
            if reg.is_null() {
                return std::ptr::null_mut();
            }
            sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr())
        }
    }

    /// Device backends from loaded libraries may expose a thread-count setter (ggml's
    /// `ggml_backend_set_n_threads` procedure); it is used when present.
    fn set_device_threads(&mut self, n_threads: usize) {
        let f = self.proc_address(c"ggml_backend_set_n_threads");
        if !f.is_null() {
            // SAFETY: a present procedure of that name has ggml's documented signature
            // `void(ggml_backend_t, int)`; the backend is live.
            unsafe {
                let f: unsafe extern "C" fn(sys::ggml_backend_t, i32) = std::mem::transmute(f);
                f(self.raw.as_ptr(), n_threads as i32);
            }
        }
    }

    /// Makes every later graph computation on this backend stop at the next node once `flag`
    /// is set: [`crate::graph::Graph::compute`] then returns [`Error::Aborted`]. Returns whether
    /// the backend honours it (ggml's CPU backend does; a device backend without the
    /// `ggml_backend_set_abort_callback` procedure finishes each graph, and the caller checks
    /// the flag between graphs).
    pub fn set_abort_flag(&mut self, flag: Arc<AtomicBool>) -> bool {
        let f = self.proc_address(c"ggml_backend_set_abort_callback");
        if f.is_null() {
            return false;
        }
        let data = Arc::as_ptr(&flag).cast::<c_void>().cast_mut();
        // SAFETY: a present procedure of that name has ggml's signature
        // `void(ggml_backend_t, ggml_abort_callback, void *)`. `data` points to the AtomicBool
        // that `self.abort` keeps alive for as long as the backend lives (it is replaced only
        // after ggml has been handed the new pointer, and the backend is freed before the flag).
        unsafe {
            let f: unsafe extern "C" fn(
                sys::ggml_backend_t,
                sys::ggml_abort_callback,
                *mut c_void,
            ) = std::mem::transmute(f);
            f(self.raw.as_ptr(), Some(abort_requested), data);
        }
        self.abort = Some(flag);
        true
    }

    /// Changes the number of worker threads (the built-in CPU backend; others ignore it).
    pub fn set_threads(&mut self, n_threads: usize) -> Result<()> {
        // SAFETY: identity check of a live backend.
        if !unsafe { sys::ggml_backend_is_cpu(self.raw.as_ptr()) } {
            return Ok(());
        }
        let n = n_threads.clamp(1, 512) as i32;
        // SAFETY: default parameters for `n` threads; the new pool is owned by us, attached to
        // our live backend, and the previous one is freed only after it has been replaced.
        unsafe {
            let mut params = sys::ggml_threadpool_params_default(n);
            // Between two graph computations the runtime scores logits on its own threads; a
            // polling ggml worker would spin through that time on a core the scoring needs.
            // Without polling the workers sleep until the next graph (a wake-up costs tens of
            // microseconds, twice per denoising step).
            params.poll = poll_level();
            let pool = NonNull::new(sys::ggml_threadpool_new(&mut params))
                .ok_or_else(|| Error::Init(format!("a pool of {n} ggml threads")))?;
            sys::ggml_backend_cpu_set_n_threads(self.raw.as_ptr(), n);
            sys::ggml_backend_cpu_set_threadpool(self.raw.as_ptr(), pool.as_ptr());
            if let Some(old) = self.pool.replace(pool) {
                sys::ggml_threadpool_free(old.as_ptr());
            }
        }
        Ok(())
    }

    /// Name of the device this backend computes on (`CPU`, `CUDA0`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is the built-in CPU backend with its own thread pool.
    pub fn is_builtin_cpu(&self) -> bool {
        self.pool.is_some()
    }

    /// The buffer type graphs on this backend allocate from.
    pub(crate) fn buffer_type(&self) -> sys::ggml_backend_buffer_type_t {
        // SAFETY: live backend.
        unsafe { sys::ggml_backend_get_default_buffer_type(self.raw.as_ptr()) }
    }

    /// Whether graphs on this backend can read tensors in buffers of type `buft` (its own
    /// memory; host memory for a CPU backend).
    pub(crate) fn supports_buffer_type(&self, buft: sys::ggml_backend_buffer_type_t) -> bool {
        // SAFETY: live backend; buffer types are static objects of their backend library.
        unsafe { sys::ggml_backend_supports_buft(self.raw.as_ptr(), buft) }
    }

    /// Whether the backend can compute `op` (a node of a graph built for it).
    pub(crate) fn supports(&self, op: *const sys::ggml_tensor) -> bool {
        // SAFETY: live backend; `op` is a live tensor of a graph (checked by the caller).
        unsafe { sys::ggml_backend_supports_op(self.raw.as_ptr(), op) }
    }
}

impl Drop for Backend {
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

/// The polling level of ggml's workers between graphs: 0 (they sleep), unless the environment
/// variable `UNMASK_GGML_POLL` sets another (0-100; ggml's own default is 50), which
/// `scripts/bench-threads.sh` uses to measure what sleeping saves.
fn poll_level() -> u32 {
    std::env::var("UNMASK_GGML_POLL")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(0, |v| v.min(100))
}

/// ggml's abort callback: whether the flag [`Backend::set_abort_flag`] registered is set.
/// Called by ggml's worker threads between nodes.
unsafe extern "C" fn abort_requested(data: *mut c_void) -> bool {
    // SAFETY: `data` is the address of the AtomicBool kept alive by the backend that registered
    // this callback (see `set_abort_flag`); it is only read, atomically.
    let flag = unsafe { &*data.cast::<AtomicBool>() };
    flag.load(Ordering::Relaxed)
}

/// Which SIMD paths the linked ggml was compiled with (they are fixed at build time).
/// The thread count of every unmask program when none is given: the physical cores this process
/// may run on. ggml's workers wait for each other at every operation, so more threads than cores
/// (hyper-threads, or cores busy with other work) slow a pass down instead of speeding it up.
pub fn default_threads() -> usize {
    num_cpus::get_physical().min(logical_cpus()).max(1)
}

/// The logical CPUs this process may run on (its affinity mask and CPU quota).
pub fn logical_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The warning (without a `warning:` label) to give when `threads` exceeds the logical CPUs
/// (`None` otherwise).
pub fn oversubscription_warning(threads: usize) -> Option<String> {
    let cpus = logical_cpus();
    (threads > cpus).then(|| {
        format!(
            "{threads} threads on {cpus} CPUs: ggml's threads wait on each other when \
             they outnumber the cores, which makes every pass much slower; use -t {} or fewer",
            default_threads()
        )
    })
}

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

#[cfg(test)]
mod tests {
    use super::Backend;
    use crate::graph::Graph;
    use crate::{Error, GgmlType};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_set_abort_flag_stops_the_graph_and_a_cleared_one_lets_it_run() {
        let mut backend = Backend::new(2).unwrap();
        let flag = Arc::new(AtomicBool::new(false));
        assert!(
            backend.set_abort_flag(flag.clone()),
            "the CPU backend honours the flag"
        );
        let mut g = Graph::new(8).unwrap();
        let a = g.input(GgmlType::F32, &[4, 4]).unwrap();
        let b = g.add(a, a).unwrap();
        let c = g.add(b, a).unwrap();
        g.allocate(&[c], &backend).unwrap();
        g.set_f32(a, &[1.0; 16]).unwrap();

        flag.store(true, Ordering::Relaxed);
        assert!(matches!(g.compute(&mut backend), Err(Error::Aborted)));
        flag.store(false, Ordering::Relaxed);
        g.compute(&mut backend).unwrap();
        assert_eq!(g.read_f32(c).unwrap(), &[3.0; 16]);
    }
}
