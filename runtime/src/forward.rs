//! The Dream forward pass as a GGML graph (MODEL.md §3): token embedding, per layer
//! `h = x + Attn(RMSNorm(x))`, `out = h + MLP(RMSNorm(h))` with q/k/v biases, NeoX RoPE, grouped-
//! query attention without any mask, SwiGLU; final RMSNorm. The body is one graph per canvas
//! length; the output projection is a second, fixed-width graph applied only to the hidden rows
//! that predict still-masked positions (the logits shift means row `i-1` predicts token `i`).

use crate::model::Model;
use crate::Result;
use std::sync::Arc;
use unmask_kernels::backend::CpuBackend;
use unmask_kernels::graph::{Graph, TensorId};
use unmask_kernels::GgmlType;

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
    hidden: TensorId,
    head: Graph,
    head_input: TensorId,
    head_logits: TensorId,
    n_vocab: usize,
    hidden_rows: Vec<f32>,
}

impl Forward {
    pub fn new(model: &Model, len: usize, backend: &CpuBackend) -> Result<Self> {
        let c = &model.config;
        let w = &model.weights;
        let (h, n_head, n_kv) = (
            c.hidden_size as i64,
            c.num_attention_heads as i64,
            c.num_key_value_heads as i64,
        );
        let head_dim = h / n_head;
        let eps = c.rms_norm_eps as f32;
        let l = len as i64;
        let mut g = Graph::new(64 * model.n_layers() + 64)?;
        let tokens = g.input(GgmlType::I32, &[l])?;
        let positions = g.input(GgmlType::I32, &[l])?;
        let embd = g.weight(w, "token_embd.weight")?;
        let mut x = g.get_rows(embd, tokens)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        for i in 0..model.n_layers() {
            let p = |n: &str| format!("blk.{i}.{n}");
            let mut weight = |n: &str| g_weight(&mut g, w, &p(n));
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
            let q = project(&mut g, wq, bq, n_head)?;
            let k = project(&mut g, wk, bk, n_kv)?;
            let v = project(&mut g, wv, bv, n_kv)?;
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
            let attended = g.attention(q, k, v, scale)?; // [head_dim, heads, tokens]
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
        let out_norm = g.weight(w, "output_norm.weight")?;
        let normed = g.rms_norm(x, eps)?;
        let hidden = g.mul(normed, out_norm)?;
        g.allocate(&[hidden], backend)?;
        let pos: Vec<i32> = (0..len as i32).collect();
        g.set_i32(positions, &pos)?;

        let head_rows = len.min(HEAD_ROWS);
        let mut head = Graph::new(8)?;
        let head_input = head.input(GgmlType::F32, &[h, head_rows as i64])?;
        let out_w = head.weight(w, model.output_weight_name())?;
        let head_logits = head.mul_mat(out_w, head_input)?;
        head.allocate(&[head_logits], backend)?;
        Ok(Forward {
            len,
            hidden_size: h as usize,
            body: g,
            tokens,
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

fn g_weight(
    g: &mut Graph,
    w: &Arc<unmask_kernels::weights::Weights>,
    name: &str,
) -> Result<TensorId> {
    Ok(g.weight(w, name)?)
}
