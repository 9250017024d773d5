//! Scoring logits where they are computed (on a GPU, so that only a few numbers per row come
//! back to the host): the graph operations such a device graph is made of (row maxima, top-k
//! candidates, element-wise maths, row sums) and [`RowSummary`], what it hands back per row.
//! The sampling rules that turn a summary into a token (Dream's filters and confidences) are
//! model logic and live with the model (`unmask_runtime::sampler`).

use super::{Graph, TensorId};
use crate::{Error, Result};
use llama_cpp_sys_2 as sys;

/// What a device returns for one logits row instead of the row itself: the argmax, the softmax
/// denominator, the negative entropy and the `K` largest logits. Only what the filter and the
/// confidence use must be set: `best_token` and `neg_entropy` for greedy rows without a filter
/// (the entropy only for the negative-entropy confidence), `candidates` for filtered rows and for
/// the margin confidence.
#[derive(Clone, Copy, Debug)]
pub struct RowSummary<'a> {
    /// Index of the largest logit (first on ties where the device guarantees it).
    pub best_token: u32,
    /// The largest raw logit.
    pub best_logit: f32,
    /// `sum(exp(l / t - max / t))` over the whole row (`t` = temperature, 1 when greedy).
    pub sum: f64,
    /// `sum(p * ln(p + 1e-10))` of the unfiltered softmax at temperature 1 (greedy rows).
    pub neg_entropy: f32,
    /// The `K` largest raw logits with their token ids, in any order.
    pub candidates: &'a [(f32, u32)],
    /// Size of the vocabulary (when `candidates` cover it, they are the whole row).
    pub n_vocab: usize,
}

impl Graph {
    fn check_matrix(&self, a: TensorId, op: &'static str) -> Result<[i64; 4]> {
        let s = self.shape(a)?;
        if s[2] != 1 || s[3] != 1 || self.type_of(a)? != sys::GGML_TYPE_F32 {
            return Err(Error::Shape {
                op,
                detail: format!("needs an f32 matrix, got {s:?}"),
            });
        }
        Ok(s)
    }

    /// Index of the largest value of each row: `[n, rows]` -> i32 `[rows]`.
    pub fn argmax(&mut self, a: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let s = self.check_matrix(a, "argmax")?;
        if s[0] > i64::from(i32::MAX) {
            return Err(Error::Shape {
                op: "argmax",
                detail: format!("rows of {} values are too long for i32 indices", s[0]),
            });
        }
        // SAFETY: an f32 matrix, as ggml_argmax asserts.
        let raw = unsafe { sys::ggml_argmax(ctx, self.raw(a)?) };
        self.push(raw)
    }

    /// Indices of the `k` largest values of each row, in no particular order: `[n, rows]` ->
    /// i32 `[k, rows]`.
    pub fn top_k(&mut self, a: TensorId, k: usize) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let s = self.check_matrix(a, "top_k")?;
        if k == 0 || k as i64 > s[0] {
            return Err(Error::Shape {
                op: "top_k",
                detail: format!("top {k} of rows of {} values", s[0]),
            });
        }
        // SAFETY: 1 <= k <= row length, as ggml_top_k asserts.
        let raw = unsafe { sys::ggml_top_k(ctx, self.raw(a)?, k as i32) };
        self.push(raw)
    }

    /// Values of `a` `[n, rows]` at the i32 column indices `ids` `[k, rows]` (row `r` of the
    /// result reads row `r` of `a`): `[k, rows]`.
    pub fn gather(&mut self, a: TensorId, ids: TensorId) -> Result<TensorId> {
        let sa = self.check_matrix(a, "gather")?;
        let si = self.shape(ids)?;
        if self.type_of(ids)? != sys::GGML_TYPE_I32 || si[1] != sa[1] || si[2] != 1 || si[3] != 1 {
            return Err(Error::Shape {
                op: "gather",
                detail: format!("values {sa:?} and i32 indices {si:?} do not fit"),
            });
        }
        // Each row becomes a batch of one-element rows, so ggml_get_rows picks elements.
        let a3 = self.reshape(a, &[1, sa[0], sa[1]])?;
        let ctx = self.ctx_for_new()?;
        // SAFETY: a [1, n, rows] and i32 ids [k, rows]: ne2 of `a3` equals ne1 of `ids`, as
        // ggml_get_rows asserts; the result is [1, k, rows].
        let raw = unsafe { sys::ggml_get_rows(ctx, self.raw(a3)?, self.raw(ids)?) };
        let picked = self.push(raw)?;
        self.reshape(picked, &[si[0], sa[1]])
    }

    fn binary_broadcast(
        &mut self,
        a: TensorId,
        b: TensorId,
        op: &'static str,
        f: unsafe extern "C" fn(
            *mut sys::ggml_context,
            *mut sys::ggml_tensor,
            *mut sys::ggml_tensor,
        ) -> *mut sys::ggml_tensor,
    ) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        self.check_broadcast(a, b, op)?;
        // SAFETY: `b` repeats into `a` (checked), as ggml's binary ops assert.
        let raw = unsafe { f(ctx, self.raw(a)?, self.raw(b)?) };
        self.push(raw)
    }

    /// `a - b`, `b` broadcast over `a` (e.g. one value per row).
    pub fn sub(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        self.binary_broadcast(a, b, "sub", sys::ggml_sub)
    }

    /// `a / b`, `b` broadcast over `a`.
    pub fn div(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        self.binary_broadcast(a, b, "div", sys::ggml_div)
    }

    /// Element-wise `e^a`.
    pub fn exp(&mut self, a: TensorId) -> Result<TensorId> {
        self.unary(a, sys::ggml_exp)
    }

    /// Element-wise natural logarithm.
    pub fn ln(&mut self, a: TensorId) -> Result<TensorId> {
        self.unary(a, sys::ggml_log)
    }

    /// Sum of each row: `[n, rows]` -> `[1, rows]`.
    pub fn sum_rows(&mut self, a: TensorId) -> Result<TensorId> {
        self.unary(a, sys::ggml_sum_rows)
    }

    /// Element-wise `a * scale + bias`.
    pub fn scale_bias(&mut self, a: TensorId, scale: f32, bias: f32) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        // SAFETY: accepts any f32 tensor.
        let raw = unsafe { sys::ggml_scale_bias(ctx, self.raw(a)?, scale, bias) };
        self.push(raw)
    }
}
