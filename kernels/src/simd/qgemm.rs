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

/// The 6-bit scale and min of sub-block `j` (0..8) of a q4_K super-block's 12 packed bytes
/// (ggml's `get_scale_min_k4`).
fn q4_k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Block `b` (of 32 values) of a row of type `ty` decoded: its scale `s_b` and offset `o_b` as
/// f32 and its 32 integer values (module documentation of [`WeightType`]).
fn decode_block(ty: WeightType, row: &[u8], b: usize) -> (f32, f32, [i8; QK8_0]) {
    let f16_at =
        |bytes: &[u8], i: usize| half::f16::from_le_bytes([bytes[i], bytes[i + 1]]).to_f32();
    let mut v = [0i8; QK8_0];
    if ty == WeightType::Q4K {
        let sb = &row[b / 8 * Q4_K_BLOCK_BYTES..(b / 8 + 1) * Q4_K_BLOCK_BYTES];
        let (sc, m) = q4_k_scale_min(b % 8, &sb[4..16]);
        let pair = &sb[16 + (b % 8) / 2 * 32..][..32];
        let shift = if b.is_multiple_of(2) { 0 } else { 4 };
        for (v, &q) in v.iter_mut().zip(pair) {
            *v = ((q >> shift) & 0x0f) as i8;
        }
        return (f16_at(sb, 0) * sc as f32, f16_at(sb, 2) * m as f32, v);
    }
    let bytes = ty.block_bytes();
    let block = &row[b * bytes..(b + 1) * bytes];
    let d = f16_at(block, 0);
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
mod avx2 {
    use super::{
        block_scale, q4_k_scale_min, WeightType, ABS_OFFSET, OFFSET_OFFSET, PANEL_BLOCK,
        Q4_K_BLOCK_BYTES, QK8_0, ROWS, SCALE_OFFSET,
    };

    /// Block `b` (of 32 values) of the weight row at `row` (of type `ty`): its scale and offset
    /// as f32 (as `decode_block` computes them) and its 32 integer values as int8 in order.
    ///
    /// # Safety
    /// `row` must be readable for blocks up to `b` of `ty` (any alignment).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load_block(ty: WeightType, row: *const u8, b: usize) -> (f32, f32, __m256i) {
        let f16_at = |p: *const u8| {
            // SAFETY: two readable bytes (the callers' reads below lie inside the block).
            half::f16::from_bits(unsafe { p.cast::<u16>().read_unaligned() }).to_f32()
        };
        // SAFETY: every read below lies inside the block (caller's guarantee): q8_0 reads bytes
        // 0..34 of 34, q5_0 0..22 of 22, q4_0 0..18 of 18, q4_K its super-block's bytes 0..16
        // and one 32-byte run of 16..144; all unaligned.
        unsafe {
            if ty == WeightType::Q4K {
                let sb = row.add(b / 8 * Q4_K_BLOCK_BYTES);
                let packed = std::slice::from_raw_parts(sb.add(4), 12);
                let (sc, m) = q4_k_scale_min(b % 8, packed);
                let q = _mm256_loadu_si256(sb.add(16 + (b % 8) / 2 * 32).cast());
                let q = if b.is_multiple_of(2) {
                    q
                } else {
                    _mm256_srli_epi16::<4>(q)
                };
                let v = _mm256_and_si256(q, _mm256_set1_epi8(0x0f));
                return (f16_at(sb) * sc as f32, f16_at(sb.add(2)) * m as f32, v);
            }
            let src = row.add(b * ty.block_bytes());
            let d = f16_at(src);
            let v = match ty {
                WeightType::Q8_0 => _mm256_loadu_si256(src.add(2).cast()),
                WeightType::Q5_0 => {
                    let qh = src.add(2).cast::<i32>().read_unaligned();
                    let nibbles = nibbles(_mm_loadu_si128(src.add(6).cast()));
                    // Byte i all ones where bit i of qh is set (ggml's bytes_from_bits_32).
                    let bytes = _mm256_shuffle_epi8(
                        _mm256_set1_epi32(qh),
                        _mm256_set_epi64x(
                            0x0303_0303_0303_0303,
                            0x0202_0202_0202_0202,
                            0x0101_0101_0101_0101,
                            0,
                        ),
                    );
                    let bits = _mm256_cmpeq_epi8(
                        _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe)),
                        _mm256_set1_epi64x(-1),
                    );
                    // (q | h << 4) - 16 as int8 is q where h is set and q | 0xf0 where not.
                    _mm256_or_si256(
                        nibbles,
                        _mm256_andnot_si256(bits, _mm256_set1_epi8(0xf0u8 as i8)),
                    )
                }
                WeightType::Q4_0 => _mm256_sub_epi8(
                    nibbles(_mm_loadu_si128(src.add(2).cast())),
                    _mm256_set1_epi8(8),
                ),
                WeightType::Q4K => unreachable!("handled above"),
            };
            (d, 0.0, v)
        }
    }

    /// 16 bytes of nibbles to 32 bytes: the low nibbles of bytes 0..16, then their high nibbles.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn nibbles(q: __m128i) -> __m256i {
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// Decodes `rows` (<= 8) rows of `nb` blocks of type `ty` to int8 and interleaves them into
    /// `panel`: per block, 8 vectors of 32 bytes (vector t holds values 4t..4t+4 of rows 0..8,
    /// an 8 x 8 transpose of 32-bit groups), the same 8 vectors with every byte replaced by its
    /// magnitude (as u8), then the 8 scales and the 8 offsets as f32. Missing rows are zero.
    ///
    /// # Safety
    /// `w` must hold `rows` rows of `nb` blocks of `ty`, `w_row` bytes apart; `panel` must be
    /// 32-byte aligned with room for `nb * PANEL_BLOCK` bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn pack_panel(
        ty: WeightType,
        w: *const u8,
        w_row: usize,
        rows: usize,
        nb: usize,
        panel: *mut u8,
    ) {
        for b in 0..nb {
            let mut r = [_mm256_setzero_si256(); ROWS];
            let mut d = [0f32; ROWS];
            let mut o = [0f32; ROWS];
            for (i, v) in r.iter_mut().enumerate().take(rows) {
                // SAFETY: block b of row i < rows exists (caller's guarantee).
                (d[i], o[i], *v) = unsafe { load_block(ty, w.add(i * w_row), b) };
            }
            let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
            let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
            let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
            let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
            let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
            let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
            let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
            let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
            let u0 = _mm256_unpacklo_epi64(t0, t2);
            let u1 = _mm256_unpackhi_epi64(t0, t2);
            let u2 = _mm256_unpacklo_epi64(t1, t3);
            let u3 = _mm256_unpackhi_epi64(t1, t3);
            let u4 = _mm256_unpacklo_epi64(t4, t6);
            let u5 = _mm256_unpackhi_epi64(t4, t6);
            let u6 = _mm256_unpacklo_epi64(t5, t7);
            let u7 = _mm256_unpackhi_epi64(t5, t7);
            let out = [
                _mm256_permute2x128_si256::<0x20>(u0, u4),
                _mm256_permute2x128_si256::<0x20>(u1, u5),
                _mm256_permute2x128_si256::<0x20>(u2, u6),
                _mm256_permute2x128_si256::<0x20>(u3, u7),
                _mm256_permute2x128_si256::<0x31>(u0, u4),
                _mm256_permute2x128_si256::<0x31>(u1, u5),
                _mm256_permute2x128_si256::<0x31>(u2, u6),
                _mm256_permute2x128_si256::<0x31>(u3, u7),
            ];
            // SAFETY: block b of the panel (PANEL_BLOCK bytes from a 32-byte aligned offset)
            // is inside the buffer (caller's guarantee).
            unsafe {
                let dst = panel.add(b * PANEL_BLOCK);
                for (t, v) in out.into_iter().enumerate() {
                    _mm256_store_si256(dst.add(t * 32).cast(), v);
                    // abs(-128) wraps to -128, i.e. 128 as an unsigned byte.
                    _mm256_store_si256(dst.add(ABS_OFFSET + t * 32).cast(), _mm256_abs_epi8(v));
                }
                _mm256_store_ps(dst.add(SCALE_OFFSET).cast(), _mm256_loadu_ps(d.as_ptr()));
                _mm256_store_ps(dst.add(OFFSET_OFFSET).cast(), _mm256_loadu_ps(o.as_ptr()));
            }
        }
    }
    use std::arch::x86_64::*;

    /// Same operations as ggml's AVX2 `quantize_row_q8_0`, one column of `k` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_column(x: *const f32, k: usize, out: *mut u8) {
        let nb = k / QK8_0;
        let sign = _mm256_set1_ps(-0.0);
        for b in 0..nb {
            // SAFETY: block b of the column (32 floats) is readable (caller's guarantee).
            let (v0, v1, v2, v3) = unsafe {
                let p = x.add(b * QK8_0);
                (
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                )
            };
            let mut amax = _mm256_andnot_ps(sign, v0);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v1));
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v2));
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v3));
            let mut m4 = _mm_max_ps(
                _mm256_extractf128_ps::<1>(amax),
                _mm256_castps256_ps128(amax),
            );
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mul = _mm256_set1_ps(id);
            const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT;
            let i0 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v0, mul)));
            let i1 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v1, mul)));
            let i2 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v2, mul)));
            let i3 = _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v3, mul)));
            let a = _mm256_packs_epi32(i0, i1);
            let c = _mm256_packs_epi32(i2, i3);
            let q = _mm256_packs_epi16(a, c);
            let q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            let d = block_scale(amax);
            // The exact sum of the 32 int8 (as the scalar code sums them): u8 ones times i8 in
            // pairs, then pairs of i16 to i32, then across the vector.
            let pairs = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
                _mm256_set1_epi16(1),
            );
            let s4 = _mm_add_epi32(
                _mm256_castsi256_si128(pairs),
                _mm256_extracti128_si256::<1>(pairs),
            );
            let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
            let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b10_11_00_01>(s4));
            let sum = _mm_cvtsi128_si32(s4);
            // SAFETY: block b's 32 bytes, its scale and its sum lie inside the output column.
            unsafe {
                _mm256_storeu_si256(out.add(b * QK8_0).cast(), q);
                out.add(k + b * 4).cast::<f32>().write_unaligned(d);
                out.add(k + nb * 4 + b * 4)
                    .cast::<f32>()
                    .write_unaligned(d * sum as f32);
            }
        }
    }

    /// Defines a module `$module` with `panel_times_columns` (all `m` columns times one panel)
    /// and its tiles, compiled for `$features`, whose inner step adds the 8 dot products of 4
    /// bytes of one column (`$xs`: the column's bytes with the weights' signs) and the weights'
    /// magnitudes (`$wa`, u8) to `$dot` (8 x i32). Both steps compute the exact integer sums
    /// (`maddubs` cannot saturate here: |w| <= 128 and |x| <= 127), so the kernels agree bit for
    /// bit.
    macro_rules! column_kernels {
        ($module:ident, $features:literal, |$dot:ident, $wa:ident, $xs:ident| $step:expr) => {
            pub(in super::super) mod $module {
                use super::super::{
                    ABS_OFFSET, OFFSET_OFFSET, PANEL_BLOCK, QK8_0, ROWS, SCALE_OFFSET,
                };
                use std::arch::x86_64::*;

                /// All `m` columns times one panel of `nb` blocks; `rows` (<= 8) outputs per
                /// column are written, output `(r, c)` at `out[c * out_col + r]`. With
                /// `OFFSETS` each block also subtracts its offsets times the column's scaled
                /// block sum.
                ///
                /// # Safety
                /// The CPU has `$features`; `panel` holds `nb` packed blocks (32-byte aligned);
                /// `xq` `m` columns `xq_col` bytes apart of `k = 32 nb` int8, `nb` f32 scales
                /// and `nb` f32 scaled sums; the outputs are writable.
                #[target_feature(enable = $features)]
                #[allow(clippy::too_many_arguments)]
                pub(in super::super::super) unsafe fn panel_times_columns<const OFFSETS: bool>(
                    panel: *const u8,
                    nb: usize,
                    xq: *const u8,
                    xq_col: usize,
                    m: usize,
                    out: *mut f32,
                    out_col: usize,
                    rows: usize,
                ) {
                    // Columns `c..c + C` through `tile::<C>`.
                    macro_rules! tile_at {
                        ($cols:literal, $c:expr) => {
                            // SAFETY: columns c..c+C exist (c + C <= m) and the caller vouched
                            // for the rest.
                            unsafe {
                                tile::<$cols, OFFSETS>(
                                    panel,
                                    nb,
                                    xq.add($c * xq_col),
                                    xq_col,
                                    out.add($c * out_col),
                                    out_col,
                                    rows,
                                )
                            }
                        };
                    }
                    let mut c = 0;
                    while c + 4 <= m {
                        tile_at!(4, c);
                        c += 4;
                    }
                    match m - c {
                        3 => tile_at!(3, c),
                        2 => tile_at!(2, c),
                        1 => tile_at!(1, c),
                        _ => {}
                    }
                }

                /// `C` columns times one panel: `C` vectors of 8 outputs.
                #[target_feature(enable = $features)]
                #[inline]
                unsafe fn tile<const C: usize, const OFFSETS: bool>(
                    panel: *const u8,
                    nb: usize,
                    xq: *const u8,
                    xq_col: usize,
                    out: *mut f32,
                    out_col: usize,
                    rows: usize,
                ) {
                    let k = nb * QK8_0;
                    let mut acc = [_mm256_setzero_ps(); C];
                    for b in 0..nb {
                        // SAFETY: block b of the panel and of each of the C columns is readable
                        // (caller's guarantee); loads are unaligned or from the 32-byte aligned
                        // panel.
                        unsafe {
                            let pb = panel.add(b * PANEL_BLOCK);
                            let mut dots = [_mm256_setzero_si256(); C];
                            // A trip count the compiler cannot see keeps this loop rolled, and
                            // with it the schedule (and register use) written here.
                            for t in 0..std::hint::black_box(QK8_0 / 4) {
                                let wv = _mm256_load_si256(pb.add(t * 32).cast());
                                let $wa = _mm256_load_si256(pb.add(ABS_OFFSET + t * 32).cast());
                                for (i, $dot) in dots.iter_mut().enumerate() {
                                    let x4 = xq
                                        .add(i * xq_col + b * QK8_0 + t * 4)
                                        .cast::<i32>()
                                        .read_unaligned();
                                    let $xs = _mm256_sign_epi8(_mm256_set1_epi32(x4), wv);
                                    *$dot = $step;
                                }
                            }
                            let dw = _mm256_load_ps(pb.add(SCALE_OFFSET).cast());
                            for (i, (a, dot)) in acc.iter_mut().zip(dots).enumerate() {
                                let dx = xq
                                    .add(i * xq_col + k + b * 4)
                                    .cast::<f32>()
                                    .read_unaligned();
                                let dx = _mm256_set1_ps(dx);
                                *a = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(dot),
                                    _mm256_mul_ps(dw, dx),
                                    *a,
                                );
                                if OFFSETS {
                                    let ow = _mm256_load_ps(pb.add(OFFSET_OFFSET).cast());
                                    let sx = xq
                                        .add(i * xq_col + k + nb * 4 + b * 4)
                                        .cast::<f32>()
                                        .read_unaligned();
                                    *a = _mm256_fnmadd_ps(ow, _mm256_set1_ps(sx), *a);
                                }
                            }
                        }
                    }
                    for (i, a) in acc.into_iter().enumerate() {
                        // SAFETY: outputs 0..rows of column i are writable (caller's guarantee).
                        unsafe {
                            let o = out.add(i * out_col);
                            if rows == ROWS {
                                _mm256_storeu_ps(o, a);
                            } else {
                                let mut tmp = [0f32; ROWS];
                                _mm256_storeu_ps(tmp.as_mut_ptr(), a);
                                std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, rows);
                            }
                        }
                    }
                }
            }
        };
    }

    // The AVX2 step: `maddubs` (u8 x i8 pairs to i16), `madd` with ones (pairs to i32), add.
    column_kernels!(maddubs, "avx2,fma,f16c", |dot, wa, xs| _mm256_add_epi32(
        *dot,
        _mm256_madd_epi16(_mm256_maddubs_epi16(wa, xs), _mm256_set1_epi16(1))
    ));
    // The VNNI step: one `vpdpbusd` (u8 x i8 quadruples summed into i32).
    column_kernels!(vnni, "avx2,fma,f16c,avx512vnni,avx512vl", |dot, wa, xs| {
        _mm256_dpbusd_epi32(*dot, wa, xs)
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{quant, GgmlType};
    use llama_cpp_sys_2 as sys;

    /// Deterministic uniform values in `[-scale/2, scale/2)` (xorshift), for the tests here and
    /// in `graph::qgemm_op`.
    pub(crate) fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
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

    /// Block `b` (of 32 values) of a row of `ty`: scale, offset and integer values, written out
    /// from ggml's `dequantize_row_q8_0`, `_q5_0`, `_q4_0` and `_q4_K` (independently of
    /// `decode_block`).
    fn reference_block(ty: WeightType, row: &[u8], b: usize) -> (f32, f32, [i32; 32]) {
        let f16 = |lo: u8, hi: u8| half::f16::from_le_bytes([lo, hi]).to_f32();
        if ty == WeightType::Q4K {
            let x = &row[(b / 8) * 144..(b / 8 + 1) * 144];
            let (d, dmin, scales, qs) = (f16(x[0], x[1]), f16(x[2], x[3]), &x[4..16], &x[16..]);
            let j = b % 8;
            // get_scale_min_k4: 6-bit pairs, the upper two bits of scales 4..8 packed into the
            // top bits of bytes 0..8.
            let (sc, m) = match j {
                0..=3 => (scales[j] & 0x3f, scales[j + 4] & 0x3f),
                _ => (
                    (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
                    (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
                ),
            };
            let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let v = std::array::from_fn(|l| {
                if j.is_multiple_of(2) {
                    (q[l] & 0x0f) as i32
                } else {
                    (q[l] >> 4) as i32
                }
            });
            return (d * sc as f32, dmin * m as f32, v);
        }
        let bb = ty.block_bytes();
        let blk = &row[b * bb..(b + 1) * bb];
        let v = std::array::from_fn(|e| {
            let (j, shift) = (e % 16, if e < 16 { 0 } else { 4 });
            match ty {
                WeightType::Q8_0 => blk[2 + e] as i8 as i32,
                WeightType::Q4_0 => ((blk[2 + j] >> shift) & 0x0f) as i32 - 8,
                WeightType::Q5_0 => {
                    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                    let q = ((blk[6 + j] >> shift) & 0x0f) as i32;
                    (q | (((qh >> e) & 1) as i32) << 4) - 16
                }
                WeightType::Q4K => unreachable!(),
            }
        });
        (f16(blk[0], blk[1]), 0.0, v)
    }

    /// The definition, written out: exact integer dot products, then per block
    /// `acc = fma(dot, dw * dx, acc)` and, for types with offsets,
    /// `acc = fma(-o, dx * sum(x), acc)`, in block order.
    pub(crate) fn reference(
        ty: WeightType,
        w: &[u8],
        k: usize,
        n: usize,
        xq: &[u8],
        m: usize,
    ) -> Vec<f32> {
        let (row, stride, nb) = (ty.row_bytes(k), xq_stride(k), k / 32);
        let f32_at =
            |col: &[u8], at: usize| f32::from_le_bytes(col[at..at + 4].try_into().unwrap());
        let mut out = vec![0f32; n * m];
        for c in 0..m {
            let col = &xq[c * stride..(c + 1) * stride];
            for r in 0..n {
                let mut acc = 0f32;
                for b in 0..nb {
                    let (dw, ow, v) = reference_block(ty, &w[r * row..(r + 1) * row], b);
                    let dx = f32_at(col, k + 4 * b);
                    let mut dot = 0i32;
                    let mut sum = 0i32;
                    for i in 0..32 {
                        let x = col[b * 32 + i] as i8 as i32;
                        dot += v[i] * x;
                        sum += x;
                    }
                    acc = (dot as f32).mul_add(dw * dx, acc);
                    if ty.has_offsets() {
                        assert_eq!(f32_at(col, k + 4 * nb + 4 * b), dx * sum as f32);
                        acc = (-ow).mul_add(dx * sum as f32, acc);
                    }
                }
                out[c * n + r] = acc;
            }
        }
        out
    }

    /// `n` rows of `k` random values quantized by ggml to `ty`, then some blocks' values (not
    /// their scales) overwritten with extremes: random bytes (every bit pattern, -128 for q8_0),
    /// all bits set (q4_0 7, q5_0 15, q8_0 -1) and all clear (q4_0 -8, q5_0 -16, q8_0 0).
    pub(crate) fn weights(ty: WeightType, k: usize, n: usize, seed: u64) -> Vec<u8> {
        let mut w = quant::quantize_rows(ty.ggml(), &noise(k * n, seed, 0.2), k).unwrap();
        let bb = ty.block_bytes();
        // The f16 scales stay (q4_K: d and dmin); q4_K's 6-bit scales and mins are overwritten
        // with the values.
        let skip = if ty == WeightType::Q4K { 4 } else { 2 };
        let bytes = noise(w.len(), seed + 1000, 512.0);
        let blocks = w.len() / bb;
        for b in (0..blocks).step_by(3) {
            let blk = &mut w[b * bb + skip..(b + 1) * bb];
            match b % 9 {
                0 => blk.fill(0xff),
                3 => blk.fill(0),
                _ => {
                    for (i, v) in blk.iter_mut().enumerate() {
                        *v = (bytes[b * bb + i] as i32 & 0xff) as u8;
                    }
                }
            }
        }
        if ty == WeightType::Q8_0 {
            // ggml's quantizer never writes -128, other files might: still exact.
            w[2] = (-128i8) as u8;
        }
        w
    }

    fn quantize(path: Path, x: &[f32], k: usize) -> Vec<u8> {
        let m = x.len() / k;
        let mut out = vec![0u8; m * xq_stride(k)];
        // SAFETY: x holds m columns of k floats, out m columns of xq_stride(k) bytes.
        unsafe {
            quantize_columns_raw(
                path,
                x.as_ptr().cast(),
                4 * k,
                k,
                0,
                m,
                out.as_mut_ptr(),
                xq_stride(k),
            )
        };
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn product(
        path: Path,
        ty: WeightType,
        w: &[u8],
        k: usize,
        n: usize,
        xq: &[u8],
        m: usize,
        nth: usize,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; n * m];
        for ith in 0..nth {
            // SAFETY: sizes as gemm_raw documents; the "threads" run one after the other.
            unsafe {
                gemm_raw(
                    path,
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
                    ith,
                    nth,
                )
            };
        }
        out
    }

    #[test]
    fn activations_are_quantized_exactly_as_ggml_does() {
        let k = 4 * 32;
        // Block 0 has ties (x * 127 / amax exactly half-way: ggml's AVX2 path rounds them to
        // even), block 1 is zero, blocks 2 and 3 are noise.
        let mut x = vec![0f32; k];
        x[0] = 127.0;
        for (i, v) in x[1..32].iter_mut().enumerate() {
            *v = (i as f32 - 15.0) + 0.5;
        }
        x[64..].copy_from_slice(&noise(64, 7, 3.0));
        let m = 3;
        let mut cols = x.clone();
        cols.extend(noise(k * (m - 1), 8, 0.01));
        // SAFETY: ggml's CPU type table is static; from_float of q8_0 writes k / 32 blocks of
        // 34 bytes, which `want` has room for.
        let want: Vec<u8> = unsafe {
            sys::ggml_cpu_init();
            let from_float = (*sys::ggml_get_type_traits_cpu(GgmlType::Q8_0.id()))
                .from_float
                .unwrap();
            let mut want = vec![0u8; m * q8_0_row_bytes(k)];
            for c in 0..m {
                from_float(
                    cols[c * k..].as_ptr(),
                    want[c * q8_0_row_bytes(k)..].as_mut_ptr().cast(),
                    k as i64,
                );
            }
            want
        };
        for path in [Path::Best, Path::Scalar] {
            let got = quantize(path, &cols, k);
            for c in 0..m {
                let col = &got[c * xq_stride(k)..];
                for b in 0..k / 32 {
                    let blk = &want[c * q8_0_row_bytes(k) + b * 34..][..34];
                    assert_eq!(&col[b * 32..b * 32 + 32], &blk[2..], "{path:?} {c} {b}");
                    let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    assert_eq!(col[k + 4 * b..k + 4 * b + 4], d.to_le_bytes(), "{path:?}");
                    let sum: i32 = blk[2..].iter().map(|&q| q as i8 as i32).sum();
                    let at = k + k / 8 + 4 * b;
                    assert_eq!(col[at..at + 4], (d * sum as f32).to_le_bytes(), "{path:?}");
                }
            }
        }
    }

    #[test]
    fn decoders_agree_with_ggml_dequantization() {
        for ty in WeightType::ALL {
            let k = 4864;
            let (n, row) = (3, ty.row_bytes(k));
            let w = weights(ty, k, n, 5);
            let want = quant::dequantize(ty.ggml(), &w).unwrap();
            let mut all = Vec::new();
            for r in 0..n {
                let row_bytes = &w[r * row..(r + 1) * row];
                for b in 0..k / 32 {
                    let (d, o, v) = reference_block(ty, row_bytes, b);
                    let (dk, ok, vk) = decode_block(ty, row_bytes, b);
                    assert_eq!(dk.to_bits(), d.to_bits(), "{ty:?} block {b}");
                    assert_eq!(ok.to_bits(), o.to_bits(), "{ty:?} block {b}");
                    for i in 0..32 {
                        assert_eq!(vk[i] as i32, v[i], "{ty:?} block {b} value {i}");
                        let ggml = want[r * k + b * 32 + i];
                        // ggml's C may contract d * v - o into one fma.
                        let (plain, fused) = (v[i] as f32 * d - o, (v[i] as f32).mul_add(d, -o));
                        assert!(
                            ggml.to_bits() == plain.to_bits() || ggml.to_bits() == fused.to_bits(),
                            "{ty:?} block {b} value {i}: {ggml} vs {plain}"
                        );
                    }
                    all.extend(v);
                }
            }
            // The extremes are present: both ends of each type's range.
            let (lo, hi) = match ty {
                WeightType::Q8_0 => (-128, 127),
                WeightType::Q5_0 => (-16, 15),
                WeightType::Q4_0 => (-8, 7),
                WeightType::Q4K => (0, 15),
            };
            assert_eq!(all.iter().min(), Some(&lo), "{ty:?}");
            assert_eq!(all.iter().max(), Some(&hi), "{ty:?}");
        }
    }

    #[test]
    fn kernels_equal_the_integer_reference() {
        for ty in WeightType::ALL {
            for (i, &(k, n, m)) in [
                (32, 1, 1),
                (64, 13, 7),
                (96, 21, 9),
                (256, 9, 7),
                (768, 21, 9),
                (896, 40, 17),
                (4864, 12, 5),
                (4864, 19, 6),
            ]
            .iter()
            .enumerate()
            .filter(|(_, &(k, _, _))| k % ty.block_values() == 0)
            {
                let w = weights(ty, k, n, i as u64);
                let mut x = noise(k * m, 100 + i as u64, 4.0);
                if m > 2 {
                    // Extreme activations: a zero column, a column of huge values with one
                    // zero block, and one value per block far above the rest.
                    x[..k].fill(0.0);
                    for (j, v) in x[k..2 * k].iter_mut().enumerate() {
                        *v = if j < 32 {
                            0.0
                        } else {
                            3.0e4 * (j % 7) as f32 - 9.0e4
                        };
                    }
                    for v in x[2 * k..].iter_mut().step_by(32) {
                        *v = 1.0e3;
                    }
                }
                let xq = quantize(Path::Best, &x, k);
                assert_eq!(xq, quantize(Path::Scalar, &x, k));
                let want = reference(ty, &w, k, n, &xq, m);
                for path in [Path::Best, Path::Avx2, Path::Scalar] {
                    for nth in [1, 2, 3] {
                        let got = product(path, ty, &w, k, n, &xq, m, nth);
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{ty:?} {path:?}, {nth} threads, k {k} n {n} m {m}"
                        );
                    }
                }
                let mut out = vec![0f32; n * m];
                gemm_typed(ty, &w, k, n, &xq, m, &mut out);
                assert_eq!(out, want, "{ty:?}");
                if ty == WeightType::Q8_0 {
                    gemm(&w, k, n, &xq, m, &mut out);
                    assert_eq!(out, want);
                }
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap();
                out.fill(f32::NAN);
                gemm_typed_parallel(&pool, ty, &w, k, n, &xq, m, &mut out);
                assert_eq!(out, want, "{ty:?} parallel");
            }
        }
    }

    #[test]
    fn weight_types_map_to_ggml() {
        for ty in WeightType::ALL {
            assert_eq!(WeightType::from_ggml(ty.ggml()), Some(ty));
            assert_eq!(ty.block_bytes() as u64, ty.ggml().type_size());
            assert_eq!(ty.ggml().block_size(), ty.block_values() as u64);
        }
        assert_eq!(WeightType::from_ggml(GgmlType::Q4_1), None);
        assert_eq!(WeightType::from_ggml(GgmlType::Q6_K), None);
    }
}
