//! The Dream forward pass as a GGML graph (MODEL.md §3): token embedding, per layer
//! `h = x + Attn(RMSNorm(x))`, `out = h + MLP(RMSNorm(h))` with q/k/v biases, NeoX RoPE, grouped-
//! query attention without any mask, SwiGLU; final RMSNorm. The body is one graph per canvas
//! length; the output projection is a second, fixed-width graph applied only to the hidden rows
//! that predict still-masked positions (the logits shift means row `i-1` predicts token `i`).
//!
//! [`build_body`] is the project's one definition of the layer stack: the trainer
//! (`unmask-train`) builds it over trainable f32 parameters with [`AttentionKind::Explicit`]
//! (differentiable ops), inference over the mapped GGUF weights with fused flash attention.

use crate::model::Model;
use crate::Result;
use unmask_kernels::backend::CpuBackend;
use unmask_kernels::graph::{Graph, TensorId, TensorSource};
use unmask_kernels::GgmlType;
use unmask_quantize::config::DreamConfig;

/// Most rows of the output projection computed in one head pass. One pass streams the whole
/// vocabulary matrix once, so a step with up to this many masked positions reads it once; the
/// price is a logits buffer of `HEAD_ROWS x n_vocab` floats (155 MB for Qwen2.5's vocabulary),
/// which the benchmark counts as compute memory.
pub const HEAD_ROWS: usize = 256;

/// Built graphs for one canvas length, reused by every step.
pub struct Forward {
    pub len: usize,
    hidden_size: usize,
    body: Graph,
    tokens: TensorId,
    positions: TensorId,
    position_ids: Vec<i32>,
    hidden: TensorId,
    head: Graph,
    head_input: TensorId,
    head_logits: TensorId,
    n_vocab: usize,
    hidden_rows: Vec<f32>,
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
    64 * n_layers + 64
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
#[derive(Clone, Copy, Debug)]
pub struct Body {
    /// i32 token ids, `[len]`.
    pub tokens: TensorId,
    /// i32 positions, `[len]` (`0..len` for an unpadded sequence).
    pub positions: TensorId,
    /// Hidden states after the final RMSNorm, `[hidden, len]`.
    pub hidden: TensorId,
}

/// The Dream layer stack (MODEL.md §3), the one model definition of the project: inference builds
/// it over memory-mapped GGUF weights with fused attention, training over f32 parameters with
/// explicit attention; tensors are looked up by GGUF name in `w`.
pub fn build_body(
    g: &mut Graph,
    c: &DreamConfig,
    w: &dyn TensorSource,
    len: usize,
    attention: AttentionKind,
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
        let project = |g: &mut Graph, wt, b, heads: i64| -> Result<TensorId> {
            let y = g.mul_mat(wt, cur)?;
            let y = g.add(y, b)?;
            Ok(g.reshape(y, &[head_dim, heads, l])?)
        };
        let q = project(g, wq, bq, n_head)?;
        let k = project(g, wk, bk, n_kv)?;
        let v = project(g, wv, bv, n_kv)?;
        let q = g.rope_neox(
            q,
            positions,
            c.rope_theta as f32,
            c.max_position_embeddings as i32,
        )?;
        let k = g.rope_neox(
            k,
            positions,
            c.rope_theta as f32,
            c.max_position_embeddings as i32,
        )?;
        // [head_dim, tokens, heads]; K/V heads shared by groups of query heads.
        let q = g.permute(q, [0, 2, 1, 3])?;
        let k = g.permute(k, [0, 2, 1, 3])?;
        let v = g.permute(v, [0, 2, 1, 3])?;
        let attended = match attention {
            AttentionKind::Fused => g.attention(q, k, v, scale)?,
            AttentionKind::Explicit => g.attention_explicit(q, k, v, scale)?,
        }; // [head_dim, heads, tokens]
        let attended = g.reshape(attended, &[h, l])?;
        let out = g.mul_mat(wo, attended)?;
        let hres = g.add(x, out)?;
        let normed = g.rms_norm(hres, eps)?;
        let cur = g.mul(normed, ffn_norm)?;
        let gate = g.mul_mat(wg, cur)?;
        let up = g.mul_mat(wu, cur)?;
        let act = g.swiglu(gate, up)?;
        let down = g.mul_mat(wd, act)?;
        x = g.add(hres, down)?;
    }
    let out_norm = w.attach(g, "output_norm.weight")?;
    let normed = g.rms_norm(x, eps)?;
    let hidden = g.mul(normed, out_norm)?;
    Ok(Body {
        tokens,
        positions,
        hidden,
    })
}

