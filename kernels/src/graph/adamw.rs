//! AdamW for a [`ParamStore`]: the hyper-parameters of one step ([`AdamWStep`], PyTorch's
//! meaning) and the moments ([`AdamWState`]), updated in place by ggml's
//! `GGML_OP_OPT_STEP_ADAMW` from gradients the caller passes in (e.g. [`Graph::grad_f32`](super::Graph::grad_f32)),
//! on the backend whose memory holds the parameters (the CPU, or a device such as a GPU).

use super::param_store::ParamStore;
use crate::backend::Backend;
use crate::ggml_context::Context;
use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::borrow::Cow;

/// Hyper-parameters of one AdamW step, with PyTorch's `torch.optim.AdamW` meaning: `step` is the
/// 1-based number of this update (bias corrections `1 - beta^step`), `eps` is added outside the
/// square root, and weight decay is decoupled (`theta *= 1 - lr * weight_decay`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
}

impl AdamWStep {
    /// The 7 floats of ggml's `adamw_params` tensor: `[alpha, beta1, beta2, eps, wd, beta1h,
    /// beta2h]` with `beta1h = 1 / (1 - beta1^step)` and `beta2h = 1 / (1 - beta2^step)`
    /// (computed in f64, rounded once).
    pub fn ggml_params(&self) -> Result<[f32; 7]> {
        let ok = self.lr.is_finite()
            && self.lr >= 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps.is_finite()
            && self.eps > 0.0
            && self.weight_decay.is_finite()
            && self.weight_decay >= 0.0
            && self.step >= 1;
        if !ok {
            return Err(Error::InvalidArgument {
                what: "AdamW step",
                detail: format!(
                    "needs a finite lr >= 0, beta1 and beta2 in [0, 1), a finite eps > 0, a \
                     finite weight_decay >= 0 and step >= 1; got {self:?}"
                ),
            });
        }
        let t = self.step.min(i32::MAX as u64) as i32;
        let b1h = 1.0 / (1.0 - self.beta1.powi(t));
        let b2h = 1.0 / (1.0 - self.beta2.powi(t));
        Ok([
            self.lr as f32,
            self.beta1 as f32,
            self.beta2 as f32,
            self.eps as f32,
            self.weight_decay as f32,
            b1h as f32,
            b2h as f32,
        ])
    }
}

/// AdamW moments of a [`ParamStore`] (`m`, `v`: f32 tensors of the same names and shapes, in
/// buffers of the parameters' kind of memory), updated by ggml's `GGML_OP_OPT_STEP_ADAMW` on the
/// backend that computes in that memory.
///
/// ggml's kernel computes, per element, `m = beta1 m + (1 - beta1) g`,
/// `v = beta2 v + (1 - beta2) g^2`, then
/// `theta = theta (1 - alpha wd) - alpha (m beta1h) / (sqrt(v beta2h) + eps)`: exactly PyTorch's
/// AdamW update (decoupled decay applied to the pre-update weight, bias-corrected moments,
/// `eps` outside the square root), in f32.
pub struct AdamWState {
    m: ParamStore,
    v: ParamStore,
    /// The 7-float `adamw_params` tensor.
    hyper: ParamStore,
    /// Device backends only: the gradients, copied in before each step (the built-in CPU
    /// backend reads the caller's slices in place). Made at the first step.
    grads: Option<ParamStore>,
}

const HYPER: &str = "adamw_params";

/// The first and second moments of one parameter, borrowed from host memory or copied.
pub type Moments<'a> = (Cow<'a, [f32]>, Cow<'a, [f32]>);

impl AdamWState {
    /// Zero moments for every parameter of `params`.
    pub fn new(params: &ParamStore) -> Result<Self> {
        let shapes = params.shapes()?;
        Ok(AdamWState {
            m: params.alike(&shapes)?,
            v: params.alike(&shapes)?,
            hyper: params.alike(&[(HYPER.to_string(), vec![7])])?,
            grads: None,
        })
    }

