//! The compute graph: a [`Graph`] owns a ggml context of tensor descriptions, the compute graph
//! over them and the memory the graph allocator (`ggml_gallocr`) assigns to inputs and
//! intermediates, reusing buffers between operations. Tensors are addressed by [`TensorId`]
//! handles. Leaves come from inputs, from a [`TensorSource`] (memory-mapped weights, trainable
//! parameters: the graph keeps their owner alive) or from another graph ([`Graph::import`]).
//! Build once, then set inputs and [`compute`](Graph::compute) as often as needed: nothing is
//! allocated per computation.
//!
//! This file holds the graph's life cycle (build, allocate, compute) and what every other part
//! of the module shares; each other file adds one kind of operation, and every operation checks
//! the shape rules ggml would otherwise enforce with an abort:
//!
//! | file | what it adds |
//! |---|---|
//! | `ops.rs` | the forward operations of the model (products, norms, rope, attention, ...) |
//! | `autodiff.rs` | graphs with gradients: ggml's backward pass over [`param_store::ParamStore`] tensors |
//! | `param_store.rs` | [`param_store::ParamStore`], the trainable f32 parameters, and [`Graph::param`] |
//! | `adamw.rs` | [`adamw::AdamWState`], ggml's AdamW update of a parameter store |
//! | `transfer.rs` | data in and out: inputs, results, imports from other graphs, backend checks |
//! | `scoring.rs` | operations that summarise logits rows on a device ([`scoring::RowSummary`]) |
//! | `qgemm_op.rs` | the int8 GEMM of [`crate::simd::qgemm`] as ggml custom operations |
//! | `gemm_op.rs` | the f32 products of a graph with gradients as one blocked GEMM |
//!
//! This file imports neither the weights nor the parameter store: both implement [`TensorSource`]
//! (and attach their tensors as leaves, `Graph::attach_leaf`) in their own files.

use crate::backend::Backend;
use crate::ggml_context::Context;
use crate::{Error, GgmlType, Result};
use llama_cpp_sys_2 as sys;
use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

pub mod adamw;
mod autodiff;
mod gemm_op;
mod ops;
pub mod param_store;
mod qgemm_op;
pub mod scoring;
mod transfer;

/// Something model tensors can be taken from by GGUF name: memory-mapped weights
/// ([`crate::weights::Weights`], inference) or trainable parameters ([`param_store::ParamStore`],
/// training). One model definition serves both.
pub trait TensorSource {
    /// Whether a tensor called `name` exists.
    fn contains(&self, name: &str) -> bool;
    /// Makes the tensor `name` usable in `g` (which keeps the source alive).
    fn attach(&self, g: &mut Graph, name: &str) -> Result<TensorId>;
}

/// Handle of a tensor inside one [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorId(usize);

/// What a graph computation's ggml status means: aborted (the abort flag), failed, or done.
fn compute_status(status: sys::ggml_status) -> Result<()> {
    if status == sys::GGML_STATUS_ABORTED {
        return Err(Error::Aborted);
    }
    if status != sys::GGML_STATUS_SUCCESS {
        return Err(Error::Compute {
            what: "graph computation",
            status,
        });
    }
    Ok(())
}

/// A graph allocator and the buffer it owns. Shared (`Arc`) with graphs that read one of its
/// tensors in place ([`Graph::import`]), so the memory outlives every reader.
struct Allocator(NonNull<sys::ggml_gallocr>);

// SAFETY: the allocator is only freed (in Drop, once); no other use after allocation.
unsafe impl Send for Allocator {}
unsafe impl Sync for Allocator {}

impl Drop for Allocator {
    fn drop(&mut self) {
        // SAFETY: owned, freed exactly once.
        unsafe { sys::ggml_gallocr_free(self.0.as_ptr()) };
    }
}

/// What keeps the memory of attached leaves alive (weights, parameter stores): held by every
/// graph that reads them, so they outlive the graph.
pub(crate) type Owner = Arc<dyn Any + Send + Sync>;

