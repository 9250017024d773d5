//! A small safe layer over ggml's context, graph and CPU backend. A [`Graph`] owns a ggml
//! context holding tensor descriptions, the compute graph over them and the backend buffer that
//! stores their data; tensors are addressed by [`TensorId`] handles, so no raw pointer escapes.

use crate::{Error, GgmlType, Result};
use llama_cpp_sys_2 as sys;
use std::ptr::NonNull;

/// The CPU backend with a fixed number of threads.
pub struct CpuBackend {
    raw: NonNull<sys::ggml_backend>,
}

// SAFETY: a ggml backend may be moved between threads; it is used by one thread at a time
// (every method takes `&mut self` or is called while the `Graph` borrows it mutably).
unsafe impl Send for CpuBackend {}

impl CpuBackend {
    pub fn new(n_threads: usize) -> Result<Self> {
        // SAFETY: plain constructor; a NULL result is handled.
        let raw = NonNull::new(unsafe { sys::ggml_backend_cpu_init() })
            .ok_or_else(|| Error::Ggml("cannot create the CPU backend".into()))?;
        let mut backend = CpuBackend { raw };
        backend.set_threads(n_threads);
        Ok(backend)
    }

    pub fn set_threads(&mut self, n_threads: usize) {
        let n = n_threads.clamp(1, 512) as i32;
        // SAFETY: `raw` is a live CPU backend created above.
        unsafe { sys::ggml_backend_cpu_set_n_threads(self.raw.as_ptr(), n) };
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        // SAFETY: we own the backend and free it exactly once.
        unsafe { sys::ggml_backend_free(self.raw.as_ptr()) };
    }
}

/// Which SIMD paths the linked ggml was compiled with (they are fixed at build time).
pub fn cpu_features() -> Vec<&'static str> {
    let mut out = Vec::new();
    // SAFETY: these report compile-time flags and take no arguments.
    unsafe {
        if sys::ggml_cpu_has_avx2() != 0 {
            out.push("AVX2");
        }
        if sys::ggml_cpu_has_fma() != 0 {
            out.push("FMA");
        }
        if sys::ggml_cpu_has_f16c() != 0 {
            out.push("F16C");
        }
        if sys::ggml_cpu_has_avx512() != 0 {
            out.push("AVX512");
        }
        if sys::ggml_cpu_has_avx512_vnni() != 0 {
            out.push("AVX512_VNNI");
        }
        if sys::ggml_cpu_has_avx512_bf16() != 0 {
            out.push("AVX512_BF16");
        }
        if sys::ggml_cpu_has_amx_int8() != 0 {
            out.push("AMX_INT8");
        }
    }
    out
}

/// Handle of a tensor inside one [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorId(usize);

/// A ggml context + compute graph + backend buffer. Build tensors and operations, then
/// [`allocate`](Graph::allocate) once, then set inputs and [`compute`](Graph::compute) as often as
/// needed: buffers are reused, nothing is allocated per computation.
pub struct Graph {
    ctx: NonNull<sys::ggml_context>,
    graph: Option<NonNull<sys::ggml_cgraph>>,
    buffer: Option<NonNull<sys::ggml_backend_buffer>>,
    tensors: Vec<NonNull<sys::ggml_tensor>>,
    capacity: usize,
}

// SAFETY: the context, graph and buffer are owned exclusively by this value; ggml has no
// thread affinity for them.
unsafe impl Send for Graph {}

impl Graph {
    /// A graph with room for `max_tensors` tensor descriptions.
    pub fn new(max_tensors: usize) -> Result<Self> {
        // SAFETY: size queries without side effects.
        let mem_size =
            unsafe { sys::ggml_tensor_overhead() * max_tensors + sys::ggml_graph_overhead() };
        let params = sys::ggml_init_params {
            mem_size,
            mem_buffer: std::ptr::null_mut(),
            // Only descriptions live in the context; data goes to a backend buffer.
            no_alloc: true,
        };
        // SAFETY: valid parameters; NULL is handled.
        let ctx = NonNull::new(unsafe { sys::ggml_init(params) })
            .ok_or_else(|| Error::Ggml("ggml_init failed".into()))?;
        Ok(Graph {
            ctx,
            graph: None,
            buffer: None,
            tensors: Vec::new(),
            capacity: max_tensors,
        })
    }

