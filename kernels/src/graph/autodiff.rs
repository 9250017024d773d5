//! Graphs with gradients: ggml's automatic differentiation over the parameter tensors a graph
//! attaches ([`Graph::param`]). A graph made [`with_gradients`](Graph::with_gradients) and
//! allocated with [`allocate_with_gradients`](Graph::allocate_with_gradients) computes a scalar
//! f32 loss and, in the same pass, its gradient with respect to every parameter it depends on
//! ([`compute_gradients`](Graph::compute_gradients), [`grad_f32`](Graph::grad_f32)).
//! Operations without a backward pass in ggml are refused instead of reaching ggml's asserts:
//! flash attention when the backward pass is appended here, the q8 custom products when they
//! are added (`qgemm_op.rs`).
//!
//! A gradient graph can also be computed in two parts ([`Graph::split_after`]): the nodes up to
//! one tensor (the forward pass to the logits, say), then the rest (the loss and the backward
//! pass), with inputs that only the second part reads set in between. A trainer that derives the
//! loss's input from the logits (a host-computed `dLoss/dlogits`) then runs the forward pass once
//! instead of twice. The parts are ggml's own graph views (`ggml_graph_view`, what ggml's
//! scheduler computes), so allocation, use counts and fusion rules are those of the whole graph.

use super::{Graph, TensorId};
use crate::backend::Backend;
use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::borrow::Cow;
use std::os::raw::c_int;
use std::ptr::NonNull;

/// `struct ggml_cgraph` of the pinned ggml (`ggml/src/ggml-impl.h`), which `ggml_graph_view`
/// returns by value. ggml does not put the struct in its public headers; the layout is checked
/// against the public accessors on every use ([`Graph::compute_part`]).
#[repr(C)]
struct CgraphView {
    size: c_int,
    n_nodes: c_int,
    n_leafs: c_int,
    nodes: *mut *mut sys::ggml_tensor,
    grads: *mut *mut sys::ggml_tensor,
    grad_accs: *mut *mut sys::ggml_tensor,
    leafs: *mut *mut sys::ggml_tensor,
    use_counts: *mut i32,
    hash_size: usize,
    hash_used: *mut u32,
    hash_keys: *mut *mut sys::ggml_tensor,
    order: c_int,
    uid: u64,
}

extern "C" {
    /// ggml.c: the nodes `[i0, i1)` of `cgraph` as a graph that shares its node array, use
    /// counts and hash set (no leafs, no gradients). Declared in ggml-impl.h, linked from the
    /// same static ggml library as every other ggml function.
    fn ggml_graph_view(cgraph: *mut sys::ggml_cgraph, i0: c_int, i1: c_int) -> CgraphView;
}

