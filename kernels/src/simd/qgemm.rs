//! Matrix products of q8_0, q5_0, q4_0 or q4_K weights with f32 activations, faster than ggml's
//! own products on AVX2 machines; on machines with AVX-512 VNNI the inner loop uses `vpdpbusd`
//! (chosen at run time, [`kernel_name`]).
//!
//! `y = W x` with `W` `[k, n]` in one of ggml's formats ([`WeightType`]), read as 32-value
//! blocks whose value `i` is `s_b * v_i - o_b` (integer `v_i`, f32 scale `s_b`, offset `o_b`,
//! zero except for q4_K: q8_0 blocks hold 32 int8, q4_0 blocks 32 nibbles `q` meaning `q - 8`,
//! q5_0 blocks 32 nibbles `q` and 32 high bits `h` meaning `(q | h << 4) - 16`, q4_K
//! super-blocks 8 blocks of nibbles with 6-bit scales and mins), and `x` `[k, m]` f32, in
//! ggml's order (dimension 0 first). As ggml does for the first three types, the activations are
//! first quantized to 8 bits per value with one scale per 32 ([`quantize_activations`]: the same
//! values and scales as ggml's AVX2 `quantize_row_q8_0`, except that the scale `dx_b` is kept as
//! the f32 value of its f16 rounding; this q8_0 activation format is what the "q8" in the graph
//! operations' names refers to), with each block's `dx_b * sum(x_b)` alongside, then every
//! output is
//!
//! ```text
//! y[j][i] = fold over blocks b, in order, of  acc = fma(I_b as f32, s_b * dx_b, acc)
//!                                      then   acc = fma(-o_b, dx_b * sum(x_b), acc)  (q4_K)
//! ```
//!
//! starting from `acc = 0`, where `I_b` is the exact integer dot product of the two 32-value
//! blocks. For q8_0, q5_0 and q4_0 that is the sum ggml's `vec_dot_q8_0_q8_0`,
//! `vec_dot_q5_0_q8_0` and `vec_dot_q4_0_q8_0` compute, in a different f32 order. For q4_K ggml
//! quantizes the activations per 256 values (q8_K) instead; this product's finer activation
//! scales make it at least as close to the exact product (the graph operation's tests check
//! that). The AVX2 and VNNI kernels and the scalar fallback compute exactly this (same
//! roundings, same order), so they agree bit for bit.
//!
//! The AVX2 kernel works on panels of 8 weight rows: each thread decodes the 8 rows of its next
//! row group to int8 (a plain copy for q8_0) into a small thread-local buffer, interleaved 4
//! bytes at a time (one 32-byte vector holds bytes 4t..4t+4 of each of the 8 rows; an 8 x 8
//! transpose of 32-bit groups), with their magnitudes, f32 scales and offsets alongside, and runs
//! every activation column through it, 4 columns at a time. Per vector of weights and column it
//! needs one broadcast, `sign` (the signed x signed trick for `maddubs`), `maddubs`, `madd` and
//! an add (with VNNI: the broadcast, `sign` and one `vpdpbusd`, on 256-bit vectors, which Zen 4
//! runs at full width; the panel and everything else are shared);
//! one vector then holds the 8 dot products of a block, so the conversion to float and the scale
//! multiply are paid once per 8 outputs instead of once per output as in ggml's tinyBLAS. The
//! panel build is paid once per row group and amortised over all columns, so no repacked copy of
//! the weights is kept: the kernel reads ggml's (memory-mapped) rows as they are; the panel
//! takes 576 bytes per 32 values of `k` (88 KB for k = 4864) per thread, whatever the weight
//! type. The weight type changes only the panel build and, for q4_K, one more multiply-add per
//! block and column; the inner loop is the same.

use std::cell::RefCell;

use crate::GgmlType;