    fn push(&mut self, raw: *mut sys::ggml_tensor) -> Result<TensorId> {
        let t = NonNull::new(raw).ok_or_else(|| Error::Ggml("tensor creation failed".into()))?;
        self.tensors.push(t);
        Ok(TensorId(self.tensors.len() - 1))
    }

    fn raw(&self, id: TensorId) -> Result<*mut sys::ggml_tensor> {
        self.tensors
            .get(id.0)
            .map(|t| t.as_ptr())
            .ok_or_else(|| Error::Ggml(format!("unknown tensor handle {}", id.0)))
    }

    fn check_room(&self) -> Result<()> {
        if self.graph.is_some() {
            return Err(Error::Ggml("graph is already allocated".into()));
        }
        if self.tensors.len() >= self.capacity {
            return Err(Error::Ggml(format!(
                "graph capacity of {} tensors exceeded",
                self.capacity
            )));
        }
        Ok(())
    }

    /// Shape of a tensor in ggml order.
    pub fn shape(&self, id: TensorId) -> Result<[i64; 4]> {
        // SAFETY: `raw` returned a tensor of our live context.
        Ok(unsafe { (*self.raw(id)?).ne })
    }

    /// A new input or weight tensor, ggml order (row length first), 1 to 4 dimensions.
    pub fn new_tensor(&mut self, ty: GgmlType, shape: &[i64]) -> Result<TensorId> {
        self.check_room()?;
        if shape.is_empty() || shape.len() > 4 || shape.iter().any(|&d| d <= 0) {
            return Err(Error::Ggml(format!("invalid shape {shape:?}")));
        }
        if !(shape[0] as u64).is_multiple_of(ty.block_size()) {
            return Err(Error::Ggml(format!(
                "row length {} does not fit {ty} blocks",
                shape[0]
            )));
        }
        // SAFETY: shape has 1..=4 positive entries and the type id is valid; the context has
        // room (checked above), so ggml's internal asserts hold.
        let raw = unsafe {
            sys::ggml_new_tensor(
                self.ctx.as_ptr(),
                ty.id(),
                shape.len() as i32,
                shape.as_ptr(),
            )
        };
        self.push(raw)
    }

    /// `a @ b` in ggml's convention: a [k, n], b [k, m] -> [n, m].
    pub fn mul_mat(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        self.check_room()?;
        let (sa, sb) = (self.shape(a)?, self.shape(b)?);
        if sa[0] != sb[0] || sb[2] % sa[2] != 0 || sb[3] % sa[3] != 0 {
            return Err(Error::Ggml(format!(
                "cannot multiply shapes {sa:?} and {sb:?}"
            )));
        }
        // SAFETY: both tensors belong to this context and ggml_can_mul_mat holds (checked above).
        let raw = unsafe { sys::ggml_mul_mat(self.ctx.as_ptr(), self.raw(a)?, self.raw(b)?) };
        self.push(raw)
    }

    /// Fixes the graph that computes `output` and allocates every tensor on `backend`.
    pub fn allocate(&mut self, output: TensorId, backend: &CpuBackend) -> Result<()> {
        if self.graph.is_some() {
            return Err(Error::Ggml("graph is already allocated".into()));
        }
        let out = self.raw(output)?;
        // SAFETY: the context was sized with ggml_graph_overhead for one default graph.
        let graph = NonNull::new(unsafe { sys::ggml_new_graph(self.ctx.as_ptr()) })
            .ok_or_else(|| Error::Ggml("graph creation failed".into()))?;
        // SAFETY: `out` belongs to this context, as does the graph.
        unsafe { sys::ggml_build_forward_expand(graph.as_ptr(), out) };
        // SAFETY: context and backend are live; NULL (allocation failure) is handled.
        let buffer = NonNull::new(unsafe {
            sys::ggml_backend_alloc_ctx_tensors(self.ctx.as_ptr(), backend.raw.as_ptr())
        })
        .ok_or_else(|| Error::Ggml("cannot allocate tensor memory".into()))?;
        self.graph = Some(graph);
        self.buffer = Some(buffer);
        Ok(())
    }

