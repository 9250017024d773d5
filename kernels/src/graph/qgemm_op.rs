//! [`qgemm`](crate::simd::qgemm) as ggml graph operations (ggml custom ops run by the backend's
//! thread pool): `W x` for q8_0, q5_0, q4_0 or q4_K weights, faster than ggml's `mul_mat` on the
//! 0.5B model's layer shapes on an AVX2 CPU without VNNI by about 1.7x (q8_0), 2.6x (q5_0) and
//! 2.1x (q4_0) per layer on one thread (`cargo bench -p unmask-kernels --bench qgemm`).
//!
//! The "q8" in the names refers to the activations: like ggml's own `mul_mat` for these weight
//! types, the f32 activations are quantized to ggml's q8_0 (int8 with one scale per 32 values);
//! the weights may be any of [`qgemm::WeightType`] (q8_0, q5_0, q4_0, q4_K).
//!
//! Two nodes per product: [`Graph::quantize_q8`] quantizes the f32 activations (in parallel, by
//! columns) into an int8 tensor, [`Graph::mul_mat_q8_quantized`] multiplies (in parallel, by
//! groups of 8 weight rows). The quantized activations can be shared by several products of the
//! same input (q/k/v, gate/up), whatever their weight types. [`Graph::mul_mat_q8`] does both,
//! and [`Graph::mul_mat_q8_or_ggml`] falls back to ggml's `mul_mat` where the fast path does not
//! apply. The weights are read in ggml's own block layout (e.g. straight from the memory-mapped
//! file): no repacked copy.

use super::{Graph, TensorId};
use crate::simd::qgemm::{self, Path, WeightType};
use crate::{Error, GgmlType, Result};
use llama_cpp_sys_2 as sys;
use std::os::raw::{c_int, c_void};

/// Quantized activations: columns of [`qgemm::xq_stride`] bytes, as an I8 tensor.
const XQ_TYPE: sys::ggml_type = sys::GGML_TYPE_I8;
/// ggml's GGML_N_TASKS_MAX (a macro the bindings lack): one task per thread of the pool.
const N_TASKS_MAX: c_int = -1;

impl Graph {
    /// Quantizes f32 activations `x` `[k, m]` (rows contiguous, `k` a multiple of 32) for
    /// [`mul_mat_q8_quantized`](Self::mul_mat_q8_quantized): an I8 tensor
    /// `[qgemm::xq_stride(k), m]` holding ggml's q8_0 values and scales of every column.
    pub fn quantize_q8(&mut self, x: TensorId) -> Result<TensorId> {
        self.check_custom()?;
        let raw = self.raw(x)?;
        // SAFETY: `raw` is a live tensor of this graph.
        let (ty, ne, nb) = unsafe { ((*raw).type_, (*raw).ne, (*raw).nb) };
        if ty != sys::GGML_TYPE_F32
            || ne[0] % qgemm::QK8_0 as i64 != 0
            || ne[2] != 1
            || ne[3] != 1
            || nb[0] != 4
            || nb[1] % 4 != 0
        {
            return Err(Error::Shape {
                op: "quantize_q8",
                detail: format!(
                    "needs an f32 matrix with contiguous rows of whole 32-blocks, got {ne:?} \
                     (type {ty})"
                ),
            });
        }
        let stride = qgemm::xq_stride(ne[0] as usize) as i64;
        self.push_new(|ctx| {
            let mut args = [raw];
            // SAFETY: one argument, the callback reads only the tensors it is given (see
            // `quantize_op`); the result is a new I8 tensor of the context.
            unsafe {
                sys::ggml_custom_4d(
                    ctx,
                    XQ_TYPE,
                    stride,
                    ne[1],
                    1,
                    1,
                    args.as_mut_ptr(),
                    1,
                    Some(quantize_op),
                    N_TASKS_MAX,
                    std::ptr::null_mut(),
                )
            }
        })
    }