/// A ggml compute graph: built by adding tensors, fixed by [`allocate`](Graph::allocate), then
/// computed as often as needed (see the module documentation).
pub struct Graph {
    graph: Option<NonNull<sys::ggml_cgraph>>,
    galloc: Option<Arc<Allocator>>,
    /// Allocators of other graphs whose tensors this one reads in place.
    imports: Vec<Arc<Allocator>>,
    tensors: Vec<NonNull<sys::ggml_tensor>>,
    capacity: usize,
    /// Owners of the attached leaves (weights, parameter stores), each once.
    owners: Vec<Owner>,
    /// The parameter tensors attached (for gradients).
    param_ids: Vec<TensorId>,
    /// Whether the graph is built with gradients ([`Graph::with_gradients`]).
    grads: bool,
    /// Whether the backward pass was appended ([`Graph::allocate_with_gradients`]).
    has_backward: bool,
    /// Whether (and where) the gradient graph is computed in two parts.
    split: autodiff::SplitState,
    /// Whether f32 products use the blocked GEMM of `gemm_op.rs` (always in graphs with
    /// gradients; forward graphs ask with [`Graph::use_gemm_products`]).
    gemm_products: bool,
    /// Allocated dimension 1 of tensors resized by `set_active_rows`.
    full_rows: std::collections::HashMap<usize, i64>,
    /// The tensor descriptions and the graph's nodes. Fields drop in declaration order, so the
    /// allocator's memory is released before the descriptions that pointed into it.
    ctx: Context,
}

// SAFETY: the context, graph and allocator are owned exclusively by this value; ggml has no
// thread affinity for them; attached weights and parameters are only read through shared
// references (their owners are `Send + Sync`).
unsafe impl Send for Graph {}

impl Graph {
    /// A graph with room for `max_tensors` tensor descriptions (inputs, views and results).
    pub fn new(max_tensors: usize) -> Result<Self> {
        Self::build(max_tensors, false)
    }

    fn graph_size(&self) -> usize {
        if self.grads {
            self.capacity * autodiff::BACKWARD_FACTOR
        } else {
            self.capacity
        }
    }

    fn build(max_tensors: usize, grads: bool) -> Result<Self> {
        let factor = if grads { autodiff::BACKWARD_FACTOR } else { 1 };
        let size = max_tensors
            .checked_mul(factor)
            .ok_or_else(|| Error::InvalidArgument {
                what: "graph size",
                detail: format!("{max_tensors} tensors with room for gradients overflow"),
            })?;
        // SAFETY: size queries without side effects.
        let mem_size = unsafe {
            sys::ggml_tensor_overhead() * size + sys::ggml_graph_overhead_custom(size, grads)
        };
        let ctx = Context::descriptions(mem_size)?;
        Ok(Graph {
            graph: None,
            galloc: None,
            imports: Vec::new(),
            tensors: Vec::new(),
            capacity: max_tensors,
            owners: Vec::new(),
            param_ids: Vec::new(),
            grads,
            has_backward: false,
            split: Default::default(),
            gemm_products: grads,
            full_rows: std::collections::HashMap::new(),
            ctx,
        })
    }

    fn push(&mut self, raw: *mut sys::ggml_tensor) -> Result<TensorId> {
        let t = NonNull::new(raw).ok_or_else(|| Error::Init("a tensor".into()))?;
        self.tensors.push(t);
        Ok(TensorId(self.tensors.len() - 1))
    }

    fn raw(&self, id: TensorId) -> Result<*mut sys::ggml_tensor> {
        self.tensors
            .get(id.0)
            .map(|t| t.as_ptr())
            .ok_or(Error::UnknownHandle { index: id.0 })
    }

    fn ctx_for_new(&self) -> Result<*mut sys::ggml_context> {
        if self.graph.is_some() {
            return Err(Error::AlreadyAllocated {
                op: "adding a tensor",
            });
        }
        if self.tensors.len() >= self.capacity {
            return Err(Error::GraphFull {
                capacity: self.capacity,
            });
        }
        Ok(self.ctx.as_ptr())
    }

    /// Shape of a tensor in ggml order.
    pub fn shape(&self, id: TensorId) -> Result<[i64; 4]> {
        // SAFETY: `raw` returned a live tensor (ours or a borrowed weight).
        Ok(unsafe { (*self.raw(id)?).ne })
    }

    fn type_of(&self, id: TensorId) -> Result<u32> {
        // SAFETY: as in `shape`.
        Ok(unsafe { (*self.raw(id)?).type_ })
    }

    fn is_contiguous(&self, id: TensorId) -> Result<bool> {
        // SAFETY: as in `shape`.
        Ok(unsafe { sys::ggml_is_contiguous(self.raw(id)?) })
    }

