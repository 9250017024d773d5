//! The Dream layer stack as a GGML graph (docs/model.md §3), the project's one model definition:
//! token embedding; per layer `h = x + Attn(RMSNorm(x))`, `out = h + MLP(RMSNorm(h))` with q/k/v
//! biases, NeoX RoPE, grouped-query attention without any mask (the model is bidirectional),
//! SwiGLU; a final RMSNorm. The output projection is not part of the body: the runtime applies it
//! only to the rows it scores (its head), the trainer to the rows of its loss.
//!
//! Inference builds the body over memory-mapped GGUF weights with fused flash attention and, for
//! q8_0 weights on the CPU, our int8 GEMM (`unmask_kernels::simd::qgemm`) instead of ggml's; training
//! over trainable f32 parameters with [`AttentionKind::Explicit`] (ops ggml can differentiate).
//! The fast-decoding modes build it with a [`KvUse`]: a refresh pass keeps every layer's keys and
//! values, a cached pass runs only some rows against them (docs/fast-decoding.md §3).
//!
//! Shapes are written in ggml order (innermost first): `[hidden, L]` is `L` rows of `hidden`
//! floats. `L` is the number of rows the graph runs, `d` the head size, `H`/`Hkv` the query and
//! key/value head counts, `K` the positions attended to (`L` except in a cached pass).

use crate::layout::{self, Layer};
use crate::{DreamConfig, Error, Result};
use unmask_kernels::graph::{Graph, TensorId, TensorSource};
use unmask_kernels::GgmlType;

/// How attention is computed in the layer stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKind {
    /// ggml's fused flash attention (inference: no score matrix; no backward pass).
    Fused,
    /// `softmax(scale * K^T Q)` then `V`, with ops ggml can differentiate (training).
    Explicit,
}

impl AttentionKind {
    /// The name reports use: `fused` or `explicit`.
    pub fn name(self) -> &'static str {
        match self {
            AttentionKind::Fused => "fused",
            AttentionKind::Explicit => "explicit",
        }
    }
}

/// Tensor descriptions a graph needs per layer of the body, with room to spare (the training
/// graph adds the output projection and the loss; a batch adds the K/V head repeats).
pub fn graph_capacity(n_layers: usize) -> usize {
    84 * n_layers + 64
}

/// Name of the output projection in `w` (the token embedding when tied).
pub fn output_weight_name(w: &dyn TensorSource) -> &'static str {
    if w.contains(layout::OUTPUT) {
        layout::OUTPUT
    } else {
        layout::TOKEN_EMBD
    }
}

/// The body's inputs and output in a graph built by [`build_body`].
#[derive(Clone, Debug)]
pub struct Body {
    /// i32 token ids, `[L]`.
    pub tokens: TensorId,
    /// i32 positions, `[L]` (`0..L` for an unpadded sequence; the run's canvas positions in a
    /// cached pass).
    pub positions: TensorId,
    /// Hidden states after the final RMSNorm, `[hidden, L]`.
    pub hidden: TensorId,
    /// With [`build_body_batch`]: the f32 attention mask `[L, L, 1, B]` (0, or `-inf` to hide
    /// a key from a query: padding), an input set before each computation; else `None`.
    pub key_mask: Option<TensorId>,
    /// With [`KvUse::Export`]: each layer's keys and values (see [`LayerKv`]); else empty.
    pub kv: Vec<LayerKv>,
}

/// One layer's keys and values for every position of a canvas of `L` tokens: keys after RoPE
/// `[d, Hkv, L]`, values `[Hkv * d, L]` (contiguous; both hold `kv_dim x L` floats,
/// position-major).
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
    /// A cached pass over `L` run rows: each layer's keys and values for the `K` positions of
    /// the canvas are gathered by `select` (i32 `[K]`) from the rows of `cache[layer]` (indices
    /// `0..K`, a refresh's [`LayerKv`] imported into this graph) followed by the run's own fresh
    /// rows (indices `K..K + L`).
    Cached {
        cache: &'a [LayerKv],
        select: TensorId,
    },
}