    /// `w x` for a q8_0, q5_0, q4_0 or q4_K weight `w` `[k, n]` (2-D, contiguous, in host memory)
    /// and activations quantized by [`quantize_q8`](Self::quantize_q8): f32 `[n, m]`, as
    /// `mul_mat(w, x)`. Only for graphs computed on the CPU backend.
    pub fn mul_mat_q8_quantized(&mut self, w: TensorId, xq: TensorId) -> Result<TensorId> {
        self.check_custom()?;
        let (rw, rx) = (self.raw(w)?, self.raw(xq)?);
        // SAFETY: live tensors of this graph; a custom op's first source, when set, is live
        // too, and its op parameters start with the callback (ggml's ggml_custom_op_params).
        let (wt, wne, xt, xne, x_op, x_fun, x_k, w_contiguous) = unsafe {
            let src = (*rx).src[0];
            (
                (*rw).type_,
                (*rw).ne,
                (*rx).type_,
                (*rx).ne,
                (*rx).op,
                (*rx).op_params.as_ptr().cast::<usize>().read_unaligned(),
                if src.is_null() { -1 } else { (*src).ne[0] },
                sys::ggml_is_contiguous(rw),
            )
        };
        if weight_type(wt).is_none() || !w_contiguous || wne[2] != 1 || wne[3] != 1 {
            return Err(Error::Shape {
                op: "mul_mat_q8",
                detail: format!(
                    "needs a contiguous 2-D q8_0, q5_0, q4_0 or q4_K weight, got {wne:?} (type {wt})"
                ),
            });
        }
        // SAFETY: `rw` is a live tensor of this graph.
        if !unsafe { in_host_memory(rw) } {
            return Err(Error::UnsupportedOp {
                op: "mul_mat_q8",
                context: "on a weight in device memory",
                hint: "it runs on the CPU (mul_mat_q8_or_ggml falls back to mul_mat)",
            });
        }
        // The row length is checked on quantize_q8's input: columns of different lengths can
        // have the same stride (64 and 96 values both take 128 bytes).
        if xt != XQ_TYPE
            || x_op != sys::GGML_OP_CUSTOM
            || x_fun != quantize_op as *const () as usize
            || x_k != wne[0]
            || xne[0] != qgemm::xq_stride(wne[0] as usize) as i64
        {
            return Err(Error::Shape {
                op: "mul_mat_q8",
                detail: format!("{xne:?} is not a quantize_q8 result for rows of {}", wne[0]),
            });
        }
        self.push_new(|ctx| {
            let mut args = [rw, rx];
            // SAFETY: two arguments, the callback reads only the tensors it is given (see
            // `gemm_op`); the result is a new f32 tensor of the context.
            unsafe {
                sys::ggml_custom_4d(
                    ctx,
                    sys::GGML_TYPE_F32,
                    wne[1],
                    xne[1],
                    1,
                    1,
                    args.as_mut_ptr(),
                    2,
                    Some(gemm_op),
                    N_TASKS_MAX,
                    std::ptr::null_mut(),
                )
            }
        })
    }

    /// `w x` for a q8_0, q5_0, q4_0 or q4_K weight `w` `[k, n]` and f32 activations `x`
    /// `[k, m]`: f32 `[n, m]`, in place of `mul_mat(w, x)` (two graph nodes; see the module
    /// documentation).
    pub fn mul_mat_q8(&mut self, w: TensorId, x: TensorId) -> Result<TensorId> {
        let sw = self.shape(w)?;
        let sx = self.shape(x)?;
        if sw[0] != sx[0] {
            return Err(Error::Shape {
                op: "mul_mat_q8",
                detail: format!("cannot multiply shapes {sw:?} and {sx:?}"),
            });
        }
        let xq = self.quantize_q8(x)?;
        self.mul_mat_q8_quantized(w, xq)
    }

    /// Whether [`mul_mat_q8`](Self::mul_mat_q8) applies to `w x` and is worth it: a contiguous
    /// 2-D q8_0, q5_0, q4_0 or q4_K weight in host memory (or not yet allocated), f32 activations
    /// with contiguous rows, a graph without gradients (the custom operations have no backward
    /// pass) and a CPU with AVX2, FMA and F16C. The graph must be computed on the CPU backend
    /// (ggml's GPU backends do not run custom operations); that is not checked here.
    pub fn can_mul_mat_q8(&self, w: TensorId, x: TensorId) -> Result<bool> {
        let (rw, rx) = (self.raw(w)?, self.raw(x)?);
        // SAFETY: live tensors of this graph.
        let ok = unsafe {
            weight_type((*rw).type_).is_some()
                && sys::ggml_is_contiguous(rw)
                && (*rw).ne[2] == 1
                && (*rw).ne[3] == 1
                && (*rx).type_ == sys::GGML_TYPE_F32
                && (*rx).ne[0] == (*rw).ne[0]
                && (*rx).ne[2] == 1
                && (*rx).ne[3] == 1
                && (*rx).nb[0] == 4
                && (*rx).nb[1] % 4 == 0
                && in_host_memory(rw)
        };
        Ok(ok && !self.has_gradients() && qgemm::has_simd())
    }

