//! Moving data between a graph and the host or another graph when the graph's memory may be a
//! device's (a GPU): copies out of results, in-place imports of another graph's output, and the
//! check that a backend can compute every operation.

use super::{Graph, TensorId};
use crate::backend::CpuBackend;
use crate::{Error, Result};
use llama_cpp_sys_2 as sys;

impl Graph {
    /// Reads a computed tensor of `other` (an output of an allocated graph) in place as a leaf of
    /// this one, without a copy (on a GPU the data stays on the device). This graph keeps
    /// `other`'s memory alive; the values are whatever `other` last computed.
    pub fn import(&mut self, other: &Graph, id: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let alloc = other
            .galloc
            .clone()
            .ok_or_else(|| Error::Ggml("import from a graph that is not allocated".into()))?;
        let src = other.raw(id)?;
        // SAFETY: `src` is a live tensor of `other`; its data and buffer were assigned by
        // `other`'s allocator, which we keep alive (`imports`), so the new leaf's memory stays
        // valid as long as this graph. Outputs are never reused by that allocator.
        let raw = unsafe {
            let s = &*src;
            if s.data.is_null() || s.buffer.is_null() || !sys::ggml_is_contiguous(src) {
                return Err(Error::Ggml(
                    "only allocated, contiguous tensors can be imported".into(),
                ));
            }
            let t = sys::ggml_new_tensor(ctx, s.type_, 4, s.ne.as_ptr());
            if t.is_null() {
                return Err(Error::Ggml("tensor creation failed".into()));
            }
            if sys::ggml_backend_tensor_alloc(s.buffer, t, s.data) != sys::GGML_STATUS_SUCCESS {
                return Err(Error::Ggml("cannot bind the imported tensor".into()));
            }
            t
        };
        self.imports.push(alloc);
        self.push(raw)
    }

    /// Copies `out.len()` i32 values starting at element `start` of a contiguous i32 result (in
    /// any backend's memory).
    pub fn get_i32_range(&self, id: TensorId, start: usize, out: &mut [i32]) -> Result<()> {
        self.get_into(id, sys::GGML_TYPE_I32, start, bytemuck::cast_slice_mut(out))
    }

    /// Copies `out.len()` f32 values starting at element `start` of a contiguous f32 result (in
    /// any backend's memory).
    pub fn get_f32_range(&self, id: TensorId, start: usize, out: &mut [f32]) -> Result<()> {
        self.get_into(id, sys::GGML_TYPE_F32, start, bytemuck::cast_slice_mut(out))
    }

    /// Copies 4-byte elements `start..` of `id` into `bytes`.
    fn get_into(&self, id: TensorId, ty: u32, start: usize, bytes: &mut [u8]) -> Result<()> {
        if self.graph.is_none() {
            return Err(Error::Ggml("graph is not allocated".into()));
        }
        let t = self.raw(id)?;
        let len = bytes.len() / 4;
        // SAFETY: `t` is live; type, contiguity, memory and the requested range are checked
        // before ggml copies exactly `bytes.len()` bytes from inside the tensor.
        unsafe {
            let r = &*t;
            let n = sys::ggml_nelements(t) as usize;
            if r.type_ != ty || !sys::ggml_is_contiguous(t) || r.data.is_null() {
                return Err(Error::Ggml(
                    "get needs an allocated contiguous tensor of the asked type".into(),
                ));
            }
            if start.checked_add(len).is_none_or(|end| end > n) {
                return Err(Error::Ggml(format!(
                    "elements {start}..{} requested of a tensor of {n}",
                    start + len
                )));
            }
            sys::ggml_backend_tensor_get(t, bytes.as_mut_ptr().cast(), start * 4, bytes.len());
        }
        Ok(())
    }

    /// Names of the operations of the allocated graph that `backend` cannot compute (empty when
    /// it can compute them all).
    pub fn unsupported_ops(&self, backend: &CpuBackend) -> Result<Vec<String>> {
        let graph = self
            .graph
            .ok_or_else(|| Error::Ggml("graph is not allocated".into()))?;
        let mut out = Vec::new();
        // SAFETY: live graph; node indices below its node count; op descriptions are static.
        unsafe {
            for i in 0..sys::ggml_graph_n_nodes(graph.as_ptr()) {
                let node = sys::ggml_graph_node(graph.as_ptr(), i);
                if !node.is_null() && !backend.supports(node) {
                    let name = std::ffi::CStr::from_ptr(sys::ggml_op_desc(node))
                        .to_string_lossy()
                        .into_owned();
                    if !out.contains(&name) {
                        out.push(name);
                    }
                }
            }
        }
        Ok(out)
    }
}
