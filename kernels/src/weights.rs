//! Model weights. For the CPU backend zero-copy: every tensor of a GGUF file becomes a ggml
//! tensor whose data points into the file's read-only memory map, as llama.cpp does with mmap.
//! Loading costs no copy and no allocation; pages are read from disk when first touched, and
//! the resident set stays close to the file size. For a device backend (a GPU) the tensors are
//! copied once into one device buffer ([`Weights::upload`]). Graphs read them through
//! [`TensorSource`] / [`Graph::weight`], which keep the weights alive.

use crate::device::Device;
use crate::ggml_context::Context;
use crate::gguf::{GgufFile, TensorInfo};
use crate::graph::{Graph, TensorId, TensorSource};
use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Arc;

/// All tensors of a GGUF file, bound to its memory map.
pub struct Weights {
    buffer: NonNull<sys::ggml_backend_buffer>,
    by_name: HashMap<String, NonNull<sys::ggml_tensor>>,
    /// The tensors' descriptions; dropped (freed) after `Drop` has freed `buffer`.
    ctx: Context,
    /// The file and its memory map, which the CPU tensors point into: dropped last.
    file: Arc<GgufFile>,
}

// SAFETY: after construction the tensors are never mutated; ggml only reads weight data, so
// sharing them between threads (several graphs computing at once) is sound.
unsafe impl Send for Weights {}
unsafe impl Sync for Weights {}

impl Weights {
    /// Binds every tensor of `file` to its bytes in the memory map (the built-in CPU backend).
    pub fn map_cpu(file: Arc<GgufFile>) -> Result<Self> {
        let n = file.tensors().len();
        // SAFETY: size query.
        let mem_size = unsafe { sys::ggml_tensor_overhead() } * (n + 1);
        // Every early return drops `ctx`, which frees it.
        let ctx = Context::descriptions(mem_size)?;
        let bytes = file.mapped_bytes();
        // SAFETY: the mapping is page aligned (>= ggml's 32-byte tensor alignment) and lives as
        // long as `file`, which we keep. ggml never writes to weight tensors, so handing it the
        // read-only mapping as a "host buffer" is sound; the buffer only wraps, never frees it.
        let buffer = NonNull::new(unsafe {
            sys::ggml_backend_cpu_buffer_from_ptr(
                bytes.as_ptr() as *mut std::ffi::c_void,
                bytes.len(),
            )
        });
        let Some(buffer) = buffer else {
            return Err(Error::Init("a CPU buffer over the mapped file".into()));
        };
        // From here on an error drops `weights`, whose `Drop` frees buffer and context.
        let mut weights = Weights {
            file: file.clone(),
            buffer,
            by_name: HashMap::with_capacity(n),
            ctx,
        };
        for info in file.tensors() {
            let tensor = weights.bind(info)?;
            weights.by_name.insert(info.name.clone(), tensor);
        }
        Ok(weights)
    }

