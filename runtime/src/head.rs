//! The output projection of the Dream model and the scoring of its rows, behind one interface
//! for every backend.
//!
//! A `Head` projects chosen hidden rows of a body graph (the whole canvas, or the run rows of a
//! cached pass) to logits and scores them with Dream's filter and confidence rules (the logits
//! shift is the caller's: row `i-1` predicts token `i`). On the built-in CPU backend the rows are
//! copied into a fixed-width projection graph and scored in place on the host; on a device a
//! graph picks the rows itself, projects them and computes a summary per row, so that only the
//! summaries come back and the host completes the decision exactly
//! (`crate::sampler::score_summary`), copying a row's logits only where a summary cannot
//! decide.

use crate::sampler::{score_row, score_summary, Confidence, Filter, Scored, Scratch};
use crate::Result;
use rayon::prelude::*;
use unmask_dream::graph::output_weight_name;
use unmask_kernels::backend::Backend;
use unmask_kernels::finite::{check_logits, check_summary};
use unmask_kernels::graph::scoring::RowSummary;
use unmask_kernels::graph::{Graph, TensorId, TensorSource};
use unmask_kernels::GgmlType;

/// Most rows of the output projection computed in one head pass. One pass streams the whole
/// vocabulary matrix once, so a step with up to this many masked positions reads it once; the
/// price is a logits buffer of `HEAD_ROWS x n_vocab` floats (155 MB for Qwen2.5's vocabulary),
/// which the benchmark counts as compute memory.
pub const HEAD_ROWS: usize = 256;

/// Largest logits of each row a device hands back with its summary (see
/// `crate::sampler::score_summary`): enough for the nucleus of a trained model's
/// distribution at the usual temperatures; rows whose filtered set reaches further are copied.
pub const DEVICE_CANDIDATES: usize = 256;

/// One body graph (a full, refresh or cached pass over some canvas rows) together with the head
/// that projects and scores its hidden states: what every kind of forward pass hands to the
/// decoding loops.
pub struct Pass {
    pub(crate) graph: Graph,
    hidden: TensorId,
    head: Head,
}

impl Pass {
    /// The allocated `graph` whose output `hidden` is `[hidden_size, rows]`, with a head over it
    /// that projects up to `head_rows` rows at a time (see `Head::new`).
    pub fn new(
        graph: Graph,
        hidden: TensorId,
        w: &dyn TensorSource,
        head_rows: usize,
        n_vocab: usize,
        backend: &Backend,
    ) -> Result<Self> {
        let head = Head::new(&graph, hidden, w, head_rows, n_vocab, backend)?;
        Ok(Pass {
            graph,
            hidden,
            head,
        })
    }

    /// Bytes of compute memory the body and the head hold.
    pub fn compute_bytes(&self) -> usize {
        self.graph.compute_buffer_size() + self.head.compute_bytes()
    }

    /// Whether rows are scored on the device (only summaries are copied to the host).
    pub fn scores_on_device(&self) -> bool {
        self.head.scores_on_device()
    }

    /// Bytes copied from device memory to the host since the last call (0 on the built-in CPU
    /// backend, where results are read in place).
    pub fn take_bytes_to_host(&mut self) -> u64 {
        self.head.take_bytes_to_host()
    }

    /// Projects the hidden states at `rows` (rows of this pass) to logits, up to the head's width
    /// at a time, and hands each chunk to `visit(first_index, logits)` where `logits` holds one
    /// `n_vocab` row per entry. On a device the logits are copied to the host.
    pub fn logits_rows(
        &mut self,
        rows: &[usize],
        backend: &mut Backend,
        visit: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        self.head
            .logits_rows(&self.graph, self.hidden, rows, backend, visit)
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
        backend: &mut Backend,
        pool: &rayon::ThreadPool,
    ) -> Result<Vec<Scored>> {
        self.head.score_rows(
            &self.graph,
            self.hidden,
            rows,
            filter,
            kind,
            uniforms,
            backend,
            pool,
        )
    }

    /// The most probable token of hidden row `row` other than `excluded` (highest raw logit,
    /// lowest id on ties): the fast-decoding modes' progress rule when a prediction is the mask
    /// token.
    pub fn best_token_except(
        &mut self,
        row: usize,
        excluded: u32,
        backend: &mut Backend,
    ) -> Result<u32> {
        let mut best: Option<(f32, u32)> = None;
        self.logits_rows(&[row], backend, |_, logits| {
            for (id, &l) in logits.iter().enumerate() {
                let id = id as u32;
                if id != excluded && best.is_none_or(|(b, _)| l > b) {
                    best = Some((l, id));
                }
            }
            Ok(())
        })?;
        best.map(|(_, id)| id).ok_or_else(|| {
            crate::Error::Model("the vocabulary has no token besides the mask token".into())
        })
    }
}

/// The output projection and scoring for one body graph (see the module documentation).
struct Head {
    kind: HeadKind,
    /// Rows of the body's output (`hidden` is `[hidden_size, body_rows]`).
    body_rows: usize,
    hidden_size: usize,
    n_vocab: usize,
    /// Bytes copied from the backend's memory to the host since the last
    /// [`take_bytes_to_host`](Self::take_bytes_to_host).
    bytes_to_host: u64,
}

