//! The f32 matrix products of a training graph as one blocked GEMM. ggml's automatic
//! differentiation computes the gradient of every `mul_mat` operand `a` as `out_prod(b, grad)`,
//! and ggml's CPU `out_prod` is a loop of vector multiply-adds that runs at a fraction of the
//! speed of its matrix products (in a training step of a 5 M-parameter model it took about 45% of
//! the time); its f32 `mul_mat` uses a GEMM built for AVX2 only, and a dot-product loop for
//! strided operands (attention's permuted heads). [`Graph::allocate_with_gradients`] therefore
//! turns every f32 `out_prod` and `mul_mat` node of a graph with gradients, once the backward
//! pass is built, into a custom operation with the same sources, shape and meaning, computed by
//! `matrixmultiply`'s packed, cache-blocked `sgemm` (kernels chosen at run time: AVX-512, AVX2
//! with FMA, or portable code) on the backend's thread pool. Operands are read through their
//! strides, so transposed and permuted views need no copy.
//!
//! Both are, per `(i2, i3)` slice, `dst (ne1 x ne0, row i1) = L (ne1 x K) * R (K x ne0)`:
//! - `out_prod(a, b)`: `dst[i0, i1] = sum_k a[i0, k] * b[i1, k]`, so `L = b`, `R = a^T`;
//! - `mul_mat(a, b)`: `dst[i0, i1] = sum_k a[k, i0] * b[k, i1]`, so `L = b^T`, `R = a`;
//!
//! with `a` broadcast over dimensions 2 and 3 (slice `i2` reads `a`'s slice `i2 / (ne2 / a.ne2)`).

use llama_cpp_sys_2 as sys;
use std::os::raw::{c_int, c_void};

/// ggml's GGML_N_TASKS_MAX (a macro the bindings lack): one task per thread of the pool.
const N_TASKS_MAX: c_int = -1;

/// Which product a custom node computes (its user data).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum Product {
    OutProd = 1,
    MulMat = 2,
}

impl Product {
    fn of(op: sys::ggml_op) -> Option<Self> {
        match op {
            sys::GGML_OP_OUT_PROD => Some(Product::OutProd),
            sys::GGML_OP_MUL_MAT => Some(Product::MulMat),
            _ => None,
        }
    }

    fn from_userdata(p: *mut c_void) -> Option<Self> {
        match p as usize {
            1 => Some(Product::OutProd),
            2 => Some(Product::MulMat),
            _ => None,
        }
    }
}

/// Whether `t` is an f32 tensor whose strides are whole elements (what the GEMM addresses).
///
/// # Safety
/// `t` must be a live tensor.
unsafe fn f32_elements(t: *const sys::ggml_tensor) -> bool {
    let t = &*t;
    t.type_ == sys::GGML_TYPE_F32 && t.nb.iter().all(|&nb| nb % 4 == 0)
}

/// Replaces every f32 `out_prod` and `mul_mat` node of `graph` by the GEMM operation (module
/// documentation) and returns how many it replaced. Runs after the backward pass is built (which
/// needs ggml's own operations) and before the graph is allocated.
///
/// # Safety
/// `ctx` is the live context of the live `graph`'s tensors, and the graph is computed on the CPU
/// backend (custom operations run on its thread pool only).
pub(super) unsafe fn replace_products(
    ctx: *mut sys::ggml_context,
    graph: *mut sys::ggml_cgraph,
) -> usize {
    let mut replaced = 0;
    for i in 0..sys::ggml_graph_n_nodes(graph) {
        let node = sys::ggml_graph_node(graph, i);
        let Some(product) = Product::of((*node).op) else {
            continue;
        };
        let (a, b) = ((*node).src[0], (*node).src[1]);
        if a.is_null() || b.is_null() || !f32_elements(a) || !f32_elements(b) {
            continue;
        }
        if !f32_elements(node) || (*node).nb[0] != 4 {
            continue;
        }
        // A new tensor description must fit in the context (ggml aborts otherwise); without
        // room the remaining nodes keep ggml's operation, which computes the same values.
        let free = sys::ggml_get_mem_size(ctx).saturating_sub(sys::ggml_used_mem(ctx));
        if free < 2 * sys::ggml_tensor_overhead() {
            break;
        }
        // ggml builds the custom operation's parameters (its own layout); the node then takes
        // that operation and those parameters over, keeping its identity, shape, memory and
        // sources, so the graph and its gradients stay wired as they were.
        let ne = (*node).ne;
        let mut args = [a, b];
        let custom = sys::ggml_custom_4d(
            ctx,
            sys::GGML_TYPE_F32,
            ne[0],
            ne[1],
            ne[2],
            ne[3],
            args.as_mut_ptr(),
            2,
            Some(product_gemm),
            N_TASKS_MAX,
            product as usize as *mut c_void,
        );
        if custom.is_null() {
            break;
        }
        (*node).op = (*custom).op;
        (*node).op_params = (*custom).op_params;
        (*node).src = (*custom).src;
        replaced += 1;
    }
    replaced
}

