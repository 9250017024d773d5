//! The trainable policy: a Hugging Face Dream checkpoint's weights as f32 ggml parameters, and
//! the graphs that run the runtime's model definition ([`unmask_dream::forward::build_body`])
//! over them, forward only or with ggml's automatic differentiation.
//!
//! Gradients use the §5 route of docs/training.md: the host computes `G = dLoss/dlogits` from a
//! forward pass (in f64), and the backward graph's loss is `sum(logits ⊙ G)` with `G` a constant
//! input, whose parameter gradient is the true loss gradient. This keeps `log(softmax)` off the
//! graph (no underflow) and lets every loss share one backward graph. The graph is computed in
//! two parts (forward to the logits, then loss and backward), so the forward pass runs once.
//! A graph runs a batch of sequences at once ([`BatchGraphs`]); shorter ones are padded and
//! their padding hidden from attention.

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use unmask_dream::forward::{build_body_batch, graph_capacity, output_weight_name, Body};
use unmask_dream::hf::HfCheckpoint;
use unmask_dream::layout::{tensor_specs, TensorSpec};
use unmask_dream::safetensors::decode_to_f32;
use unmask_dream::DreamConfig;
use unmask_kernels::backend::Backend;
use unmask_kernels::graph::param_store::ParamStore;
use unmask_kernels::graph::{Graph, TensorId, TensorSource};
use unmask_kernels::GgmlType;

/// A Dream model's parameters in f32, by GGUF tensor name.
pub struct Policy {
    pub config: DreamConfig,
    /// Every tensor of the model (HF and GGUF names, shapes), in checkpoint order.
    pub specs: Vec<TensorSpec>,
    pub params: Arc<ParamStore>,
}

impl Policy {
    /// Loads the weights of a Hugging Face checkpoint folder (bf16, f16 or f32) as f32, in
    /// host memory for the built-in CPU backend.
    pub fn load_hf(dir: &Path) -> Result<Self> {
        Self::load_hf_on(dir, None)
    }

    /// Like [`load_hf`](Self::load_hf), with the parameters in the memory of `backend` (a GPU's
    /// for a CUDA backend); `None` is host memory.
    pub fn load_hf_on(dir: &Path, backend: Option<&Backend>) -> Result<Self> {
        let ckpt = HfCheckpoint::open(dir)?;
        let specs = tensor_specs(&ckpt.config);
        let shapes: Vec<(String, Vec<i64>)> = specs
            .iter()
            .map(|s| {
                let shape = s.gguf_shape().iter().map(|&d| d as i64).collect();
                (s.gguf_name.clone(), shape)
            })
            .collect();
        let mut store = match backend {
            Some(b) => ParamStore::on_backend(&shapes, b)?,
            None => ParamStore::new(&shapes)?,
        };
        let mut values = Vec::new();
        for spec in &specs {
            let (file, entry) = ckpt.find(&spec.hf_name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: tensor `{}` is missing",
                    dir.display(),
                    spec.hf_name
                ))
            })?;
            if entry.shape != spec.hf_shape {
                return Err(Error::InvalidArgument(format!(
                    "{}: tensor `{}` has shape {:?}, config.json implies {:?}",
                    dir.display(),
                    spec.hf_name,
                    entry.shape,
                    spec.hf_shape
                )));
            }
            values.clear();
            decode_to_f32(&spec.hf_name, entry.dtype, &file.map(entry)?, &mut values)?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "{}: tensor `{}` has a non-finite value at index {i}",
                    dir.display(),
                    spec.hf_name
                )));
            }
            store.set(&spec.gguf_name, &values)?;
        }
        Ok(Policy {
            config: ckpt.config,
            specs,
            params: Arc::new(store),
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.config.vocab_size as usize
    }

    /// Zeroed gradient accumulators, one per parameter.
    pub fn zero_grads(&self) -> Result<Gradients> {
        let mut by_name = BTreeMap::new();
        for spec in &self.specs {
            let n = self.params.len(&spec.gguf_name)?;
            by_name.insert(spec.gguf_name.clone(), vec![0.0f32; n]);
        }
        Ok(Gradients { by_name })
    }
}

/// Parameter gradients by GGUF name (ggml order = the HF tensor's row-major order).
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    pub by_name: BTreeMap<String, Vec<f32>>,
}

