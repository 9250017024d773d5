//! Graphs with gradients: ggml's automatic differentiation over the parameter tensors a graph
//! attaches ([`Graph::param`]). A graph made [`with_gradients`](Graph::with_gradients) and
//! allocated with [`allocate_with_gradients`](Graph::allocate_with_gradients) computes a scalar
//! f32 loss and, in the same pass, its gradient with respect to every parameter it depends on
//! ([`compute_gradients`](Graph::compute_gradients), [`grad_f32`](Graph::grad_f32)).
//! Operations without a backward pass in ggml are refused instead of reaching ggml's asserts:
//! flash attention when the backward pass is appended here, the q8 custom products when they
//! are added (`qgemm_op.rs`).

use super::{Graph, TensorId};
use crate::backend::Backend;
use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::ptr::NonNull;

/// Extra tensor descriptions and graph nodes that `ggml_build_backward_expand` may create per
/// forward tensor (out_prod, transposes, repeat_back, accumulation adds, ...): generous, since
/// running out of context memory would be a ggml abort.
pub(super) const BACKWARD_FACTOR: usize = 8;

impl Graph {
    /// A graph whose loss can be differentiated with respect to the [`ParamStore`](super::param_store::ParamStore) tensors it
    /// uses: allocate it with [`allocate_with_gradients`](Self::allocate_with_gradients), compute
    /// with [`compute_gradients`](Self::compute_gradients) and read [`grad_f32`](Self::grad_f32).
    /// `max_tensors` counts the forward tensors only; room for the backward pass is added.
    pub fn with_gradients(max_tensors: usize) -> Result<Self> {
        Self::build(max_tensors, true)
    }

    /// Like [`allocate`](Self::allocate) for a graph built [`with_gradients`](Self::with_gradients):
    /// `loss` (a one-element f32 tensor) is the training loss, and ggml's automatic
    /// differentiation (`ggml_build_backward_expand`) appends the backward pass, which computes
    /// the gradient of `loss` with respect to every attached parameter that it depends on.
    pub fn allocate_with_gradients(
        &mut self,
        outputs: &[TensorId],
        loss: TensorId,
        backend: &Backend,
    ) -> Result<()> {
        self.check_building("allocating it again")?;
        if !self.grads {
            return Err(Error::Gradients(
                "gradients need a graph made with Graph::with_gradients",
            ));
        }
        if self.shape(loss)? != [1, 1, 1, 1] || self.type_of(loss)? != sys::GGML_TYPE_F32 {
            return Err(Error::Shape {
                op: "allocate_with_gradients",
                detail: format!(
                    "the loss must be one f32 value, has shape {:?}",
                    self.shape(loss)?
                ),
            });
        }
        if self.param_ids.is_empty() {
            return Err(Error::Gradients("the graph uses no parameters"));
        }
        // SAFETY: the context was sized with ggml_graph_overhead_custom for `graph_size` nodes
        // with gradients.
        let graph = NonNull::new(unsafe {
            sys::ggml_new_graph_custom(self.ctx.as_ptr(), self.graph_size(), true)
        })
        .ok_or_else(|| Error::Init("the compute graph".into()))?;
        self.expand_outputs(graph, outputs)?;
        self.expand_outputs(graph, &[loss])?;
        let loss_raw = self.raw(loss)?;
        // SAFETY: checked above: a scalar f32 tensor of this graph.
        unsafe { sys::ggml_set_loss(loss_raw) };
        // ggml asserts that a parameter takes part; check it here instead.
        let params: Vec<*mut sys::ggml_tensor> = self
            .param_ids
            .iter()
            .map(|&id| self.raw(id))
            .collect::<Result<_>>()?;
        // SAFETY: node indices below ggml_graph_n_nodes of a live graph.
        let uses_param = unsafe {
            (0..sys::ggml_graph_n_nodes(graph.as_ptr()))
                .any(|i| params.contains(&sys::ggml_graph_node(graph.as_ptr(), i)))
        };
        if !uses_param {
            return Err(Error::Gradients("the loss depends on no parameter"));
        }
        // SAFETY: the graph was created with gradients, holds a loss and a parameter; every
        // tensor the backward pass differentiates through is f32 (parameters and activations),
        // the operations used by this API all have backward passes in ggml (flash attention,
        // which has none, is refused here); the context has room for BACKWARD_FACTOR times the
        // forward tensors.
        unsafe {
            for i in 0..sys::ggml_graph_n_nodes(graph.as_ptr()) {
                let node = sys::ggml_graph_node(graph.as_ptr(), i);
                if (*node).op == sys::GGML_OP_FLASH_ATTN_EXT {
                    return Err(Error::UnsupportedOp {
                        op: "flash attention (Graph::attention)",
                        context: "in a graph with gradients",
                        hint: "it has no backward pass; use attention_explicit",
                    });
                }
            }
            sys::ggml_build_backward_expand(
                self.ctx.as_ptr(),
                graph.as_ptr(),
                std::ptr::null_mut(),
            );
        }
        for &p in &params {
            // SAFETY: live graph and tensor; a parameter's gradient must survive the computation.
            unsafe {
                let grad = sys::ggml_graph_get_grad(graph.as_ptr(), p);
                if !grad.is_null() {
                    sys::ggml_set_output(grad);
                }
            }
        }
        self.allocate_graph(graph, backend)?;
        self.has_backward = true;
        Ok(())
    }

