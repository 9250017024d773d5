//! Cached passes of the fast-decoding modes (docs/fast-decoding.md §3): the
//! layers over only some rows of the canvas, their queries attending to the keys and values a
//! refresh pass kept for the other positions plus their own fresh ones.
//!
//! A refresh is a [`CanvasContext`] built with `keep_kv`: a full pass over the canvas whose every
//! layer's keys (after RoPE) and values stay in backend memory (on a GPU, on the device). A
//! [`CachedPass`] is a graph over `rows` run rows that reads those tensors in place: for every
//! canvas position it picks either the cached row or the run's fresh one (an index input), so
//! the same graph serves the prefix cache (run = the block start to the end of the canvas,
//! fresh rows replace everything from the block on) and the dual cache (run = the block, fresh
//! rows replace the block's). Positions keep their canvas positions for RoPE. The graph and its
//! buffers are built once per (canvas length, run length) and reused; a run sets three small
//! index inputs and computes.

use crate::canvas::{build_checked, BodyPlan, CanvasContext};
use crate::head::{Pass, HEAD_ROWS};
use crate::model::Model;
use crate::Result;
use unmask_dream::forward::LayerKv;
use unmask_kernels::backend::Backend;
use unmask_kernels::graph::{Graph, TensorId, TensorSource};

/// The layers over `rows` consecutive canvas positions against a refresh's cache.
pub struct CachedPass {
    /// Run rows computed per pass.
    pub rows: usize,
    /// Canvas length (keys per query).
    pub len: usize,
    /// The layers over the run rows and the head over their output.
    pass: Pass,
    tokens: TensorId,
    positions: TensorId,
    select: TensorId,
    ids: Vec<i32>,
    position_ids: Vec<i32>,
    select_ids: Vec<i32>,
}

impl CachedPass {
    /// A cached pass of `rows` rows reading the keys and values kept by `refresh` (built with
    /// `keep_kv`); its head projects up to `head_rows` rows at a time (the block length: only a
    /// block's positions are ever scored).
    pub fn new<W: TensorSource>(
        model: &Model<W>,
        refresh: &CanvasContext,
        rows: usize,
        head_rows: usize,
        backend: &Backend,
    ) -> Result<Self> {
        let (source, cache) = refresh.kv();
        if cache.len() != model.n_layers() {
            return Err(crate::Error::Model(
                "the refresh pass keeps no keys and values (build it with keep_kv)".into(),
            ));
        }
        let len = refresh.len;
        if rows == 0 || rows > len {
            return Err(crate::Error::Params(format!(
                "a cached pass of {rows} rows does not fit a canvas of {len}"
            )));
        }
        let plan = BodyPlan::Cached { source, cache };
        let (graph, body, select, _) = build_checked(model, rows, plan, backend)?;
        let select = select.expect("a cached plan has a select input");
        let pass = Pass::new(
            graph,
            body.hidden,
            &model.weights,
            head_rows.clamp(1, HEAD_ROWS),
            model.n_vocab,
            backend,
        )?;
        Ok(CachedPass {
            rows,
            len,
            pass,
            tokens: body.tokens,
            positions: body.positions,
            select,
            ids: vec![0; rows],
            position_ids: vec![0; rows],
            select_ids: vec![0; len],
        })
    }

    /// Runs canvas positions `lo..lo + rows` (their current tokens) through the layers; every
    /// other position's keys and values are the refresh's.
    pub fn run(&mut self, canvas: &[u32], lo: usize, backend: &mut Backend) -> Result<()> {
        let hi = lo + self.rows;
        if canvas.len() != self.len || hi > self.len {
            return Err(crate::Error::Params(format!(
                "run {lo}..{hi} does not fit the canvas of {} built for {}",
                canvas.len(),
                self.len
            )));
        }
        for (j, &t) in canvas[lo..hi].iter().enumerate() {
            self.ids[j] = t as i32;
            self.position_ids[j] = (lo + j) as i32;
        }
        // Index `p` is the cached row of position p, `len + j` the run's fresh row j.
        for (p, s) in self.select_ids.iter_mut().enumerate() {
            *s = if (lo..hi).contains(&p) {
                (self.len + p - lo) as i32
            } else {
                p as i32
            };
        }
        // Set every time: the graph allocator may reuse an input's memory after its last use.
        let g = &mut self.pass.graph;
        g.set_i32(self.tokens, &self.ids)?;
        g.set_i32(self.positions, &self.position_ids)?;
        g.set_i32(self.select, &self.select_ids)?;
        g.compute(backend)?;
        Ok(())
    }

    /// The run's layers and their head: projection and scoring of run rows (indices into the
    /// run, not canvas positions) after [`run`](Self::run).
    pub fn pass(&mut self) -> &mut Pass {
        &mut self.pass
    }
}

/// Bytes the kept keys and values of one refresh hold: every layer's keys and values for every
/// position, f32.
pub fn cache_bytes(layers: &[LayerKv], graph: &Graph) -> Result<usize> {
    let mut total = 0usize;
    for l in layers {
        for id in [l.k, l.v] {
            let s = graph.shape(id)?;
            total += s.iter().product::<i64>() as usize * 4;
        }
    }
    Ok(total)
}