/// The graph of one batch shape, `batch` sequences of up to `len` tokens each, over the policy's
/// parameters, forward only or with gradients.
///
/// With gradients it is split after the logits (`Graph::split_after`): [`forward`](Self::forward)
/// computes the logits of every row; the caller derives `G = dLoss/dlogits` from them on the host
/// and [`backward`](Self::backward) computes the loss `sum(logits ⊙ G)` and its parameter
/// gradients from the same forward pass. Shorter sequences are padded: their padding keys are
/// hidden by the attention mask, so each sequence computes what it would alone, and padding rows
/// must get zero `G` rows (the caller's `dlogits` for them is ignored: they are zeroed here).
pub struct BatchGraphs {
    batch: usize,
    len: usize,
    n_vocab: usize,
    graph: Graph,
    body: Body,
    /// `[n_vocab, batch * len]`.
    logits: TensorId,
    /// The constant `G` of the loss `sum(logits ⊙ G)`, `[n_vocab, batch * len]` (gradient
    /// graphs only).
    dlogits: Option<TensorId>,
    params: ParamIds,
    /// Tokens of each sequence in the last [`forward`](Self::forward).
    lengths: Vec<usize>,
    positions: Vec<i32>,
    key_mask: Vec<f32>,
    ids: Vec<i32>,
    /// The logits copied out of a device's memory (unused when the graph computes in host memory).
    logits_host: Vec<f32>,
}

/// Parameter tensors of a graph by GGUF name.
type ParamIds = Vec<(String, TensorId)>;

/// The model over the policy's parameters: body, logits `[n_vocab, rows]`, parameter handles.
fn build(
    policy: &Policy,
    g: &mut Graph,
    len: usize,
    batch: usize,
) -> Result<(Body, TensorId, ParamIds)> {
    let source: &dyn TensorSource = &policy.params;
    let body = build_body_batch(g, &policy.config, source, len, batch)?;
    let out_w = source.attach(g, output_weight_name(source))?;
    let logits = g.mul_mat(out_w, body.hidden)?; // [n_vocab, rows]
    let params = policy
        .specs
        .iter()
        .map(|s| Ok((s.gguf_name.clone(), g.param(&policy.params, &s.gguf_name)?)))
        .collect::<Result<_>>()?;
    Ok((body, logits, params))
}

