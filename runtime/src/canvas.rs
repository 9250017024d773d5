//! The per-canvas context: the graphs of one canvas length, built once over a model's tensors
//! and reused by every denoising step. The body is the model's layer stack
//! (`unmask_dream::forward`, docs/model.md §3) over the whole canvas; the head of its [`Pass`]
//! projects and scores only the hidden rows that predict still-masked positions (the logits
//! shift means row `i-1` predicts token `i`). On a device, operations the device lacks are found
//! at build time: fused attention falls back to the explicit form, an operation it cannot
//! compute at all is an error naming it.

use crate::head::Pass;
use crate::model::Model;
use crate::Result;
use unmask_dream::forward::{build_body_kv, graph_capacity, AttentionKind, Body, KvUse, LayerKv};
use unmask_kernels::backend::Backend;
use unmask_kernels::graph::{Graph, TensorId, TensorSource};
use unmask_kernels::GgmlType;

use crate::head::HEAD_ROWS;

/// Built graphs for one canvas length, reused by every step.
pub struct CanvasContext {
    pub len: usize,
    /// The body over the whole canvas and the head over its output.
    pass: Pass,
    tokens: TensorId,
    positions: TensorId,
    position_ids: Vec<i32>,
    /// Every layer's keys (after RoPE) and values, when built as a refresh pass.
    kv: Vec<LayerKv>,
    /// How the body computes attention (explicit where the device lacks fused attention).
    attention: AttentionKind,
}

impl CanvasContext {
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
        let (body, b, _, attention) = build_checked(model, len, plan, backend)?;
        let pass = Pass::new(
            body,
            b.hidden,
            &model.weights,
            len.min(HEAD_ROWS),
            model.n_vocab,
            backend,
        )?;
        Ok(CanvasContext {
            len,
            pass,
            tokens: b.tokens,
            positions: b.positions,
            position_ids: (0..len as i32).collect(),
            kv: b.kv,
            attention,
        })
    }

    /// How the body computes attention: fused (flash attention) unless the device lacks it.
    pub fn attention(&self) -> AttentionKind {
        self.attention
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
/// input (see [`KvUse::Cached`]), and the attention it was built with. On a device, fused
/// attention falls back to the explicit form when the device lacks it; an operation the device
/// cannot compute at all is an error naming it.
pub(crate) fn build_checked<W: TensorSource>(
    model: &Model<W>,
    len: usize,
    plan: BodyPlan,
    backend: &Backend,
) -> Result<(Graph, Body, Option<TensorId>, AttentionKind)> {
    let c = &model.config;
    let w: &dyn TensorSource = &model.weights;
    let build = |attention| -> Result<(Graph, Body, Option<TensorId>, AttentionKind)> {
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
        Ok((g, body, select, attention))
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