/// Values per q8_0 block (and per q5_0 and q4_0 block).
pub const QK8_0: usize = 32;
/// Bytes per q8_0 block: an f16 scale and 32 int8.
pub const Q8_0_BLOCK_BYTES: usize = 34;
/// Bytes per q5_0 block: an f16 scale, the 32 high bits (a little-endian u32, bit `i` for value
/// `i`) and 16 bytes of nibbles (byte `j`: value `j` low, value `j + 16` high).
pub const Q5_0_BLOCK_BYTES: usize = 22;
/// Bytes per q4_0 block: an f16 scale and 16 bytes of nibbles (byte `j`: value `j` low, value
/// `j + 16` high).
pub const Q4_0_BLOCK_BYTES: usize = 18;
/// Values per q4_K super-block: 8 sub-blocks of 32.
pub const QK_K: usize = 256;
/// Bytes per q4_K super-block: f16 `d` and `dmin`, 12 bytes of 6-bit sub-block scales and
/// mins, then 128 bytes of nibbles (bytes `32p..32p + 32`: sub-block `2p` in the low nibbles,
/// `2p + 1` in the high ones).
pub const Q4_K_BLOCK_BYTES: usize = 144;

/// The weight formats the kernel reads. Each is a sequence of 32-value blocks: value `i` of
/// block `b` is `s_b * v_i - o_b` with the integer `v_i` in `-128..=127`, a scale `s_b` and an
/// offset `o_b` (zero except for q4_K). q8_0, q5_0 and q4_0 store one f16 `s_b` per block;
/// q4_K stores super-blocks of 8 blocks with `s_b = d * sc_b` and `o_b = dmin * m_b` (6-bit
/// integers `sc_b`, `m_b`, f16 `d`, `dmin`), as ggml's `dequantize_row_q4_K` computes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// 32 int8 `v_i`.
    Q8_0,
    /// `v_i = (nibble_i | high_bit_i << 4) - 16`, in `-16..=15`.
    Q5_0,
    /// `v_i = nibble_i - 8`, in `-8..=7`.
    Q4_0,
    /// `v_i = nibble_i`, in `0..=15`, with the offset `o_b`.
    Q4K,
}

impl WeightType {
    /// Every supported weight type.
    pub const ALL: [WeightType; 4] = [
        WeightType::Q8_0,
        WeightType::Q5_0,
        WeightType::Q4_0,
        WeightType::Q4K,
    ];

    /// The kernel's format for a ggml type, if it has one.
    pub fn from_ggml(ty: GgmlType) -> Option<Self> {
        match ty {
            GgmlType::Q8_0 => Some(WeightType::Q8_0),
            GgmlType::Q5_0 => Some(WeightType::Q5_0),
            GgmlType::Q4_0 => Some(WeightType::Q4_0),
            GgmlType::Q4_K => Some(WeightType::Q4K),
            _ => None,
        }
    }

    /// The ggml type.
    pub fn ggml(self) -> GgmlType {
        match self {
            WeightType::Q8_0 => GgmlType::Q8_0,
            WeightType::Q5_0 => GgmlType::Q5_0,
            WeightType::Q4_0 => GgmlType::Q4_0,
            WeightType::Q4K => GgmlType::Q4_K,
        }
    }

    /// Bytes per ggml block ([`Self::block_values`] values).
    pub fn block_bytes(self) -> usize {
        match self {
            WeightType::Q8_0 => Q8_0_BLOCK_BYTES,
            WeightType::Q5_0 => Q5_0_BLOCK_BYTES,
            WeightType::Q4_0 => Q4_0_BLOCK_BYTES,
            WeightType::Q4K => Q4_K_BLOCK_BYTES,
        }
    }

    /// Values per ggml block: 32, or 256 for q4_K. Rows are whole blocks.
    pub fn block_values(self) -> usize {
        match self {
            WeightType::Q4K => QK_K,
            _ => QK8_0,
        }
    }

    /// Whether blocks carry an offset `o_b` (the kernel then also needs the activations' block
    /// sums).
    pub fn has_offsets(self) -> bool {
        self == WeightType::Q4K
    }

