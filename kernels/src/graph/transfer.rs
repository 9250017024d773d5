//! Moving data in and out of an allocated graph, whose memory may be a device's (a GPU): inputs
//! set from host slices, results borrowed in place (host memory) or copied out (any memory),
//! in-place imports of another graph's output, and the check that a backend can compute every
//! operation. Every copy checks the tensor's type, layout and length first.

use super::{Graph, TensorId};
use crate::backend::Backend;
use crate::{Error, Result};
use llama_cpp_sys_2 as sys;

impl Graph {
    /// The tensor `id` after checking that it has memory of exactly `len` bytes; `op` names the
    /// caller in errors.
    fn allocated_tensor(
        &self,
        id: TensorId,
        len: usize,
        op: &'static str,
    ) -> Result<*mut sys::ggml_tensor> {
        if self.graph.is_none() {
            return Err(Error::NotAllocated {
                op: "touching data",
            });
        }
        let t = self.raw(id)?;
        // SAFETY: `t` is a live tensor.
        let (nbytes, data) = unsafe { (sys::ggml_nbytes(t), (*t).data) };
        if data.is_null() {
            return Err(Error::Shape {
                op,
                detail: "the tensor has no memory (not an input or output)".into(),
            });
        }
        if nbytes != len {
            return Err(Error::LengthMismatch {
                what: format!("data for {op}"),
                unit: "bytes",
                expected: nbytes,
                got: len,
            });
        }
        Ok(t)
    }

    /// Copies raw bytes (in the tensor's own type) into an input tensor. The graph allocator may
    /// reuse an input's memory after its last use within a computation, so inputs should be set
    /// before every computation.
    pub fn set_bytes(&mut self, id: TensorId, bytes: &[u8]) -> Result<()> {
        let t = self.allocated_tensor(id, bytes.len(), "set_bytes")?;
        // SAFETY: the tensor is allocated and exactly `bytes.len()` bytes long.
        unsafe { sys::ggml_backend_tensor_set(t, bytes.as_ptr().cast(), 0, bytes.len()) };
        Ok(())
    }

    pub fn set_f32(&mut self, id: TensorId, values: &[f32]) -> Result<()> {
        self.set_bytes(id, bytemuck::cast_slice(values))
    }

    pub fn set_i32(&mut self, id: TensorId, values: &[i32]) -> Result<()> {
        self.set_bytes(id, bytemuck::cast_slice(values))
    }

    /// Borrows an f32 result in place (CPU memory): no copy of large logits tensors.
    pub fn read_f32(&self, id: TensorId) -> Result<&[f32]> {
        let t = self.raw(id)?;
        // SAFETY: `t` is a live tensor; we check its type, contiguity and that its buffer is
        // host memory before viewing it as a slice, which lives as long as `&self` (computing
        // needs `&mut self`, so the data cannot change while borrowed).
        unsafe {
            let n = sys::ggml_nelements(t) as usize;
            let t_ref = &*t;
            if t_ref.type_ != sys::GGML_TYPE_F32 || !sys::ggml_is_contiguous(t) {
                return Err(Error::Shape {
                    op: "read_f32",
                    detail: "needs a contiguous f32 tensor".into(),
                });
            }
            let _ = self.allocated_tensor(id, n * 4, "read_f32")?;
            if t_ref.buffer.is_null() || !sys::ggml_backend_buffer_is_host(t_ref.buffer) {
                return Err(Error::Shape {
                    op: "read_f32",
                    detail: "the tensor is not in host memory (use get_f32_range)".into(),
                });
            }
            Ok(std::slice::from_raw_parts(t_ref.data as *const f32, n))
        }
    }

