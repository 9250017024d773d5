//! [`qgemm`](crate::qgemm) as ggml graph operations (ggml custom ops run by the backend's thread
//! pool): `W x` for q8_0 weights, about 1.8x faster than ggml's `mul_mat` on the 0.5B model's
//! layer shapes on an AVX2 CPU without VNNI (`cargo bench -p unmask-kernels --bench qgemm`).
//!
//! Two nodes per product: [`Graph::quantize_q8`] quantizes the f32 activations (in parallel, by
//! columns) into an int8 tensor, [`Graph::mul_mat_q8_quantized`] multiplies (in parallel, by
//! groups of 8 weight rows). The quantized activations can be shared by several products of the
//! same input (q/k/v, gate/up). [`Graph::mul_mat_q8`] does both, and
//! [`Graph::mul_mat_q8_or_ggml`] falls back to ggml's `mul_mat` where the fast path does not
//! apply. The weights are read in ggml's own q8_0 layout (e.g. straight from the memory-mapped
//! file): no repacked copy.

use crate::graph::{Graph, TensorId};
use crate::qgemm::{self, Path};
use crate::{Error, Result};
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
        let raw = self.raw_tensor(x)?;
        // SAFETY: `raw` is a live tensor of this graph.
        let (ty, ne, nb) = unsafe { ((*raw).type_, (*raw).ne, (*raw).nb) };
        if ty != sys::GGML_TYPE_F32
            || ne[0] % qgemm::QK8_0 as i64 != 0
            || ne[2] != 1
            || ne[3] != 1
            || nb[0] != 4
            || nb[1] % 4 != 0
        {
            return Err(Error::Ggml(format!(
                "quantize_q8 needs an f32 matrix with contiguous rows of whole 32-blocks, got \
                 {ne:?} (type {ty})"
            )));
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

    /// `w x` for a q8_0 weight `w` `[k, n]` (2-D, contiguous, in host memory) and activations
    /// quantized by [`quantize_q8`](Self::quantize_q8): f32 `[n, m]`, as `mul_mat(w, x)`. Only
    /// for graphs computed on the CPU backend.
    pub fn mul_mat_q8_quantized(&mut self, w: TensorId, xq: TensorId) -> Result<TensorId> {
        self.check_custom()?;
        let (rw, rx) = (self.raw_tensor(w)?, self.raw_tensor(xq)?);
        // SAFETY: live tensors of this graph.
        let (wt, wne, xt, xne, x_op, w_contiguous) = unsafe {
            (
                (*rw).type_,
                (*rw).ne,
                (*rx).type_,
                (*rx).ne,
                (*rx).op,
                sys::ggml_is_contiguous(rw),
            )
        };
        if wt != sys::GGML_TYPE_Q8_0 || !w_contiguous || wne[2] != 1 || wne[3] != 1 {
            return Err(Error::Ggml(format!(
                "mul_mat_q8 needs a contiguous 2-D q8_0 weight, got {wne:?} (type {wt})"
            )));
        }
        // SAFETY: `rw` is a live tensor of this graph.
        if !unsafe { in_host_memory(rw) } {
            return Err(Error::Ggml(
                "mul_mat_q8 runs on the CPU: the weight is in device memory".into(),
            ));
        }
        if xt != XQ_TYPE
            || x_op != sys::GGML_OP_CUSTOM
            || xne[0] != qgemm::xq_stride(wne[0] as usize) as i64
        {
            return Err(Error::Ggml(format!(
                "mul_mat_q8: {xne:?} is not a quantize_q8 result for rows of {}",
                wne[0]
            )));
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

    /// `w x` for a q8_0 weight `w` `[k, n]` and f32 activations `x` `[k, m]`: f32 `[n, m]`, in
    /// place of `mul_mat(w, x)` (two graph nodes; see the module documentation).
    pub fn mul_mat_q8(&mut self, w: TensorId, x: TensorId) -> Result<TensorId> {
        let sw = self.shape(w)?;
        let sx = self.shape(x)?;
        if sw[0] != sx[0] {
            return Err(Error::Ggml(format!(
                "cannot multiply shapes {sw:?} and {sx:?}"
            )));
        }
        let xq = self.quantize_q8(x)?;
        self.mul_mat_q8_quantized(w, xq)
    }

    /// Whether [`mul_mat_q8`](Self::mul_mat_q8) applies to `w x` and is worth it: a contiguous
    /// 2-D q8_0 weight in host memory (or not yet allocated), f32 activations with contiguous
    /// rows, a graph without gradients (the custom operations have no backward pass) and a CPU
    /// with AVX2, FMA and F16C. The graph must be computed on the CPU backend (ggml's GPU backends
    /// do not run custom operations); that is not checked here.
    pub fn can_mul_mat_q8(&self, w: TensorId, x: TensorId) -> Result<bool> {
        let (rw, rx) = (self.raw_tensor(w)?, self.raw_tensor(x)?);
        // SAFETY: live tensors of this graph.
        let ok = unsafe {
            (*rw).type_ == sys::GGML_TYPE_Q8_0
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
            return Err(Error::Ggml(
                "q8_0 products have no backward pass; use mul_mat in graphs with gradients".into(),
            ));
        }
        Ok(())
    }
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
    // checked that w is a contiguous 2-D q8_0 [k, n] (rows nb1 bytes apart), xq a quantize_q8
    // result [xq_stride(k), m] (computed before this node: ggml runs nodes in order with a
    // barrier between them) and made dst a contiguous f32 [n, m]. Columns are used up to the
    // smaller current column count; `gemm_raw` gives each thread disjoint output rows.
    unsafe {
        let w = (*dst).src[0];
        let xq = (*dst).src[1];
        let (k, n) = ((*w).ne[0] as usize, (*w).ne[1] as usize);
        let m = (*xq).ne[1].min((*dst).ne[1]) as usize;
        qgemm::gemm_raw(
            Path::Best,
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
    use crate::backend::CpuBackend;
    use crate::graph::Graph;
    use crate::{qgemm, quant, GgmlType};

    fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    /// Exact integer dot products, then `acc = fma(dot, dw * dx, acc)` block by block, from the
    /// f32 activations quantized as ggml's AVX2 `quantize_row_q8_0` does.
    fn reference(w: &[u8], k: usize, n: usize, x: &[f32], m: usize) -> Vec<f32> {
        let mut xq = vec![0u8; m * qgemm::xq_stride(k)];
        qgemm::quantize_activations(x, k, &mut xq);
        let (row, stride) = (qgemm::q8_0_row_bytes(k), qgemm::xq_stride(k));
        let mut out = vec![0f32; n * m];
        for c in 0..m {
            let col = &xq[c * stride..(c + 1) * stride];
            for r in 0..n {
                let mut acc = 0f32;
                for b in 0..k / 32 {
                    let blk = &w[r * row + b * 34..r * row + b * 34 + 34];
                    let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let dx = f32::from_le_bytes(col[k + 4 * b..k + 4 * b + 4].try_into().unwrap());
                    let dot: i32 = (0..32)
                        .map(|i| blk[2 + i] as i8 as i32 * col[b * 32 + i] as i8 as i32)
                        .sum();
                    acc = (dot as f32).mul_add(dw * dx, acc);
                }
                out[c * n + r] = acc;
            }
        }
        out
    }

    #[test]
    fn graph_op_equals_the_reference_and_ggml() {
        for (i, &(k, n, m, threads)) in [
            (64, 8, 1, 1),
            (96, 13, 7, 2),
            (896, 100, 33, 2),
            (4864, 20, 11, 3),
            (896, 128, 286, 2),
        ]
        .iter()
        .enumerate()
        {
            let w = noise(k * n, 2 * i as u64, 0.2);
            let wq = quant::quantize_rows(GgmlType::Q8_0, &w, k).unwrap();
            let x = noise(k * m, 2 * i as u64 + 1, 3.0);
            let mut backend = CpuBackend::new(threads).unwrap();
            let mut g = Graph::new(8).unwrap();
            let tw = g.input(GgmlType::Q8_0, &[k as i64, n as i64]).unwrap();
            let tx = g.input(GgmlType::F32, &[k as i64, m as i64]).unwrap();
            let fast = g.mul_mat_q8(tw, tx).unwrap();
            let slow = g.mul_mat(tw, tx).unwrap();
            assert_eq!(g.shape(fast).unwrap(), g.shape(slow).unwrap());
            g.allocate(&[fast, slow], &backend).unwrap();
            for _ in 0..2 {
                g.set_bytes(tw, &wq).unwrap();
                g.set_f32(tx, &x).unwrap();
                g.compute(&mut backend).unwrap();
                let got = g.read_f32(fast).unwrap();
                let want = reference(&wq, k, n, &x, m);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "k {k} n {n} m {m}: not the reference"
                );
                let ggml = g.read_f32(slow).unwrap();
                let scale = ggml.iter().fold(0f32, |a, v| a.max(v.abs()));
                let err = ggml
                    .iter()
                    .zip(got)
                    .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
                assert!(err <= 1e-5 * scale, "k {k} n {n} m {m}: {err} vs {scale}");
            }
        }
    }

    #[test]
    fn quantized_activations_can_be_shared() {
        let (k, m) = (128usize, 5usize);
        let x = noise(k * m, 1, 1.0);
        let mut backend = CpuBackend::new(2).unwrap();
        let mut g = Graph::new(16).unwrap();
        let tx = g.input(GgmlType::F32, &[k as i64, m as i64]).unwrap();
        let xq = g.quantize_q8(tx).unwrap();
        let mut outs = Vec::new();
        let mut weights = Vec::new();
        for (j, n) in [(0u64, 24usize), (1, 9)] {
            let wq = quant::quantize_rows(GgmlType::Q8_0, &noise(k * n, 10 + j, 0.3), k).unwrap();
            let tw = g.input(GgmlType::Q8_0, &[k as i64, n as i64]).unwrap();
            outs.push((g.mul_mat_q8_quantized(tw, xq).unwrap(), n));
            weights.push((tw, wq));
        }
        let ids: Vec<_> = outs.iter().map(|o| o.0).collect();
        g.allocate(&ids, &backend).unwrap();
        for (tw, wq) in &weights {
            g.set_bytes(*tw, wq).unwrap();
        }
        g.set_f32(tx, &x).unwrap();
        g.compute(&mut backend).unwrap();
        for ((out, n), (_, wq)) in outs.iter().zip(&weights) {
            assert_eq!(g.read_f32(*out).unwrap(), &reference(wq, k, *n, &x, m)[..]);
        }
    }

    #[test]
    fn misuse_gives_errors() {
        let mut g = Graph::new(16).unwrap();
        let w4 = g.input(GgmlType::Q4_0, &[64, 8]).unwrap();
        let w8 = g.input(GgmlType::Q8_0, &[64, 8]).unwrap();
        let x = g.input(GgmlType::F32, &[64, 3]).unwrap();
        let x96 = g.input(GgmlType::F32, &[96, 3]).unwrap();
        assert!(g.mul_mat_q8(w4, x).is_err());
        assert!(g.mul_mat_q8(w8, x96).is_err());
        assert!(g.mul_mat_q8_quantized(w8, x).is_err(), "not quantized");
        assert!(!g.can_mul_mat_q8(w4, x).unwrap());
        assert!(!g.can_mul_mat_q8(w8, x96).unwrap());
        let fallback = g.mul_mat_q8_or_ggml(w4, x).unwrap();
        assert_eq!(g.shape(fallback).unwrap(), [8, 3, 1, 1]);
        let mut g = Graph::with_gradients(8).unwrap();
        let w8 = g.input(GgmlType::Q8_0, &[64, 8]).unwrap();
        let x = g.input(GgmlType::F32, &[64, 3]).unwrap();
        assert!(g.mul_mat_q8(w8, x).is_err(), "no backward pass");
        assert!(!g.can_mul_mat_q8(w8, x).unwrap());
    }
}