    /// Copies every tensor of `file` into one buffer in `device`'s memory (a GPU's).
    pub fn upload(file: Arc<GgufFile>, device: &Device) -> Result<Self> {
        let n = file.tensors().len();
        // SAFETY: size query.
        let mem_size = unsafe { sys::ggml_tensor_overhead() } * (n + 1);
        // Every early return drops `ctx`, which frees it.
        let ctx = Context::descriptions(mem_size)?;
        let mut by_name = HashMap::with_capacity(n);
        let mut described = Vec::with_capacity(n);
        for info in file.tensors() {
            let t = describe_tensor(&ctx, info)?;
            by_name.insert(info.name.clone(), t);
            described.push((info, t));
        }
        // SAFETY: every tensor of the live context gets memory in one new buffer of the
        // device's buffer type; NULL (out of device memory) is handled.
        let buffer = NonNull::new(unsafe {
            sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx.as_ptr(), device.buffer_type())
        });
        let Some(buffer) = buffer else {
            let bytes: u64 = file.tensors().iter().map(|t| t.size).sum();
            return Err(Error::Device(format!(
                "cannot allocate {:.1} MiB for the weights on {}",
                bytes as f64 / (1 << 20) as f64,
                device.name()
            )));
        };
        // From here on an error drops `weights`, whose `Drop` frees buffer and context.
        let weights = Weights {
            file: file.clone(),
            buffer,
            by_name,
            ctx,
        };
        let base = file.mapped_bytes();
        for (info, t) in described {
            let offset = (file.data_offset() + info.offset) as usize;
            let bytes = &base[offset..offset + info.size as usize];
            // SAFETY: the tensor was allocated above with ggml_nbytes == info.size bytes (the
            // reader validated shape, type and extent), and `bytes` is exactly that long.
            unsafe {
                let nbytes = sys::ggml_nbytes(t.as_ptr());
                if nbytes != bytes.len() {
                    return Err(Error::LengthMismatch {
                        what: format!("tensor {}", info.name),
                        unit: "bytes",
                        expected: nbytes,
                        got: bytes.len(),
                    });
                }
                sys::ggml_backend_tensor_set(t.as_ptr(), bytes.as_ptr().cast(), 0, bytes.len());
            }
            // The device has its copy: the file's pages need not stay resident.
            file.release_pages(offset, bytes.len());
        }
        Ok(weights)
    }

    fn bind(&self, info: &TensorInfo) -> Result<NonNull<sys::ggml_tensor>> {
        let t = describe_tensor(&self.ctx, info)?;
        let offset = (self.file.data_offset() + info.offset) as usize;
        // SAFETY: the reader checked offset + size against the file length, so the tensor's
        // bytes lie inside the buffer; ggml_nbytes equals info.size for the validated shape.
        let status = unsafe {
            let base = self.file.mapped_bytes().as_ptr() as *mut u8;
            sys::ggml_backend_tensor_alloc(
                self.buffer.as_ptr(),
                t.as_ptr(),
                base.add(offset).cast(),
            )
        };
        if status != sys::GGML_STATUS_SUCCESS {
            return Err(Error::Bind {
                what: format!("tensor {}", info.name),
                memory: "the memory map",
            });
        }
        Ok(t)
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Whether the file has a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn raw(&self, name: &str) -> Option<NonNull<sys::ggml_tensor>> {
        self.by_name.get(name).copied()
    }
}

/// A tensor description (no memory yet) for a GGUF tensor.
fn describe_tensor(ctx: &Context, info: &TensorInfo) -> Result<NonNull<sys::ggml_tensor>> {
    let mut ne = [1i64; 4];
    for (d, &v) in ne.iter_mut().zip(&info.shape) {
        *d = v as i64;
    }
    // SAFETY: the shape was validated by the GGUF reader (1..=4 positive dims, whole blocks,
    // no overflow) and the type id is one ggml knows; the context has room for every tensor.
    NonNull::new(unsafe {
        sys::ggml_new_tensor(
            ctx.as_ptr(),
            info.ty.id(),
            info.shape.len() as i32,
            ne.as_ptr(),
        )
    })
    .ok_or_else(|| Error::Init(format!("the description of tensor {}", info.name)))
}

impl Drop for Weights {
    fn drop(&mut self) {
        // SAFETY: the buffer (for a mapping, a wrapper that does not own the mapped memory) was
        // made by `map_cpu` or `upload`, is owned by `self` alone and is freed here exactly once;
        // graphs that read the weights hold an `Arc` of them, so none is left. The context is
        // freed after this, when the `ctx` field drops.
        unsafe { sys::ggml_backend_buffer_free(self.buffer.as_ptr()) }
    }
}

impl TensorSource for Arc<Weights> {
    fn contains(&self, name: &str) -> bool {
        Weights::contains(self, name)
    }

    fn attach(&self, g: &mut Graph, name: &str) -> Result<TensorId> {
        g.weight(self, name)
    }
}

impl Graph {
    /// Makes the weight `name` of `weights` usable in this graph, which keeps the weights alive.
    pub fn weight(&mut self, weights: &Arc<Weights>, name: &str) -> Result<TensorId> {
        self.check_building("attaching a weight")?;
        let raw = weights.raw(name).ok_or_else(|| Error::UnknownTensor {
            kind: "weight",
            name: name.into(),
            place: "the model file",
        })?;
        Ok(self.attach_leaf(weights.clone(), raw))
    }
}
