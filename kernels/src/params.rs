//! Trainable parameters: named f32 tensors in one CPU backend buffer, each marked as a ggml
//! parameter (`ggml_set_param`), so that a graph built over them with gradients enabled
//! ([`Graph::with_gradients`](crate::graph::Graph::with_gradients)) differentiates the loss with
//! respect to them. Graphs use them through [`Graph::param`](crate::graph::Graph::param), which
//! keeps the store alive.

use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::collections::HashMap;
use std::ptr::NonNull;

/// Named f32 parameter tensors, allocated once in host memory.
pub struct ParamStore {
    ctx: NonNull<sys::ggml_context>,
    buffer: NonNull<sys::ggml_backend_buffer>,
    by_name: HashMap<String, NonNull<sys::ggml_tensor>>,
    names: Vec<String>,
}

// SAFETY: the context and buffer are owned by this value; tensor data is only written through
// `&mut self` and only read by graphs (or `&self`) otherwise, so shared references never race
// with a write.
unsafe impl Send for ParamStore {}
unsafe impl Sync for ParamStore {}

impl ParamStore {
    /// Allocates zero-filled f32 tensors of the given ggml-order shapes (1 to 4 positive dims).
    pub fn new(tensors: &[(String, Vec<i64>)]) -> Result<Self> {
        if tensors.is_empty() {
            return Err(Error::Ggml(
                "a parameter store needs at least one tensor".into(),
            ));
        }
        // SAFETY: size query.
        let mem_size = unsafe { sys::ggml_tensor_overhead() } * (tensors.len() + 1);
        let ctx = crate::graph::descriptions_context(mem_size)?;
        let mut by_name = HashMap::with_capacity(tensors.len());
        let mut names = Vec::with_capacity(tensors.len());
        let free_ctx = |ctx: NonNull<sys::ggml_context>| {
            // SAFETY: freeing the context created above, exactly once, on an error path.
            unsafe { sys::ggml_free(ctx.as_ptr()) }
        };
        for (name, shape) in tensors {
            if shape.is_empty() || shape.len() > 4 || shape.iter().any(|&d| d <= 0) {
                free_ctx(ctx);
                return Err(Error::Ggml(format!(
                    "parameter `{name}` has invalid shape {shape:?}"
                )));
            }
            if by_name.contains_key(name) {
                free_ctx(ctx);
                return Err(Error::Ggml(format!("parameter `{name}` given twice")));
            }
            // SAFETY: 1..=4 positive dims, f32, and the context has room for every tensor.
            let raw = unsafe {
                sys::ggml_new_tensor(
                    ctx.as_ptr(),
                    sys::GGML_TYPE_F32,
                    shape.len() as i32,
                    shape.as_ptr(),
                )
            };
            let Some(t) = NonNull::new(raw) else {
                free_ctx(ctx);
                return Err(Error::Ggml(format!("cannot describe parameter `{name}`")));
            };
            // SAFETY: a fresh leaf tensor (op NONE), as ggml_set_param requires.
            unsafe { sys::ggml_set_param(t.as_ptr()) };
            by_name.insert(name.clone(), t);
            names.push(name.clone());
        }
        // SAFETY: every tensor of the context is unallocated; the CPU buffer type is static.
        let buffer = NonNull::new(unsafe {
            sys::ggml_backend_alloc_ctx_tensors_from_buft(
                ctx.as_ptr(),
                sys::ggml_backend_cpu_buffer_type(),
            )
        });
        let Some(buffer) = buffer else {
            free_ctx(ctx);
            return Err(Error::Ggml(
                "cannot allocate the parameter buffer (out of memory?)".into(),
            ));
        };
        // SAFETY: the buffer is ours and live.
        unsafe { sys::ggml_backend_buffer_clear(buffer.as_ptr(), 0) };
        Ok(ParamStore {
            ctx,
            buffer,
            by_name,
            names,
        })
    }

    /// Parameter names in creation order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn tensor(&self, name: &str) -> Result<NonNull<sys::ggml_tensor>> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| Error::Ggml(format!("no parameter `{name}`")))
    }

    /// Shape of a parameter in ggml order (4 entries).
    pub fn shape(&self, name: &str) -> Result<[i64; 4]> {
        // SAFETY: a live tensor of our context.
        Ok(unsafe { (*self.tensor(name)?.as_ptr()).ne })
    }

    /// Number of elements of a parameter.
    pub fn len(&self, name: &str) -> Result<usize> {
        Ok(self.shape(name)?.iter().product::<i64>() as usize)
    }

    /// Overwrites a parameter's values (ggml order, i.e. row-major PyTorch order reversed shape).
    pub fn set(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let t = self.tensor(name)?;
        let n = self.len(name)?;
        if values.len() != n {
            return Err(Error::Ggml(format!(
                "parameter `{name}` has {n} elements, {} given",
                values.len()
            )));
        }
        // SAFETY: the tensor is allocated in our buffer and exactly `n` f32 long.
        unsafe {
            sys::ggml_backend_tensor_set(t.as_ptr(), values.as_ptr().cast(), 0, n * 4);
        }
        Ok(())
    }

    /// Borrows a parameter's values (host memory, contiguous f32).
    pub fn get(&self, name: &str) -> Result<&[f32]> {
        let t = self.tensor(name)?;
        let n = self.len(name)?;
        // SAFETY: the tensor is a contiguous f32 tensor allocated in our host buffer; the slice
        // lives as long as `&self`, and writes need `&mut self`.
        unsafe {
            Ok(std::slice::from_raw_parts(
                (*t.as_ptr()).data as *const f32,
                n,
            ))
        }
    }

    pub(crate) fn raw(&self, name: &str) -> Option<NonNull<sys::ggml_tensor>> {
        self.by_name.get(name).copied()
    }
}