impl Head {
    /// A head over the output `hidden` (`[hidden_size, body_rows]`) of the allocated graph
    /// `body`, projecting up to `rows` rows per pass with the output weight of `w`. On a device
    /// (not the built-in CPU) the head reads `hidden` in place and scores on the device when the
    /// backend supports the operations, else it copies logits rows.
    fn new(
        body: &Graph,
        hidden: TensorId,
        w: &dyn TensorSource,
        rows: usize,
        n_vocab: usize,
        backend: &Backend,
    ) -> Result<Self> {
        let [hidden_size, body_rows, ..] = body.shape(hidden)?;
        let (hidden_size, body_rows) = (hidden_size as usize, body_rows as usize);
        let rows = rows.clamp(1, body_rows.max(1));
        let kind = if backend.is_builtin_cpu() {
            let mut graph = Graph::new(8)?;
            let input = graph.input(GgmlType::F32, &[hidden_size as i64, rows as i64])?;
            let out_w = w.attach(&mut graph, output_weight_name(w))?;
            let logits = graph.mul_mat(out_w, input)?;
            graph.allocate(&[logits], backend)?;
            HeadKind::Host(Box::new(HostHead {
                graph,
                input,
                logits,
                hidden_rows: vec![0.0; hidden_size * rows],
            }))
        } else {
            HeadKind::Device(Box::new(DeviceHead::new(
                body, hidden, w, rows, n_vocab, backend,
            )?))
        };
        Ok(Head {
            kind,
            body_rows,
            hidden_size,
            n_vocab,
            bytes_to_host: 0,
        })
    }

    /// Bytes of compute memory the head's graph holds.
    fn compute_bytes(&self) -> usize {
        match &self.kind {
            HeadKind::Host(hh) => hh.graph.compute_buffer_size(),
            HeadKind::Device(d) => d.graph.compute_buffer_size(),
        }
    }

    /// Whether rows are scored on the device (only summaries are copied to the host).
    fn scores_on_device(&self) -> bool {
        matches!(&self.kind, HeadKind::Device(d) if d.scoring.is_some())
    }

    /// Bytes copied from device memory to the host since the last call (0 on the built-in CPU
    /// backend, where results are read in place).
    fn take_bytes_to_host(&mut self) -> u64 {
        std::mem::take(&mut self.bytes_to_host)
    }

    fn check_rows(&self, rows: &[usize]) -> Result<()> {
        match rows.iter().find(|&&r| r >= self.body_rows) {
            Some(bad) => Err(crate::Error::Params(format!(
                "hidden row {bad} is outside the {} rows computed",
                self.body_rows
            ))),
            None => Ok(()),
        }
    }

    /// Projects the hidden states at `rows` of `body`'s output `hidden` (the graph and tensor
    /// this head was built for) to logits, a pass of rows at a time, and hands each chunk to
    /// `visit(first_index, logits)` where `logits` holds one `n_vocab` row per entry. On a device
    /// the logits are copied to the host.
    fn logits_rows(
        &mut self,
        body: &Graph,
        hidden: TensorId,
        rows: &[usize],
        backend: &mut Backend,
        mut visit: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        self.check_rows(rows)?;
        let h = self.hidden_size;
        let n_vocab = self.n_vocab;
        match &mut self.kind {
            HeadKind::Host(head) => {
                // The body's output stays in place (the body is not recomputed until the next
                // step); only the rows a chunk needs are copied into the head's input.
                let hidden = body.read_f32(hidden)?;
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
            HeadKind::Device(head) => {
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
    #[allow(clippy::too_many_arguments)]
    fn score_rows(
        &mut self,
        body: &Graph,
        hidden: TensorId,
        rows: &[usize],
        filter: &Filter,
        kind: Confidence,
        uniforms: &[f64],
        backend: &mut Backend,
        pool: &rayon::ThreadPool,
    ) -> Result<Vec<Scored>> {
        let n_vocab = self.n_vocab;
        if !self.scores_on_device() {
            let mut scored: Vec<Scored> = Vec::with_capacity(rows.len());
            self.logits_rows(body, hidden, rows, backend, |first, logits| {
                let chunk: Vec<Scored> = pool.install(|| {
                    logits
                        .par_chunks(n_vocab)
                        .enumerate()
                        .map_init(Scratch::default, |scratch, (j, row)| {
                            // A NaN or +inf logit means the model broke down: a clear error,
                            // never an arbitrary token.
                            check_logits(row)?;
                            Ok(score_row(row, filter, kind, uniforms[first + j], scratch))
                        })
                        .collect::<Result<_>>()
                })?;
                scored.extend(chunk);
                Ok(())
            })?;
            return Ok(scored);
        }
        self.check_rows(rows)?;
        let HeadKind::Device(head) = &mut self.kind else {
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
}

/// The output projection: on the built-in CPU backend a graph fed with copied hidden rows whose
/// logits are scored in place; on a device a graph that picks the rows itself and also scores
/// them, so that only a summary per row comes back.
enum HeadKind {
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
        backend: &Backend,
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
                check_summary(&summary)?;
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
                    check_logits(&c.row)?;
                    score_row(&c.row, filter, kind, u, &mut c.scratch)
                }
            };
            out.push(scored);
        }
        Ok(bytes)
    }

    /// Projects (and, with scoring, summarises) the hidden rows `chunk` (at most `self.rows`).
    fn run(&mut self, chunk: &[usize], divisor: f32, backend: &mut Backend) -> Result<()> {
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