/// The Dream layer stack over `len` rows, tensors looked up by GGUF name in `w`.
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
    let rows = Rows {
        seq: len,
        batch: 1,
        key_mask: false,
    };
    build_layers(g, c, w, rows, attention, kv_use)
}

/// The rows a body graph runs: `batch` sequences of `seq` rows, with or without an attention
/// mask input.
#[derive(Clone, Copy)]
struct Rows {
    seq: usize,
    batch: usize,
    key_mask: bool,
}

/// The layer stack over `batch` independent sequences of `len` rows each, for training
/// (explicit attention): the rows of sequence `b` are `b * len .. (b + 1) * len` of the
/// token, position and hidden tensors (`[len * batch]`, `[hidden, len * batch]`), and
/// attention stays within a sequence. [`Body::key_mask`] hides padding keys, so a sequence
/// shorter than `len` computes what it would alone (its padding rows compute garbage that no
/// loss may read).
pub fn build_body_batch(
    g: &mut Graph,
    c: &DreamConfig,
    w: &dyn TensorSource,
    len: usize,
    batch: usize,
) -> Result<Body> {
    if batch == 0 {
        return Err(Error::EmptyBatch);
    }
    let rows = Rows {
        seq: len,
        batch,
        key_mask: true,
    };
    build_layers(g, c, w, rows, AttentionKind::Explicit, KvUse::Discard)
}

