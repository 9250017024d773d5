//! A small safe layer over ggml's context, compute graph, graph allocator and CPU backend.
//!
//! A [`Graph`] owns a ggml context of tensor descriptions, the compute graph over them and the
//! memory the graph allocator (`ggml_gallocr`) assigns to inputs and intermediates, reusing
//! buffers between operations. Tensors are addressed by [`TensorId`] handles; weights come from
//! [`Weights`], which the graph keeps alive by holding an `Arc`. Every operation
//! checks the shape rules ggml would otherwise enforce with an abort. Build once, then set inputs
//! and [`compute`](Graph::compute) as often as needed: nothing is allocated per computation.

use crate::backend::CpuBackend;
use crate::params::ParamStore;
use crate::weights::Weights;
use crate::{Error, GgmlType, Result};
use llama_cpp_sys_2 as sys;
use std::ptr::NonNull;
use std::sync::Arc;

#[path = "graph_scoring.rs"]
mod scoring;
#[path = "graph_transfer.rs"]
mod transfer;

/// ggml's GGML_ROPE_TYPE_NEOX: rotate the two halves of each head against each other.
const ROPE_TYPE_NEOX: i32 = 2;

/// A ggml context that holds only tensor descriptions (`no_alloc`): data lives in backend
/// buffers or, for weights, in the memory-mapped file.
pub(crate) fn descriptions_context(mem_size: usize) -> Result<NonNull<sys::ggml_context>> {
    let params = sys::ggml_init_params {
        mem_size,
        mem_buffer: std::ptr::null_mut(),
        no_alloc: true,
    };
    // SAFETY: valid parameters; NULL is handled.
    NonNull::new(unsafe { sys::ggml_init(params) })
        .ok_or_else(|| Error::Ggml("ggml_init failed".into()))
}

/// Extra tensor descriptions and graph nodes that `ggml_build_backward_expand` may create per
/// forward tensor (out_prod, transposes, repeat_back, accumulation adds, ...): generous, since
/// running out of context memory would be a ggml abort.
const BACKWARD_FACTOR: usize = 8;

/// Something model tensors can be taken from by GGUF name: memory-mapped [`Weights`] (inference)
/// or trainable [`ParamStore`] parameters (training). One model definition serves both.
pub trait TensorSource {
    /// Whether a tensor called `name` exists.
    fn contains(&self, name: &str) -> bool;
    /// Makes the tensor `name` usable in `g` (which keeps the source alive).
    fn attach(&self, g: &mut Graph, name: &str) -> Result<TensorId>;
}

impl TensorSource for Arc<Weights> {
    fn contains(&self, name: &str) -> bool {
        Weights::contains(self, name)
    }

