//! The Dream forward pass as a GGML graph (docs/model.md §3): token embedding, per layer
//! `h = x + Attn(RMSNorm(x))`, `out = h + MLP(RMSNorm(h))` with q/k/v biases, NeoX RoPE, grouped-
//! query attention without any mask, SwiGLU; final RMSNorm. The body is one graph per canvas
//! length; the output projection (the head of a [`Pass`]) is a second, fixed-width graph applied only to the
//! hidden rows that predict still-masked positions (the logits shift means row `i-1` predicts
//! token `i`).
//!
//! [`build_body`] is the project's one definition of the layer stack: the trainer
//! (`unmask-train`) builds it over trainable f32 parameters with [`AttentionKind::Explicit`]
//! (differentiable ops), inference over the mapped GGUF weights with fused flash attention and,
//! for q8_0 weights on the CPU, our int8 GEMM (`unmask_kernels::simd::qgemm`) instead of ggml's. The
//! fast-decoding modes build it with a [`KvUse`]: a refresh pass keeps every layer's keys and
//! values, a cached pass (`crate::kv_cache`) runs only some rows against them.

use crate::head::Pass;
use crate::model::Model;
use crate::Result;
use unmask_kernels::backend::Backend;
use unmask_kernels::graph::{Graph, TensorId, TensorSource};
use unmask_kernels::GgmlType;
use unmask_quantize::config::DreamConfig;

pub use crate::head::{DEVICE_CANDIDATES, HEAD_ROWS};

/// Built graphs for one canvas length, reused by every step.
pub struct Forward {
    pub len: usize,
    /// The body over the whole canvas and the head over its output.
    pass: Pass,
    tokens: TensorId,
    positions: TensorId,
    position_ids: Vec<i32>,
    /// Every layer's keys (after RoPE) and values, when built as a refresh pass.
    kv: Vec<LayerKv>,
}

/// How attention is computed in the layer stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKind {
    /// ggml's fused flash attention (inference: no score matrix; no backward pass).
    Fused,
    /// `softmax(scale * K^T Q)` then `V`, with ops ggml can differentiate (training).
    Explicit,
}

/// Tensor descriptions a graph needs per layer of the body, with room to spare (the training
/// graph adds the output projection and the loss).
pub fn graph_capacity(n_layers: usize) -> usize {
    72 * n_layers + 64
}

/// Name of the output projection in `w` (the token embedding when tied).
pub fn output_weight_name(w: &dyn TensorSource) -> &'static str {
    if w.contains("output.weight") {
        "output.weight"
    } else {
        "token_embd.weight"
    }
}

/// The body's inputs and output in a graph built by [`build_body`].
#[derive(Clone, Debug)]
pub struct Body {
    /// i32 token ids, `[len]`.
    pub tokens: TensorId,
    /// i32 positions, `[len]` (`0..len` for an unpadded sequence; the run's canvas positions in
    /// a cached pass).
    pub positions: TensorId,
    /// Hidden states after the final RMSNorm, `[hidden, len]`.
    pub hidden: TensorId,
    /// With [`KvUse::Export`]: each layer's keys and values (see [`LayerKv`]); else empty.
    pub kv: Vec<LayerKv>,
}

/// One layer's keys and values for every position of a canvas of `L` tokens: keys after RoPE
/// `[head_dim, n_kv_heads, L]`, values `[n_kv_heads * head_dim, L]` (contiguous; both hold
/// `kv_dim x L` floats, position-major).
#[derive(Clone, Copy, Debug)]
pub struct LayerKv {
    pub k: TensorId,
    pub v: TensorId,
}

/// What a body graph does with each layer's keys and values (docs/fast-decoding.md §3).
#[derive(Clone, Copy, Debug)]
pub enum KvUse<'a> {
    /// Intermediates only (exact decoding, training).
    Discard,
    /// A refresh pass: every layer's keys (after RoPE) and values are graph outputs
    /// ([`Body::kv`]), kept for the cached passes that follow.
    Export,
    /// A cached pass over `len` run rows: each layer's keys and values for the `keys` positions
    /// of the canvas are gathered by `select` (i32 `[keys]`) from the rows of `cache[layer]`
    /// (indices `0..keys`, a refresh's [`LayerKv`] imported into this graph) followed by the
    /// run's own fresh rows (indices `keys..keys + len`).
    Cached {
        cache: &'a [LayerKv],
        select: TensorId,
    },
}