    fn allocated_tensor(&self, id: TensorId, len: usize) -> Result<*mut sys::ggml_tensor> {
        if self.buffer.is_none() {
            return Err(Error::Ggml(
                "allocate the graph before touching data".into(),
            ));
        }
        let t = self.raw(id)?;
        // SAFETY: `t` is a tensor of our context.
        let nbytes = unsafe { sys::ggml_nbytes(t) };
        if nbytes != len {
            return Err(Error::Ggml(format!(
                "tensor holds {nbytes} bytes, buffer has {len}"
            )));
        }
        Ok(t)
    }

    /// Copies raw bytes (in the tensor's own type) into a tensor.
    pub fn set_bytes(&mut self, id: TensorId, bytes: &[u8]) -> Result<()> {
        let t = self.allocated_tensor(id, bytes.len())?;
        // SAFETY: the tensor is allocated and exactly `bytes.len()` bytes long.
        unsafe { sys::ggml_backend_tensor_set(t, bytes.as_ptr().cast(), 0, bytes.len()) };
        Ok(())
    }

    pub fn set_f32(&mut self, id: TensorId, values: &[f32]) -> Result<()> {
        self.set_bytes(id, bytemuck::cast_slice(values))
    }

    pub fn get_f32(&self, id: TensorId, out: &mut [f32]) -> Result<()> {
        let t = self.allocated_tensor(id, std::mem::size_of_val(out))?;
        // SAFETY: the tensor is allocated and has exactly out.len() * 4 bytes.
        if unsafe { (*t).type_ } != sys::GGML_TYPE_F32 {
            return Err(Error::Ggml("tensor is not f32".into()));
        }
        unsafe {
            sys::ggml_backend_tensor_get(t, out.as_mut_ptr().cast(), 0, std::mem::size_of_val(out))
        };
        Ok(())
    }

    pub fn compute(&mut self, backend: &mut CpuBackend) -> Result<()> {
        let graph = self
            .graph
            .ok_or_else(|| Error::Ggml("graph is not allocated".into()))?;
        // SAFETY: graph and its tensors are allocated on a backend of the same kind.
        let status =
            unsafe { sys::ggml_backend_graph_compute(backend.raw.as_ptr(), graph.as_ptr()) };
        if status != sys::GGML_STATUS_SUCCESS {
            return Err(Error::Ggml(format!(
                "graph computation failed with status {status}"
            )));
        }
        Ok(())
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: buffer and context are owned by us and freed exactly once, buffer first.
        unsafe {
            if let Some(buffer) = self.buffer.take() {
                sys::ggml_backend_buffer_free(buffer.as_ptr());
            }
            sys::ggml_free(self.ctx.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_matmul_matches_a_naive_product() {
        let (k, n, m) = (64, 3, 2);
        let a: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * m).map(|i| (i % 5) as f32 * 0.5).collect();
        let mut backend = CpuBackend::new(2).unwrap();
        let mut g = Graph::new(8).unwrap();
        let ta = g.new_tensor(GgmlType::F32, &[k as i64, n as i64]).unwrap();
        let tb = g.new_tensor(GgmlType::F32, &[k as i64, m as i64]).unwrap();
        let tc = g.mul_mat(ta, tb).unwrap();
        g.allocate(tc, &backend).unwrap();
        g.set_f32(ta, &a).unwrap();
        g.set_f32(tb, &b).unwrap();
        g.compute(&mut backend).unwrap();
        let mut c = vec![0.0; n * m];
        g.get_f32(tc, &mut c).unwrap();
        for j in 0..m {
            for i in 0..n {
                let want: f32 = (0..k).map(|x| a[i * k + x] * b[j * k + x]).sum();
                assert!((c[j * n + i] - want).abs() < 1e-3, "{i},{j}");
            }
        }
    }

    #[test]
    fn shape_errors_do_not_reach_ggml_asserts() {
        let mut g = Graph::new(4).unwrap();
        let a = g.new_tensor(GgmlType::F32, &[8, 2]).unwrap();
        let b = g.new_tensor(GgmlType::F32, &[9, 2]).unwrap();
        assert!(g.mul_mat(a, b).is_err());
        assert!(g.new_tensor(GgmlType::Q4_K, &[100, 2]).is_err());
        assert!(g.new_tensor(GgmlType::F32, &[0]).is_err());
        assert!(g.set_f32(a, &[0.0; 16]).is_err(), "data before allocation");
    }
}