impl BatchGraphs {
    /// Builds and allocates the graph for `batch` sequences of up to `len` tokens.
    pub fn new(
        policy: &Policy,
        batch: usize,
        len: usize,
        with_grads: bool,
        backend: &Backend,
    ) -> Result<Self> {
        if len < 2 || batch == 0 {
            return Err(Error::InvalidArgument(format!(
                "a batch of {batch} sequences of {len} tokens (needs at least 1 of 2)"
            )));
        }
        let capacity = graph_capacity(policy.config.num_hidden_layers as usize);
        let n_vocab = policy.n_vocab();
        let rows = (batch * len) as i64;
        let (graph, body, logits, dlogits, params) = if with_grads {
            let mut g = Graph::with_gradients(capacity)?;
            let (body, logits, params) = build(policy, &mut g, len, batch)?;
            let dlogits = g.input(GgmlType::F32, &[n_vocab as i64, rows])?;
            let weighted = g.mul(logits, dlogits)?;
            let loss = g.sum(weighted)?;
            g.allocate_with_gradients(&[logits], loss, backend)?;
            g.split_after(logits, &[dlogits])?;
            (g, body, logits, Some(dlogits), params)
        } else {
            let mut g = Graph::new(capacity)?;
            // The products of the gradient graphs, so forward passes round as they do.
            g.use_gemm_products()?;
            let (body, logits, _) = build(policy, &mut g, len, batch)?;
            g.allocate(&[logits], backend)?;
            (g, body, logits, None, Vec::new())
        };
        if !backend.is_builtin_cpu() {
            // ggml would abort on an operation the device lacks; say which ones instead.
            let missing = graph.unsupported_ops(backend)?;
            if !missing.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "the {} backend cannot compute these operations of the training graph: {}; \
                     train with --device cpu",
                    backend.name(),
                    missing.join(", ")
                )));
            }
        }
        Ok(BatchGraphs {
            batch,
            len,
            n_vocab,
            graph,
            body,
            logits,
            dlogits,
            params,
            lengths: Vec::new(),
            positions: (0..batch).flat_map(|_| 0..len as i32).collect(),
            key_mask: vec![0.0; batch * len * len],
            ids: vec![0; batch * len],
            logits_host: Vec::new(),
        })
    }

    /// `(batch, len)`: sequences per computation and tokens per sequence at most.
    pub fn shape(&self) -> (usize, usize) {
        (self.batch, self.len)
    }

    /// Runs the forward pass of up to `batch` sequences (each of 1 to `len` tokens) and returns
    /// the unshifted logits, row-major `[batch * len, n_vocab]`: sequence `b`'s position `k` is
    /// row `b * len + k`. Rows past a sequence's end (and of absent sequences) are padding.
    pub fn forward(&mut self, seqs: &[&[u32]], backend: &mut Backend) -> Result<&[f32]> {
        if seqs.is_empty() || seqs.len() > self.batch {
            return Err(Error::InvalidArgument(format!(
                "{} sequences for a graph of {}",
                seqs.len(),
                self.batch
            )));
        }
        self.lengths.clear();
        for b in 0..self.batch {
            // An absent sequence is one padding token: every query needs a visible key.
            let seq: &[u32] = seqs.get(b).copied().unwrap_or(&[0]);
            if seq.is_empty() || seq.len() > self.len {
                return Err(Error::InvalidArgument(format!(
                    "a sequence of {} tokens for a graph of 1 to {}",
                    seq.len(),
                    self.len
                )));
            }
            let row = &mut self.ids[b * self.len..(b + 1) * self.len];
            for (slot, &t) in row.iter_mut().zip(seq) {
                if t as usize >= self.n_vocab {
                    return Err(Error::InvalidArgument(format!(
                        "token id {t} is outside the vocabulary of {}",
                        self.n_vocab
                    )));
                }
                *slot = t as i32;
            }
            row[seq.len()..].fill(0);
            // Keys at or past the sequence's end are hidden from every query of the sequence.
            let mask = &mut self.key_mask[b * self.len * self.len..(b + 1) * self.len * self.len];
            for q in mask.chunks_mut(self.len) {
                q[..seq.len()].fill(0.0);
                q[seq.len()..].fill(f32::NEG_INFINITY);
            }
            self.lengths
                .push(if b < seqs.len() { seq.len() } else { 0 });
        }
        // Inputs are set before every computation: the allocator reuses their memory.
        self.graph.set_i32(self.body.tokens, &self.ids)?;
        self.graph.set_i32(self.body.positions, &self.positions)?;
        if let Some(mask) = self.body.key_mask {
            self.graph.set_f32(mask, &self.key_mask)?;
        }
        if self.dlogits.is_some() {
            self.graph.compute_gradients_first(backend)?;
        } else {
            self.graph.compute(backend)?;
        }
        Ok(self
            .graph
            .read_f32_via(self.logits, &mut self.logits_host)?)
    }

    /// After [`forward`](Self::forward) on a gradient graph: adds to `acc` the parameter
    /// gradient of `sum(logits ⊙ dlogits)`, `dlogits` row-major `[batch * len, n_vocab]` like
    /// the logits (rows past a sequence's end are ignored).
    pub fn backward(
        &mut self,
        dlogits: &mut [f32],
        backend: &mut Backend,
        acc: &mut Gradients,
    ) -> Result<()> {
        let id = self.dlogits.ok_or_else(|| {
            Error::InvalidArgument("backward on a graph built without gradients".into())
        })?;
        let rows = self.batch * self.len;
        if dlogits.len() != rows * self.n_vocab {
            return Err(Error::InvalidArgument(format!(
                "dlogits has {} values, expected {rows} x {}",
                dlogits.len(),
                self.n_vocab
            )));
        }
        for (b, &n) in self.lengths.iter().enumerate() {
            let pad = (b * self.len + n) * self.n_vocab..(b + 1) * self.len * self.n_vocab;
            dlogits[pad].fill(0.0);
        }
        self.graph.set_f32(id, dlogits)?;
        self.graph.compute_gradients_rest(backend)?;
        for (name, id) in &self.params {
            let Some(grad) = self.graph.grad_f32(*id)? else {
                continue; // the loss does not depend on it
            };
            let sum = acc.by_name.get_mut(name).ok_or_else(|| {
                Error::InvalidArgument(format!("no gradient accumulator for `{name}`"))
            })?;
            if sum.len() != grad.len() {
                return Err(Error::InvalidArgument(format!(
                    "gradient of `{name}` has {} values, accumulator {}",
                    grad.len(),
                    sum.len()
                )));
            }
            for (s, g) in sum.iter_mut().zip(grad.iter()) {
                *s += g;
            }
        }
        Ok(())
    }
}