    /// Bytes of one row of length `k` (a multiple of [`Self::block_values`]).
    pub fn row_bytes(self, k: usize) -> usize {
        k / self.block_values() * self.block_bytes()
    }
}
/// Weight rows per panel.
const ROWS: usize = 8;
/// Offset of the magnitudes in a panel block.
const ABS_OFFSET: usize = ROWS * QK8_0;
/// Offset of the scales in a panel block.
const SCALE_OFFSET: usize = 2 * ROWS * QK8_0;
/// Offset of the offsets `o_b` in a panel block.
const OFFSET_OFFSET: usize = SCALE_OFFSET + ROWS * 4;
/// Bytes of one block of a panel: 8 rows x 32 int8, interleaved, their magnitudes (u8) in the
/// same order, then the 8 row scales as f32, then the 8 row offsets as f32.
const PANEL_BLOCK: usize = OFFSET_OFFSET + ROWS * 4;

/// Bytes of one quantized activation column of length `k`: `k` int8, then `k / 32` f32 scales
/// `dx_b`, then `k / 32` f32 `dx_b * (sum of the block's int8)` (what an offset multiplies),
/// padded to a multiple of 64 bytes.
pub fn xq_stride(k: usize) -> usize {
    (k + k / QK8_0 * 8).div_ceil(64) * 64
}

/// Bytes of one q8_0 row of length `k`.
pub fn q8_0_row_bytes(k: usize) -> usize {
    k / QK8_0 * Q8_0_BLOCK_BYTES
}

/// Which implementation computes: all give identical results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// The best kernel this CPU runs ([`selected_kernel`]): VNNI, else AVX2, else scalar.
    Best,
    /// The AVX2 kernel when the CPU has AVX2, FMA and F16C (tests compare it with the others).
    #[cfg_attr(not(test), allow(dead_code))]
    Avx2,
    /// The scalar code (tests compare it with the vector code).
    #[cfg_attr(not(test), allow(dead_code))]
    Scalar,
}

/// The vector kernels of the inner loop (the panel build is AVX2 for both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColumnKernel {
    /// `sign`, `maddubs`, `madd` and an add per vector of weights and column.
    Avx2,
    /// `sign` and one `vpdpbusd` (AVX-512 VNNI on 256-bit vectors, AVX-512 VL).
    Vnni,
}

impl Path {
    /// The vector kernel this path runs on this CPU, or `None` for the scalar code.
    fn kernel(self) -> Option<ColumnKernel> {
        match self {
            Path::Best => selected_kernel(),
            Path::Avx2 => has_avx2().then_some(ColumnKernel::Avx2),
            Path::Scalar => None,
        }
    }

    fn simd(self) -> bool {
        self.kernel().is_some()
    }
}

/// The environment variable that restricts [`Path::Best`] to the AVX2 kernel (`avx2`), for
/// side-by-side measurements on a VNNI machine; any other value is ignored.
pub const KERNEL_ENV: &str = "UNMASK_Q8_KERNEL";

/// The kernel of [`Path::Best`]: VNNI when the CPU has AVX-512 VNNI and VL (and AVX2, FMA, F16C
/// for the rest), else AVX2, else none (scalar); decided once per process.
fn selected_kernel() -> Option<ColumnKernel> {
    static KERNEL: std::sync::OnceLock<Option<ColumnKernel>> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        if !has_avx2() {
            return None;
        }
        let avx2_only = std::env::var(KERNEL_ENV).is_ok_and(|v| v.trim() == "avx2");
        Some(if has_vnni() && !avx2_only {
            ColumnKernel::Vnni
        } else {
            ColumnKernel::Avx2
        })
    })
}

/// Whether this CPU runs the vectorised kernels (AVX2, FMA and F16C); without them the scalar
/// fallback computes the same results, much more slowly than ggml's own `mul_mat`.
pub fn has_simd() -> bool {
    Path::Best.simd()
}

/// The kernel q8_0 products run on this CPU: `avx512vnni` (this GEMM's VNNI inner loop),
/// `avx2` (its AVX2 inner loop), or `ggml` (without AVX2, FMA and F16C the graphs use ggml's own
/// product, faster than the scalar fallback).
pub fn kernel_name() -> &'static str {
    match selected_kernel() {
        Some(ColumnKernel::Vnni) => "avx512vnni",
        Some(ColumnKernel::Avx2) => "avx2",
        None => "ggml",
    }
}