    /// Computes the loss and the gradients of a graph allocated with
    /// [`allocate_with_gradients`](Self::allocate_with_gradients): d(loss)/d(loss) is set to 1
    /// first (`ggml_graph_reset`), so every computation gives fresh gradients.
    pub fn compute_gradients(&mut self, backend: &mut Backend) -> Result<()> {
        let graph = self.graph.ok_or(Error::NotAllocated {
            op: "computing gradients",
        })?;
        if !self.grads || !self.has_backward {
            return Err(Error::Gradients(
                "the graph was not allocated with gradients (allocate_with_gradients)",
            ));
        }
        // SAFETY: a live graph with gradients whose tensors are allocated in host memory.
        unsafe { sys::ggml_graph_reset(graph.as_ptr()) };
        self.compute(backend)
    }

    /// The gradient of the loss with respect to parameter `param` after
    /// [`compute_gradients`](Self::compute_gradients), in the parameter's shape; `None` when the
    /// loss does not depend on it.
    pub fn grad_f32(&self, param: TensorId) -> Result<Option<&[f32]>> {
        let graph = self.graph.ok_or(Error::NotAllocated {
            op: "reading gradients",
        })?;
        if !self.has_backward || !self.param_ids.contains(&param) {
            return Err(Error::Gradients(
                "no gradient: not a parameter of a graph with gradients",
            ));
        }
        let p = self.raw(param)?;
        // SAFETY: live graph and tensor. The gradient is checked to be a contiguous f32 tensor in
        // host memory with the parameter's element count before it is viewed as a slice; it was
        // marked as an output, so the allocator never reuses its memory, and the slice lives as
        // long as `&self` (computing needs `&mut self`).
        unsafe {
            let grad = sys::ggml_graph_get_grad(graph.as_ptr(), p);
            if grad.is_null() {
                return Ok(None);
            }
            let n = sys::ggml_nelements(p) as usize;
            let g = &*grad;
            if g.type_ != sys::GGML_TYPE_F32
                || !sys::ggml_is_contiguous(grad)
                || sys::ggml_nelements(grad) as usize != n
                || g.data.is_null()
                || g.buffer.is_null()
                || !sys::ggml_backend_buffer_is_host(g.buffer)
            {
                return Err(Error::Shape {
                    op: "grad_f32",
                    detail: "the gradient is not a contiguous host f32 tensor".into(),
                });
            }
            Ok(Some(std::slice::from_raw_parts(g.data as *const f32, n)))
        }
    }