    /// A new input tensor (its data is set before each computation), ggml order, 1 to 4 dims.
    pub fn input(&mut self, ty: GgmlType, shape: &[i64]) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        if shape.is_empty() || shape.len() > 4 || shape.iter().any(|&d| d <= 0) {
            return Err(Error::Shape {
                op: "input",
                detail: format!("invalid shape {shape:?} (1 to 4 positive dimensions)"),
            });
        }
        if !(shape[0] as u64).is_multiple_of(ty.block_size()) {
            return Err(Error::Shape {
                op: "input",
                detail: format!("row length {} does not fit {ty} blocks", shape[0]),
            });
        }
        // SAFETY: 1..=4 positive dims, a valid type and room in the context.
        let raw = unsafe { sys::ggml_new_tensor(ctx, ty.id(), shape.len() as i32, shape.as_ptr()) };
        // SAFETY: freshly created tensor of our context.
        unsafe { sys::ggml_set_input(raw) };
        self.push(raw)
    }

    /// Refuses to change a graph that allocation has fixed; `op` says what was attempted.
    pub(crate) fn check_building(&self, op: &'static str) -> Result<()> {
        if self.graph.is_some() {
            return Err(Error::AlreadyAllocated { op });
        }
        Ok(())
    }

    /// Adds `raw`, a tensor with memory of its own that `owner` holds (a weight, a parameter),
    /// as a leaf, and keeps `owner` alive as long as the graph. Such leaves take no room in the
    /// graph's context. The caller has checked [`check_building`](Self::check_building).
    pub(crate) fn attach_leaf(&mut self, owner: Owner, raw: NonNull<sys::ggml_tensor>) -> TensorId {
        if !self
            .owners
            .iter()
            .any(|o| std::ptr::addr_eq(Arc::as_ptr(o), Arc::as_ptr(&owner)))
        {
            self.owners.push(owner);
        }
        self.tensors.push(raw);
        TensorId(self.tensors.len() - 1)
    }

    /// Fixes the graph that computes `outputs` and allocates its inputs and intermediates on the
    /// backend's buffer type, reusing memory between operations.
    pub fn allocate(&mut self, outputs: &[TensorId], backend: &Backend) -> Result<()> {
        self.check_building("allocating it again")?;
        // SAFETY: the context was sized with ggml_graph_overhead_custom for `graph_size` nodes.
        let graph = NonNull::new(unsafe {
            sys::ggml_new_graph_custom(self.ctx.as_ptr(), self.graph_size(), false)
        })
        .ok_or_else(|| Error::Init("the compute graph".into()))?;
        self.expand_outputs(graph, outputs)?;
        self.allocate_graph(graph, backend)
    }

    fn expand_outputs(&self, graph: NonNull<sys::ggml_cgraph>, outputs: &[TensorId]) -> Result<()> {
        for &out in outputs {
            let t = self.raw(out)?;
            // SAFETY: `t` is a tensor of this graph; outputs must not be overwritten by the
            // allocator, and the graph has room for all nodes (capacity >= tensors).
            unsafe {
                sys::ggml_set_output(t);
                sys::ggml_build_forward_expand(graph.as_ptr(), t);
            }
        }
        Ok(())
    }

    /// Computes this graph's f32 matrix products with the blocked GEMM that graphs with gradients
    /// use (`gemm_op.rs`) instead of ggml's, on the CPU backend; call before
    /// [`allocate`](Self::allocate). A trainer's forward passes then round as its gradient passes
    /// do. Inference keeps ggml's products.
    pub fn use_gemm_products(&mut self) -> Result<()> {
        self.check_building("choosing its products")?;
        self.gemm_products = true;
        Ok(())
    }

    fn allocate_graph(
        &mut self,
        graph: NonNull<sys::ggml_cgraph>,
        backend: &Backend,
    ) -> Result<()> {
        self.check_param_memory(backend)?;
        if self.gemm_products && backend.is_builtin_cpu() {
            // SAFETY: the graph's own context and graph, not yet allocated, computed on the
            // CPU backend; for a graph with gradients the backward pass is already built.
            unsafe { gemm_op::replace_products(self.ctx.as_ptr(), graph.as_ptr()) };
        }
        // SAFETY: backend is live; the allocator is freed in Drop.
        let galloc = NonNull::new(unsafe { sys::ggml_gallocr_new(backend.buffer_type()) })
            .ok_or_else(|| Error::Init("the graph allocator".into()))?;
        self.galloc = Some(Arc::new(Allocator(galloc)));
        // SAFETY: graph and allocator are live; weights already have memory and are skipped.
        if !unsafe { sys::ggml_gallocr_alloc_graph(galloc.as_ptr(), graph.as_ptr()) } {
            return Err(Error::Alloc {
                what: "the compute graph's memory".into(),
                bytes: None,
            });
        }
        self.graph = Some(graph);
        Ok(())
    }

    /// Refuses parameters in memory `backend` cannot compute with (a host store on a GPU, a
    /// GPU's store on the CPU): ggml would crash on them instead of reporting.
    fn check_param_memory(&self, backend: &Backend) -> Result<()> {
        for &id in &self.param_ids {
            let t = self.raw(id)?;
            // SAFETY: a live parameter tensor with its store's buffer (kept alive by the graph);
            // the queries only read the buffer's type.
            let usable = unsafe {
                let buffer = (*t).buffer;
                !buffer.is_null()
                    && backend.supports_buffer_type(sys::ggml_backend_buffer_get_type(buffer))
            };
            if !usable {
                return Err(Error::InvalidArgument {
                    what: "graph parameters",
                    detail: format!(
                        "a parameter store lives in memory the {} backend cannot compute with; \
                         make the store for that backend (ParamStore::on_backend)",
                        backend.name()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Uses only the first `rows` columns (ggml dimension 1) of the listed tensors in the next
    /// computations, e.g. to project fewer rows than a head graph was built for without computing
    /// padding. `rows` may not exceed the size the graph was allocated with, so memory stays valid;
    /// ggml plans each computation from the current shapes.
    pub fn set_active_rows(&mut self, ids: &[TensorId], rows: i64) -> Result<()> {
        if self.graph.is_none() {
            return Err(Error::NotAllocated { op: "resizing" });
        }
        for &id in ids {
            let t = self.raw(id)?;
            let full = *self.full_rows.entry(id.0).or_insert_with(|| {
                // SAFETY: `t` is a live tensor of this graph.
                unsafe { (*t).ne[1] }
            });
            if rows < 1 || rows > full {
                return Err(Error::Shape {
                    op: "set_active_rows",
                    detail: format!("{rows} rows requested of a tensor built for {full}"),
                });
            }
            // SAFETY: shrinking (or restoring) dimension 1 of a contiguous tensor keeps every
            // stride and the allocation valid; dims above 1 are 1 for the tensors resized here.
            unsafe {
                if (*t).ne[2] != 1 || (*t).ne[3] != 1 {
                    return Err(Error::Shape {
                        op: "set_active_rows",
                        detail: format!("only matrices can be resized, not {:?}", (*t).ne),
                    });
                }
                (*t).ne[1] = rows;
            }
        }
        Ok(())
    }

    /// Bytes of compute memory the allocator holds.
    pub fn compute_buffer_size(&self) -> usize {
        // SAFETY: buffer 0 is the only buffer of a single-backend allocator.
        self.galloc.as_ref().map_or(0, |g| unsafe {
            sys::ggml_gallocr_get_buffer_size(g.0.as_ptr(), 0)
        })
    }

    /// Computes the allocated graph on `backend` (the one it was allocated for).
    pub fn compute(&mut self, backend: &mut Backend) -> Result<()> {
        let graph = self.graph.ok_or(Error::NotAllocated { op: "computing" })?;
        // SAFETY: graph and its tensors are allocated on the backend's buffer type (or are
        // weights in buffers the backend can read).
        let status =
            unsafe { sys::ggml_backend_graph_compute(backend.raw.as_ptr(), graph.as_ptr()) };
        compute_status(status)
    }

    /// Registers the tensor `make` creates in this graph's context (checked for room first), for
    /// operations that call ggml directly.
    fn push_new(
        &mut self,
        make: impl FnOnce(*mut sys::ggml_context) -> *mut sys::ggml_tensor,
    ) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        self.push(make(ctx))
    }

    /// Whether the graph was built [`with_gradients`](Self::with_gradients).
    fn has_gradients(&self) -> bool {
        self.grads
    }
}
