//! Trainable parameters: named f32 tensors in one backend buffer (host memory, or the memory of
//! the device a [`Backend`] computes on), each marked as a ggml parameter (`ggml_set_param`), so
//! that a graph built over them with gradients enabled ([`Graph::with_gradients`]) differentiates
//! the loss with respect to them. Graphs use them through [`Graph::param`] (or the
//! [`TensorSource`] impl, so a model definition takes weights and parameters alike), which keeps
//! the store alive; a graph refuses parameters its backend cannot read.

use super::{Graph, TensorId, TensorSource};
use crate::backend::Backend;
use crate::ggml_context::Context;
use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::borrow::Cow;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Arc;

/// Named f32 parameter tensors, allocated once in one buffer.
pub struct ParamStore {
    buffer: NonNull<sys::ggml_backend_buffer>,
    by_name: HashMap<String, NonNull<sys::ggml_tensor>>,
    names: Vec<String>,
    /// Holds the tensors' descriptions; dropped (freed) after `Drop` has freed `buffer`.
    _ctx: Context,
}

// SAFETY: the context and buffer are owned by this value; tensor data is only written through
// `&mut self` and only read by graphs (or `&self`) otherwise, so shared references never race
// with a write. Buffer types are static objects of their backend library.
unsafe impl Send for ParamStore {}
unsafe impl Sync for ParamStore {}

impl ParamStore {
    /// Allocates zero-filled f32 tensors of the given ggml-order shapes (1 to 4 positive dims)
    /// in host memory, where the built-in CPU backend computes.
    pub fn new(tensors: &[(String, Vec<i64>)]) -> Result<Self> {
        // SAFETY: the CPU buffer type is a static object of ggml.
        Self::allocate(tensors, unsafe { sys::ggml_backend_cpu_buffer_type() })
    }

    /// Like [`new`](Self::new), in the memory graphs on `backend` compute in (a GPU's memory
    /// for a CUDA backend).
    pub fn on_backend(tensors: &[(String, Vec<i64>)], backend: &Backend) -> Result<Self> {
        Self::allocate(tensors, backend.buffer_type())
    }

    /// Like [`new`](Self::new), in the same kind of memory as `self` (AdamW moments next to the
    /// parameters they belong to).
    pub fn alike(&self, tensors: &[(String, Vec<i64>)]) -> Result<Self> {
        // SAFETY: our live buffer; its type is a static object of its backend.
        Self::allocate(tensors, unsafe {
            sys::ggml_backend_buffer_get_type(self.buffer.as_ptr())
        })
    }

    /// Whether the values live in host memory ([`get`](Self::get) then borrows them in place).
    pub fn is_host(&self) -> bool {
        // SAFETY: our live buffer.
        unsafe { sys::ggml_backend_buffer_is_host(self.buffer.as_ptr()) }
    }

    /// Whether graphs on `backend` can compute with these values (its memory, or host memory
    /// for a CPU backend).
    pub fn usable_by(&self, backend: &Backend) -> bool {
        // SAFETY: our live buffer; its type is a static object of its backend.
        backend.supports_buffer_type(unsafe {
            sys::ggml_backend_buffer_get_type(self.buffer.as_ptr())
        })
    }

    /// The ggml-order shapes of every parameter, in creation order.
    pub fn shapes(&self) -> Result<Vec<(String, Vec<i64>)>> {
        self.names
            .iter()
            .map(|n| Ok((n.clone(), self.shape(n)?.to_vec())))
            .collect()
    }