    /// The parameters attached to this graph, in attachment order.
    pub fn params(&self) -> &[TensorId] {
        &self.param_ids
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::Backend;
    use crate::graph::param_store::ParamStore;
    use crate::graph::Graph;
    use crate::GgmlType;
    use std::sync::Arc;

    fn store(tensors: &[(&str, Vec<i64>, Vec<f32>)]) -> Arc<ParamStore> {
        let shapes: Vec<(String, Vec<i64>)> = tensors
            .iter()
            .map(|(n, s, _)| (n.to_string(), s.clone()))
            .collect();
        let mut p = ParamStore::new(&shapes).unwrap();
        for (n, _, v) in tensors {
            p.set(n, v).unwrap();
        }
        Arc::new(p)
    }

    #[test]
    fn gradients_of_a_linear_layer_match_the_closed_form() {
        // loss = sum((W x + b) ⊙ G): dW[o][i] = sum_m G[m][o] x[m][i], db[o] = sum_m G[m][o].
        let (k, n, m) = (5usize, 3usize, 4usize);
        let w: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let x: Vec<f32> = (0..k * m).map(|i| (i as f32 * 0.11).cos()).collect();
        let gm: Vec<f32> = (0..n * m).map(|i| (i as f32 * 0.7).sin()).collect();
        let params = store(&[
            ("w", vec![k as i64, n as i64], w.clone()),
            ("b", vec![n as i64], b),
        ]);
        let mut backend = Backend::new(2).unwrap();
        let mut g = Graph::with_gradients(16).unwrap();
        let tw = g.param(&params, "w").unwrap();
        let tb = g.param(&params, "b").unwrap();
        assert_eq!(g.param(&params, "w").unwrap(), tw, "attached once");
        let tx = g.input(GgmlType::F32, &[k as i64, m as i64]).unwrap();
        let tg = g.input(GgmlType::F32, &[n as i64, m as i64]).unwrap();
        let y = g.mul_mat(tw, tx).unwrap();
        let y = g.add(y, tb).unwrap();
        let prod = g.mul(y, tg).unwrap();
        let loss = g.sum(prod).unwrap();
        g.allocate_with_gradients(&[y], loss, &backend).unwrap();
        for _ in 0..2 {
            // A second computation gives the same (fresh, not accumulated) gradients. Inputs are
            // set before every computation: the allocator reuses their memory after last use.
            g.set_f32(tx, &x).unwrap();
            g.set_f32(tg, &gm).unwrap();
            g.compute_gradients(&mut backend).unwrap();
            let dw = g.grad_f32(tw).unwrap().unwrap();
            for o in 0..n {
                for i in 0..k {
                    let want: f32 = (0..m).map(|j| gm[j * n + o] * x[j * k + i]).sum();
                    assert!((dw[o * k + i] - want).abs() < 1e-5, "dW[{o}][{i}]");
                }
            }
            let db = g.grad_f32(tb).unwrap().unwrap();
            for o in 0..n {
                let want: f32 = (0..m).map(|j| gm[j * n + o]).sum();
                assert!((db[o] - want).abs() < 1e-5, "db[{o}]");
            }
        }
        assert!(g.grad_f32(tx).is_err(), "inputs are not parameters");
    }

    #[test]
    fn gradient_misuse_gives_errors() {
        let params = store(&[("w", vec![4, 2], vec![1.0; 8])]);
        let backend = Backend::new(1).unwrap();
        // Not a gradient graph.
        let mut g = Graph::new(8).unwrap();
        let w = g.param(&params, "w").unwrap();
        let s = g.sum(w).unwrap();
        assert!(g.allocate_with_gradients(&[], s, &backend).is_err());
        // Loss not a scalar.
        let mut g = Graph::with_gradients(8).unwrap();
        let w = g.param(&params, "w").unwrap();
        let y = g.mul(w, w).unwrap();
        assert!(g.allocate_with_gradients(&[], y, &backend).is_err());
        // No parameter.
        let mut g = Graph::with_gradients(8).unwrap();
        let x = g.input(GgmlType::F32, &[4, 2]).unwrap();
        let s = g.sum(x).unwrap();
        assert!(g.allocate_with_gradients(&[], s, &backend).is_err());
        // A parameter the loss does not use.
        let mut g = Graph::with_gradients(8).unwrap();
        g.param(&params, "w").unwrap();
        let x = g.input(GgmlType::F32, &[4, 2]).unwrap();
        let s = g.sum(x).unwrap();
        assert!(g.allocate_with_gradients(&[], s, &backend).is_err());
        // Flash attention has no backward pass.
        let mut g = Graph::with_gradients(16).unwrap();
        let q = g.param(&params, "w").unwrap();
        let q3 = g.reshape(q, &[4, 2, 1]).unwrap();
        let a = g.attention(q3, q3, q3, 1.0).unwrap();
        let s = g.sum(a).unwrap();
        assert!(g.allocate_with_gradients(&[], s, &backend).is_err());
        assert!(g.grad_f32(q).is_err());
        assert!(ParamStore::new(&[("x".into(), vec![0])]).is_err());
        assert!(ParamStore::new(&[]).is_err());
    }
}