impl Forward {
    /// Builds the graphs over `model`'s tensors (GGUF weights or any other [`TensorSource`]).
    pub fn new<W: TensorSource>(
        model: &Model<W>,
        len: usize,
        backend: &CpuBackend,
    ) -> Result<Self> {
        let c = &model.config;
        let w: &dyn TensorSource = &model.weights;
        let h = c.hidden_size as i64;
        let mut g = Graph::new(graph_capacity(model.n_layers()))?;
        let Body {
            tokens,
            positions,
            hidden,
        } = build_body(&mut g, c, w, len, AttentionKind::Fused)?;
        g.allocate(&[hidden], backend)?;

        let head_rows = len.min(HEAD_ROWS);
        let mut head = Graph::new(8)?;
        let head_input = head.input(GgmlType::F32, &[h, head_rows as i64])?;
        let out_w = w.attach(&mut head, output_weight_name(w))?;
        let head_logits = head.mul_mat(out_w, head_input)?;
        head.allocate(&[head_logits], backend)?;
        Ok(Forward {
            len,
            hidden_size: h as usize,
            body: g,
            tokens,
            positions,
            position_ids: (0..len as i32).collect(),
            hidden,
            head,
            head_input,
            head_logits,
            n_vocab: model.n_vocab,
            hidden_rows: vec![0.0; h as usize * head_rows],
        })
    }

    /// Bytes of compute memory both graphs hold.
    pub fn compute_bytes(&self) -> usize {
        self.body.compute_buffer_size() + self.head.compute_buffer_size()
    }

    /// Runs the layers over the canvas; afterwards [`logits_rows`](Self::logits_rows) can project
    /// any hidden rows.
    pub fn run_body(&mut self, canvas: &[u32], backend: &mut CpuBackend) -> Result<()> {
        let ids: Vec<i32> = canvas.iter().map(|&t| t as i32).collect();
        self.body.set_i32(self.tokens, &ids)?;
        // Set every time: the graph allocator may reuse an input's memory after its last use.
        self.body.set_i32(self.positions, &self.position_ids)?;
        self.body.compute(backend)?;
        Ok(())
    }

    /// Projects the hidden states at `rows` to logits, up to `HEAD_ROWS` at a time, and hands each
    /// chunk to `visit(first_index, logits)` where `logits` holds one `n_vocab` row per entry.
    pub fn logits_rows(
        &mut self,
        rows: &[usize],
        backend: &mut CpuBackend,
        mut visit: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let h = self.hidden_size;
        // The body's output stays in place (the body is not recomputed until the next step);
        // only the rows a chunk needs are copied into the head's input.
        let hidden = self.body.read_f32(self.hidden)?;
        if let Some(&bad) = rows.iter().find(|&&r| (r + 1) * h > hidden.len()) {
            return Err(crate::Error::Params(format!(
                "hidden row {bad} is outside the canvas"
            )));
        }
        let per_pass = self.hidden_rows.len() / h;
        for (chunk_index, chunk) in rows.chunks(per_pass).enumerate() {
            for (slot, &row) in chunk.iter().enumerate() {
                self.hidden_rows[slot * h..(slot + 1) * h]
                    .copy_from_slice(&hidden[row * h..(row + 1) * h]);
            }
            // Only the chunk's rows are multiplied: no padding rows in the last chunk.
            self.head
                .set_active_rows(&[self.head_input, self.head_logits], chunk.len() as i64)?;
            self.head
                .set_f32(self.head_input, &self.hidden_rows[..chunk.len() * h])?;
            self.head.compute(backend)?;
            let logits = self.head.read_f32(self.head_logits)?;
            visit(
                chunk_index * per_pass,
                &logits[..chunk.len() * self.n_vocab],
            )?;
        }
        Ok(())
    }

    /// Logits of every position (unshifted), row-major; for parity tests and debugging.
    pub fn all_logits(&mut self, canvas: &[u32], backend: &mut CpuBackend) -> Result<Vec<f32>> {
        self.run_body(canvas, backend)?;
        let rows: Vec<usize> = (0..canvas.len()).collect();
        let mut out = Vec::with_capacity(canvas.len() * self.n_vocab);
        self.logits_rows(&rows, backend, |_, chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }
}