    fn attach(&self, g: &mut Graph, name: &str) -> Result<TensorId> {
        g.weight(self, name)
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

/// Handle of a tensor inside one [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorId(usize);

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

pub struct Graph {
    ctx: NonNull<sys::ggml_context>,
    graph: Option<NonNull<sys::ggml_cgraph>>,
    galloc: Option<Arc<Allocator>>,
    /// Allocators of other graphs whose tensors this one reads in place.
    imports: Vec<Arc<Allocator>>,
    tensors: Vec<NonNull<sys::ggml_tensor>>,
    capacity: usize,
    weights: Vec<Arc<Weights>>,
    /// Parameter stores this graph uses, and the parameter tensors attached (for gradients).
    params: Vec<Arc<ParamStore>>,
    param_ids: Vec<TensorId>,
    /// Whether the graph is built with gradients ([`Graph::with_gradients`]).
    grads: bool,
    /// Whether the backward pass was appended ([`Graph::allocate_with_gradients`]).
    has_backward: bool,
    /// Allocated dimension 1 of tensors resized by `set_active_rows`.
    full_rows: std::collections::HashMap<usize, i64>,
}

// SAFETY: the context, graph and allocator are owned exclusively by this value; ggml has no
// thread affinity for them; borrowed weights are immutable.
unsafe impl Send for Graph {}

impl Graph {
    /// A graph with room for `max_tensors` tensor descriptions (inputs, views and results).
    pub fn new(max_tensors: usize) -> Result<Self> {
        Self::build(max_tensors, false)
    }

    /// A graph whose loss can be differentiated with respect to the [`ParamStore`] tensors it
    /// uses: allocate it with [`allocate_with_gradients`](Self::allocate_with_gradients), compute
    /// with [`compute_gradients`](Self::compute_gradients) and read [`grad_f32`](Self::grad_f32).
    /// `max_tensors` counts the forward tensors only; room for the backward pass is added.
    pub fn with_gradients(max_tensors: usize) -> Result<Self> {
        Self::build(max_tensors, true)
    }

    fn graph_size(&self) -> usize {
        if self.grads {
            self.capacity * BACKWARD_FACTOR
        } else {
            self.capacity
        }
    }

    fn build(max_tensors: usize, grads: bool) -> Result<Self> {
        let factor = if grads { BACKWARD_FACTOR } else { 1 };
        let size = max_tensors
            .checked_mul(factor)
            .ok_or_else(|| Error::Ggml("graph too large".into()))?;
        // SAFETY: size queries without side effects.
        let mem_size = unsafe {
            sys::ggml_tensor_overhead() * size + sys::ggml_graph_overhead_custom(size, grads)
        };
        let ctx = descriptions_context(mem_size)?;
        Ok(Graph {
            ctx,
            graph: None,
            galloc: None,
            imports: Vec::new(),
            tensors: Vec::new(),
            capacity: max_tensors,
            weights: Vec::new(),
            params: Vec::new(),
            param_ids: Vec::new(),
            grads,
            has_backward: false,
            full_rows: std::collections::HashMap::new(),
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

    fn ctx_for_new(&self) -> Result<*mut sys::ggml_context> {
        if self.graph.is_some() {
            return Err(Error::Ggml("graph is already allocated".into()));
        }
        if self.tensors.len() >= self.capacity {
            return Err(Error::Ggml(format!(
                "graph capacity of {} tensors exceeded",
                self.capacity
            )));
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
            return Err(Error::Ggml(format!("invalid shape {shape:?}")));
        }
        if !(shape[0] as u64).is_multiple_of(ty.block_size()) {
            return Err(Error::Ggml(format!(
                "row length {} does not fit {ty} blocks",
                shape[0]
            )));
        }
        // SAFETY: 1..=4 positive dims, a valid type and room in the context.
        let raw = unsafe { sys::ggml_new_tensor(ctx, ty.id(), shape.len() as i32, shape.as_ptr()) };
        // SAFETY: freshly created tensor of our context.
        unsafe { sys::ggml_set_input(raw) };
        self.push(raw)
    }

    /// Makes the weight `name` of `weights` usable in this graph, which keeps the weights alive.
    pub fn weight(&mut self, weights: &Arc<Weights>, name: &str) -> Result<TensorId> {
        if self.graph.is_some() {
            return Err(Error::Ggml("graph is already allocated".into()));
        }
        let raw = weights
            .raw(name)
            .ok_or_else(|| Error::Ggml(format!("weight `{name}` is not in the model file")))?;
        if !self.weights.iter().any(|w| Arc::ptr_eq(w, weights)) {
            self.weights.push(weights.clone());
        }
        self.tensors.push(raw);
        Ok(TensorId(self.tensors.len() - 1))
    }

    /// Makes the parameter `name` of `params` usable in this graph, which keeps the store alive.
    /// In a graph built [`with_gradients`](Self::with_gradients) its gradient can be read after
    /// [`compute_gradients`](Self::compute_gradients).
    pub fn param(&mut self, params: &Arc<ParamStore>, name: &str) -> Result<TensorId> {
        if self.graph.is_some() {
            return Err(Error::Ggml("graph is already allocated".into()));
        }
        let raw = params
            .raw(name)
            .ok_or_else(|| Error::Ggml(format!("parameter `{name}` is not in the store")))?;
        if !self.params.iter().any(|p| Arc::ptr_eq(p, params)) {
            self.params.push(params.clone());
        }
        if let Some(i) = self.tensors.iter().position(|t| *t == raw) {
            return Ok(TensorId(i));
        }
        self.tensors.push(raw);
        let id = TensorId(self.tensors.len() - 1);
        self.param_ids.push(id);
        Ok(id)
    }

    /// Rows of `a` picked by the i32 indices in `ids`: [n0, n1] x [n] -> [n0, n].
    pub fn get_rows(&mut self, a: TensorId, ids: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sa, si) = (self.shape(a)?, self.shape(ids)?);
        if self.type_of(ids)? != sys::GGML_TYPE_I32 || si[1] != 1 || sa[2] != 1 {
            return Err(Error::Ggml(format!(
                "get_rows needs a matrix and an i32 vector, got {sa:?} and {si:?}"
            )));
        }
        // SAFETY: shapes and types checked as ggml_get_rows asserts them.
        let raw = unsafe { sys::ggml_get_rows(ctx, self.raw(a)?, self.raw(ids)?) };
        self.push(raw)
    }

    /// RMS normalisation over rows (no weight).
    pub fn rms_norm(&mut self, a: TensorId, eps: f32) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        // SAFETY: any f32 tensor is accepted by ggml_rms_norm.
        let raw = unsafe { sys::ggml_rms_norm(ctx, self.raw(a)?, eps) };
        self.push(raw)
    }

    fn check_broadcast(&self, a: TensorId, b: TensorId, op: &str) -> Result<()> {
        let (sa, sb) = (self.shape(a)?, self.shape(b)?);
        if sa.iter().zip(&sb).any(|(x, y)| x % y != 0) {
            return Err(Error::Ggml(format!(
                "{op}: {sb:?} does not broadcast onto {sa:?}"
            )));
        }
        Ok(())
    }

    /// Element-wise `a * b`, `b` broadcast over `a`.
    pub fn mul(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        self.check_broadcast(a, b, "mul")?;
        // SAFETY: ggml_can_repeat(b, a) checked above.
        let raw = unsafe { sys::ggml_mul(ctx, self.raw(a)?, self.raw(b)?) };
        self.push(raw)
    }

    /// Element-wise `a + b`, `b` broadcast over `a`.
    pub fn add(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        self.check_broadcast(a, b, "add")?;
        // SAFETY: ggml_can_repeat(b, a) checked above.
        let raw = unsafe { sys::ggml_add(ctx, self.raw(a)?, self.raw(b)?) };
        self.push(raw)
    }

    /// `a @ b` in ggml's convention: a [k, n, h], b [k, m, h*r] -> [n, m, h*r] (a broadcast).
    pub fn mul_mat(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sa, sb) = (self.shape(a)?, self.shape(b)?);
        if sa[0] != sb[0] || sb[2] % sa[2] != 0 || sb[3] % sa[3] != 0 {
            return Err(Error::Ggml(format!(
                "cannot multiply shapes {sa:?} and {sb:?}"
            )));
        }
        // SAFETY: ggml_can_mul_mat holds (checked above).
        let raw = unsafe { sys::ggml_mul_mat(ctx, self.raw(a)?, self.raw(b)?) };
        self.push(raw)
    }

    /// A contiguous tensor viewed with another shape of the same element count.
    pub fn reshape(&mut self, a: TensorId, shape: &[i64]) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let sa = self.shape(a)?;
        let count: i64 = sa.iter().product();
        if !self.is_contiguous(a)?
            || shape.iter().product::<i64>() != count
            || !(2..=3).contains(&shape.len())
        {
            return Err(Error::Ggml(format!("cannot reshape {sa:?} to {shape:?}")));
        }
        let raw = self.raw(a)?;
        // SAFETY: contiguous source with the same element count.
        let out = unsafe {
            if shape.len() == 2 {
                sys::ggml_reshape_2d(ctx, raw, shape[0], shape[1])
            } else {
                sys::ggml_reshape_3d(ctx, raw, shape[0], shape[1], shape[2])
            }
        };
        self.push(out)
    }

    /// Dimension `i` of `a` becomes dimension `axes[i]` of the result (a strided view).
    pub fn permute(&mut self, a: TensorId, axes: [i32; 4]) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let mut seen = [false; 4];
        for &x in &axes {
            if !(0..4).contains(&x) || std::mem::replace(&mut seen[x as usize], true) {
                return Err(Error::Ggml(format!("invalid permutation {axes:?}")));
            }
        }
        // SAFETY: a valid permutation of the four axes.
        let raw =
            unsafe { sys::ggml_permute(ctx, self.raw(a)?, axes[0], axes[1], axes[2], axes[3]) };
        self.push(raw)
    }