impl Drop for ParamStore {
    fn drop(&mut self) {
        // SAFETY: buffer and context are ours and freed exactly once.
        unsafe {
            sys::ggml_backend_buffer_free(self.buffer.as_ptr());
            sys::ggml_free(self.ctx.as_ptr());
        }
    }
}

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
            return Err(Error::Ggml(format!("invalid AdamW step {self:?}")));
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

/// AdamW moments of a [`ParamStore`] (`m`, `v`: f32 tensors of the same names and shapes in
/// their own CPU backend buffers), updated by ggml's `GGML_OP_OPT_STEP_ADAMW` on the CPU backend.
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
}

const HYPER: &str = "adamw_params";

impl AdamWState {
    /// Zero moments for every parameter of `params`.
    pub fn new(params: &ParamStore) -> Result<Self> {
        let shapes: Vec<(String, Vec<i64>)> = params
            .names()
            .iter()
            .map(|n| Ok((n.clone(), params.shape(n)?.to_vec())))
            .collect::<Result<_>>()?;
        Ok(AdamWState {
            m: ParamStore::new(&shapes)?,
            v: ParamStore::new(&shapes)?,
            hyper: ParamStore::new(&[(HYPER.to_string(), vec![7])])?,
        })
    }

    /// The first and second moments of a parameter.
    pub fn moments(&self, name: &str) -> Result<(&[f32], &[f32])> {
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
        backend: &mut crate::backend::CpuBackend,
    ) -> Result<()> {
        let hyper = hp.ggml_params()?;
        if grads.is_empty() {
            return Ok(());
        }
        for (i, (name, g)) in grads.iter().enumerate() {
            let n = params.len(name)?;
            if g.len() != n || self.m.len(name)? != n {
                return Err(Error::Ggml(format!(
                    "gradient of `{name}` has {} values, the parameter {n}",
                    g.len()
                )));
            }
            if grads[..i].iter().any(|(other, _)| other == name) {
                return Err(Error::Ggml(format!("gradient of `{name}` given twice")));
            }
        }
        self.hyper.set(HYPER, &hyper)?;
        let nodes = grads.len();
        // Graph slots: one node per parameter, and its leaves (parameter, gradient, m, v, shared
        // hyper-parameters).
        let slots = 5 * nodes + 1;
        // SAFETY: size queries.
        let mem_size = unsafe {
            sys::ggml_tensor_overhead() * (2 * nodes + 1)
                + sys::ggml_graph_overhead_custom(slots, false)
        };
        let ctx = crate::graph::descriptions_context(mem_size)?;
        struct Ctx(NonNull<sys::ggml_context>);
        impl Drop for Ctx {
            fn drop(&mut self) {
                // SAFETY: created above, freed once.
                unsafe { sys::ggml_free(self.0.as_ptr()) }
            }
        }
        let ctx = Ctx(ctx);
        let hyper_t = self
            .hyper
            .raw(HYPER)
            .ok_or_else(|| Error::Ggml("no AdamW hyper-parameter tensor".into()))?;
        // SAFETY: the context has room for a graph of `slots` nodes and leaves and 2 tensors per
        // node. Every
        // tensor is f32 and contiguous: the parameter (flagged PARAM, as ggml_opt_step_adamw
        // asserts) and its moments live in host backend buffers; the gradient tensor is a
        // description whose data points at the caller's slice of exactly the parameter's shape,
        // which the kernel only reads and which outlives the computation (borrowed for this
        // call). The kernel writes the parameter and the moments, which we hold `&mut`, so no
        // shared reference observes the writes. The CPU backend computes host tensors without
        // consulting their buffers.
        unsafe {
            let graph = sys::ggml_new_graph_custom(ctx.0.as_ptr(), slots, false);
            if graph.is_null() {
                return Err(Error::Ggml("graph creation failed".into()));
            }
            for (name, g) in grads {
                let missing = || Error::Ggml(format!("no parameter `{name}`"));
                let p = params.raw(name).ok_or_else(missing)?;
                let m = self.m.raw(name).ok_or_else(missing)?;
                let v = self.v.raw(name).ok_or_else(missing)?;
                let ne = (*p.as_ptr()).ne;
                let gt = sys::ggml_new_tensor(ctx.0.as_ptr(), sys::GGML_TYPE_F32, 4, ne.as_ptr());
                if gt.is_null() {
                    return Err(Error::Ggml("tensor creation failed".into()));
                }
                (*gt).data = g.as_ptr() as *mut std::ffi::c_void;
                let node = sys::ggml_opt_step_adamw(
                    ctx.0.as_ptr(),
                    p.as_ptr(),
                    gt,
                    m.as_ptr(),
                    v.as_ptr(),
                    hyper_t.as_ptr(),
                );
                if node.is_null() {
                    return Err(Error::Ggml("ggml_opt_step_adamw failed".into()));
                }
                sys::ggml_build_forward_expand(graph, node);
            }
            let status = sys::ggml_backend_graph_compute(backend.raw.as_ptr(), graph);
            if status != sys::GGML_STATUS_SUCCESS {
                return Err(Error::Ggml(format!(
                    "AdamW step failed with status {status}"
                )));
            }
        }
        Ok(())
    }
}
