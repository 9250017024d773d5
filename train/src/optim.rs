//! The optimizer: AdamW with PyTorch's `torch.optim.AdamW` semantics, run by ggml on the CPU
//! backend (`GGML_OP_OPT_STEP_ADAMW`, see [`unmask_kernels::graph::adamw::AdamWState`]), plus
//! `torch.nn.utils.clip_grad_norm_` and gradient accumulation over micro-batches on the host.
//!
//! AdamW (PyTorch, per element, update number `t` starting at 1):
//! ```text
//! theta *= 1 - lr * wd                      (decoupled weight decay, on the pre-update weight)
//! m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
//! theta -= lr * (m / (1 - beta1^t)) / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```
//! ggml's kernel computes `theta = theta (1 - alpha wd) - alpha (m beta1h) / (sqrt(v beta2h) + eps)`
//! with `beta1h = 1/(1 - beta1^t)`, `beta2h = 1/(1 - beta2^t)`: the same expression (eps outside
//! the root), evaluated in f32. Every parameter, norms and biases included, is decayed (PyTorch's
//! default single parameter group).

use crate::policy::{Gradients, Policy};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use unmask_kernels::backend::Backend;
use unmask_kernels::graph::adamw::{AdamWState, AdamWStep};
use unmask_kernels::graph::param_store::ParamStore;

/// AdamW hyper-parameters (defaults: docs/training.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// The global L2 norm of all gradients (computed in f64).
pub fn global_norm(grads: &Gradients) -> f64 {
    grads
        .by_name
        .values()
        .flat_map(|g| g.iter())
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: scales every gradient by
/// `min(1, max_norm / (norm + 1e-6))` and returns the norm before clipping. A non-finite norm is
/// an error (PyTorch would spread NaN into the weights).
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads);
    if !norm.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "the gradient norm is {norm}"
        )));
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let c = coef as f32;
        for g in grads.by_name.values_mut() {
            for x in g.iter_mut() {
                *x *= c;
            }
        }
    }
    Ok(norm)
}

/// `acc += scale * g` for every parameter (gradient accumulation over micro-batches).
pub fn accumulate(acc: &mut Gradients, g: &Gradients, scale: f32) -> Result<()> {
    for (name, src) in &g.by_name {
        let dst = acc.by_name.get_mut(name).ok_or_else(|| {
            Error::InvalidArgument(format!("no gradient accumulator for `{name}`"))
        })?;
        if dst.len() != src.len() {
            return Err(Error::InvalidArgument(format!(
                "gradient of `{name}`: {} vs {} values",
                src.len(),
                dst.len()
            )));
        }
        for (d, s) in dst.iter_mut().zip(src) {
            *d += scale * s;
        }
    }
    Ok(())
}

/// AdamW moments and the update counter of a policy.
pub struct AdamW {
    pub config: AdamWConfig,
    pub state: AdamWState,
    /// Updates done so far (PyTorch's `state["step"]`).
    pub step: u64,
}

impl AdamW {
    pub fn new(params: &ParamStore, config: AdamWConfig) -> Result<Self> {
        Ok(AdamW {
            config,
            state: AdamWState::new(params)?,
            step: 0,
        })
    }

    /// One update of `params` with `grads` at learning rate `lr`.
    pub fn step_store(
        &mut self,
        params: &mut ParamStore,
        grads: &Gradients,
        lr: f64,
        backend: &mut Backend,
    ) -> Result<()> {
        let hp = AdamWStep {
            lr,
            beta1: self.config.beta1,
            beta2: self.config.beta2,
            eps: self.config.eps,
            weight_decay: self.config.weight_decay,
            step: self.step + 1,
        };
        let list: Vec<(&str, &[f32])> = grads
            .by_name
            .iter()
            .map(|(n, g)| (n.as_str(), g.as_slice()))
            .collect();
        self.state.step(params, &list, &hp, backend)?;
        self.step += 1;
        Ok(())
    }

    /// One update of the policy's parameters. No graph over them may be alive (the update needs
    /// the only reference to the parameter store).
    pub fn step(
        &mut self,
        policy: &mut Policy,
        grads: &Gradients,
        lr: f64,
        backend: &mut Backend,
    ) -> Result<()> {
        let params = Arc::get_mut(&mut policy.params).ok_or_else(|| {
            Error::InvalidArgument(
                "the parameters are still used by a graph; drop it before the optimizer step"
                    .into(),
            )
        })?;
        self.step_store(params, grads, lr, backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_follows_clip_grad_norm() {
        let mut g = Gradients::default();
        g.by_name.insert("a".into(), vec![3.0, 0.0]);
        g.by_name.insert("b".into(), vec![4.0]);
        assert!((global_norm(&g) - 5.0).abs() < 1e-12);
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        let c = (1.0 / (5.0 + 1e-6)) as f32;
        assert_eq!(g.by_name["a"], vec![3.0 * c, 0.0]);
        assert_eq!(g.by_name["b"], vec![4.0 * c]);
        // Below the threshold nothing changes.
        let before = g.clone();
        clip_grad_norm(&mut g, 10.0).unwrap();
        assert_eq!(g.by_name, before.by_name);
        g.by_name.insert("c".into(), vec![f32::NAN]);
        assert!(clip_grad_norm(&mut g, 1.0).is_err());
    }

    #[test]
    fn accumulation_scales_and_sums() {
        let mut acc = Gradients::default();
        acc.by_name.insert("a".into(), vec![0.0, 0.0]);
        let mut g = Gradients::default();
        g.by_name.insert("a".into(), vec![1.0, 2.0]);
        accumulate(&mut acc, &g, 0.5).unwrap();
        accumulate(&mut acc, &g, 0.5).unwrap();
        assert_eq!(acc.by_name["a"], vec![1.0, 2.0]);
        g.by_name.insert("zzz".into(), vec![1.0]);
        assert!(accumulate(&mut acc, &g, 1.0).is_err());
    }
}