fn build_layers(
    g: &mut Graph,
    c: &DreamConfig,
    w: &dyn TensorSource,
    rows: Rows,
    attention: AttentionKind,
    kv_use: KvUse,
) -> Result<Body> {
    let (h, n_head, n_kv) = (
        c.hidden_size as i64,
        c.num_attention_heads as i64,
        c.num_key_value_heads as i64,
    );
    let d = h / n_head;
    let eps = c.rms_norm_eps as f32;
    // `L` rows in all: `batch` sequences of `seq` rows (batch 1 for inference).
    let (seq, nb) = (rows.seq as i64, rows.batch as i64);
    let l = seq * nb;
    let tokens = g.input(GgmlType::I32, &[l])?; // [L]
    let positions = g.input(GgmlType::I32, &[l])?; // [L]
    let batched = rows.batch > 1;
    let key_mask = if rows.key_mask {
        Some(g.input(GgmlType::F32, &[seq, seq, 1, nb])?)
    } else {
        None
    };
    let embd = w.attach(g, layout::TOKEN_EMBD)?; // [hidden, vocab]
    let mut kv = Vec::new();
    let mut x = g.get_rows(embd, tokens)?; // [hidden, L]
    let scale = 1.0 / (d as f32).sqrt();
    // Inference on the CPU: q8_0 weights go through our int8 GEMM, with each activation
    // quantized once for all the projections that read it (ggml's own quantization; the
    // products differ from ggml's only in f32 summation order).
    let fast = attention == AttentionKind::Fused;
    for i in 0..c.num_hidden_layers {
        let t = Layer::names(c, i).try_map(|name| w.attach(g, &name))?;

        // --- attention: x [hidden, L] -> h [hidden, L] -----------------------------------
        let normed = g.rms_norm(x, eps)?;
        let cur = g.mul(normed, t.attn_norm)?; // [hidden, L]
        let cur_q8 = quantized_input(g, fast, &[t.attn_q, t.attn_k, t.attn_v], cur)?;
        let project = |g: &mut Graph, wt, b| -> Result<TensorId> {
            let y = linear(g, wt, cur, cur_q8)?;
            Ok(g.add(y, b)?)
        };
        let q = project(g, t.attn_q, t.attn_q_bias)?; // [H * d, L]
        let k = project(g, t.attn_k, t.attn_k_bias)?; // [Hkv * d, L]
        let v = project(g, t.attn_v, t.attn_v_bias)?; // [Hkv * d, L]
        let q = g.reshape(q, &[d, n_head, l])?; // [d, H, L]
        let k = g.reshape(k, &[d, n_kv, l])?; // [d, Hkv, L]
        let rope = |g: &mut Graph, t| {
            g.rope_neox(
                t,
                positions,
                c.rope_theta as f32,
                c.max_position_embeddings as i32,
            )
        };
        let q = rope(g, q)?; // [d, H, L]
        let k = rope(g, k)?; // [d, Hkv, L]
        let (k, v) = match kv_use {
            KvUse::Discard => (k, g.reshape(v, &[d, n_kv, l])?),
            KvUse::Export => {
                kv.push(LayerKv { k, v });
                (k, g.reshape(v, &[d, n_kv, l])?)
            }
            KvUse::Cached { cache, select } => {
                // Rows 0..K of the cache, then this run's rows; `select` picks, for every
                // canvas position, the cached row or the run's fresh one.
                let layer = cache
                    .get(i as usize)
                    .ok_or(Error::MissingCacheLayer(i as usize))?;
                let keys = g.shape(select)?[0];
                let gather = |g: &mut Graph, cached: TensorId, fresh: TensorId| {
                    let cached = g.reshape(cached, &[d * n_kv, keys])?; // [Hkv * d, K]
                    let fresh = g.reshape(fresh, &[d * n_kv, l])?; // [Hkv * d, L]
                    let rows = g.concat(cached, fresh, 1)?; // [Hkv * d, K + L]
                    let picked = g.get_rows(rows, select)?; // [Hkv * d, K]
                    Ok::<_, Error>(g.reshape(picked, &[d, n_kv, keys])?) // [d, Hkv, K]
                };
                (gather(g, layer.k, k)?, gather(g, layer.v, v)?)
            }
        };
        // Heads outermost; K/V heads are shared by groups of query heads. A batch puts its
        // sequences in dimension 3: [d, seq, H, B].
        let (q, k, v) = if batched {
            let split = |g: &mut Graph, t: TensorId, heads: i64| -> Result<TensorId> {
                let t = g.reshape(t, &[d, heads, seq, nb])?;
                Ok(g.permute(t, [0, 2, 1, 3])?)
            };
            (split(g, q, n_head)?, split(g, k, n_kv)?, split(g, v, n_kv)?)
        } else {
            (
                g.permute(q, [0, 2, 1, 3])?, // [d, L, H]
                g.permute(k, [0, 2, 1, 3])?, // [d, K, Hkv]
                g.permute(v, [0, 2, 1, 3])?, // [d, K, Hkv]
            )
        };
        let attended = match attention {
            AttentionKind::Fused => g.attention(q, k, v, scale)?,
            AttentionKind::Explicit => g.attention_explicit(q, k, v, scale, key_mask)?,
        }; // [d, H, L] ([d, H, seq, B] in a batch)
        let attended = g.reshape(attended, &[h, l])?; // [hidden, L]
        let attended_q8 = quantized_input(g, fast, &[t.attn_output], attended)?;
        let out = linear(g, t.attn_output, attended, attended_q8)?; // [hidden, L]
        let hres = g.add(x, out)?; // [hidden, L]

        // --- MLP (SwiGLU): h [hidden, L] -> x [hidden, L] ---------------------------------
        let normed = g.rms_norm(hres, eps)?;
        let cur = g.mul(normed, t.ffn_norm)?; // [hidden, L]
        let cur_q8 = quantized_input(g, fast, &[t.ffn_gate, t.ffn_up], cur)?;
        let gate = linear(g, t.ffn_gate, cur, cur_q8)?; // [ffn, L]
        let up = linear(g, t.ffn_up, cur, cur_q8)?; // [ffn, L]
        let act = g.swiglu(gate, up)?; // [ffn, L]
        let act_q8 = quantized_input(g, fast, &[t.ffn_down], act)?;
        let down = linear(g, t.ffn_down, act, act_q8)?; // [hidden, L]
        x = g.add(hres, down)?; // [hidden, L]
    }
    let out_norm = w.attach(g, layout::OUTPUT_NORM)?; // [hidden]
    let normed = g.rms_norm(x, eps)?;
    let hidden = g.mul(normed, out_norm)?; // [hidden, L]
    Ok(Body {
        tokens,
        positions,
        hidden,
        kv,
        key_mask,
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
