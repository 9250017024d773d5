//! The head on a device: a graph picks the chosen hidden rows of the body's output in place,
//! projects them and summarises each row (argmax, softmax denominator, negative entropy, the
//! largest logits), so that only the summaries come back and the host completes the decision
//! exactly (`crate::sampler::score_summary`), copying a row's logits only where its summary
//! cannot decide. A device without the scoring operations gets a projection-only graph.

use super::DEVICE_CANDIDATES;
use crate::sampler::{score_row, score_summary, Confidence, Filter, Scored, Scratch};
use crate::Result;
use unmask_dream::forward::output_weight_name;
use unmask_kernels::backend::Backend;
use unmask_kernels::finite::{check_logits, check_summary};
use unmask_kernels::graph::scoring::RowSummary;
use unmask_kernels::graph::{Graph, TensorId, TensorSource};
use unmask_kernels::GgmlType;

pub(super) struct DeviceHead {
    pub(super) graph: Graph,
    /// i32 `[rows]`: hidden rows to project (padded with row 0).
    row_ids: TensorId,
    pub(super) rows: usize,
    /// f32 `[n_vocab, rows]`.
    logits: TensorId,
    pub(super) scoring: Option<DeviceScoring>,
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
pub(super) struct DeviceScoring {
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
    pub(super) fn new(
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
    pub(super) fn score_chunk(
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
    pub(super) fn run(
        &mut self,
        chunk: &[usize],
        divisor: f32,
        backend: &mut Backend,
    ) -> Result<()> {
        let mut ids: Vec<i32> = chunk.iter().map(|&r| r as i32).collect();
        ids.resize(self.rows, ids.first().copied().unwrap_or(0));
        self.graph.set_i32(self.row_ids, &ids)?;
        if let Some(s) = &self.scoring {
            self.graph.set_f32(s.divisor, &[divisor])?;
        }
        self.graph.compute(backend)?;
        Ok(())
    }

    /// Projects the hidden rows `rows`, a pass of at most `self.rows` at a time, copies each
    /// chunk's logits to the host (counting the bytes in `bytes_to_host`) and hands them to
    /// `visit(first_index, logits)`.
    pub(super) fn logits_rows(
        &mut self,
        rows: &[usize],
        n_vocab: usize,
        backend: &mut Backend,
        bytes_to_host: &mut u64,
        mut visit: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let mut buf = Vec::new();
        for (chunk_index, chunk) in rows.chunks(self.rows).enumerate() {
            self.run(chunk, 1.0, backend)?;
            buf.resize(chunk.len() * n_vocab, 0.0);
            self.graph.get_f32_range(self.logits, 0, &mut buf)?;
            *bytes_to_host += (buf.len() * 4) as u64;
            visit(chunk_index * self.rows, &buf)?;
        }
        Ok(())
    }
}
