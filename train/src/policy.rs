//! The trainable policy: a Hugging Face Dream checkpoint's weights as f32 ggml parameters, and
//! the graphs that run the runtime's model definition ([`unmask_dream::forward::build_body`])
//! over them, forward only or with ggml's automatic differentiation.
//!
//! Gradients use the §5 route of docs/training.md: the host computes `G = dLoss/dlogits` from a
//! forward pass (in f64), and the backward graph's loss is `sum(logits ⊙ G)` with `G` a constant
//! input, whose parameter gradient is the true loss gradient. This keeps `log(softmax)` off the
//! graph (no underflow) and lets every loss share one backward graph. It costs one extra forward
//! pass per sequence (the backward graph recomputes its forward).

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use unmask_dream::forward::{build_body, graph_capacity, output_weight_name, AttentionKind, Body};
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
    /// Loads the weights of a Hugging Face checkpoint folder (bf16, f16 or f32) as f32.
    pub fn load_hf(dir: &Path) -> Result<Self> {
        let ckpt = HfCheckpoint::open(dir)?;
        let specs = tensor_specs(&ckpt.config);
        let shapes: Vec<(String, Vec<i64>)> = specs
            .iter()
            .map(|s| {
                let shape = s.gguf_shape().iter().map(|&d| d as i64).collect();
                (s.gguf_name.clone(), shape)
            })
            .collect();
        let mut store = ParamStore::new(&shapes)?;
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

/// The forward and the gradient graph for one sequence length, over the policy's parameters.
pub struct SequenceGraphs {
    len: usize,
    n_vocab: usize,
    fwd: Graph,
    fwd_body: Body,
    fwd_logits: TensorId,
    bwd: Graph,
    bwd_body: Body,
    /// The constant `G` of the loss `sum(logits ⊙ G)`, `[n_vocab, len]`.
    dlogits: TensorId,
    params: ParamIds,
    positions: Vec<i32>,
}

/// Parameter tensors of a graph by GGUF name.
type ParamIds = Vec<(String, TensorId)>;

/// The model over the policy's parameters: body, logits `[n_vocab, len]`, parameter handles.
fn build(policy: &Policy, g: &mut Graph, len: usize) -> Result<(Body, TensorId, ParamIds)> {
    let source: &dyn TensorSource = &policy.params;
    let body = build_body(g, &policy.config, source, len, AttentionKind::Explicit)?;
    let out_w = source.attach(g, output_weight_name(source))?;
    let logits = g.mul_mat(out_w, body.hidden)?; // [n_vocab, len]
    let params = policy
        .specs
        .iter()
        .map(|s| Ok((s.gguf_name.clone(), g.param(&policy.params, &s.gguf_name)?)))
        .collect::<Result<_>>()?;
    Ok((body, logits, params))
}

impl SequenceGraphs {
    pub fn new(policy: &Policy, len: usize, backend: &Backend) -> Result<Self> {
        if len == 0 {
            return Err(Error::InvalidArgument("empty sequence".into()));
        }
        let capacity = graph_capacity(policy.config.num_hidden_layers as usize);
        let mut fwd = Graph::new(capacity)?;
        let (fwd_body, fwd_logits, _) = build(policy, &mut fwd, len)?;
        fwd.allocate(&[fwd_logits], backend)?;

        let mut bwd = Graph::with_gradients(capacity)?;
        let (bwd_body, logits, params) = build(policy, &mut bwd, len)?;
        let n_vocab = policy.n_vocab();
        let dlogits = bwd.input(GgmlType::F32, &[n_vocab as i64, len as i64])?;
        let weighted = bwd.mul(logits, dlogits)?;
        let loss = bwd.sum(weighted)?;
        bwd.allocate_with_gradients(&[], loss, backend)?;

        Ok(SequenceGraphs {
            positions: (0..len as i32).collect(),
            len,
            n_vocab,
            fwd,
            fwd_body,
            fwd_logits,
            bwd,
            bwd_body,
            dlogits,
            params,
        })
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<Vec<i32>> {
        if tokens.len() != self.len {
            return Err(Error::InvalidArgument(format!(
                "sequence of {} tokens for graphs built for {}",
                tokens.len(),
                self.len
            )));
        }
        tokens
            .iter()
            .map(|&t| {
                if (t as usize) < self.n_vocab {
                    Ok(t as i32)
                } else {
                    Err(Error::InvalidArgument(format!(
                        "token id {t} is outside the vocabulary of {}",
                        self.n_vocab
                    )))
                }
            })
            .collect()
    }

    /// Unshifted logits of every position, row-major `[len, n_vocab]`.
    pub fn logits(&mut self, tokens: &[u32], backend: &mut Backend) -> Result<&[f32]> {
        let ids = self.check_tokens(tokens)?;
        // Inputs are set before every computation: the allocator reuses their memory.
        self.fwd.set_i32(self.fwd_body.tokens, &ids)?;
        self.fwd.set_i32(self.fwd_body.positions, &self.positions)?;
        self.fwd.compute(backend)?;
        Ok(self.fwd.read_f32(self.fwd_logits)?)
    }

    /// Adds to `acc` the parameter gradient of `sum(logits(tokens) ⊙ dlogits)`, where `dlogits`
    /// is row-major `[len, n_vocab]` (dLoss/dlogits of this sequence).
    pub fn accumulate_grad(
        &mut self,
        tokens: &[u32],
        dlogits: &[f32],
        backend: &mut Backend,
        acc: &mut Gradients,
    ) -> Result<()> {
        let ids = self.check_tokens(tokens)?;
        if dlogits.len() != self.len * self.n_vocab {
            return Err(Error::InvalidArgument(format!(
                "dlogits has {} values, expected {} x {}",
                dlogits.len(),
                self.len,
                self.n_vocab
            )));
        }
        self.bwd.set_i32(self.bwd_body.tokens, &ids)?;
        self.bwd.set_i32(self.bwd_body.positions, &self.positions)?;
        self.bwd.set_f32(self.dlogits, dlogits)?;
        self.bwd.compute_gradients(backend)?;
        for (name, id) in &self.params {
            let Some(grad) = self.bwd.grad_f32(*id)? else {
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
            for (s, g) in sum.iter_mut().zip(grad) {
                *s += g;
            }
        }
        Ok(())
    }
}
