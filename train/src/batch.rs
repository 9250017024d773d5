//! Sequences through the policy's graphs in batches: [`GraphCache`] keeps the graphs of the batch
//! shapes a computation meets (length buckets, the most recent two), and [`run_jobs`] runs
//! [`RowJob`]s through them, a batch at a time: the forward pass, each job's log-probabilities
//! (f64, on the host, in parallel) and, for gradients, `dLoss/dlogits` from the job's per-token
//! weights and the backward pass from the same forward pass. The losses (`grad.rs`, `sft.rs`)
//! only say which positions and weights each sequence has.

use crate::objective::{add_log_prob_grad, log_prob};
use crate::policy::{BatchGraphs, Gradients, Policy};
use crate::{Error, Result};
use rayon::prelude::*;
use unmask_kernels::backend::Backend;

/// The graphs of the batch shapes a computation meets, reused between its batches. Each holds
/// its compute memory, so only the two most recently used shapes are kept.
pub struct GraphCache {
    batch: usize,
    max_len: usize,
    entries: Vec<(usize, bool, BatchGraphs)>,
    dlogits: Vec<f32>,
}

/// Batch shapes a [`GraphCache`] keeps.
const KEEP: usize = 2;

impl GraphCache {
    /// Graphs of `batch` sequences at a time, none longer than `max_len` tokens.
    pub fn new(batch: usize, max_len: usize) -> Self {
        GraphCache {
            batch: batch.max(1),
            max_len: max_len.max(2),
            entries: Vec::new(),
            dlogits: Vec::new(),
        }
    }

    /// The padded length of a batch whose longest sequence has `n` tokens: `n` rounded up to
    /// the next of 16, 24, 32, 48, 64, 96, ... (a third of padding at most), capped at the
    /// longest sequence the cache was made for, so a run meets few shapes.
    pub fn bucket(&self, n: usize) -> usize {
        let mut b = 16;
        let padded = loop {
            if n <= b {
                break b;
            }
            if n <= b + b / 2 {
                break b + b / 2;
            }
            b *= 2;
        };
        padded.min(self.max_len.max(n))
    }

    /// The graphs for sequences of up to `len` tokens and the gradient buffer.
    fn graphs(
        &mut self,
        policy: &Policy,
        len: usize,
        grads: bool,
        backend: &Backend,
    ) -> Result<(&mut BatchGraphs, &mut Vec<f32>)> {
        let found = self
            .entries
            .iter()
            .position(|(l, g, _)| *l == len && *g == grads);
        let entry = match found {
            Some(i) => self.entries.remove(i),
            None => {
                if self.entries.len() >= KEEP {
                    self.entries.remove(0);
                }
                let graphs = BatchGraphs::new(policy, self.batch, len, grads, backend)?;
                (len, grads, graphs)
            }
        };
        self.entries.push(entry);
        let graphs = match self.entries.last_mut() {
            Some((_, _, g)) => g,
            None => unreachable!("an entry was just pushed"),
        };
        Ok((graphs, &mut self.dlogits))
    }
}

/// One sequence's part in a computation: its input tokens, the tokens its logits predict
/// (`targets[k]` from logits row `k - 1`, `targets.len() == input.len()`), the positions `k >= 1`
/// whose log-probability is wanted, and, for gradients, the weights of `sum_k w_k * lp(k)`.
pub struct RowJob<'a> {
    pub input: &'a [u32],
    pub targets: &'a [u32],
    pub lp_at: Vec<usize>,
    pub weights: Vec<(usize, f64)>,
}

/// Runs `jobs` in batches: returns each job's `lp(k)` for its `lp_at` positions, and with `acc`
/// adds the parameter gradient of `sum_jobs sum_k w_k * lp(k)` to it (one forward and one
/// backward pass per batch).
pub fn run_jobs(
    policy: &Policy,
    cache: &mut GraphCache,
    jobs: &[RowJob<'_>],
    mut acc: Option<&mut Gradients>,
    backend: &mut Backend,
) -> Result<Vec<Vec<f64>>> {
    let n_vocab = policy.n_vocab();
    for (i, job) in jobs.iter().enumerate() {
        let len = job.input.len();
        let bad = len < 2
            || job.targets.len() != len
            || job.lp_at.iter().any(|&k| k == 0 || k >= len)
            || job.weights.iter().any(|&(k, _)| k == 0 || k >= len);
        if bad {
            return Err(Error::InvalidArgument(format!(
                "sequence {i}: positions must be in 1..{len} and targets match the input"
            )));
        }
        if let Some(&t) = job.targets.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {t} is outside the vocabulary of {n_vocab}"
            )));
        }
    }
    let mut out = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(cache.batch) {
        let longest = chunk.iter().map(|j| j.input.len()).max().unwrap_or(2);
        let len = cache.bucket(longest);
        let grads = acc.is_some();
        let (graphs, dlogits) = cache.graphs(policy, len, grads, backend)?;
        let (batch, _) = graphs.shape();
        let inputs: Vec<&[u32]> = chunk.iter().map(|j| j.input).collect();
        let logits = graphs.forward(&inputs, backend)?;
        let seq_logits = |b: usize| &logits[b * len * n_vocab..(b + 1) * len * n_vocab];
        let lps: Vec<Vec<f64>> = chunk
            .par_iter()
            .enumerate()
            .map(|(b, job)| {
                let l = seq_logits(b);
                job.lp_at
                    .iter()
                    .map(|&k| {
                        let row = &l[(k - 1) * n_vocab..k * n_vocab];
                        log_prob(row, job.targets[k] as usize)
                    })
                    .collect()
            })
            .collect();
        out.extend(lps);
        let Some(acc) = acc.as_deref_mut() else {
            continue;
        };
        dlogits.clear();
        dlogits.resize(batch * len * n_vocab, 0.0);
        dlogits
            .par_chunks_mut(len * n_vocab)
            .zip(chunk.par_iter().enumerate())
            .for_each(|(d, (b, job))| {
                let l = seq_logits(b);
                for &(k, w) in &job.weights {
                    let rows = (k - 1) * n_vocab..k * n_vocab;
                    add_log_prob_grad(&l[rows.clone()], job.targets[k] as usize, w, &mut d[rows]);
                }
            });
        graphs.backward(dlogits, backend, acc)?;
    }
    Ok(out)
}