    /// The first and second moments of a parameter (copied out of a device's memory).
    pub fn moments(&self, name: &str) -> Result<Moments<'_>> {
        Ok((self.m.get(name)?, self.v.get(name)?))
    }

    /// Overwrites the moments of a parameter (resuming from a checkpoint).
    pub fn set_moments(&mut self, name: &str, m: &[f32], v: &[f32]) -> Result<()> {
        self.m.set(name, m)?;
        self.v.set(name, v)
    }

    /// One AdamW update of the parameters listed in `grads` (name, gradient in the parameter's
    /// ggml order), computed by ggml on `backend`. Parameters not listed are left alone (like
    /// PyTorch parameters whose `.grad` is `None`: neither moved nor decayed).
    pub fn step(
        &mut self,
        params: &mut ParamStore,
        grads: &[(&str, &[f32])],
        hp: &AdamWStep,
        backend: &mut Backend,
    ) -> Result<()> {
        let hyper = hp.ggml_params()?;
        if grads.is_empty() {
            return Ok(());
        }
        if !params.usable_by(backend) || !self.m.usable_by(backend) {
            return Err(Error::InvalidArgument {
                what: "AdamW step",
                detail: format!(
                    "the parameters or their moments live in memory the {} backend cannot \
                     compute with",
                    backend.name()
                ),
            });
        }
        for (i, (name, g)) in grads.iter().enumerate() {
            let n = params.len(name)?;
            if g.len() != n || self.m.len(name)? != n {
                return Err(Error::LengthMismatch {
                    what: format!("gradient of `{name}`"),
                    unit: "values",
                    expected: n,
                    got: g.len(),
                });
            }
            if grads[..i].iter().any(|(other, _)| other == name) {
                return Err(Error::InvalidArgument {
                    what: "AdamW step",
                    detail: format!("gradient of `{name}` given twice"),
                });
            }
        }
        self.hyper.set(HYPER, &hyper)?;
        // The built-in CPU backend reads the caller's slices in place; any other backend reads
        // the gradients from a store in its own memory.
        let in_place = backend.is_builtin_cpu() && params.is_host();
        if !in_place {
            if self.grads.is_none() {
                self.grads = Some(params.alike(&params.shapes()?)?);
            }
            let store = self
                .grads
                .as_mut()
                .ok_or(Error::Init("the gradient store".into()))?;
            for (name, g) in grads {
                store.set(name, g)?;
            }
        }
        let nodes = grads.len();
        // Graph slots: one node per parameter, and its leaves (parameter, gradient, m, v, shared
        // hyper-parameters).
        let slots = 5 * nodes + 1;
        // SAFETY: size queries.
        let mem_size = unsafe {
            sys::ggml_tensor_overhead() * (2 * nodes + 1)
                + sys::ggml_graph_overhead_custom(slots, false)
        };
        // The step's graph lives only for this call; every return drops (frees) the context.
        let ctx = Context::descriptions(mem_size)?;
        let hyper_t = self.hyper.raw(HYPER).ok_or_else(|| Error::UnknownTensor {
            kind: "tensor",
            name: HYPER.into(),
            place: "the AdamW state",
        })?;
        let missing = |name: &str, place| Error::UnknownTensor {
            kind: "parameter",
            name: name.into(),
            place,
        };
        // SAFETY: the context has room for a graph of `slots` nodes and leaves and 2 tensors per
        // node. Every tensor is f32 and contiguous: the parameter (flagged PARAM, as
        // ggml_opt_step_adamw asserts) and its moments live in buffers of one kind of memory,
        // the backend's. On the built-in CPU backend with host parameters, the gradient tensor
        // is a description whose data points at the caller's slice of exactly the parameter's
        // shape, which the kernel only reads and which outlives the computation (borrowed for
        // this call; the CPU backend computes host tensors without consulting their buffers).
        // Otherwise it is the gradient store's tensor of that name, in the same memory as the
        // parameter, filled above. The kernel writes the parameter and the moments, which we
        // hold `&mut`, so no shared reference observes the writes.
        unsafe {
            let graph = sys::ggml_new_graph_custom(ctx.as_ptr(), slots, false);
            if graph.is_null() {
                return Err(Error::Init("the AdamW step's graph".into()));
            }
            for (name, g) in grads {
                let p = params.raw(name).ok_or_else(|| missing(name, "the store"))?;
                let m = self
                    .m
                    .raw(name)
                    .ok_or_else(|| missing(name, "the AdamW moments"))?;
                let v = self
                    .v
                    .raw(name)
                    .ok_or_else(|| missing(name, "the AdamW moments"))?;
                let gt = match &self.grads {
                    Some(store) if !in_place => store
                        .raw(name)
                        .ok_or_else(|| missing(name, "the gradient store"))?
                        .as_ptr(),
                    _ => {
                        let ne = (*p.as_ptr()).ne;
                        let gt =
                            sys::ggml_new_tensor(ctx.as_ptr(), sys::GGML_TYPE_F32, 4, ne.as_ptr());
                        if gt.is_null() {
                            return Err(Error::Init(format!("the gradient tensor of `{name}`")));
                        }
                        (*gt).data = g.as_ptr() as *mut std::ffi::c_void;
                        gt
                    }
                };
                let node = sys::ggml_opt_step_adamw(
                    ctx.as_ptr(),
                    p.as_ptr(),
                    gt,
                    m.as_ptr(),
                    v.as_ptr(),
                    hyper_t.as_ptr(),
                );
                if node.is_null() {
                    return Err(Error::Init(format!(
                        "the AdamW update of `{name}` (ggml_opt_step_adamw)"
                    )));
                }
                sys::ggml_build_forward_expand(graph, node);
            }
            let status = sys::ggml_backend_graph_compute(backend.raw.as_ptr(), graph);
            if status != sys::GGML_STATUS_SUCCESS {
                return Err(Error::Compute {
                    what: "AdamW step",
                    status,
                });
            }
        }
        Ok(())
    }
}
