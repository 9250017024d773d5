//! Matrix-product throughput of the linked ggml CPU build (`cargo bench -p unmask-tests --bench
//! matmul`): a 4096x4096 weight in each type times a 4096x256 f32 activation (a 256-token canvas),
//! on 2 threads by default (`UNMASK_BENCH_THREADS`). Prints GFLOP/s and each type's speed
//! relative to f32 in the same run, then the same q8_0 product through unmask's own int8 GEMM
//! (the kernel `unmask devices` names; `UNMASK_Q8_KERNEL=avx2` restricts it to AVX2, for a
//! side-by-side run on a VNNI machine).

use std::time::Instant;
use unmask_kernels::backend::{cpu_features, Backend};
use unmask_kernels::graph::Graph;
use unmask_kernels::simd::qgemm;
use unmask_kernels::{quant, GgmlType};

fn main() {
    let threads: usize = std::env::var("UNMASK_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let (k, n, m) = (4096usize, 4096usize, 256usize);
    let weights: Vec<f32> = (0..k * n)
        .map(|i| (((i * 2_654_435_761) % 10_007) as f32 / 10_007.0 - 0.5) * 0.1)
        .collect();
    let input: Vec<f32> = (0..k * m)
        .map(|i| ((i * 40_503) % 997) as f32 / 997.0 - 0.5)
        .collect();
    println!("ggml CPU build features: {}", cpu_features().join(" "));
    println!("matmul [{k} x {n}] weight x [{k} x {m}] f32 input, {threads} threads");
    let mut baseline = None;
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let data = quant::quantize_rows(ty, &weights, k).expect("quantize");
        let mut backend = Backend::new(threads).expect("backend");
        let mut g = Graph::new(8).expect("graph");
        let w = g.input(ty, &[k as i64, n as i64]).expect("w");
        let x = g.input(GgmlType::F32, &[k as i64, m as i64]).expect("x");
        let y = g.mul_mat(w, x).expect("mul_mat");
        g.allocate(&[y], &backend).expect("allocate");
        g.set_bytes(w, &data).expect("set w");
        g.set_f32(x, &input).expect("set x");
        g.compute(&mut backend).expect("warm-up");
        let mut times = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            g.compute(&mut backend).expect("compute");
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let gflops = 2.0 * (k * n * m) as f64 / median / 1e9;
        let base = *baseline.get_or_insert(gflops);
        println!(
            "  {:<5} {:>8.1} GFLOP/s  ({:.2}x f32)  median of 5: {:.1} ms",
            ty.name(),
            gflops,
            gflops / base,
            median * 1e3
        );
    }
    if !qgemm::has_simd() {
        println!("  unmask q8_0 GEMM: not run (no AVX2, FMA and F16C)");
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let w = quant::quantize_rows(GgmlType::Q8_0, &weights, k).expect("quantize");
    let mut xq = vec![0u8; m * qgemm::xq_stride(k)];
    let mut out = vec![0f32; n * m];
    let mut times = Vec::new();
    for i in 0..6 {
        let start = Instant::now();
        qgemm::quantize_activations_parallel(&pool, &input, k, &mut xq);
        qgemm::gemm_typed_parallel(&pool, qgemm::WeightType::Q8_0, &w, k, n, &xq, m, &mut out);
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "  unmask q8_0 GEMM ({}): {:>8.1} GFLOP/s  median of 5: {:.1} ms (activations quantized included)",
        qgemm::kernel_name(),
        2.0 * (k * n * m) as f64 / median / 1e9,
        median * 1e3
    );
}