    /// [`mul_mat_q8`](Self::mul_mat_q8) where [`can_mul_mat_q8`](Self::can_mul_mat_q8), else
    /// ggml's `mul_mat`.
    pub fn mul_mat_q8_or_ggml(&mut self, w: TensorId, x: TensorId) -> Result<TensorId> {
        if self.can_mul_mat_q8(w, x)? {
            self.mul_mat_q8(w, x)
        } else {
            self.mul_mat(w, x)
        }
    }

    fn check_custom(&self) -> Result<()> {
        if self.has_gradients() {
            return Err(Error::UnsupportedOp {
                op: "mul_mat_q8",
                context: "in a graph with gradients",
                hint: "the q8 products have no backward pass; use mul_mat",
            });
        }
        Ok(())
    }
}

/// The kernel's weight format for a ggml type id, if it has one.
fn weight_type(id: sys::ggml_type) -> Option<WeightType> {
    WeightType::from_ggml(GgmlType::from_id(id).ok()?)
}

/// Whether `t`'s memory (if it has any yet) is host memory the CPU can read.
///
/// # Safety
/// `t` must be a live tensor.
unsafe fn in_host_memory(t: *mut sys::ggml_tensor) -> bool {
    // SAFETY: a live tensor (caller's guarantee) whose buffer, when set, is a live ggml buffer.
    unsafe { (*t).buffer.is_null() || sys::ggml_backend_buffer_is_host((*t).buffer) }
}

/// ggml custom op: thread `ith` of `nth` quantizes its share of the columns of `dst->src[0]`.
///
/// # Safety
/// Called by ggml's CPU backend with a tensor built by [`Graph::quantize_q8`] whose memory is
/// allocated.
unsafe extern "C" fn quantize_op(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    _: *mut c_void,
) {
    // SAFETY: `dst` and its source are live, allocated host tensors (ggml computes only
    // allocated graphs on the CPU backend); quantize_q8 checked that x is f32 with contiguous rows
    // of k = ne0 (a multiple of 32) and made dst [xq_stride(k), m]. Columns are read up to the
    // smaller of the two current column counts (which `set_active_rows` may lower), and each
    // thread writes its own disjoint range of dst's columns.
    unsafe {
        let x = (*dst).src[0];
        let k = (*x).ne[0] as usize;
        let m = (*x).ne[1].min((*dst).ne[1]) as usize;
        let (ith, nth) = (ith as usize, nth.max(1) as usize);
        let (c0, c1) = (m * ith / nth, m * (ith + 1) / nth);
        qgemm::quantize_columns_raw(
            Path::Best,
            (*x).data as *const u8,
            (*x).nb[1],
            k,
            c0,
            c1,
            (*dst).data as *mut u8,
            (*dst).nb[1],
        );
    }
}

