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
//! decide. This file is the one interface ([`Pass`]); `host.rs` and `device.rs` hold the two
//! heads.

mod device;
mod host;

use crate::sampler::{score_row, Confidence, Filter, Scored, Scratch};
use crate::Result;
use device::DeviceHead;
use host::HostHead;
use rayon::prelude::*;
use unmask_kernels::backend::Backend;
use unmask_kernels::finite::check_logits;
use unmask_kernels::graph::{Graph, TensorId, TensorSource};

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
            HeadKind::Host(Box::new(HostHead::new(w, hidden_size, rows, backend)?))
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
            HeadKind::Host(hh) => hh.compute_bytes(),
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
        visit: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        self.check_rows(rows)?;
        let h = self.hidden_size;
        let n_vocab = self.n_vocab;
        match &mut self.kind {
            HeadKind::Host(head) => {
                head.logits_rows(body, hidden, rows, h, n_vocab, backend, visit)
            }
            HeadKind::Device(head) => {
                head.logits_rows(rows, n_vocab, backend, &mut self.bytes_to_host, visit)
            }
        }
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