fn check_k(k: usize) {
    assert!(
        k > 0 && k.is_multiple_of(QK8_0),
        "k = {k} is not a positive multiple of {QK8_0}"
    );
}

/// Quantizes the `m` columns of `x` (`k` values each, contiguous) into `out`, `m` columns of
/// [`xq_stride`]`(k)` bytes.
pub fn quantize_activations(x: &[f32], k: usize, out: &mut [u8]) {
    check_k(k);
    assert!(
        x.len().is_multiple_of(k),
        "x is not a whole number of columns"
    );
    let m = x.len() / k;
    let stride = xq_stride(k);
    assert_eq!(out.len(), m * stride, "output size");
    // SAFETY: `x` holds m columns of k floats 4 bytes apart (stride 4k bytes) and `out` m columns
    // of `stride` bytes, exclusively borrowed.
    unsafe {
        quantize_columns_raw(
            Path::Best,
            x.as_ptr().cast(),
            4 * k,
            k,
            0,
            m,
            out.as_mut_ptr(),
            stride,
        )
    };
}

/// [`quantize_activations`] split over the threads of `pool` (by columns).
pub fn quantize_activations_parallel(
    pool: &rayon::ThreadPool,
    x: &[f32],
    k: usize,
    out: &mut [u8],
) {
    check_k(k);
    assert!(
        x.len().is_multiple_of(k),
        "x is not a whole number of columns"
    );
    let m = x.len() / k;
    let stride = xq_stride(k);
    assert_eq!(out.len(), m * stride, "output size");
    let nth = pool.current_num_threads();
    let out_ptr = SendPtr(out.as_mut_ptr().cast());
    pool.broadcast(|ctx| {
        let out = out_ptr;
        let (c0, c1) = (m * ctx.index() / nth, m * (ctx.index() + 1) / nth);
        // SAFETY: sizes checked above; the threads write disjoint column ranges of `out`, which
        // stays exclusively borrowed until `broadcast` returns.
        unsafe {
            quantize_columns_raw(
                Path::Best,
                x.as_ptr().cast(),
                4 * k,
                k,
                c0,
                c1,
                out.0.cast(),
                stride,
            )
        };
    });
}