/// Where a split gradient graph ([`Graph::split_after`]) stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum SplitState {
    /// Not split: only [`Graph::compute_gradients`].
    #[default]
    Whole,
    /// Split after node `at` (exclusive end of the first part); the first part has not run
    /// since the last second part.
    Ready { at: usize },
    /// The first part has run; the second may follow.
    FirstDone { at: usize },
}

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
        // SAFETY: a live graph with gradients whose tensors are allocated (ggml_graph_reset
        // writes through the backend's buffer functions, so any memory).
        unsafe { sys::ggml_graph_reset(graph.as_ptr()) };
        self.compute(backend)
    }

    /// Makes the graph computable in two parts: [`compute_gradients_first`](Self::compute_gradients_first)
    /// runs every node up to and including `after` (which must be a computed tensor of the
    /// graph), [`compute_gradients_rest`](Self::compute_gradients_rest) the remaining nodes.
    /// `late_inputs` are inputs set between the two parts: no node of the first part may read
    /// them (checked, through views too). `after` must be one of the outputs the graph was
    /// allocated with, so that it can be read between the parts and after the second.
    pub fn split_after(&mut self, after: TensorId, late_inputs: &[TensorId]) -> Result<()> {
        let graph = self.graph.ok_or(Error::NotAllocated { op: "splitting" })?;
        if !self.has_backward {
            return Err(Error::Gradients(
                "only a graph allocated with gradients can be split",
            ));
        }
        let target = self.raw(after)?;
        let late: Vec<*mut sys::ggml_tensor> = late_inputs
            .iter()
            .map(|&id| self.raw(id))
            .collect::<Result<_>>()?;
        // SAFETY: node indices below ggml_graph_n_nodes of a live graph; sources and view
        // sources are live tensors of the graph (or null).
        let at = unsafe {
            let n = sys::ggml_graph_n_nodes(graph.as_ptr());
            let at = (0..n)
                .find(|&i| sys::ggml_graph_node(graph.as_ptr(), i) == target)
                .ok_or(Error::Gradients(
                    "the split tensor is not a node of the graph",
                ))?;
            let reads_late = |mut t: *mut sys::ggml_tensor| {
                while !t.is_null() {
                    if late.contains(&t) {
                        return true;
                    }
                    t = (*t).view_src;
                }
                false
            };
            for i in 0..=at {
                let node = sys::ggml_graph_node(graph.as_ptr(), i);
                if reads_late(node) || (*node).src.iter().any(|&s| reads_late(s)) {
                    return Err(Error::Gradients(
                        "a node before the split reads an input set between the parts",
                    ));
                }
            }
            if (*target).flags & sys::GGML_TENSOR_FLAG_OUTPUT as i32 == 0 {
                return Err(Error::Gradients(
                    "the split tensor must be an output of the graph (allocate_with_gradients)",
                ));
            }
            at as usize + 1
        };
        self.split = SplitState::Ready { at };
        Ok(())
    }

    /// The first part of a split gradient graph ([`split_after`](Self::split_after)): resets
    /// the gradients (as [`compute_gradients`](Self::compute_gradients) does) and computes the
    /// nodes up to the split tensor, which can then be read.
    pub fn compute_gradients_first(&mut self, backend: &mut Backend) -> Result<()> {
        let (SplitState::Ready { at } | SplitState::FirstDone { at }) = self.split else {
            return Err(Error::Gradients("the graph is not split (split_after)"));
        };
        let graph = self.graph.ok_or(Error::NotAllocated {
            op: "computing gradients",
        })?;
        // SAFETY: a live graph with gradients whose tensors are allocated (ggml_graph_reset
        // writes through the backend's buffer functions, so any memory).
        unsafe { sys::ggml_graph_reset(graph.as_ptr()) };
        self.split = SplitState::Ready { at };
        self.compute_part(graph, 0, at, backend)?;
        self.split = SplitState::FirstDone { at };
        Ok(())
    }

    /// The second part of a split gradient graph: the nodes after the split tensor (the loss and
    /// the backward pass). Must follow [`compute_gradients_first`](Self::compute_gradients_first);
    /// the gradients are then read with [`grad_f32`](Self::grad_f32).
    pub fn compute_gradients_rest(&mut self, backend: &mut Backend) -> Result<()> {
        let SplitState::FirstDone { at } = self.split else {
            return Err(Error::Gradients(
                "the second part of a split graph must follow its first (compute_gradients_first)",
            ));
        };
        let graph = self.graph.ok_or(Error::NotAllocated {
            op: "computing gradients",
        })?;
        self.split = SplitState::Ready { at };
        // SAFETY: a live graph.
        let n = unsafe { sys::ggml_graph_n_nodes(graph.as_ptr()) } as usize;
        self.compute_part(graph, at, n, backend)
    }

    /// Computes nodes `[i0, i1)` of `graph` through ggml's graph view.
    fn compute_part(
        &self,
        graph: NonNull<sys::ggml_cgraph>,
        i0: usize,
        i1: usize,
        backend: &mut Backend,
    ) -> Result<()> {
        if i0 >= i1 {
            return Ok(());
        }
        // SAFETY: 0 <= i0 < i1 <= n_nodes of a live graph. The view's layout is checked against
        // the public accessors (node count, first and last node) before ggml reads it; it
        // borrows the graph's arrays, which live as long as the graph, and is used only here.
        // The nodes are allocated (the whole graph was), so computing a contiguous run of them
        // in order is what computing the whole graph does for those nodes.
        unsafe {
            let mut view = ggml_graph_view(graph.as_ptr(), i0 as c_int, i1 as c_int);
            let n = i1 - i0;
            if view.n_nodes as usize != n
                || view.nodes.is_null()
                || *view.nodes != sys::ggml_graph_node(graph.as_ptr(), i0 as c_int)
                || *view.nodes.add(n - 1) != sys::ggml_graph_node(graph.as_ptr(), i1 as c_int - 1)
            {
                return Err(Error::Gradients(
                    "ggml's graph view does not have the expected layout",
                ));
            }
            super::compute_status(sys::ggml_backend_graph_compute(
                backend.raw.as_ptr(),
                (&mut view as *mut CgraphView).cast(),
            ))
        }
    }

    /// The gradient of the loss with respect to parameter `param` after
    /// [`compute_gradients`](Self::compute_gradients), in the parameter's shape: borrowed in
    /// place from host memory, copied out of a device's; `None` when the loss does not depend
    /// on it.
    pub fn grad_f32(&self, param: TensorId) -> Result<Option<Cow<'_, [f32]>>> {
        let graph = self.graph.ok_or(Error::NotAllocated {
            op: "reading gradients",
        })?;
        if !self.has_backward || !self.param_ids.contains(&param) {
            return Err(Error::Gradients(
                "no gradient: not a parameter of a graph with gradients",
            ));
        }
        let p = self.raw(param)?;
        // SAFETY: live graph and tensor. The gradient is checked to be an allocated contiguous
        // f32 tensor with the parameter's element count before it is read: viewed as a slice in
        // host memory, copied with ggml_backend_tensor_get (exactly its bytes) otherwise. It was
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
            {
                return Err(Error::Shape {
                    op: "grad_f32",
                    detail: "the gradient is not an allocated contiguous f32 tensor".into(),
                });
            }
            if !sys::ggml_backend_buffer_is_host(g.buffer) {
                let mut out = vec![0.0f32; n];
                sys::ggml_backend_tensor_get(grad, out.as_mut_ptr().cast(), 0, n * 4);
                return Ok(Some(Cow::Owned(out)));
            }
            Ok(Some(Cow::Borrowed(std::slice::from_raw_parts(
                g.data as *const f32,
                n,
            ))))
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
    fn a_split_graph_computes_what_the_whole_graph_does() {
        // loss = sum(W2 rms_norm(W1 x) ⊙ G) with G set between the parts: the split computation
        // must give the gradients of the whole one, and G may not be read early.
        let (k, n, m) = (6usize, 4usize, 3usize);
        let w1: Vec<f32> = (0..k * k).map(|i| (i as f32 * 0.21).sin()).collect();
        let w2: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.13).cos()).collect();
        let x: Vec<f32> = (0..k * m).map(|i| (i as f32 * 0.17).sin()).collect();
        let gm: Vec<f32> = (0..n * m).map(|i| (i as f32 * 0.7).cos()).collect();
        let params = store(&[
            ("w1", vec![k as i64, k as i64], w1),
            ("w2", vec![k as i64, n as i64], w2),
        ]);
        let mut backend = Backend::new(2).unwrap();
        let mut results = Vec::new();
        for split in [false, true] {
            let mut g = Graph::with_gradients(32).unwrap();
            let t1 = g.param(&params, "w1").unwrap();
            let t2 = g.param(&params, "w2").unwrap();
            let tx = g.input(GgmlType::F32, &[k as i64, m as i64]).unwrap();
            let tg = g.input(GgmlType::F32, &[n as i64, m as i64]).unwrap();
            let h = g.mul_mat(t1, tx).unwrap();
            let h = g.rms_norm(h, 1e-6).unwrap();
            let y = g.mul_mat(t2, h).unwrap();
            let prod = g.mul(y, tg).unwrap();
            let loss = g.sum(prod).unwrap();
            g.allocate_with_gradients(&[y, prod], loss, &backend)
                .unwrap();
            assert!(g.split_after(h, &[]).is_err(), "h is not an output");
            assert!(
                g.split_after(prod, &[tg]).is_err(),
                "the product reads G: not in the first part"
            );
            g.set_f32(tx, &x).unwrap();
            if split {
                assert!(
                    g.compute_gradients_rest(&mut backend).is_err(),
                    "not split yet"
                );
                g.split_after(y, &[tg]).unwrap();
                assert!(
                    g.compute_gradients_rest(&mut backend).is_err(),
                    "first part first"
                );
                g.compute_gradients_first(&mut backend).unwrap();
                let early = g.read_f32(y).unwrap().to_vec();
                g.set_f32(tg, &gm).unwrap();
                g.compute_gradients_rest(&mut backend).unwrap();
                assert_eq!(early, g.read_f32(y).unwrap(), "y is kept for reading");
            } else {
                g.set_f32(tg, &gm).unwrap();
                g.compute_gradients(&mut backend).unwrap();
            }
            let grads: Vec<Vec<f32>> = [t1, t2]
                .iter()
                .map(|&t| g.grad_f32(t).unwrap().unwrap().to_vec())
                .collect();
            assert!(grads.iter().flatten().any(|&v| v != 0.0));
            results.push(grads);
        }
        assert_eq!(results[0], results[1], "the same gradients, bit for bit");
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