/// The Dream layer stack (docs/model.md §3), the one model definition of the project: inference builds
/// it over memory-mapped GGUF weights with fused attention, training over f32 parameters with
/// explicit attention; tensors are looked up by GGUF name in `w`.
pub fn build_body(
    g: &mut Graph,
    c: &DreamConfig,
    w: &dyn TensorSource,
    len: usize,
    attention: AttentionKind,
) -> Result<Body> {
    build_body_kv(g, c, w, len, attention, KvUse::Discard)
}

/// [`build_body`] with a choice of what happens to the keys and values (see [`KvUse`]).
pub fn build_body_kv(
    g: &mut Graph,
    c: &DreamConfig,
    w: &dyn TensorSource,
    len: usize,
    attention: AttentionKind,
    kv_use: KvUse,
) -> Result<Body> {
    let (h, n_head, n_kv) = (
        c.hidden_size as i64,
        c.num_attention_heads as i64,
        c.num_key_value_heads as i64,
    );
    let head_dim = h / n_head;
    let eps = c.rms_norm_eps as f32;
    let l = len as i64;
    let tokens = g.input(GgmlType::I32, &[l])?;
    let positions = g.input(GgmlType::I32, &[l])?;
    let embd = w.attach(g, "token_embd.weight")?;
    let mut kv = Vec::new();
    let mut x = g.get_rows(embd, tokens)?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    for i in 0..c.num_hidden_layers as usize {
        let p = |n: &str| format!("blk.{i}.{n}");
        let mut weight = |n: &str| w.attach(g, &p(n));
        let (attn_norm, wq, bq, wk, bk, wv, bv, wo) = (
            weight("attn_norm.weight")?,
            weight("attn_q.weight")?,
            weight("attn_q.bias")?,
            weight("attn_k.weight")?,
            weight("attn_k.bias")?,
            weight("attn_v.weight")?,
            weight("attn_v.bias")?,
            weight("attn_output.weight")?,
        );
        let (ffn_norm, wg, wu, wd) = (
            weight("ffn_norm.weight")?,
            weight("ffn_gate.weight")?,
            weight("ffn_up.weight")?,
            weight("ffn_down.weight")?,
        );
        let normed = g.rms_norm(x, eps)?;
        let cur = g.mul(normed, attn_norm)?;
        // Inference on the CPU: q8_0 weights go through our int8 GEMM, with the activations
        // quantized once for q, k and v (ggml's own quantization; the products differ from
        // ggml's only in f32 summation order).
        let fast = attention == AttentionKind::Fused;
        let cur_q8 = quantized_input(g, fast, &[wq, wk, wv], cur)?;
        // Each projection as written by `linear` + bias, `[heads * head_dim, tokens]`.
        let project = |g: &mut Graph, wt, b| -> Result<TensorId> {
            let y = linear(g, wt, cur, cur_q8)?;
            Ok(g.add(y, b)?)
        };
        let q = project(g, wq, bq)?;
        let k = project(g, wk, bk)?;
        let v = project(g, wv, bv)?; // [kv_dim, l]
        let q = g.reshape(q, &[head_dim, n_head, l])?;
        let k = g.reshape(k, &[head_dim, n_kv, l])?;
        let rope = |g: &mut Graph, t| {
            g.rope_neox(
                t,
                positions,
                c.rope_theta as f32,
                c.max_position_embeddings as i32,
            )
        };
        let q = rope(g, q)?;
        let k = rope(g, k)?; // [head_dim, n_kv, l]
        let (k, v) = match kv_use {
            KvUse::Discard => (k, g.reshape(v, &[head_dim, n_kv, l])?),
            KvUse::Export => {
                kv.push(LayerKv { k, v });
                (k, g.reshape(v, &[head_dim, n_kv, l])?)
            }
            KvUse::Cached { cache, select } => {
                // Rows 0..keys of the cache, then this run's rows; `select` picks, for every
                // canvas position, the cached row or the run's fresh one.
                let layer = cache.get(i).ok_or_else(|| {
                    crate::Error::Model(format!("the key/value cache has no layer {i}"))
                })?;
                let keys = g.shape(select)?[0];
                let gather = |g: &mut Graph, cached: TensorId, fresh: TensorId| {
                    let cached = g.reshape(cached, &[head_dim * n_kv, keys])?;
                    let fresh = g.reshape(fresh, &[head_dim * n_kv, l])?;
                    let rows = g.concat(cached, fresh, 1)?;
                    let picked = g.get_rows(rows, select)?;
                    Ok::<_, crate::Error>(g.reshape(picked, &[head_dim, n_kv, keys])?)
                };
                (gather(g, layer.k, k)?, gather(g, layer.v, v)?)
            }
        };
        // [head_dim, tokens, heads]; K/V heads shared by groups of query heads.
        let q = g.permute(q, [0, 2, 1, 3])?;
        let k = g.permute(k, [0, 2, 1, 3])?;
        let v = g.permute(v, [0, 2, 1, 3])?;
        let attended = match attention {
            AttentionKind::Fused => g.attention(q, k, v, scale)?,
            AttentionKind::Explicit => g.attention_explicit(q, k, v, scale)?,
        }; // [head_dim, heads, tokens]
        let attended = g.reshape(attended, &[h, l])?;
        let attended_q8 = quantized_input(g, fast, &[wo], attended)?;
        let out = linear(g, wo, attended, attended_q8)?;
        let hres = g.add(x, out)?;
        let normed = g.rms_norm(hres, eps)?;
        let cur = g.mul(normed, ffn_norm)?;
        let cur_q8 = quantized_input(g, fast, &[wg, wu], cur)?;
        let gate = linear(g, wg, cur, cur_q8)?;
        let up = linear(g, wu, cur, cur_q8)?;
        let act = g.swiglu(gate, up)?;
        let act_q8 = quantized_input(g, fast, &[wd], act)?;
        let down = linear(g, wd, act, act_q8)?;
        x = g.add(hres, down)?;
    }
    let out_norm = w.attach(g, "output_norm.weight")?;
    let normed = g.rms_norm(x, eps)?;
    let hidden = g.mul(normed, out_norm)?;
    Ok(Body {
        tokens,
        positions,
        hidden,
        kv,
    })
}