/// Quantizes columns `c0..c1` of the activations at `x` (column `c` starts `c * x_col_bytes`
/// bytes after `x` and holds `k` contiguous f32) into the columns of `xq` (stride `xq_col`).
///
/// # Safety
/// `x` must be valid for reading and `xq` for writing the columns `c0..c1` described, `k` a
/// positive multiple of 32, `xq_col >= xq_stride(k)`, and no one else may access the written
/// columns meanwhile. `x` needs only 4-byte alignment.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn quantize_columns_raw(
    path: Path,
    x: *const u8,
    x_col_bytes: usize,
    k: usize,
    c0: usize,
    c1: usize,
    xq: *mut u8,
    xq_col: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if path.simd() {
            for c in c0..c1 {
                // SAFETY: the CPU has AVX2/FMA/F16C (checked); the column lies inside the memory
                // the caller vouched for.
                unsafe {
                    avx2::quantize_column(x.add(c * x_col_bytes).cast(), k, xq.add(c * xq_col))
                };
            }
            return;
        }
    }
    for c in c0..c1 {
        // SAFETY: as above; the caller guarantees 4-byte alignment of the f32 column and
        // exclusive access to the output column, which has room for k + k/8 bytes.
        let (col, out) = unsafe {
            (
                std::slice::from_raw_parts(x.add(c * x_col_bytes).cast::<f32>(), k),
                std::slice::from_raw_parts_mut(xq.add(c * xq_col), k + k / QK8_0 * 8),
            )
        };
        quantize_column_scalar(col, out);
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The scale ggml stores for a block whose largest magnitude is `amax`, as f32.
fn block_scale(amax: f32) -> f32 {
    half::f16::from_f32(amax / 127.0).to_f32()
}

/// One column: `k` int8, `k / 32` f32 scales, then `k / 32` f32 scaled block sums
/// ([`xq_stride`]; little-endian) into `out`.
fn quantize_column_scalar(x: &[f32], out: &mut [u8]) {
    let k = x.len();
    let nb = k / QK8_0;
    let (qs, rest) = out.split_at_mut(k);
    let (scales, sums) = rest.split_at_mut(nb * 4);
    for (b, block) in x.chunks_exact(QK8_0).enumerate() {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in qs[b * QK8_0..(b + 1) * QK8_0].iter_mut().zip(block) {
            let v = ((v * id).round_ties_even() as i32).clamp(-128, 127);
            *q = v as i8 as u8;
            sum += v;
        }
        let d = block_scale(amax);
        scales[b * 4..b * 4 + 4].copy_from_slice(&d.to_le_bytes());
        sums[b * 4..b * 4 + 4].copy_from_slice(&(d * sum as f32).to_le_bytes());
    }
}

/// `out = W x`: `w` holds `n` q8_0 rows of length `k`, `xq` `m` quantized activation columns
/// ([`quantize_activations`]), and `out` receives `m` columns of `n` f32 (ggml's `[n, m]`).
/// Computed on the calling thread. [`gemm_typed`] for the other weight types.
pub fn gemm(w: &[u8], k: usize, n: usize, xq: &[u8], m: usize, out: &mut [f32]) {
    gemm_typed(WeightType::Q8_0, w, k, n, xq, m, out)
}

/// [`gemm`] for weights `w` of type `ty`: `n` rows of [`WeightType::row_bytes`]`(k)` bytes.
pub fn gemm_typed(
    ty: WeightType,
    w: &[u8],
    k: usize,
    n: usize,
    xq: &[u8],
    m: usize,
    out: &mut [f32],
) {
    check_gemm(ty, w, k, n, xq, m, out);
    // SAFETY: sizes checked above; one caller writes all of `out`, exclusively borrowed.
    unsafe {
        gemm_raw(
            Path::Best,
            ty,
            w.as_ptr(),
            ty.row_bytes(k),
            k,
            n,
            xq.as_ptr(),
            xq_stride(k),
            m,
            out.as_mut_ptr(),
            n,
            0,
            1,
        )
    };
}

/// [`gemm`] split over the threads of `pool` (by groups of 8 weight rows).
pub fn gemm_parallel(
    pool: &rayon::ThreadPool,
    w: &[u8],
    k: usize,
    n: usize,
    xq: &[u8],
    m: usize,
    out: &mut [f32],
) {
    gemm_typed_parallel(pool, WeightType::Q8_0, w, k, n, xq, m, out)
}

/// [`gemm_typed`] split over the threads of `pool` (by groups of 8 weight rows).
#[allow(clippy::too_many_arguments)]
pub fn gemm_typed_parallel(
    pool: &rayon::ThreadPool,
    ty: WeightType,
    w: &[u8],
    k: usize,
    n: usize,
    xq: &[u8],
    m: usize,
    out: &mut [f32],
) {
    check_gemm(ty, w, k, n, xq, m, out);
    let nth = pool.current_num_threads();
    let out_ptr = SendPtr(out.as_mut_ptr());
    pool.broadcast(|ctx| {
        let out = out_ptr;
        // SAFETY: sizes checked above; thread `ith` writes only the rows of its own row groups
        // (`gemm_raw` splits them disjointly), so the writes of different threads never overlap,
        // and `out` stays exclusively borrowed until `broadcast` returns.
        unsafe {
            gemm_raw(
                Path::Best,
                ty,
                w.as_ptr(),
                ty.row_bytes(k),
                k,
                n,
                xq.as_ptr(),
                xq_stride(k),
                m,
                out.0,
                n,
                ctx.index(),
                nth,
            )
        }
    });
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to hand disjoint parts of one exclusively borrowed buffer to pool threads.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

fn check_gemm(ty: WeightType, w: &[u8], k: usize, n: usize, xq: &[u8], m: usize, out: &[f32]) {
    check_k(k);
    assert!(
        k.is_multiple_of(ty.block_values()),
        "k = {k} is not a multiple of {ty:?}'s block"
    );
    assert_eq!(w.len(), n * ty.row_bytes(k), "weight size");
    assert_eq!(xq.len(), m * xq_stride(k), "activation size");
    assert_eq!(out.len(), n * m, "output size");
}

/// The row groups (of 8 rows) thread `ith` of `nth` computes, of `groups`.
pub(crate) fn thread_groups(groups: usize, ith: usize, nth: usize) -> (usize, usize) {
    (groups * ith / nth, groups * (ith + 1) / nth)
}

/// Thread `ith` of `nth`'s share of `out = W x`: the outputs of its row groups for all `m`
/// columns. Row `r` of `W` starts at `w + r * w_row` (blocks of `ty`, any alignment); column `c`
/// of the quantized activations at `xq + c * xq_col`; output `(r, c)` is `out[c * out_col + r]`.
///
/// # Safety
/// The pointers must be valid for the described reads and writes, `k` a positive multiple of
/// 32, `xq_col >= xq_stride(k)` and `out_col >= n`; concurrent callers must use the same `nth`
/// and distinct `ith`, and nothing else may access the output meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    path: Path,
    ty: WeightType,
    w: *const u8,
    w_row: usize,
    k: usize,
    n: usize,
    xq: *const u8,
    xq_col: usize,
    m: usize,
    out: *mut f32,
    out_col: usize,
    ith: usize,
    nth: usize,
) {
    let (g0, g1) = thread_groups(n.div_ceil(ROWS), ith, nth);
    if g0 == g1 || m == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(kernel) = path.kernel() {
            PANEL.with_borrow_mut(|panel| {
                let nb = k / QK8_0;
                let chunks = nb * PANEL_BLOCK / 32;
                if panel.len() < chunks {
                    panel.resize(chunks, Chunk([0; 32]));
                }
                let panel = panel.as_mut_ptr().cast::<u8>();
                for g in g0..g1 {
                    let r0 = g * ROWS;
                    let rows = ROWS.min(n - r0);
                    // SAFETY: the CPU has AVX2/FMA/F16C, and AVX-512 VNNI/VL for the VNNI
                    // kernel (both checked when the kernel was chosen); the panel has room for
                    // nb blocks; rows r0..r0+rows exist; the caller vouched for every pointer
                    // and for exclusive access to the outputs of this thread's rows.
                    unsafe {
                        avx2::pack_panel(ty, w.add(r0 * w_row), w_row, rows, nb, panel);
                        let columns = match (kernel, ty.has_offsets()) {
                            (ColumnKernel::Avx2, false) => {
                                avx2::maddubs::panel_times_columns::<false>
                            }
                            (ColumnKernel::Avx2, true) => {
                                avx2::maddubs::panel_times_columns::<true>
                            }
                            (ColumnKernel::Vnni, false) => avx2::vnni::panel_times_columns::<false>,
                            (ColumnKernel::Vnni, true) => avx2::vnni::panel_times_columns::<true>,
                        };
                        columns(panel, nb, xq, xq_col, m, out.add(r0), out_col, rows);
                    }
                }
            });
            return;
        }
    }
    let nb = k / QK8_0;
    for r in g0 * ROWS..(g1 * ROWS).min(n) {
        // SAFETY: row r exists and holds nb blocks; the caller vouched for the pointers.
        let row = unsafe { std::slice::from_raw_parts(w.add(r * w_row), ty.row_bytes(k)) };
        for c in 0..m {
            // SAFETY: as above, column c exists and holds k + k/4 bytes.
            let col = unsafe { std::slice::from_raw_parts(xq.add(c * xq_col), k + nb * 8) };
            // SAFETY: output (r, c) belongs to this thread's rows.
            unsafe { *out.add(c * out_col + r) = dot_scalar(ty, row, col, nb) };
        }
    }
}

