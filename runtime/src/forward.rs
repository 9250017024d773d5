//! The Dream forward pass as a GGML graph (MODEL.md §3): token embedding, per layer
//! `h = x + Attn(RMSNorm(x))`, `out = h + MLP(RMSNorm(h))` with q/k/v biases, NeoX RoPE, grouped-
//! query attention without any mask, SwiGLU; final RMSNorm. The body is one graph per canvas
//! length; the output projection is a second, fixed-width graph applied only to the hidden rows
//! that predict still-masked positions (the logits shift means row `i-1` predicts token `i`).
//!
//! [`build_body`] is the project's one definition of the layer stack: the trainer
//! (`unmask-train`) builds it over trainable f32 parameters with [`AttentionKind::Explicit`]
//! (differentiable ops), inference over the mapped GGUF weights with fused flash attention and,
//! for q8_0 weights on the CPU, our int8 GEMM (`unmask_kernels::qgemm`) instead of ggml's.

use crate::model::Model;
use crate::Result;
use rayon::prelude::*;
use unmask_kernels::backend::CpuBackend;
use unmask_kernels::graph::{Graph, TensorId, TensorSource};
use unmask_kernels::score::{
    score_row, score_summary, Confidence, Filter, RowSummary, Scored, Scratch,
};
use unmask_kernels::GgmlType;
use unmask_quantize::config::DreamConfig;

/// Most rows of the output projection computed in one head pass. One pass streams the whole
/// vocabulary matrix once, so a step with up to this many masked positions reads it once; the
/// price is a logits buffer of `HEAD_ROWS x n_vocab` floats (155 MB for Qwen2.5's vocabulary),
/// which the benchmark counts as compute memory.
pub const HEAD_ROWS: usize = 256;

/// Largest logits of each row a device hands back with its summary (see
/// `unmask_kernels::score::score_summary`): enough for the nucleus of a trained model's
/// distribution at the usual temperatures; rows whose filtered set reaches further are copied.
pub const DEVICE_CANDIDATES: usize = 256;

/// Built graphs for one canvas length, reused by every step.
pub struct Forward {
    pub len: usize,
    hidden_size: usize,
    body: Graph,
    tokens: TensorId,
    positions: TensorId,
    position_ids: Vec<i32>,
    hidden: TensorId,
    head: Head,
    n_vocab: usize,
    /// Bytes copied from the backend's memory to the host since the last
    /// [`take_bytes_to_host`](Self::take_bytes_to_host).
    bytes_to_host: u64,
}

/// The output projection: on the built-in CPU backend a graph fed with copied hidden rows whose
/// logits are scored in place; on a device a graph that picks the rows itself and also scores
/// them, so that only a summary per row comes back.
enum Head {
    Host(Box<HostHead>),
    Device(Box<DeviceHead>),
}

struct HostHead {
    graph: Graph,
    input: TensorId,
    logits: TensorId,
    hidden_rows: Vec<f32>,
}

struct DeviceHead {
    graph: Graph,
    /// i32 `[rows]`: hidden rows to project (padded with row 0).
    row_ids: TensorId,
    rows: usize,
    /// f32 `[n_vocab, rows]`.
    logits: TensorId,
    scoring: Option<DeviceScoring>,
    /// Host copies of the summaries of one chunk, reused across steps.
    copies: SummaryCopies,
}

/// Host buffers for the summary outputs of a device head (see [`DeviceHead::score_chunk`]).
#[derive(Default)]
struct SummaryCopies {
    best: Vec<i32>,
    best_logit: Vec<f32>,
    sum: Vec<f32>,
    neg_entropy: Vec<f32>,
    cand_ids: Vec<i32>,
    cand_logits: Vec<f32>,
    pairs: Vec<(f32, u32)>,
    row: Vec<f32>,
    scratch: Scratch,
}