    /// `f(a)` for a ggml operation of one tensor that accepts any tensor.
    fn unary(
        &mut self,
        a: TensorId,
        f: unsafe extern "C" fn(
            *mut sys::ggml_context,
            *mut sys::ggml_tensor,
        ) -> *mut sys::ggml_tensor,
    ) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        // SAFETY: only used with ggml operations that accept any tensor of a live context.
        let raw = unsafe { f(ctx, self.raw(a)?) };
        self.push(raw)
    }

    /// `a` and `b` joined along dimension `dim` (0..4): every other dimension and the type must
    /// agree. The result is a new contiguous tensor.
    pub fn concat(&mut self, a: TensorId, b: TensorId, dim: usize) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sa, sb) = (self.shape(a)?, self.shape(b)?);
        let fits = dim < 4
            && self.type_of(a)? == self.type_of(b)?
            && (0..4).all(|d| d == dim || sa[d] == sb[d]);
        if !fits {
            return Err(Error::Ggml(format!(
                "concat along {dim}: {sa:?} and {sb:?} do not fit"
            )));
        }
        // SAFETY: same type, all dimensions but `dim` equal, as ggml_concat asserts.
        let raw = unsafe { sys::ggml_concat(ctx, self.raw(a)?, self.raw(b)?, dim as i32) };
        self.push(raw)
    }

    /// A contiguous copy of a (possibly strided) tensor.
    pub fn cont(&mut self, a: TensorId) -> Result<TensorId> {
        self.unary(a, sys::ggml_cont)
    }

    /// NeoX-style ("rotate half") rotary embedding of `a` [head_dim, heads, tokens] at the i32
    /// `positions` [tokens], with base `theta` and no scaling.
    pub fn rope_neox(
        &mut self,
        a: TensorId,
        positions: TensorId,
        theta: f32,
        n_ctx_orig: i32,
    ) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sa, sp) = (self.shape(a)?, self.shape(positions)?);
        if self.type_of(positions)? != sys::GGML_TYPE_I32 || sp[0] != sa[2] || sa[0] % 2 != 0 {
            return Err(Error::Ggml(format!(
                "rope: tensor {sa:?} and positions {sp:?} do not fit"
            )));
        }
        // SAFETY: positions is an i32 vector with one entry per token and n_dims = head_dim is
        // even; the remaining arguments are ggml's "no scaling" values.
        let raw = unsafe {
            sys::ggml_rope_ext(
                ctx,
                self.raw(a)?,
                self.raw(positions)?,
                std::ptr::null_mut(),
                sa[0] as i32,
                ROPE_TYPE_NEOX,
                n_ctx_orig,
                theta,
                1.0,
                0.0,
                1.0,
                0.0,
                0.0,
            )
        };
        self.push(raw)
    }

    /// Row-wise softmax of `a * scale`, without mask.
    pub fn soft_max(&mut self, a: TensorId, scale: f32) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        // SAFETY: no mask, so no shape constraints beyond a valid tensor.
        let raw =
            unsafe { sys::ggml_soft_max_ext(ctx, self.raw(a)?, std::ptr::null_mut(), scale, 0.0) };
        self.push(raw)
    }

    /// Attention without mask, fused (ggml's flash attention: online softmax, no score matrix):
    /// q [d, tokens, heads], k and v [d, keys, kv_heads] (heads a multiple of kv_heads, which are
    /// shared by consecutive groups of query heads) -> [d, heads, tokens].
    pub fn attention(
        &mut self,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        scale: f32,
    ) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sq, sk, sv) = (self.shape(q)?, self.shape(k)?, self.shape(v)?);
        if sq[0] != sk[0]
            || sk != sv
            || sk[2] == 0
            || sq[2] % sk[2] != 0
            || sq[3] != 1
            || sk[3] != 1
        {
            return Err(Error::Ggml(format!(
                "attention: q {sq:?}, k {sk:?}, v {sv:?} do not fit"
            )));
        }
        // SAFETY: shapes checked as ggml_flash_attn_ext asserts them; no mask, no ALiBi, no
        // soft-capping.
        let raw = unsafe {
            sys::ggml_flash_attn_ext(
                ctx,
                self.raw(q)?,
                self.raw(k)?,
                self.raw(v)?,
                std::ptr::null_mut(),
                scale,
                0.0,
                0.0,
            )
        };
        self.push(raw)
    }

    /// The sum of all elements of a tensor: shape `[1]`.
    pub fn sum(&mut self, a: TensorId) -> Result<TensorId> {
        self.unary(a, sys::ggml_sum)
    }

    /// Swaps dimensions 0 and 1 (a strided view).
    pub fn transpose(&mut self, a: TensorId) -> Result<TensorId> {
        self.unary(a, sys::ggml_transpose)
    }

    /// Attention without mask written out with differentiable operations (ggml's flash attention
    /// has no backward pass): `softmax(scale * K^T Q)` per head, then `V` times it. Same contract
    /// as [`attention`](Self::attention): q `[d, tokens, heads]`, k and v `[d, keys, kv_heads]`
    /// (consecutive groups of query heads share a K/V head) -> `[d, heads, tokens]`, contiguous.
    pub fn attention_explicit(
        &mut self,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        scale: f32,
    ) -> Result<TensorId> {
        let (sq, sk, sv) = (self.shape(q)?, self.shape(k)?, self.shape(v)?);
        if sq[0] != sk[0]
            || sk != sv
            || sk[2] == 0
            || sq[2] % sk[2] != 0
            || sq[3] != 1
            || sk[3] != 1
        {
            return Err(Error::Ggml(format!(
                "attention: q {sq:?}, k {sk:?}, v {sv:?} do not fit"
            )));
        }
        let scores = self.mul_mat(k, q)?; // [keys, tokens, heads]
        let probs = self.soft_max(scores, scale)?;
        let vt = self.transpose(v)?; // [keys, d, kv_heads]
        let vt = self.cont(vt)?;
        let out = self.mul_mat(vt, probs)?; // [d, tokens, heads]
        let out = self.permute(out, [0, 2, 1, 3])?; // [d, heads, tokens]
        self.cont(out)
    }

    /// `silu(gate) * up` (SwiGLU), element-wise on equal shapes.
    pub fn swiglu(&mut self, gate: TensorId, up: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        if self.shape(gate)? != self.shape(up)? {
            return Err(Error::Ggml("swiglu needs equal shapes".into()));
        }
        // SAFETY: equal shapes, as ggml_swiglu_split asserts.
        let raw = unsafe { sys::ggml_swiglu_split(ctx, self.raw(gate)?, self.raw(up)?) };
        self.push(raw)
    }

    /// Fixes the graph that computes `outputs` and allocates its inputs and intermediates on the
    /// backend's buffer type, reusing memory between operations.
    pub fn allocate(&mut self, outputs: &[TensorId], backend: &CpuBackend) -> Result<()> {
        if self.graph.is_some() {
            return Err(Error::Ggml("graph is already allocated".into()));
        }
        // SAFETY: the context was sized with ggml_graph_overhead_custom for `graph_size` nodes.
        let graph = NonNull::new(unsafe {
            sys::ggml_new_graph_custom(self.ctx.as_ptr(), self.graph_size(), false)
        })
        .ok_or_else(|| Error::Ggml("graph creation failed".into()))?;
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

    /// Like [`allocate`](Self::allocate) for a graph built [`with_gradients`](Self::with_gradients):
    /// `loss` (a one-element f32 tensor) is the training loss, and ggml's automatic
    /// differentiation (`ggml_build_backward_expand`) appends the backward pass, which computes
    /// the gradient of `loss` with respect to every attached parameter that it depends on.
    pub fn allocate_with_gradients(
        &mut self,
        outputs: &[TensorId],
        loss: TensorId,
        backend: &CpuBackend,
    ) -> Result<()> {
        if self.graph.is_some() {
            return Err(Error::Ggml("graph is already allocated".into()));
        }
        if !self.grads {
            return Err(Error::Ggml(
                "gradients need a graph made with Graph::with_gradients".into(),
            ));
        }
        if self.shape(loss)? != [1, 1, 1, 1] || self.type_of(loss)? != sys::GGML_TYPE_F32 {
            return Err(Error::Ggml(format!(
                "the loss must be one f32 value, has shape {:?}",
                self.shape(loss)?
            )));
        }
        if self.param_ids.is_empty() {
            return Err(Error::Ggml("the graph uses no parameters".into()));
        }
        // SAFETY: the context was sized with ggml_graph_overhead_custom for `graph_size` nodes
        // with gradients.
        let graph = NonNull::new(unsafe {
            sys::ggml_new_graph_custom(self.ctx.as_ptr(), self.graph_size(), true)
        })
        .ok_or_else(|| Error::Ggml("graph creation failed".into()))?;
        self.expand_outputs(graph, outputs)?;
        self.expand_outputs(graph, &[loss])?;
        let loss_raw = self.raw(loss)?;
        // SAFETY: checked above: a scalar f32 tensor of this graph.
        unsafe { sys::ggml_set_loss(loss_raw) };
        // ggml asserts that a parameter takes part; check it here instead.
        let params: Vec<*mut sys::ggml_tensor> = self
            .param_ids
            .iter()
            .map(|&id| self.raw(id))
            .collect::<Result<_>>()?;
        // SAFETY: node indices below ggml_graph_n_nodes of a live graph.
        let uses_param = unsafe {
            (0..sys::ggml_graph_n_nodes(graph.as_ptr()))
                .any(|i| params.contains(&sys::ggml_graph_node(graph.as_ptr(), i)))
        };
        if !uses_param {
            return Err(Error::Ggml("the loss depends on no parameter".into()));
        }
        // SAFETY: the graph was created with gradients, holds a loss and a parameter; every
        // tensor the backward pass differentiates through is f32 (parameters and activations),
        // the operations used by this API all have backward passes in ggml (flash attention,
        // which has none, is refused here); the context has room for BACKWARD_FACTOR times the
        // forward tensors.
        unsafe {
            for i in 0..sys::ggml_graph_n_nodes(graph.as_ptr()) {
                let node = sys::ggml_graph_node(graph.as_ptr(), i);
                if (*node).op == sys::GGML_OP_FLASH_ATTN_EXT {
                    return Err(Error::Ggml(
                        "flash attention has no backward pass; use attention_explicit".into(),
                    ));
                }
            }
            sys::ggml_build_backward_expand(
                self.ctx.as_ptr(),
                graph.as_ptr(),
                std::ptr::null_mut(),
            );
        }
        for &p in &params {
            // SAFETY: live graph and tensor; a parameter's gradient must survive the computation.
            unsafe {
                let grad = sys::ggml_graph_get_grad(graph.as_ptr(), p);
                if !grad.is_null() {
                    sys::ggml_set_output(grad);
                }
            }
        }
        self.allocate_graph(graph, backend)?;
        self.has_backward = true;
        Ok(())
    }

    fn allocate_graph(
        &mut self,
        graph: NonNull<sys::ggml_cgraph>,
        backend: &CpuBackend,
    ) -> Result<()> {
        // SAFETY: backend is live; the allocator is freed in Drop.
        let galloc = NonNull::new(unsafe { sys::ggml_gallocr_new(backend.buffer_type()) })
            .ok_or_else(|| Error::Ggml("cannot create the graph allocator".into()))?;
        self.galloc = Some(Arc::new(Allocator(galloc)));
        // SAFETY: graph and allocator are live; weights already have memory and are skipped.
        if !unsafe { sys::ggml_gallocr_alloc_graph(galloc.as_ptr(), graph.as_ptr()) } {
            return Err(Error::Ggml(
                "cannot allocate the compute graph's memory".into(),
            ));
        }
        self.graph = Some(graph);
        Ok(())
    }

    /// Uses only the first `rows` columns (ggml dimension 1) of the listed tensors in the next
    /// computations, e.g. to project fewer rows than a head graph was built for without computing
    /// padding. `rows` may not exceed the size the graph was allocated with, so memory stays valid;
    /// ggml plans each computation from the current shapes.
    pub fn set_active_rows(&mut self, ids: &[TensorId], rows: i64) -> Result<()> {
        if self.graph.is_none() {
            return Err(Error::Ggml("allocate the graph before resizing".into()));
        }
        for &id in ids {
            let t = self.raw(id)?;
            let full = *self.full_rows.entry(id.0).or_insert_with(|| {
                // SAFETY: `t` is a live tensor of this graph.
                unsafe { (*t).ne[1] }
            });
            if rows < 1 || rows > full {
                return Err(Error::Ggml(format!(
                    "{rows} rows requested of a tensor built for {full}"
                )));
            }
            // SAFETY: shrinking (or restoring) dimension 1 of a contiguous tensor keeps every
            // stride and the allocation valid; dims above 1 are 1 for the tensors resized here.
            unsafe {
                if (*t).ne[2] != 1 || (*t).ne[3] != 1 {
                    return Err(Error::Ggml("only matrices can be resized".into()));
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

    fn allocated_tensor(&self, id: TensorId, len: usize) -> Result<*mut sys::ggml_tensor> {
        if self.graph.is_none() {
            return Err(Error::Ggml(
                "allocate the graph before touching data".into(),
            ));
        }
        let t = self.raw(id)?;
        // SAFETY: `t` is a live tensor.
        let (nbytes, data) = unsafe { (sys::ggml_nbytes(t), (*t).data) };
        if data.is_null() {
            return Err(Error::Ggml(
                "tensor has no memory (not an input or output)".into(),
            ));
        }
        if nbytes != len {
            return Err(Error::Ggml(format!(
                "tensor holds {nbytes} bytes, buffer has {len}"
            )));
        }
        Ok(t)
    }

    /// Copies raw bytes (in the tensor's own type) into an input tensor. The graph allocator may
    /// reuse an input's memory after its last use within a computation, so inputs should be set
    /// before every computation.
    pub fn set_bytes(&mut self, id: TensorId, bytes: &[u8]) -> Result<()> {
        let t = self.allocated_tensor(id, bytes.len())?;
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
                return Err(Error::Ggml("read_f32 needs a contiguous f32 tensor".into()));
            }
            let _ = self.allocated_tensor(id, n * 4)?;
            if t_ref.buffer.is_null() || !sys::ggml_backend_buffer_is_host(t_ref.buffer) {
                return Err(Error::Ggml("tensor is not in host memory".into()));
            }
            Ok(std::slice::from_raw_parts(t_ref.data as *const f32, n))
        }
    }

    /// Computes the loss and the gradients of a graph allocated with
    /// [`allocate_with_gradients`](Self::allocate_with_gradients): d(loss)/d(loss) is set to 1
    /// first (`ggml_graph_reset`), so every computation gives fresh gradients.
    pub fn compute_gradients(&mut self, backend: &mut CpuBackend) -> Result<()> {
        let graph = self
            .graph
            .ok_or_else(|| Error::Ggml("graph is not allocated".into()))?;
        if !self.grads || !self.has_backward {
            return Err(Error::Ggml("graph was not allocated with gradients".into()));
        }
        // SAFETY: a live graph with gradients whose tensors are allocated in host memory.
        unsafe { sys::ggml_graph_reset(graph.as_ptr()) };
        self.compute(backend)
    }

    /// The gradient of the loss with respect to parameter `param` after
    /// [`compute_gradients`](Self::compute_gradients), in the parameter's shape; `None` when the
    /// loss does not depend on it.
    pub fn grad_f32(&self, param: TensorId) -> Result<Option<&[f32]>> {
        let graph = self
            .graph
            .ok_or_else(|| Error::Ggml("graph is not allocated".into()))?;
        if !self.has_backward || !self.param_ids.contains(&param) {
            return Err(Error::Ggml(
                "no gradient: not a parameter of a graph with gradients".into(),
            ));
        }
        let p = self.raw(param)?;
        // SAFETY: live graph and tensor. The gradient is checked to be a contiguous f32 tensor in
        // host memory with the parameter's element count before it is viewed as a slice; it was
        // marked as an output, so the allocator never reuses its memory, and the slice lives as
        // long as `&self` (computing needs `&mut self`).
        unsafe {
            let grad = sys::ggml_graph_get_grad(graph.as_ptr(), p);
            if grad.is_null() {
                return Ok(None);
            }
            let n = sys::ggml_nelements(p) as usize;
            let g = &*grad;
            if g.type_ != sys::GGML_TYPE_F32
                || !sys::ggml_is_contiguous(grad)
                || sys::ggml_nelements(grad) as usize != n
                || g.data.is_null()
                || g.buffer.is_null()
                || !sys::ggml_backend_buffer_is_host(g.buffer)
            {
                return Err(Error::Ggml(
                    "gradient is not a contiguous host f32 tensor".into(),
                ));
            }
            Ok(Some(std::slice::from_raw_parts(g.data as *const f32, n)))
        }
    }

    /// The parameters attached to this graph, in attachment order.
    pub fn params(&self) -> &[TensorId] {
        &self.param_ids
    }

    pub fn compute(&mut self, backend: &mut CpuBackend) -> Result<()> {
        let graph = self
            .graph
            .ok_or_else(|| Error::Ggml("graph is not allocated".into()))?;
        // SAFETY: graph and its tensors are allocated on the backend's buffer type (or are
        // weights in buffers the backend can read).
        let status =
            unsafe { sys::ggml_backend_graph_compute(backend.raw.as_ptr(), graph.as_ptr()) };
        if status != sys::GGML_STATUS_SUCCESS {
            return Err(Error::Ggml(format!(
                "graph computation failed with status {status}"
            )));
        }
        Ok(())
    }

    /// The raw ggml tensor of `id`, for operations defined in other modules of this crate.
    pub(crate) fn raw_tensor(&self, id: TensorId) -> Result<*mut sys::ggml_tensor> {
        self.raw(id)
    }

    /// Registers the tensor `make` creates in this graph's context (checked for room first), for
    /// operations defined in other modules of this crate.
    pub(crate) fn push_new(
        &mut self,
        make: impl FnOnce(*mut sys::ggml_context) -> *mut sys::ggml_tensor,
    ) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        self.push(make(ctx))
    }

    /// Whether the graph was built [`with_gradients`](Self::with_gradients).
    pub(crate) fn has_gradients(&self) -> bool {
        self.grads
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: allocator and context are owned by us and freed exactly once.
        // (The allocator is freed when the last graph that uses its memory is dropped.)
        self.galloc = None;
        unsafe {
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
        let ta = g.input(GgmlType::F32, &[k as i64, n as i64]).unwrap();
        let tb = g.input(GgmlType::F32, &[k as i64, m as i64]).unwrap();
        let tc = g.mul_mat(ta, tb).unwrap();
        g.allocate(&[tc], &backend).unwrap();
        g.set_f32(ta, &a).unwrap();
        g.set_f32(tb, &b).unwrap();
        g.compute(&mut backend).unwrap();
        let c = g.read_f32(tc).unwrap();
        for j in 0..m {
            for i in 0..n {
                let want: f32 = (0..k).map(|x| a[i * k + x] * b[j * k + x]).sum();
                assert!((c[j * n + i] - want).abs() < 1e-3, "{i},{j}");
            }
        }
    }

    fn store(tensors: &[(&str, Vec<i64>, Vec<f32>)]) -> Arc<ParamStore> {
        let shapes: Vec<(String, Vec<i64>)> = tensors
            .iter()
            .map(|(n, s, _)| (n.to_string(), s.clone()))
            .collect();
        let mut p = ParamStore::new(&shapes).unwrap();
        for (n, _, v) in tensors {
            p.set(n, v).unwrap();
        }
        Arc::new(p)
    }

    #[test]
    fn gradients_of_a_linear_layer_match_the_closed_form() {
        // loss = sum((W x + b) ⊙ G): dW[o][i] = sum_m G[m][o] x[m][i], db[o] = sum_m G[m][o].
        let (k, n, m) = (5usize, 3usize, 4usize);
        let w: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let x: Vec<f32> = (0..k * m).map(|i| (i as f32 * 0.11).cos()).collect();
        let gm: Vec<f32> = (0..n * m).map(|i| (i as f32 * 0.7).sin()).collect();
        let params = store(&[
            ("w", vec![k as i64, n as i64], w.clone()),
            ("b", vec![n as i64], b),
        ]);
        let mut backend = CpuBackend::new(2).unwrap();
        let mut g = Graph::with_gradients(16).unwrap();
        let tw = g.param(&params, "w").unwrap();
        let tb = g.param(&params, "b").unwrap();
        assert_eq!(g.param(&params, "w").unwrap(), tw, "attached once");
        let tx = g.input(GgmlType::F32, &[k as i64, m as i64]).unwrap();
        let tg = g.input(GgmlType::F32, &[n as i64, m as i64]).unwrap();
        let y = g.mul_mat(tw, tx).unwrap();
        let y = g.add(y, tb).unwrap();
        let prod = g.mul(y, tg).unwrap();
        let loss = g.sum(prod).unwrap();
        g.allocate_with_gradients(&[y], loss, &backend).unwrap();
        for _ in 0..2 {
            // A second computation gives the same (fresh, not accumulated) gradients. Inputs are
            // set before every computation: the allocator reuses their memory after last use.
            g.set_f32(tx, &x).unwrap();
            g.set_f32(tg, &gm).unwrap();
            g.compute_gradients(&mut backend).unwrap();
            let dw = g.grad_f32(tw).unwrap().unwrap();
            for o in 0..n {
                for i in 0..k {
                    let want: f32 = (0..m).map(|j| gm[j * n + o] * x[j * k + i]).sum();
                    assert!((dw[o * k + i] - want).abs() < 1e-5, "dW[{o}][{i}]");
                }
            }
            let db = g.grad_f32(tb).unwrap().unwrap();
            for o in 0..n {
                let want: f32 = (0..m).map(|j| gm[j * n + o]).sum();
                assert!((db[o] - want).abs() < 1e-5, "db[{o}]");
            }
        }
        assert!(g.grad_f32(tx).is_err(), "inputs are not parameters");
    }

    #[test]
    fn explicit_attention_equals_flash_attention() {
        let (d, t, heads, kv) = (8i64, 5i64, 4i64, 2i64);
        let mut backend = CpuBackend::new(2).unwrap();
        let mut outs = Vec::new();
        for explicit in [false, true] {
            let mut g = Graph::new(32).unwrap();
            let q = g.input(GgmlType::F32, &[d, heads, t]).unwrap();
            let k = g.input(GgmlType::F32, &[d, kv, t]).unwrap();
            let v = g.input(GgmlType::F32, &[d, kv, t]).unwrap();
            let qp = g.permute(q, [0, 2, 1, 3]).unwrap();
            let kp = g.permute(k, [0, 2, 1, 3]).unwrap();
            let vp = g.permute(v, [0, 2, 1, 3]).unwrap();
            let out = if explicit {
                g.attention_explicit(qp, kp, vp, 0.3).unwrap()
            } else {
                g.attention(qp, kp, vp, 0.3).unwrap()
            };
            g.allocate(&[out], &backend).unwrap();
            let fill =
                |n: i64, s: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * s).sin()).collect() };
            g.set_f32(q, &fill(d * heads * t, 0.31)).unwrap();
            g.set_f32(k, &fill(d * kv * t, 0.17)).unwrap();
            g.set_f32(v, &fill(d * kv * t, 0.23)).unwrap();
            g.compute(&mut backend).unwrap();
            assert_eq!(g.shape(out).unwrap(), [d, heads, t, 1]);
            outs.push(g.read_f32(out).unwrap().to_vec());
        }
        for (a, b) in outs[0].iter().zip(&outs[1]) {
            // Flash attention rounds its V accumulation through f16.
            assert!((a - b).abs() < 2e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn gradient_misuse_gives_errors() {
        let params = store(&[("w", vec![4, 2], vec![1.0; 8])]);
        let backend = CpuBackend::new(1).unwrap();
        // Not a gradient graph.
        let mut g = Graph::new(8).unwrap();
        let w = g.param(&params, "w").unwrap();
        let s = g.sum(w).unwrap();
        assert!(g.allocate_with_gradients(&[], s, &backend).is_err());
        // Loss not a scalar.
        let mut g = Graph::with_gradients(8).unwrap();
        let w = g.param(&params, "w").unwrap();
        let y = g.mul(w, w).unwrap();
        assert!(g.allocate_with_gradients(&[], y, &backend).is_err());
        // No parameter.
        let mut g = Graph::with_gradients(8).unwrap();
        let x = g.input(GgmlType::F32, &[4, 2]).unwrap();
        let s = g.sum(x).unwrap();
        assert!(g.allocate_with_gradients(&[], s, &backend).is_err());
        // A parameter the loss does not use.
        let mut g = Graph::with_gradients(8).unwrap();
        g.param(&params, "w").unwrap();
        let x = g.input(GgmlType::F32, &[4, 2]).unwrap();
        let s = g.sum(x).unwrap();
        assert!(g.allocate_with_gradients(&[], s, &backend).is_err());
        // Flash attention has no backward pass.
        let mut g = Graph::with_gradients(16).unwrap();
        let q = g.param(&params, "w").unwrap();
        let q3 = g.reshape(q, &[4, 2, 1]).unwrap();
        let a = g.attention(q3, q3, q3, 1.0).unwrap();
        let s = g.sum(a).unwrap();
        assert!(g.allocate_with_gradients(&[], s, &backend).is_err());
        assert!(g.grad_f32(q).is_err());
        assert!(ParamStore::new(&[("x".into(), vec![0])]).is_err());
        assert!(ParamStore::new(&[]).is_err());
    }

    #[test]
    fn shape_errors_do_not_reach_ggml_asserts() {
        let mut g = Graph::new(8).unwrap();
        let a = g.input(GgmlType::F32, &[8, 2]).unwrap();
        let b = g.input(GgmlType::F32, &[9, 2]).unwrap();
        assert!(g.mul_mat(a, b).is_err());
        assert!(g.add(a, b).is_err());
        assert!(g.input(GgmlType::Q4_K, &[100, 2]).is_err());
        assert!(g.input(GgmlType::F32, &[0]).is_err());
        assert!(g.permute(a, [0, 0, 1, 2]).is_err());
        assert!(g.reshape(a, &[5, 3]).is_err());
        assert!(g.set_f32(a, &[0.0; 16]).is_err(), "data before allocation");
    }
}
