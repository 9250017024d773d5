//! The forward operations of a [`Graph`]: inputs combined by ggml's element-wise, matrix,
//! normalisation, rotary and attention operations. Each method checks the shapes and types
//! ggml asserts on (so misuse is an [`Error`], not an abort) and adds one node (a few for
//! [`Graph::attention_explicit`]) to the graph under construction.

use super::{Graph, TensorId};
use crate::{Error, Result};
use llama_cpp_sys_2 as sys;

/// ggml's GGML_ROPE_TYPE_NEOX: rotate the two halves of each head against each other.
const ROPE_TYPE_NEOX: i32 = 2;

impl Graph {
    /// Rows of `a` picked by the i32 indices in `ids`: `[n0, n1]` x `[n]` -> `[n0, n]`.
    pub fn get_rows(&mut self, a: TensorId, ids: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sa, si) = (self.shape(a)?, self.shape(ids)?);
        if self.type_of(ids)? != sys::GGML_TYPE_I32 || si[1] != 1 || sa[2] != 1 {
            return Err(Error::Shape {
                op: "get_rows",
                detail: format!("needs a matrix and an i32 vector, got {sa:?} and {si:?}"),
            });
        }
        // SAFETY: shapes and types checked as ggml_get_rows asserts them.
        let raw = unsafe { sys::ggml_get_rows(ctx, self.raw(a)?, self.raw(ids)?) };
        self.push(raw)
    }

    /// RMS normalisation over rows (no weight).
    pub fn rms_norm(&mut self, a: TensorId, eps: f32) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        // SAFETY: any f32 tensor is accepted by ggml_rms_norm.
        let raw = unsafe { sys::ggml_rms_norm(ctx, self.raw(a)?, eps) };
        self.push(raw)
    }

    pub(super) fn check_broadcast(&self, a: TensorId, b: TensorId, op: &'static str) -> Result<()> {
        let (sa, sb) = (self.shape(a)?, self.shape(b)?);
        if sa.iter().zip(&sb).any(|(x, y)| x % y != 0) {
            return Err(Error::Shape {
                op,
                detail: format!("{sb:?} does not broadcast onto {sa:?}"),
            });
        }
        Ok(())
    }

    /// Element-wise `a * b`, `b` broadcast over `a`.
    pub fn mul(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        self.check_broadcast(a, b, "mul")?;
        // SAFETY: ggml_can_repeat(b, a) checked above.
        let raw = unsafe { sys::ggml_mul(ctx, self.raw(a)?, self.raw(b)?) };
        self.push(raw)
    }

    /// Element-wise `a + b`, `b` broadcast over `a`.
    pub fn add(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        self.check_broadcast(a, b, "add")?;
        // SAFETY: ggml_can_repeat(b, a) checked above.
        let raw = unsafe { sys::ggml_add(ctx, self.raw(a)?, self.raw(b)?) };
        self.push(raw)
    }

    /// `a @ b` in ggml's convention: a [k, n, h], b [k, m, h*r] -> [n, m, h*r] (a broadcast).
    pub fn mul_mat(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sa, sb) = (self.shape(a)?, self.shape(b)?);
        if sa[0] != sb[0] || sb[2] % sa[2] != 0 || sb[3] % sa[3] != 0 {
            return Err(Error::Shape {
                op: "mul_mat",
                detail: format!("cannot multiply shapes {sa:?} and {sb:?}"),
            });
        }
        // SAFETY: ggml_can_mul_mat holds (checked above).
        let raw = unsafe { sys::ggml_mul_mat(ctx, self.raw(a)?, self.raw(b)?) };
        self.push(raw)
    }

    /// A contiguous tensor viewed with another shape of the same element count.
    pub fn reshape(&mut self, a: TensorId, shape: &[i64]) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let sa = self.shape(a)?;
        let count: i64 = sa.iter().product();
        if !self.is_contiguous(a)?
            || shape.iter().product::<i64>() != count
            || !(2..=4).contains(&shape.len())
        {
            return Err(Error::Shape {
                op: "reshape",
                detail: format!("cannot reshape {sa:?} to {shape:?}"),
            });
        }
        let raw = self.raw(a)?;
        // SAFETY: contiguous source with the same element count.
        let out = unsafe {
            match shape.len() {
                2 => sys::ggml_reshape_2d(ctx, raw, shape[0], shape[1]),
                3 => sys::ggml_reshape_3d(ctx, raw, shape[0], shape[1], shape[2]),
                _ => sys::ggml_reshape_4d(ctx, raw, shape[0], shape[1], shape[2], shape[3]),
            }
        };
        self.push(out)
    }

    /// Dimension `i` of `a` becomes dimension `axes[i]` of the result (a strided view).
    pub fn permute(&mut self, a: TensorId, axes: [i32; 4]) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let mut seen = [false; 4];
        for &x in &axes {
            if !(0..4).contains(&x) || std::mem::replace(&mut seen[x as usize], true) {
                return Err(Error::Shape {
                    op: "permute",
                    detail: format!("invalid permutation {axes:?}"),
                });
            }
        }
        // SAFETY: a valid permutation of the four axes.
        let raw =
            unsafe { sys::ggml_permute(ctx, self.raw(a)?, axes[0], axes[1], axes[2], axes[3]) };
        self.push(raw)
    }

    /// `f(a)` for a ggml operation of one tensor that accepts any tensor.
    pub(super) fn unary(
        &mut self,
        a: TensorId,
        f: unsafe extern "C" fn(
            *mut sys::ggml_context,
            *mut sys::ggml_tensor,
        ) -> *mut sys::ggml_tensor,
    ) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        // SAFETY: only used with ggml operations that accept any tensor of a live context.
        let raw = unsafe { f(ctx, self.raw(a)?) };
        self.push(raw)
    }

    /// `a` and `b` joined along dimension `dim` (0..4): every other dimension and the type must
    /// agree. The result is a new contiguous tensor.
    pub fn concat(&mut self, a: TensorId, b: TensorId, dim: usize) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sa, sb) = (self.shape(a)?, self.shape(b)?);
        let fits = dim < 4
            && self.type_of(a)? == self.type_of(b)?
            && (0..4).all(|d| d == dim || sa[d] == sb[d]);
        if !fits {
            return Err(Error::Shape {
                op: "concat",
                detail: format!("along {dim}: {sa:?} and {sb:?} do not fit"),
            });
        }
        // SAFETY: same type, all dimensions but `dim` equal, as ggml_concat asserts.
        let raw = unsafe { sys::ggml_concat(ctx, self.raw(a)?, self.raw(b)?, dim as i32) };
        self.push(raw)
    }

    /// A contiguous copy of a (possibly strided) tensor.
    pub fn cont(&mut self, a: TensorId) -> Result<TensorId> {
        self.unary(a, sys::ggml_cont)
    }

    /// NeoX-style ("rotate half") rotary embedding of `a` [head_dim, heads, tokens] at the i32
    /// `positions` `[tokens]`, with base `theta` and no scaling.
    pub fn rope_neox(
        &mut self,
        a: TensorId,
        positions: TensorId,
        theta: f32,
        n_ctx_orig: i32,
    ) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sa, sp) = (self.shape(a)?, self.shape(positions)?);
        if self.type_of(positions)? != sys::GGML_TYPE_I32 || sp[0] != sa[2] || sa[0] % 2 != 0 {
            return Err(Error::Shape {
                op: "rope_neox",
                detail: format!("tensor {sa:?} and positions {sp:?} do not fit"),
            });
        }
        // SAFETY: positions is an i32 vector with one entry per token and n_dims = head_dim is
        // even; the remaining arguments are ggml's "no scaling" values.
        let raw = unsafe {
            sys::ggml_rope_ext(
                ctx,
                self.raw(a)?,
                self.raw(positions)?,
                std::ptr::null_mut(),
                sa[0] as i32,
                ROPE_TYPE_NEOX,
                n_ctx_orig,
                theta,
                1.0,
                0.0,
                1.0,
                0.0,
                0.0,
            )
        };
        self.push(raw)
    }

    /// Row-wise softmax of `a * scale`, without mask.
    pub fn soft_max(&mut self, a: TensorId, scale: f32) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        // SAFETY: no mask, so no shape constraints beyond a valid tensor.
        let raw =
            unsafe { sys::ggml_soft_max_ext(ctx, self.raw(a)?, std::ptr::null_mut(), scale, 0.0) };
        self.push(raw)
    }

    /// Row-wise softmax of `a * scale + mask`: `mask` (f32, `[a0, a1]` or `[a0, a1, 1, a3]`,
    /// broadcast over dimension 2 and, when 1, dimension 3) is added to the scaled scores,
    /// `-inf` to exclude an entry. The mask is a constant: it takes no gradient.
    pub fn soft_max_masked(&mut self, a: TensorId, mask: TensorId, scale: f32) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sa, sm) = (self.shape(a)?, self.shape(mask)?);
        if self.type_of(mask)? != sys::GGML_TYPE_F32
            || sm[0] != sa[0]
            || sm[1] < sa[1]
            || sa[2] % sm[2] != 0
            || sa[3] % sm[3] != 0
        {
            return Err(Error::Shape {
                op: "soft_max_masked",
                detail: format!("mask {sm:?} does not fit scores {sa:?}"),
            });
        }
        // SAFETY: an f32 mask of the shape ggml_soft_max_ext asserts; no ALiBi (max_bias 0).
        let raw = unsafe { sys::ggml_soft_max_ext(ctx, self.raw(a)?, self.raw(mask)?, scale, 0.0) };
        self.push(raw)
    }

    /// `a` tiled to `shape` (each dimension of `a` divides the target's): element `i` of the
    /// result is `a[i mod a.shape]` in every dimension. Its gradient sums the tiles.
    pub fn repeat(&mut self, a: TensorId, shape: [i64; 4]) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let sa = self.shape(a)?;
        if shape.iter().zip(&sa).any(|(&n, &m)| n <= 0 || n % m != 0) {
            return Err(Error::Shape {
                op: "repeat",
                detail: format!("{sa:?} does not tile {shape:?}"),
            });
        }
        // SAFETY: every target dimension is a positive multiple of the source's.
        let raw = unsafe {
            sys::ggml_repeat_4d(ctx, self.raw(a)?, shape[0], shape[1], shape[2], shape[3])
        };
        self.push(raw)
    }

    /// ggml's cross-entropy loss: `-sum(b ⊙ log_softmax(a)) / rows(a)` over the rows of `a`
    /// (log-sum-exp with the row maximum subtracted, no underflow), a one-element f32 tensor.
    /// `b` has `a`'s shape; rows of `b` need not sum to 1 (a weighted negative log-likelihood).
    pub fn cross_entropy_loss(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sa, sb) = (self.shape(a)?, self.shape(b)?);
        if sa != sb
            || self.type_of(a)? != sys::GGML_TYPE_F32
            || self.type_of(b)? != sys::GGML_TYPE_F32
        {
            return Err(Error::Shape {
                op: "cross_entropy_loss",
                detail: format!("needs two f32 tensors of one shape, got {sa:?} and {sb:?}"),
            });
        }
        // SAFETY: same-shape f32 tensors, as ggml_cross_entropy_loss asserts.
        let raw = unsafe { sys::ggml_cross_entropy_loss(ctx, self.raw(a)?, self.raw(b)?) };
        self.push(raw)
    }

    /// Attention without mask, fused (ggml's flash attention: online softmax, no score matrix):
    /// q [d, tokens, heads], k and v [d, keys, kv_heads] (heads a multiple of kv_heads, which are
    /// shared by consecutive groups of query heads) -> [d, heads, tokens].
    pub fn attention(
        &mut self,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        scale: f32,
    ) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        self.check_attention("attention", q, k, v)?;
        // SAFETY: shapes checked as ggml_flash_attn_ext asserts them; no mask, no ALiBi, no
        // soft-capping.
        let raw = unsafe {
            sys::ggml_flash_attn_ext(
                ctx,
                self.raw(q)?,
                self.raw(k)?,
                self.raw(v)?,
                std::ptr::null_mut(),
                scale,
                0.0,
                0.0,
            )
        };
        self.push(raw)
    }

    /// The shape rules of [`attention`](Self::attention) (ggml_flash_attn_ext's asserts).
    fn check_attention(
        &self,
        op: &'static str,
        q: TensorId,
        k: TensorId,
        v: TensorId,
    ) -> Result<()> {
        let (sq, sk, sv) = (self.shape(q)?, self.shape(k)?, self.shape(v)?);
        if sq[0] != sk[0]
            || sk != sv
            || sk[2] == 0
            || sq[2] % sk[2] != 0
            || sq[3] != 1
            || sk[3] != 1
        {
            return Err(Error::Shape {
                op,
                detail: format!("q {sq:?}, k {sk:?}, v {sv:?} do not fit"),
            });
        }
        Ok(())
    }

    /// The sum of all elements of a tensor: shape `[1]`.
    pub fn sum(&mut self, a: TensorId) -> Result<TensorId> {
        self.unary(a, sys::ggml_sum)
    }

    /// Swaps dimensions 0 and 1 (a strided view).
    pub fn transpose(&mut self, a: TensorId) -> Result<TensorId> {
        self.unary(a, sys::ggml_transpose)
    }

    /// Attention written out with differentiable operations (ggml's flash attention has no
    /// backward pass): `softmax(scale * K^T Q + mask)` per head, then `V` times it. q
    /// `[d, tokens, heads, B]`, k and v `[d, keys, kv_heads, B]` (consecutive groups of query
    /// heads share a K/V head; `B` independent sequences, 1 for the shapes of
    /// [`attention`](Self::attention)) -> `[d, heads, tokens, B]`, contiguous. `mask` (f32
    /// `[keys, tokens, 1, B]`, or `None` for none) is added to the scaled scores: `-inf` hides a
    /// key from a query.
    pub fn attention_explicit(
        &mut self,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        scale: f32,
        mask: Option<TensorId>,
    ) -> Result<TensorId> {
        let (sq, sk, sv) = (self.shape(q)?, self.shape(k)?, self.shape(v)?);
        if sq[0] != sk[0] || sk != sv || sk[2] == 0 || sq[2] % sk[2] != 0 || sq[3] != sk[3] {
            return Err(Error::Shape {
                op: "attention_explicit",
                detail: format!("q {sq:?}, k {sk:?}, v {sv:?} do not fit"),
            });
        }
        let (k, v) = if sq[3] > 1 && sq[2] != sk[2] {
            // ggml's backward pass of a product broadcast over heads needs dimension 3 to be 1:
            // with a batch, each K/V head is repeated for its group of query heads instead.
            let group = sq[2] / sk[2];
            let spread = |g: &mut Graph, t: TensorId| -> Result<TensorId> {
                let t = g.cont(t)?; // [d, keys, kv_heads, B]
                let t = g.reshape(t, &[sk[0] * sk[1], 1, sk[2], sk[3]])?;
                let t = g.repeat(t, [sk[0] * sk[1], group, sk[2], sk[3]])?;
                // Head j + group * h reads K/V head h: consecutive query heads share one.
                g.reshape(t, &[sk[0], sk[1], sq[2], sk[3]])
            };
            (spread(self, k)?, spread(self, v)?)
        } else {
            (k, v)
        };
        let scores = self.mul_mat(k, q)?; // [keys, tokens, heads, B]
        let probs = match mask {
            Some(m) => self.soft_max_masked(scores, m, scale)?,
            None => self.soft_max(scores, scale)?,
        };
        let vt = self.transpose(v)?; // [keys, d, kv_heads, B]
        let vt = self.cont(vt)?;
        let out = self.mul_mat(vt, probs)?; // [d, tokens, heads, B]
        let out = self.permute(out, [0, 2, 1, 3])?; // [d, heads, tokens, B]
        self.cont(out)
    }

    /// `silu(gate) * up` (SwiGLU), element-wise on equal shapes.
    pub fn swiglu(&mut self, gate: TensorId, up: TensorId) -> Result<TensorId> {
        let ctx = self.ctx_for_new()?;
        let (sg, su) = (self.shape(gate)?, self.shape(up)?);
        if sg != su {
            return Err(Error::Shape {
                op: "swiglu",
                detail: format!("needs equal shapes, got {sg:?} and {su:?}"),
            });
        }
        // SAFETY: equal shapes, as ggml_swiglu_split asserts.
        let raw = unsafe { sys::ggml_swiglu_split(ctx, self.raw(gate)?, self.raw(up)?) };
        self.push(raw)
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::Backend;
    use crate::graph::Graph;
    use crate::GgmlType;

    #[test]
    fn f32_matmul_matches_a_naive_product() {
        let (k, n, m) = (64, 3, 2);
        let a: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * m).map(|i| (i % 5) as f32 * 0.5).collect();
        let mut backend = Backend::new(2).unwrap();
        let mut g = Graph::new(8).unwrap();
        let ta = g.input(GgmlType::F32, &[k as i64, n as i64]).unwrap();
        let tb = g.input(GgmlType::F32, &[k as i64, m as i64]).unwrap();
        let tc = g.mul_mat(ta, tb).unwrap();
        g.allocate(&[tc], &backend).unwrap();
        g.set_f32(ta, &a).unwrap();
        g.set_f32(tb, &b).unwrap();
        g.compute(&mut backend).unwrap();
        let c = g.read_f32(tc).unwrap();
        for j in 0..m {
            for i in 0..n {
                let want: f32 = (0..k).map(|x| a[i * k + x] * b[j * k + x]).sum();
                assert!((c[j * n + i] - want).abs() < 1e-3, "{i},{j}");
            }
        }
    }

    #[test]
    fn explicit_attention_equals_flash_attention() {
        let (d, t, heads, kv) = (8i64, 5i64, 4i64, 2i64);
        let mut backend = Backend::new(2).unwrap();
        let mut outs = Vec::new();
        for explicit in [false, true] {
            let mut g = Graph::new(32).unwrap();
            let q = g.input(GgmlType::F32, &[d, heads, t]).unwrap();
            let k = g.input(GgmlType::F32, &[d, kv, t]).unwrap();
            let v = g.input(GgmlType::F32, &[d, kv, t]).unwrap();
            let qp = g.permute(q, [0, 2, 1, 3]).unwrap();
            let kp = g.permute(k, [0, 2, 1, 3]).unwrap();
            let vp = g.permute(v, [0, 2, 1, 3]).unwrap();
            let out = if explicit {
                g.attention_explicit(qp, kp, vp, 0.3, None).unwrap()
            } else {
                g.attention(qp, kp, vp, 0.3).unwrap()
            };
            g.allocate(&[out], &backend).unwrap();
            let fill =
                |n: i64, s: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * s).sin()).collect() };
            g.set_f32(q, &fill(d * heads * t, 0.31)).unwrap();
            g.set_f32(k, &fill(d * kv * t, 0.17)).unwrap();
            g.set_f32(v, &fill(d * kv * t, 0.23)).unwrap();
            g.compute(&mut backend).unwrap();
            assert_eq!(g.shape(out).unwrap(), [d, heads, t, 1]);
            outs.push(g.read_f32(out).unwrap().to_vec());
        }
        for (a, b) in outs[0].iter().zip(&outs[1]) {
            // Flash attention rounds its V accumulation through f16.
            assert!((a - b).abs() < 2e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn batched_masked_attention_equals_each_sequence_alone() {
        // Two sequences in one batch, the second with its last two keys hidden (padding):
        // each must get what attention over its own visible keys gives.
        let (d, t, heads, kv, batch) = (8i64, 5i64, 4i64, 2i64, 2i64);
        let visible = [5usize, 3];
        let fill = |n: i64, s: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * s).sin()).collect() };
        let (qv, kvv, vv) = (
            fill(d * heads * t * batch, 0.31),
            fill(d * kv * t * batch, 0.17),
            fill(d * kv * t * batch, 0.23),
        );
        let mut backend = Backend::new(2).unwrap();
        let mut g = Graph::new(64).unwrap();
        let q = g.input(GgmlType::F32, &[d, heads, t, batch]).unwrap();
        let k = g.input(GgmlType::F32, &[d, kv, t, batch]).unwrap();
        let v = g.input(GgmlType::F32, &[d, kv, t, batch]).unwrap();
        let mask = g.input(GgmlType::F32, &[t, t, 1, batch]).unwrap();
        let qp = g.permute(q, [0, 2, 1, 3]).unwrap();
        let kp = g.permute(k, [0, 2, 1, 3]).unwrap();
        let vp = g.permute(v, [0, 2, 1, 3]).unwrap();
        let out = g.attention_explicit(qp, kp, vp, 0.3, Some(mask)).unwrap();
        g.allocate(&[out], &backend).unwrap();
        let mut m = vec![0.0f32; (t * t * batch) as usize];
        for (b, &n) in visible.iter().enumerate() {
            for row in m[b * 25..(b + 1) * 25].chunks_mut(t as usize) {
                row[n..].fill(f32::NEG_INFINITY);
            }
        }
        g.set_f32(q, &qv).unwrap();
        g.set_f32(k, &kvv).unwrap();
        g.set_f32(v, &vv).unwrap();
        g.set_f32(mask, &m).unwrap();
        g.compute(&mut backend).unwrap();
        assert_eq!(g.shape(out).unwrap(), [d, heads, t, batch]);
        let batched = g.read_f32(out).unwrap().to_vec();
        // Naive attention per sequence, query head h reading K/V head h / (heads / kv).
        let (du, hu, tu, ku) = (d as usize, heads as usize, t as usize, kv as usize);
        for (b, &n) in visible.iter().enumerate() {
            for h in 0..hu {
                let kh = h / (hu / ku);
                for qi in 0..tu {
                    let qrow = &qv[((b * tu + qi) * hu + h) * du..][..du];
                    let key = |j: usize| &kvv[((b * tu + j) * ku + kh) * du..][..du];
                    let val = |j: usize| &vv[((b * tu + j) * ku + kh) * du..][..du];
                    let s: Vec<f32> = (0..n)
                        .map(|j| 0.3 * qrow.iter().zip(key(j)).map(|(a, c)| a * c).sum::<f32>())
                        .collect();
                    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for c in 0..du {
                        let want: f32 = (0..n).map(|j| e[j] / z * val(j)[c]).sum();
                        let got = batched[((b * tu + qi) * hu + h) * du + c];
                        assert!(
                            (got - want).abs() < 1e-5,
                            "b{b} h{h} q{qi} c{c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn shape_errors_do_not_reach_ggml_asserts() {
        let mut g = Graph::new(8).unwrap();
        let a = g.input(GgmlType::F32, &[8, 2]).unwrap();
        let b = g.input(GgmlType::F32, &[9, 2]).unwrap();
        assert!(g.mul_mat(a, b).is_err());
        assert!(g.add(a, b).is_err());
        assert!(g.input(GgmlType::Q4_K, &[100, 2]).is_err());
        assert!(g.input(GgmlType::F32, &[0]).is_err());
        assert!(g.permute(a, [0, 0, 1, 2]).is_err());
        assert!(g.reshape(a, &[5, 3]).is_err());
        assert!(g.set_f32(a, &[0.0; 16]).is_err(), "data before allocation");
    }
}