/// Outputs of the scoring part of a device head.
struct DeviceScoring {
    /// f32 `[1, 1]`: the temperature (1 when greedy); logits are divided by it.
    divisor: TensorId,
    best: TensorId,
    best_logit: TensorId,
    sum: TensorId,
    neg_entropy: TensorId,
    cand_ids: TensorId,
    cand_logits: TensorId,
    k: usize,
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
        // Inference on the CPU: q8_0 weights go through our int8 GEMM, with the activations
        // quantized once for q, k and v (ggml's own quantization; the products differ from
        // ggml's only in f32 summation order).
        let fast = attention == AttentionKind::Fused;
        let cur_q8 = quantized_input(g, fast, &[wq, wk, wv], cur)?;
        let project = |g: &mut Graph, wt, b, heads: i64| -> Result<TensorId> {
            let y = linear(g, wt, cur, cur_q8)?;
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
    /// Builds the graphs over `model`'s tensors (GGUF weights or any other [`TensorSource`]).
    /// On a device backend (not the built-in CPU) every operation is checked to be supported:
    /// fused attention falls back to the explicit form, scoring on the device to copying rows.
    pub fn new<W: TensorSource>(
        model: &Model<W>,
        len: usize,
        backend: &CpuBackend,
    ) -> Result<Self> {
        let c = &model.config;
        let w: &dyn TensorSource = &model.weights;
        let h = c.hidden_size as i64;
        let device = !backend.is_builtin_cpu();
        let build = |attention| -> Result<(Graph, Body)> {
            let mut g = Graph::new(graph_capacity(model.n_layers()))?;
            let body = build_body(&mut g, c, w, len, attention)?;
            g.allocate(&[body.hidden], backend)?;
            Ok((g, body))
        };
        let (mut g, mut body) = build(AttentionKind::Fused)?;
        if device && !g.unsupported_ops(backend)?.is_empty() {
            (g, body) = build(AttentionKind::Explicit)?;
            let missing = g.unsupported_ops(backend)?;
            if !missing.is_empty() {
                return Err(crate::Error::Model(format!(
                    "{} cannot compute these operations of the model: {}",
                    backend.name(),
                    missing.join(", ")
                )));
            }
        }
        let Body {
            tokens,
            positions,
            hidden,
        } = body;
        let head_rows = len.min(HEAD_ROWS);
        let head = if device {
            Head::Device(Box::new(DeviceHead::new(
                &g,
                hidden,
                w,
                head_rows,
                model.n_vocab,
                backend,
            )?))
        } else {
            let mut graph = Graph::new(8)?;
            let input = graph.input(GgmlType::F32, &[h, head_rows as i64])?;
            let out_w = w.attach(&mut graph, output_weight_name(w))?;
            let logits = graph.mul_mat(out_w, input)?;
            graph.allocate(&[logits], backend)?;
            Head::Host(Box::new(HostHead {
                graph,
                input,
                logits,
                hidden_rows: vec![0.0; h as usize * head_rows],
            }))
        };
        Ok(Forward {
            len,
            hidden_size: h as usize,
            body: g,
            tokens,
            positions,
            position_ids: (0..len as i32).collect(),
            hidden,
            head,
            n_vocab: model.n_vocab,
            bytes_to_host: 0,
        })
    }

    /// Bytes of compute memory both graphs hold.
    pub fn compute_bytes(&self) -> usize {
        let head = match &self.head {
            Head::Host(hh) => hh.graph.compute_buffer_size(),
            Head::Device(d) => d.graph.compute_buffer_size(),
        };
        self.body.compute_buffer_size() + head
    }

    /// Whether rows are scored on the device (only summaries are copied to the host).
    pub fn scores_on_device(&self) -> bool {
        matches!(&self.head, Head::Device(d) if d.scoring.is_some())
    }

    /// Bytes copied from device memory to the host since the last call (0 on the built-in CPU
    /// backend, where results are read in place).
    pub fn take_bytes_to_host(&mut self) -> u64 {
        std::mem::take(&mut self.bytes_to_host)
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

    fn check_rows(&self, rows: &[usize]) -> Result<()> {
        match rows.iter().find(|&&r| r >= self.len) {
            Some(bad) => Err(crate::Error::Params(format!(
                "hidden row {bad} is outside the canvas"
            ))),
            None => Ok(()),
        }
    }

    /// Projects the hidden states at `rows` to logits, up to `HEAD_ROWS` at a time, and hands each
    /// chunk to `visit(first_index, logits)` where `logits` holds one `n_vocab` row per entry.
    /// On a device the logits are copied to the host.
    pub fn logits_rows(
        &mut self,
        rows: &[usize],
        backend: &mut CpuBackend,
        mut visit: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        self.check_rows(rows)?;
        let h = self.hidden_size;
        let n_vocab = self.n_vocab;
        match &mut self.head {
            Head::Host(head) => {
                // The body's output stays in place (the body is not recomputed until the next
                // step); only the rows a chunk needs are copied into the head's input.
                let hidden = self.body.read_f32(self.hidden)?;
                let per_pass = head.hidden_rows.len() / h;
                for (chunk_index, chunk) in rows.chunks(per_pass).enumerate() {
                    for (slot, &row) in chunk.iter().enumerate() {
                        head.hidden_rows[slot * h..(slot + 1) * h]
                            .copy_from_slice(&hidden[row * h..(row + 1) * h]);
                    }
                    // Only the chunk's rows are multiplied: no padding rows in the last chunk.
                    head.graph
                        .set_active_rows(&[head.input, head.logits], chunk.len() as i64)?;
                    head.graph
                        .set_f32(head.input, &head.hidden_rows[..chunk.len() * h])?;
                    head.graph.compute(backend)?;
                    let logits = head.graph.read_f32(head.logits)?;
                    visit(chunk_index * per_pass, &logits[..chunk.len() * n_vocab])?;
                }
            }
            Head::Device(head) => {
                let mut buf = Vec::new();
                for (chunk_index, chunk) in rows.chunks(head.rows).enumerate() {
                    head.run(chunk, 1.0, backend)?;
                    buf.resize(chunk.len() * n_vocab, 0.0);
                    head.graph.get_f32_range(head.logits, 0, &mut buf)?;
                    self.bytes_to_host += (buf.len() * 4) as u64;
                    visit(chunk_index * head.rows, &buf)?;
                }
            }
        }
        Ok(())
    }

    /// Scores the rows predicting masked positions (`rows[j]` with draw `uniforms[j]`): on the
    /// built-in CPU backend from logits read in place, on `pool`'s threads; on a device from the
    /// summaries the device computes, copying a row's logits only when its summary cannot decide
    /// exactly.
    pub fn score_rows(
        &mut self,
        rows: &[usize],
        filter: &Filter,
        kind: Confidence,
        uniforms: &[f64],
        backend: &mut CpuBackend,
        pool: &rayon::ThreadPool,
    ) -> Result<Vec<Scored>> {
        let n_vocab = self.n_vocab;
        let on_device = self.scores_on_device();
        if !on_device {
            let mut scored: Vec<Scored> = Vec::with_capacity(rows.len());
            self.logits_rows(rows, backend, |first, logits| {
                let chunk: Vec<Scored> = pool.install(|| {
                    logits
                        .par_chunks(n_vocab)
                        .enumerate()
                        .map_init(Scratch::default, |scratch, (j, row)| {
                            score_row(row, filter, kind, uniforms[first + j], scratch)
                        })
                        .collect()
                });
                scored.extend(chunk);
                Ok(())
            })?;
            return Ok(scored);
        }
        self.check_rows(rows)?;
        let Head::Device(head) = &mut self.head else {
            unreachable!("scores_on_device checked the head");
        };
        let mut scored = Vec::with_capacity(rows.len());
        for (chunk_index, chunk) in rows.chunks(head.rows).enumerate() {
            head.run(chunk, filter.divisor(), backend)?;
            let uniforms = &uniforms[chunk_index * head.rows..][..chunk.len()];
            self.bytes_to_host += head.score_chunk(uniforms, filter, kind, n_vocab, &mut scored)?;
        }
        Ok(scored)
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

impl DeviceHead {
    /// The head on a device: picks `rows` hidden rows of `body`'s output in place, projects
    /// them and computes each row's summary (argmax, softmax denominator at the temperature,
    /// negative entropy, the largest logits) with graph operations.
    fn new(
        body: &Graph,
        hidden: TensorId,
        w: &dyn TensorSource,
        rows: usize,
        n_vocab: usize,
        backend: &CpuBackend,
    ) -> Result<Self> {
        let build = |with_scoring: bool| -> Result<DeviceHead> {
            let mut g = Graph::new(48)?;
            let hidden = g.import(body, hidden)?;
            let row_ids = g.input(GgmlType::I32, &[rows as i64])?;
            let picked = g.get_rows(hidden, row_ids)?;
            let out_w = w.attach(&mut g, output_weight_name(w))?;
            let logits = g.mul_mat(out_w, picked)?;
            let mut outputs = vec![logits];
            let scoring = if with_scoring {
                let k = DEVICE_CANDIDATES.min(n_vocab);
                let best = g.argmax(logits)?;
                let best_col = g.reshape(best, &[1, rows as i64])?;
                let best_logit = g.gather(logits, best_col)?;
                let divisor = g.input(GgmlType::F32, &[1, 1])?;
                // Divided, not multiplied by the reciprocal: the host divides too.
                let scaled = g.div(logits, divisor)?;
                let scaled_best = g.div(best_logit, divisor)?;
                let shifted = g.sub(scaled, scaled_best)?;
                let e = g.exp(shifted)?;
                let sum = g.sum_rows(e)?;
                // sum p * ln(p + 1e-10), as Dream's entropy (used at temperature 1 only).
                let p = g.div(e, sum)?;
                let eps = g.scale_bias(p, 1.0, 1e-10)?;
                let lp = g.ln(eps)?;
                let plp = g.mul(p, lp)?;
                let neg_entropy = g.sum_rows(plp)?;
                let cand_ids = g.top_k(logits, k)?;
                let cand_logits = g.gather(logits, cand_ids)?;
                outputs.extend([best, best_logit, sum, neg_entropy, cand_ids, cand_logits]);
                Some(DeviceScoring {
                    divisor,
                    best,
                    best_logit,
                    sum,
                    neg_entropy,
                    cand_ids,
                    cand_logits,
                    k,
                })
            } else {
                None
            };
            g.allocate(&outputs, backend)?;
            Ok(DeviceHead {
                graph: g,
                row_ids,
                rows,
                logits,
                scoring,
                copies: SummaryCopies::default(),
            })
        };
        let head = build(true)?;
        if head.graph.unsupported_ops(backend)?.is_empty() {
            return Ok(head);
        }
        drop(head);
        let head = build(false)?;
        let missing = head.graph.unsupported_ops(backend)?;
        if missing.is_empty() {
            Ok(head)
        } else {
            Err(crate::Error::Model(format!(
                "{} cannot compute the output projection: {}",
                backend.name(),
                missing.join(", ")
            )))
        }
    }

    /// Scores the rows of the last [`run`](Self::run) (one per entry of `uniforms`) into `out`,
    /// copying only the summary outputs the filter and confidence need (argmax and entropy only
    /// for greedy unfiltered rows, candidates only where a filter or the margin uses them), and a
    /// row's logits only where its summary cannot decide. Returns the bytes copied.
    fn score_chunk(
        &mut self,
        uniforms: &[f64],
        filter: &Filter,
        kind: Confidence,
        n_vocab: usize,
        out: &mut Vec<Scored>,
    ) -> Result<u64> {
        let s = self.scoring.as_ref().expect("scoring head");
        let c = &mut self.copies;
        let g = &self.graph;
        let n = uniforms.len();
        let mut bytes = 0u64;
        let mut fetch_f32 = |id, v: &mut Vec<f32>, len: usize| -> Result<()> {
            v.resize(len, 0.0);
            g.get_f32_range(id, 0, v)?;
            bytes += (len * 4) as u64;
            Ok(())
        };
        // Sampling without a filter walks the whole vocabulary: rows only.
        let summaries = !(filter.is_unfiltered() && filter.samples());
        let greedy_unfiltered = filter.is_unfiltered() && !filter.samples();
        let candidates = !filter.is_unfiltered() || kind == Confidence::Margin;
        let k = if candidates { s.k } else { 0 };
        if summaries {
            fetch_f32(s.best_logit, &mut c.best_logit, n)?;
            fetch_f32(s.sum, &mut c.sum, n)?;
        }
        if greedy_unfiltered && kind == Confidence::NegEntropy {
            fetch_f32(s.neg_entropy, &mut c.neg_entropy, n)?;
        }
        if candidates {
            fetch_f32(s.cand_logits, &mut c.cand_logits, n * k)?;
        }
        let mut fetch_i32 = |id, v: &mut Vec<i32>, len: usize| -> Result<()> {
            v.resize(len, 0);
            g.get_i32_range(id, 0, v)?;
            bytes += (len * 4) as u64;
            Ok(())
        };
        if greedy_unfiltered {
            fetch_i32(s.best, &mut c.best, n)?;
        }
        if candidates {
            fetch_i32(s.cand_ids, &mut c.cand_ids, n * k)?;
        }
        for (j, &u) in uniforms.iter().enumerate() {
            let decided = if summaries {
                c.pairs.clear();
                if candidates {
                    c.pairs.extend(
                        c.cand_logits[j * k..(j + 1) * k]
                            .iter()
                            .zip(&c.cand_ids[j * k..(j + 1) * k])
                            .map(|(&l, &id)| (l, id as u32)),
                    );
                }
                let at = |v: &[f32]| v.get(j).copied().unwrap_or(0.0);
                let summary = RowSummary {
                    best_token: c.best.get(j).map_or(0, |&t| t as u32),
                    best_logit: c.best_logit[j],
                    sum: f64::from(c.sum[j]),
                    neg_entropy: at(&c.neg_entropy),
                    candidates: &c.pairs,
                    n_vocab,
                };
                score_summary(&summary, filter, kind, u, &mut c.scratch)
            } else {
                None
            };
            let scored = match decided {
                Some(s) => s,
                None => {
                    c.row.resize(n_vocab, 0.0);
                    g.get_f32_range(self.logits, j * n_vocab, &mut c.row)?;
                    bytes += (n_vocab * 4) as u64;
                    score_row(&c.row, filter, kind, u, &mut c.scratch)
                }
            };
            out.push(scored);
        }
        Ok(bytes)
    }

    /// Projects (and, with scoring, summarises) the hidden rows `chunk` (at most `self.rows`).
    fn run(&mut self, chunk: &[usize], divisor: f32, backend: &mut CpuBackend) -> Result<()> {
        let mut ids: Vec<i32> = chunk.iter().map(|&r| r as i32).collect();
        ids.resize(self.rows, ids.first().copied().unwrap_or(0));
        self.graph.set_i32(self.row_ids, &ids)?;
        if let Some(s) = &self.scoring {
            self.graph.set_f32(s.divisor, &[divisor])?;
        }
        self.graph.compute(backend)?;
        Ok(())
    }
}