/// ggml custom op: thread `ith` of `nth` computes the outputs of its groups of weight rows.
///
/// # Safety
/// Called by ggml's CPU backend with a tensor built by [`Graph::mul_mat_q8_quantized`] whose
/// memory is allocated.
unsafe extern "C" fn gemm_op(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, _: *mut c_void) {
    // SAFETY: `dst` and its sources are live, allocated host tensors; mul_mat_q8_quantized
    // checked that w is a contiguous 2-D [k, n] of a `WeightType` (rows nb1 bytes apart), xq a
    // quantize_q8 result [xq_stride(k), m] (computed before this node: ggml runs nodes in order
    // with a barrier between them) and made dst a contiguous f32 [n, m]. Columns are used up to
    // the smaller current column count; `gemm_raw` gives each thread disjoint output rows.
    unsafe {
        let w = (*dst).src[0];
        let xq = (*dst).src[1];
        let (k, n) = ((*w).ne[0] as usize, (*w).ne[1] as usize);
        let m = (*xq).ne[1].min((*dst).ne[1]) as usize;
        let Some(ty) = weight_type((*w).type_) else {
            return;
        };
        qgemm::gemm_raw(
            Path::Best,
            ty,
            (*w).data as *const u8,
            (*w).nb[1],
            k,
            n,
            (*xq).data as *const u8,
            (*xq).nb[1],
            m,
            (*dst).data as *mut f32,
            (*dst).nb[1] / 4,
            ith as usize,
            nth.max(1) as usize,
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::Backend;
    use crate::graph::Graph;
    use crate::simd::qgemm::{self, tests::noise, WeightType};
    use crate::{quant, GgmlType};

    /// Exact integer dot products, then `acc = fma(dot, dw * dx, acc)` block by block, from the
    /// f32 activations quantized as ggml's AVX2 `quantize_row_q8_0` does (the weights decoded by
    /// the test decoder of `qgemm`, itself checked against ggml's dequantization).
    fn reference(ty: WeightType, w: &[u8], k: usize, n: usize, x: &[f32], m: usize) -> Vec<f32> {
        let mut xq = vec![0u8; m * qgemm::xq_stride(k)];
        qgemm::quantize_activations(x, k, &mut xq);
        qgemm::tests::reference(ty, w, k, n, &xq, m)
    }

    #[test]
    fn graph_op_equals_the_reference_and_ggml() {
        for ty in WeightType::ALL {
            for (i, &(k, n, m, threads)) in [
                (64, 8, 1, 1),
                (96, 13, 7, 2),
                (896, 100, 33, 2),
                (4864, 20, 11, 3),
                (4864, 27, 6, 2),
                (896, 128, 286, 2),
                (256, 16, 9, 2),
                (512, 40, 286, 2),
            ]
            .iter()
            .enumerate()
            .filter(|(_, &(k, ..))| k % ty.block_values() == 0)
            {
                let gty = ty.ggml();
                let wq = qgemm::tests::weights(ty, k, n, 2 * i as u64);
                let mut x = noise(k * m, 2 * i as u64 + 1, 3.0);
                if m > 1 {
                    // A zero column and a column of huge values.
                    x[..k].fill(0.0);
                    for (j, v) in x[k..2 * k].iter_mut().enumerate() {
                        *v = 3.0e4 * (j % 7) as f32 - 9.0e4;
                    }
                }
                let mut backend = Backend::new(threads).unwrap();
                let mut g = Graph::new(8).unwrap();
                let tw = g.input(gty, &[k as i64, n as i64]).unwrap();
                let tx = g.input(GgmlType::F32, &[k as i64, m as i64]).unwrap();
                assert!(g.can_mul_mat_q8(tw, tx).unwrap() || !qgemm::has_simd());
                let fast = g.mul_mat_q8(tw, tx).unwrap();
                let slow = g.mul_mat(tw, tx).unwrap();
                assert_eq!(g.shape(fast).unwrap(), g.shape(slow).unwrap());
                g.allocate(&[fast, slow], &backend).unwrap();
                for _ in 0..2 {
                    g.set_bytes(tw, &wq).unwrap();
                    g.set_f32(tx, &x).unwrap();
                    g.compute(&mut backend).unwrap();
                    let got = g.read_f32(fast).unwrap();
                    let want = reference(ty, &wq, k, n, &x, m);
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{ty:?} k {k} n {n} m {m}: not the reference"
                    );
                    let ggml = g.read_f32(slow).unwrap();
                    let scale = ggml.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let err = ggml
                        .iter()
                        .zip(got)
                        .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
                    if !ty.has_offsets() {
                        // The same integer block sums as ggml's product, in another f32 order.
                        assert!(
                            err <= 1e-5 * scale,
                            "{ty:?} k {k} n {n} m {m}: {err} vs {scale}"
                        );
                        continue;
                    }
                    // ggml multiplies q4_K by activations quantized per 256 values (q8_K), this
                    // product per 32 (q8_0): both approximate the exact product of the stored
                    // weights and the f32 activations, which this one must match as closely.
                    let wf = quant::dequantize(gty, &wq).unwrap();
                    let exact: Vec<f64> = (0..m * n)
                        .map(|o| {
                            let (c, r) = (o / n, o % n);
                            (0..k)
                                .map(|j| wf[r * k + j] as f64 * x[c * k + j] as f64)
                                .sum()
                        })
                        .collect();
                    let off = |v: &[f32]| {
                        v.iter()
                            .zip(&exact)
                            .fold(0f64, |a, (&p, &q)| a.max((p as f64 - q).abs()))
                    };
                    let (ours, theirs) = (off(got), off(ggml));
                    assert!(
                        ours <= 1.5 * theirs + 1e-6 * scale as f64,
                        "{ty:?} k {k} n {n} m {m}: error {ours} against ggml's {theirs}"
                    );
                    assert!(
                        err <= 2e-2 * scale,
                        "{ty:?} k {k} n {n} m {m}: {err} vs {scale}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantized_activations_can_be_shared() {
        let (k, m) = (128usize, 5usize);
        let x = noise(k * m, 1, 1.0);
        let mut backend = Backend::new(2).unwrap();
        let mut g = Graph::new(16).unwrap();
        let tx = g.input(GgmlType::F32, &[k as i64, m as i64]).unwrap();
        let xq = g.quantize_q8(tx).unwrap();
        let mut outs = Vec::new();
        let mut weights = Vec::new();
        for (j, ty, n) in [
            (0u64, WeightType::Q8_0, 24usize),
            (1, WeightType::Q5_0, 9),
            (2, WeightType::Q4_0, 17),
        ] {
            let wq = quant::quantize_rows(ty.ggml(), &noise(k * n, 10 + j, 0.3), k).unwrap();
            let tw = g.input(ty.ggml(), &[k as i64, n as i64]).unwrap();
            outs.push((g.mul_mat_q8_quantized(tw, xq).unwrap(), n));
            weights.push((tw, ty, wq));
        }
        let ids: Vec<_> = outs.iter().map(|o| o.0).collect();
        g.allocate(&ids, &backend).unwrap();
        for (tw, _, wq) in &weights {
            g.set_bytes(*tw, wq).unwrap();
        }
        g.set_f32(tx, &x).unwrap();
        g.compute(&mut backend).unwrap();
        for ((out, n), (_, ty, wq)) in outs.iter().zip(&weights) {
            assert_eq!(
                g.read_f32(*out).unwrap(),
                &reference(*ty, wq, k, *n, &x, m)[..]
            );
        }
    }

    #[test]
    fn misuse_gives_errors() {
        let mut g = Graph::new(32).unwrap();
        let w41 = g.input(GgmlType::Q4_1, &[64, 8]).unwrap();
        let w6k = g.input(GgmlType::Q6_K, &[256, 8]).unwrap();
        let w8 = g.input(GgmlType::Q8_0, &[64, 8]).unwrap();
        let w5 = g.input(GgmlType::Q5_0, &[64, 8]).unwrap();
        let w4 = g.input(GgmlType::Q4_0, &[64, 8]).unwrap();
        let x = g.input(GgmlType::F32, &[64, 3]).unwrap();
        let x96 = g.input(GgmlType::F32, &[96, 3]).unwrap();
        let x256 = g.input(GgmlType::F32, &[256, 3]).unwrap();
        assert!(g.mul_mat_q8(w41, x).is_err());
        assert!(g.mul_mat_q8(w6k, x256).is_err());
        for w in [w8, w5, w4] {
            assert!(g.mul_mat_q8(w, x96).is_err());
            assert!(g.mul_mat_q8_quantized(w, x).is_err(), "not quantized");
            assert!(!g.can_mul_mat_q8(w, x96).unwrap());
            assert_eq!(g.can_mul_mat_q8(w, x).unwrap(), qgemm::has_simd());
        }
        let xq96 = g.quantize_q8(x96).unwrap();
        assert!(g.mul_mat_q8_quantized(w5, xq96).is_err(), "k mismatch");
        assert!(!g.can_mul_mat_q8(w41, x).unwrap());
        assert!(!g.can_mul_mat_q8(w6k, x256).unwrap());
        let fallback = g.mul_mat_q8_or_ggml(w41, x).unwrap();
        assert_eq!(g.shape(fallback).unwrap(), [8, 3, 1, 1]);
        let fast = g.mul_mat_q8_or_ggml(w5, x).unwrap();
        assert_eq!(g.shape(fast).unwrap(), [8, 3, 1, 1]);
        let mut g = Graph::with_gradients(8).unwrap();
        let w8 = g.input(GgmlType::Q8_0, &[64, 8]).unwrap();
        let w5 = g.input(GgmlType::Q5_0, &[64, 8]).unwrap();
        let x = g.input(GgmlType::F32, &[64, 3]).unwrap();
        assert!(g.mul_mat_q8(w8, x).is_err(), "no backward pass");
        assert!(g.mul_mat_q8(w5, x).is_err(), "no backward pass");
        assert!(!g.can_mul_mat_q8(w8, x).unwrap());
        assert!(!g.can_mul_mat_q8(w5, x).unwrap());
    }
}