/// `x` quantized for [`linear`] when `fast` and any of the weights `ws` that multiply it can use
/// the int8 GEMM (mixed-type files have, e.g., q8_0 values next to other query/key types).
fn quantized_input(
    g: &mut Graph,
    fast: bool,
    ws: &[TensorId],
    x: TensorId,
) -> Result<Option<TensorId>> {
    let mut any = false;
    for &w in ws {
        any |= g.can_mul_mat_q8(w, x)?;
    }
    if fast && any {
        Ok(Some(g.quantize_q8(x)?))
    } else {
        Ok(None)
    }
}

/// `w x`: with the q8_0 GEMM when the input was quantized for it (and `w` qualifies), else
/// ggml's `mul_mat`.
fn linear(g: &mut Graph, w: TensorId, x: TensorId, xq: Option<TensorId>) -> Result<TensorId> {
    match xq {
        Some(xq) if g.can_mul_mat_q8(w, x)? => Ok(g.mul_mat_q8_quantized(w, xq)?),
        _ => Ok(g.mul_mat(w, x)?),
    }
}

impl Forward {
    /// Builds the graphs over `model`'s tensors (GGUF weights or any other [`TensorSource`]);
    /// with `keep_kv` the body is a refresh pass that keeps every layer's keys and values
    /// ([`kv`](Self::kv)) for cached passes. On a device backend (not the built-in CPU) every
    /// operation is checked to be supported: fused attention falls back to the explicit form,
    /// scoring on the device to copying rows.
    pub fn new<W: TensorSource>(
        model: &Model<W>,
        len: usize,
        keep_kv: bool,
        backend: &Backend,
    ) -> Result<Self> {
        let plan = if keep_kv {
            BodyPlan::Refresh
        } else {
            BodyPlan::Plain
        };
        let (body, b, _) = build_checked(model, len, plan, backend)?;
        let pass = Pass::new(
            body,
            b.hidden,
            &model.weights,
            len.min(HEAD_ROWS),
            model.n_vocab,
            backend,
        )?;
        Ok(Forward {
            len,
            pass,
            tokens: b.tokens,
            positions: b.positions,
            position_ids: (0..len as i32).collect(),
            kv: b.kv,
        })
    }

    /// The body graph and its per-layer keys and values (empty unless built with `keep_kv`),
    /// for cached passes to import.
    pub fn kv(&self) -> (&Graph, &[LayerKv]) {
        (&self.pass.graph, &self.kv)
    }

    /// The body and its head: projection and scoring of the rows the last
    /// [`run_body`](Self::run_body) computed.
    pub fn pass(&mut self) -> &mut Pass {
        &mut self.pass
    }