/// The scale `d * sc_j` and offset `dmin * m_j` of sub-block `j` (0..8) of a q4_K super-block
/// from its first 16 bytes (f16 `d`, f16 `dmin`, 12 bytes of 6-bit `sc`/`m` pairs unpacked as
/// ggml's `get_scale_min_k4` does).
fn q4_k_scale_offset(head: &[u8], j: usize) -> (f32, f32) {
    let f16_at = |i: usize| half::f16::from_le_bytes([head[i], head[i + 1]]).to_f32();
    let q = &head[4..16];
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f16_at(0) * sc as f32, f16_at(2) * m as f32)
}

/// Block `b` (of 32 values) of a row of type `ty` decoded: its scale `s_b` and offset `o_b` as
/// f32 and its 32 integer values (module documentation of [`WeightType`]).
fn decode_block(ty: WeightType, row: &[u8], b: usize) -> (f32, f32, [i8; QK8_0]) {
    let mut v = [0i8; QK8_0];
    if ty == WeightType::Q4K {
        let sb = &row[b / 8 * Q4_K_BLOCK_BYTES..(b / 8 + 1) * Q4_K_BLOCK_BYTES];
        let (s, o) = q4_k_scale_offset(sb, b % 8);
        let pair = &sb[16 + (b % 8) / 2 * 32..][..32];
        let shift = if b.is_multiple_of(2) { 0 } else { 4 };
        for (v, &q) in v.iter_mut().zip(pair) {
            *v = ((q >> shift) & 0x0f) as i8;
        }
        return (s, o, v);
    }
    let bytes = ty.block_bytes();
    let block = &row[b * bytes..(b + 1) * bytes];
    let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
    match ty {
        WeightType::Q8_0 => {
            for (v, &q) in v.iter_mut().zip(&block[2..2 + QK8_0]) {
                *v = q as i8;
            }
        }
        WeightType::Q5_0 => {
            let qh = u32::from_le_bytes(block[2..6].try_into().expect("4 bytes"));
            for (j, &q) in block[6..6 + QK8_0 / 2].iter().enumerate() {
                let h0 = ((qh >> j) & 1) as u8;
                let h1 = ((qh >> (j + 16)) & 1) as u8;
                v[j] = ((q & 0x0f) | h0 << 4) as i8 - 16;
                v[j + 16] = ((q >> 4) | h1 << 4) as i8 - 16;
            }
        }
        WeightType::Q4_0 => {
            for (j, &q) in block[2..2 + QK8_0 / 2].iter().enumerate() {
                v[j] = (q & 0x0f) as i8 - 8;
                v[j + 16] = (q >> 4) as i8 - 8;
            }
        }
        WeightType::Q4K => unreachable!("handled above"),
    }
    (d, 0.0, v)
}