    fn allocate(
        tensors: &[(String, Vec<i64>)],
        buffer_type: sys::ggml_backend_buffer_type_t,
    ) -> Result<Self> {
        if tensors.is_empty() {
            return Err(Error::InvalidArgument {
                what: "parameter store",
                detail: "it needs at least one tensor".into(),
            });
        }
        // SAFETY: size query.
        let mem_size = unsafe { sys::ggml_tensor_overhead() } * (tensors.len() + 1);
        // Every early return below drops `ctx`, which frees it.
        let ctx = Context::descriptions(mem_size)?;
        let mut by_name = HashMap::with_capacity(tensors.len());
        let mut names = Vec::with_capacity(tensors.len());
        // Only for the message if the buffer cannot be allocated.
        let mut bytes = 0u64;
        for (name, shape) in tensors {
            if shape.is_empty() || shape.len() > 4 || shape.iter().any(|&d| d <= 0) {
                return Err(Error::Shape {
                    op: "ParamStore::new",
                    detail: format!("parameter `{name}` has invalid shape {shape:?}"),
                });
            }
            if by_name.contains_key(name) {
                return Err(Error::InvalidArgument {
                    what: "parameter store",
                    detail: format!("parameter `{name}` given twice"),
                });
            }
            let size = shape.iter().fold(4u64, |n, &d| n.saturating_mul(d as u64));
            bytes = bytes.saturating_add(size);
            // SAFETY: 1..=4 positive dims, f32, and the context has room for every tensor.
            let raw = unsafe {
                sys::ggml_new_tensor(
                    ctx.as_ptr(),
                    sys::GGML_TYPE_F32,
                    shape.len() as i32,
                    shape.as_ptr(),
                )
            };
            let Some(t) = NonNull::new(raw) else {
                return Err(Error::Init(format!(
                    "the description of parameter `{name}`"
                )));
            };
            // SAFETY: a fresh leaf tensor (op NONE), as ggml_set_param requires.
            unsafe { sys::ggml_set_param(t.as_ptr()) };
            by_name.insert(name.clone(), t);
            names.push(name.clone());
        }
        // SAFETY: every tensor of the context is unallocated; buffer types are static objects.
        let buffer = NonNull::new(unsafe {
            sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx.as_ptr(), buffer_type)
        });
        let Some(buffer) = buffer else {
            return Err(Error::Alloc {
                what: "the parameter buffer".into(),
                bytes: Some(bytes),
            });
        };
        // SAFETY: the buffer is ours and live.
        unsafe { sys::ggml_backend_buffer_clear(buffer.as_ptr(), 0) };
        Ok(ParamStore {
            buffer,
            by_name,
            names,
            _ctx: ctx,
        })
    }

    /// Parameter names in creation order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn tensor(&self, name: &str) -> Result<NonNull<sys::ggml_tensor>> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownTensor {
                kind: "parameter",
                name: name.into(),
                place: "the store",
            })
    }

    /// Shape of a parameter in ggml order (4 entries).
    pub fn shape(&self, name: &str) -> Result<[i64; 4]> {
        // SAFETY: a live tensor of our context.
        Ok(unsafe { (*self.tensor(name)?.as_ptr()).ne })
    }

    /// Number of elements of a parameter.
    pub fn len(&self, name: &str) -> Result<usize> {
        Ok(self.shape(name)?.iter().product::<i64>() as usize)
    }

    /// Overwrites a parameter's values (ggml order, i.e. row-major PyTorch order reversed shape).
    pub fn set(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let t = self.tensor(name)?;
        let n = self.len(name)?;
        if values.len() != n {
            return Err(Error::LengthMismatch {
                what: format!("parameter `{name}`"),
                unit: "values",
                expected: n,
                got: values.len(),
            });
        }
        // SAFETY: the tensor is allocated in our buffer and exactly `n` f32 long.
        unsafe {
            sys::ggml_backend_tensor_set(t.as_ptr(), values.as_ptr().cast(), 0, n * 4);
        }
        Ok(())
    }

    /// A parameter's values: borrowed in place from host memory, copied out of a device's.
    pub fn get(&self, name: &str) -> Result<Cow<'_, [f32]>> {
        let t = self.tensor(name)?;
        let n = self.len(name)?;
        if !self.is_host() {
            let mut out = vec![0.0f32; n];
            // SAFETY: the tensor is allocated in our buffer and exactly `n` f32 long.
            unsafe { sys::ggml_backend_tensor_get(t.as_ptr(), out.as_mut_ptr().cast(), 0, n * 4) };
            return Ok(Cow::Owned(out));
        }
        // SAFETY: the tensor is a contiguous f32 tensor allocated in our host buffer; the slice
        // lives as long as `&self`, and writes need `&mut self`.
        unsafe {
            Ok(Cow::Borrowed(std::slice::from_raw_parts(
                (*t.as_ptr()).data as *const f32,
                n,
            )))
        }
    }

    pub(super) fn raw(&self, name: &str) -> Option<NonNull<sys::ggml_tensor>> {
        self.by_name.get(name).copied()
    }
}

impl Drop for ParamStore {
    fn drop(&mut self) {
        // SAFETY: the buffer was allocated in `new`, is owned by `self` alone and is freed here
        // exactly once; no graph reads it any more (graphs hold an `Arc` of the store). The
        // context (the descriptions) is freed after this, when the `_ctx` field drops.
        unsafe { sys::ggml_backend_buffer_free(self.buffer.as_ptr()) }
    }
}

impl TensorSource for Arc<ParamStore> {
    fn contains(&self, name: &str) -> bool {
        ParamStore::contains(self, name)
    }

    fn attach(&self, g: &mut Graph, name: &str) -> Result<TensorId> {
        g.param(self, name)
    }
}

impl Graph {
    /// Makes the parameter `name` of `params` usable in this graph, which keeps the store alive.
    /// In a graph built [`with_gradients`](Self::with_gradients) its gradient can be read after
    /// [`compute_gradients`](Self::compute_gradients).
    pub fn param(&mut self, params: &Arc<ParamStore>, name: &str) -> Result<TensorId> {
        self.check_building("attaching a parameter")?;
        let raw = params.raw(name).ok_or_else(|| Error::UnknownTensor {
            kind: "parameter",
            name: name.into(),
            place: "the store",
        })?;
        // Attached once: a parameter has one gradient. Finding the tensor means its store is
        // already kept alive.
        if let Some(i) = self.tensors.iter().position(|t| *t == raw) {
            return Ok(TensorId(i));
        }
        let id = self.attach_leaf(params.clone(), raw);
        self.param_ids.push(id);
        Ok(id)
    }
}