/// An operand of the GEMM: element `(r, c)` of slice `(i2, i3)` is at
/// `data + r * row + c * col + (i2 / div2) * nb2 + (i3 / div3) * nb3` (strides in bytes).
struct Operand {
    data: *const u8,
    row: usize,
    col: usize,
    nb2: usize,
    nb3: usize,
    div2: i64,
    div3: i64,
}

impl Operand {
    /// `t` read with its rows along dimension `rows` (0 or 1) and columns along the other,
    /// slice `(i2, i3)` at `(i2 / div2, i3 / div3)`.
    fn of(t: &sys::ggml_tensor, rows: usize, div2: i64, div3: i64) -> Self {
        Operand {
            data: t.data as *const u8,
            row: t.nb[rows],
            col: t.nb[1 - rows],
            nb2: t.nb[2],
            nb3: t.nb[3],
            div2,
            div3,
        }
    }

    /// # Safety
    /// The offset stays inside the tensor for the slice and the first row given.
    unsafe fn at(&self, row: i64, i2: i64, i3: i64) -> *const f32 {
        self.data.add(
            row as usize * self.row
                + (i2 / self.div2) as usize * self.nb2
                + (i3 / self.div3) as usize * self.nb3,
        ) as *const f32
    }
}

/// The custom operation: `dst = product(src[0], src[1])`, the work split into units (whole
/// slices when there are at least as many slices as tasks, else each slice's rows cut into one
/// block per task), task `ith` of `nth` taking units `ith, ith + nth, ...`; each unit is one
/// GEMM call.
///
/// # Safety
/// Called by ggml's CPU backend for a node made by [`replace_products`]: `dst` and its two
/// sources are live, allocated f32 tensors in host memory with the shapes ggml's product asserts
/// (checked again here), `dst` does not overlap its sources (custom operations are never
/// computed in place), and the tasks write disjoint rows of `dst`.
unsafe extern "C" fn product_gemm(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    userdata: *mut c_void,
) {
    let d = &*dst;
    let (a, b) = (&*d.src[0], &*d.src[1]);
    let ne = d.ne;
    let Some(product) = Product::from_userdata(userdata) else {
        return; // unreachable for nodes made by replace_products
    };
    // K, and the shape rules of ggml's operation.
    let (k, fits) = match product {
        Product::OutProd => (
            a.ne[1],
            a.ne[0] == ne[0] && b.ne[0] == ne[1] && b.ne[1] == a.ne[1],
        ),
        Product::MulMat => (
            a.ne[0],
            a.ne[1] == ne[0] && b.ne[1] == ne[1] && b.ne[0] == a.ne[0],
        ),
    };
    let fits = fits
        && b.ne[2] == ne[2]
        && b.ne[3] == ne[3]
        && a.ne[2] > 0
        && a.ne[3] > 0
        && ne[2] % a.ne[2] == 0
        && ne[3] % a.ne[3] == 0;
    if !fits || nth < 1 || ith < 0 {
        return; // unreachable for nodes made by replace_products
    }
    let (div2, div3) = (ne[2] / a.ne[2], ne[3] / a.ne[3]);
    // L (ne1 x K) from b, R (K x ne0) from a: out_prod reads b and a^T as they are stored
    // (rows along dimension 0), mul_mat reads b^T and a (rows along dimension 1).
    let (l_rows, r_rows) = match product {
        Product::OutProd => (0, 1),
        Product::MulMat => (1, 0),
    };
    let l = Operand::of(b, l_rows, 1, 1);
    let r = Operand::of(a, r_rows, div2, div3);
    let slices = ne[2] * ne[3];
    let blocks = if slices >= nth as i64 { 1 } else { nth as i64 };
    // Rows per block, a multiple of 16 (the GEMM's register tile) where the rows allow.
    let row_block = ((ne[1] + blocks - 1) / blocks + 15) / 16 * 16;
    let blocks = (ne[1] + row_block - 1) / row_block.max(1);
    let units = blocks * slices;
    let el = |nb: usize| (nb / 4) as isize;
    let mut unit = ith as i64;
    while unit < units {
        let (slice, block) = (unit / blocks, unit % blocks);
        let (i2, i3) = (slice % ne[2], slice / ne[2]);
        let r0 = block * row_block;
        let rows = row_block.min(ne[1] - r0);
        let c_ptr = (d.data as *mut u8)
            .add(r0 as usize * d.nb[1] + i2 as usize * d.nb[2] + i3 as usize * d.nb[3])
            as *mut f32;
        matrixmultiply::sgemm(
            rows as usize,
            k as usize,
            ne[0] as usize,
            1.0,
            l.at(r0, i2, i3),
            el(l.row),
            el(l.col),
            r.at(0, i2, i3),
            el(r.row),
            el(r.col),
            0.0,
            c_ptr,
            el(d.nb[1]),
            el(d.nb[0]),
        );
        unit += nth as i64;
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::Backend;
    use crate::graph::Graph;
    use crate::GgmlType;

    /// `mul_mat` of a permuted, head-broadcast pair (attention's shape), with ggml's product and
    /// with the GEMM: the same values up to summation order.
    #[test]
    fn gemm_products_equal_ggml_products() {
        let (d, t, heads, kv, batch) = (16i64, 7i64, 4i64, 2i64, 3i64);
        let fill = |n: i64, s: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * s).sin()).collect() };
        let (qv, kvv) = (fill(d * heads * t * batch, 0.37), fill(d * kv * t, 0.11));
        let mut backend = Backend::new(2).unwrap();
        let mut outs = Vec::new();
        for gemm in [false, true] {
            let mut g = Graph::new(16).unwrap();
            if gemm {
                g.use_gemm_products().unwrap();
            }
            let q = g.input(GgmlType::F32, &[d, heads, t, batch]).unwrap();
            let k = g.input(GgmlType::F32, &[d, kv, t]).unwrap();
            let qp = g.permute(q, [0, 2, 1, 3]).unwrap(); // [d, t, heads, batch]
            let kp = g.permute(k, [0, 2, 1, 3]).unwrap(); // [d, t, kv]
            let scores = g.mul_mat(kp, qp).unwrap(); // [t, t, heads, batch]
            let kt = g.transpose(kp).unwrap(); // a transposed operand: [t, d, kv]
            let kt = g.cont(kt).unwrap();
            let back = g.mul_mat(kt, scores).unwrap(); // [d, t, heads, batch]
            g.allocate(&[scores, back], &backend).unwrap();
            g.set_f32(q, &qv).unwrap();
            g.set_f32(k, &kvv).unwrap();
            g.compute(&mut backend).unwrap();
            outs.push((
                g.read_f32(scores).unwrap().to_vec(),
                g.read_f32(back).unwrap().to_vec(),
            ));
        }
        for (a, b) in [(&outs[0].0, &outs[1].0), (&outs[0].1, &outs[1].1)] {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b.iter()) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
            }
        }
        assert!(outs[0].1.iter().any(|&v| v != 0.0));
    }
}