/// One output: the fold described in the module documentation.
fn dot_scalar(ty: WeightType, row: &[u8], col: &[u8], nb: usize) -> f32 {
    let (qx, rest) = col.split_at(nb * QK8_0);
    let (sx, ssum) = rest.split_at(nb * 4);
    let f32_at = |bytes: &[u8], b: usize| {
        f32::from_le_bytes(bytes[b * 4..b * 4 + 4].try_into().expect("4 bytes"))
    };
    let mut acc = 0f32;
    for b in 0..nb {
        let (dw, ow, v) = decode_block(ty, row, b);
        let dx = f32_at(sx, b);
        let dot: i32 = v
            .iter()
            .zip(&qx[b * QK8_0..(b + 1) * QK8_0])
            .map(|(&a, &x)| a as i32 * x as i8 as i32)
            .sum();
        acc = (dot as f32).mul_add(dw * dx, acc);
        if ty.has_offsets() {
            acc = (-ow).mul_add(f32_at(ssum, b), acc);
        }
    }
    acc
}

#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Chunk([u8; 32]);

thread_local! {
    /// The panel of the row group a thread is working on (grown, never shrunk).
    static PANEL: RefCell<Vec<Chunk>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
#[path = "qgemm_avx2.rs"]
mod avx2;

#[cfg(test)]
#[path = "qgemm_tests.rs"]
pub(crate) mod tests;