    /// Bytes of compute memory both graphs hold (the kept keys and values included).
    pub fn compute_bytes(&self) -> usize {
        self.pass.compute_bytes()
    }

    /// Whether rows are scored on the device (only summaries are copied to the host).
    pub fn scores_on_device(&self) -> bool {
        self.pass.scores_on_device()
    }

    /// Runs the layers over the canvas; afterwards [`pass`](Self::pass) projects and scores any
    /// of its hidden rows.
    pub fn run_body(&mut self, canvas: &[u32], backend: &mut Backend) -> Result<()> {
        let ids: Vec<i32> = canvas.iter().map(|&t| t as i32).collect();
        let g = &mut self.pass.graph;
        g.set_i32(self.tokens, &ids)?;
        // Set every time: the graph allocator may reuse an input's memory after its last use.
        g.set_i32(self.positions, &self.position_ids)?;
        g.compute(backend)?;
        Ok(())
    }

    /// Logits of every position (unshifted), row-major; for parity tests and debugging.
    pub fn all_logits(&mut self, canvas: &[u32], backend: &mut Backend) -> Result<Vec<f32>> {
        self.run_body(canvas, backend)?;
        let rows: Vec<usize> = (0..canvas.len()).collect();
        let mut out = Vec::new();
        self.pass.logits_rows(&rows, backend, |_, chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Which body graph [`build_checked`] builds.
#[derive(Clone, Copy)]
pub(crate) enum BodyPlan<'a> {
    /// The plain forward pass.
    Plain,
    /// A refresh pass that keeps every layer's keys and values.
    Refresh,
    /// A cached pass reading the keys and values `cache` of the refresh graph `source`.
    Cached {
        source: &'a Graph,
        cache: &'a [LayerKv],
    },
}

/// A body graph of `len` rows over `model`'s tensors, allocated on `backend` with its hidden
/// states and any exported keys and values as outputs; for a cached pass also its i32 `select`
/// input (see [`KvUse::Cached`]). On a device, fused attention falls back to the explicit form
/// when the device lacks it; an operation the device cannot compute at all is an error naming
/// it.
pub(crate) fn build_checked<W: TensorSource>(
    model: &Model<W>,
    len: usize,
    plan: BodyPlan,
    backend: &Backend,
) -> Result<(Graph, Body, Option<TensorId>)> {
    let c = &model.config;
    let w: &dyn TensorSource = &model.weights;
    let build = |attention| -> Result<(Graph, Body, Option<TensorId>)> {
        let mut g = Graph::new(graph_capacity(model.n_layers()))?;
        let (body, select) = match plan {
            BodyPlan::Plain => (
                build_body_kv(&mut g, c, w, len, attention, KvUse::Discard)?,
                None,
            ),
            BodyPlan::Refresh => (
                build_body_kv(&mut g, c, w, len, attention, KvUse::Export)?,
                None,
            ),
            BodyPlan::Cached { source, cache } => {
                // The cache lives in the refresh graph: its tensors are read in place.
                let mut imported = Vec::with_capacity(cache.len());
                for layer in cache {
                    imported.push(LayerKv {
                        k: g.import(source, layer.k)?,
                        v: g.import(source, layer.v)?,
                    });
                }
                let keys = match cache.first() {
                    Some(layer) => source.shape(layer.v)?[1],
                    None => return Err(crate::Error::Model("the key/value cache is empty".into())),
                };
                let select = g.input(GgmlType::I32, &[keys])?;
                let kv_use = KvUse::Cached {
                    cache: &imported,
                    select,
                };
                (
                    build_body_kv(&mut g, c, w, len, attention, kv_use)?,
                    Some(select),
                )
            }
        };
        let mut outputs = vec![body.hidden];
        outputs.extend(body.kv.iter().flat_map(|l| [l.k, l.v]));
        g.allocate(&outputs, backend)?;
        Ok((g, body, select))
    };
    let mut built = build(AttentionKind::Fused)?;
    if !backend.is_builtin_cpu() && !built.0.unsupported_ops(backend)?.is_empty() {
        built = build(AttentionKind::Explicit)?;
        let missing = built.0.unsupported_ops(backend)?;
        if !missing.is_empty() {
            return Err(crate::Error::Model(format!(
                "{} cannot compute these operations of the model: {}",
                backend.name(),
                missing.join(", ")
            )));
        }
    }
    Ok(built)
}