    /// An f32 result of any backend's memory: borrowed in place from host memory (as
    /// [`read_f32`](Self::read_f32)), else copied into `scratch` (resized to fit; reusing it
    /// between computations saves allocating large logits tensors) and borrowed from there.
    pub fn read_f32_via<'a>(
        &'a self,
        id: TensorId,
        scratch: &'a mut Vec<f32>,
    ) -> Result<&'a [f32]> {
        let t = self.raw(id)?;
        // SAFETY: `t` is a live tensor; only its buffer pointer and type are read.
        let host = unsafe {
            let buffer = (*t).buffer;
            !buffer.is_null() && sys::ggml_backend_buffer_is_host(buffer)
        };
        if host {
            return self.read_f32(id);
        }
        // SAFETY: `t` is a live tensor; only its element count is read.
        let n = unsafe { sys::ggml_nelements(t) } as usize;
        scratch.resize(n, 0.0);
        self.get_f32_range(id, 0, scratch)?;
        Ok(scratch)
    }

    /// Reads a computed tensor of `other` (an output of an allocated graph) in place as a leaf of
    /// this one, without a copy (on a GPU the data stays on the device). This graph keeps
    /// `other`'s memory alive; the values are whatever `other` last computed.
    pub fn import(&mut self, other: &Graph, id: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let alloc = other.galloc.clone().ok_or(Error::NotAllocated {
            op: "importing its tensors",
        })?;
        let src = other.raw(id)?;
        // SAFETY: `src` is a live tensor of `other`; its data and buffer were assigned by
        // `other`'s allocator, which we keep alive (`imports`), so the new leaf's memory stays
        // valid as long as this graph. Outputs are never reused by that allocator.
        let raw = unsafe {
            let s = &*src;
            if s.data.is_null() || s.buffer.is_null() || !sys::ggml_is_contiguous(src) {
                return Err(Error::Shape {
                    op: "import",
                    detail: "only allocated, contiguous tensors can be imported".into(),
                });
            }
            let t = sys::ggml_new_tensor(ctx, s.type_, 4, s.ne.as_ptr());
            if t.is_null() {
                return Err(Error::Init("the imported tensor".into()));
            }
            if sys::ggml_backend_tensor_alloc(s.buffer, t, s.data) != sys::GGML_STATUS_SUCCESS {
                return Err(Error::Bind {
                    what: "the imported tensor".into(),
                    memory: "the other graph's buffer",
                });
            }
            t
        };
        self.imports.push(alloc);
        self.push(raw)
    }

    /// Copies `out.len()` i32 values starting at element `start` of a contiguous i32 result (in
    /// any backend's memory).
    pub fn get_i32_range(&self, id: TensorId, start: usize, out: &mut [i32]) -> Result<()> {
        self.get_into(
            id,
            sys::GGML_TYPE_I32,
            start,
            bytemuck::cast_slice_mut(out),
            "get_i32_range",
        )
    }

    /// Copies `out.len()` f32 values starting at element `start` of a contiguous f32 result (in
    /// any backend's memory).
    pub fn get_f32_range(&self, id: TensorId, start: usize, out: &mut [f32]) -> Result<()> {
        self.get_into(
            id,
            sys::GGML_TYPE_F32,
            start,
            bytemuck::cast_slice_mut(out),
            "get_f32_range",
        )
    }

    /// Copies 4-byte elements `start..` of `id` into `bytes`; `op` names the caller in errors.
    fn get_into(
        &self,
        id: TensorId,
        ty: u32,
        start: usize,
        bytes: &mut [u8],
        op: &'static str,
    ) -> Result<()> {
        if self.graph.is_none() {
            return Err(Error::NotAllocated {
                op: "copying results out",
            });
        }
        let t = self.raw(id)?;
        let len = bytes.len() / 4;
        // SAFETY: `t` is live; type, contiguity, memory and the requested range are checked
        // before ggml copies exactly `bytes.len()` bytes from inside the tensor.
        unsafe {
            let r = &*t;
            let n = sys::ggml_nelements(t) as usize;
            if r.type_ != ty || !sys::ggml_is_contiguous(t) || r.data.is_null() {
                return Err(Error::Shape {
                    op,
                    detail: "needs an allocated contiguous tensor of the asked type".into(),
                });
            }
            if start.checked_add(len).is_none_or(|end| end > n) {
                return Err(Error::Shape {
                    op,
                    detail: format!(
                        "elements {start}..{} requested of a tensor of {n}",
                        start.saturating_add(len)
                    ),
                });
            }
            sys::ggml_backend_tensor_get(t, bytes.as_mut_ptr().cast(), start * 4, bytes.len());
        }
        Ok(())
    }

    /// Names of the operations of the allocated graph that `backend` cannot compute (empty when
    /// it can compute them all).
    pub fn unsupported_ops(&self, backend: &Backend) -> Result<Vec<String>> {
        let graph = self.graph.ok_or(Error::NotAllocated {
            op: "checking its operations",
        })?;
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
