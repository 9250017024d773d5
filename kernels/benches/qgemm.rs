//! q8_0, q5_0 and q4_0 weight x f32 activation products on the Qwen2.5-0.5B layer shapes
//! (M = 286 canvas columns by default, `UNMASK_BENCH_M`): ggml's `mul_mat` (llamafile tinyBLAS)
//! against `unmask_kernels::simd::qgemm`, as a ggml graph op (`Graph::mul_mat_q8`, on ggml's thread
//! pool) and called directly (on a rayon pool), all on the same number of threads (2 by default,
//! `UNMASK_BENCH_THREADS`), timed interleaved in one process (every weight type and shape in
//! each round); each time includes quantizing the activations. The weight types are
//! `UNMASK_BENCH_TYPES` (default `q8_0,q5_0,q4_0`). Run:
//! `cargo bench -p unmask-kernels --bench qgemm`.

use std::time::Instant;
use unmask_kernels::backend::Backend;
use unmask_kernels::graph::{Graph, TensorId};
use unmask_kernels::simd::qgemm::{self, WeightType};
use unmask_kernels::{quant, GgmlType};

const SHAPES: [(&str, usize, usize); 7] = [
    ("q", 896, 896),
    ("k", 896, 128),
    ("v", 896, 128),
    ("o", 896, 896),
    ("gate", 896, 4864),
    ("up", 896, 4864),
    ("down", 4864, 896),
];

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

struct Case {
    ty: WeightType,
    name: &'static str,
    k: usize,
    n: usize,
    wq: Vec<u8>,
    x: Vec<f32>,
    ggml: Graph,
    gx: TensorId,
    gy: TensorId,
    op: Graph,
    ox: TensorId,
    oy: TensorId,
    xq: Vec<u8>,
    y: Vec<f32>,
}

fn main() {
    let threads: usize = std::env::var("UNMASK_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let reps: usize = std::env::var("UNMASK_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let m: usize = std::env::var("UNMASK_BENCH_M")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(286);
    let mut backend = Backend::new(threads).expect("backend");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let types: Vec<WeightType> = std::env::var("UNMASK_BENCH_TYPES")
        .unwrap_or_else(|_| "q8_0,q5_0,q4_0".into())
        .split(',')
        .map(|t| match t.trim() {
            "q8_0" => WeightType::Q8_0,
            "q5_0" => WeightType::Q5_0,
            "q4_0" => WeightType::Q4_0,
            other => panic!("UNMASK_BENCH_TYPES: unknown weight type {other}"),
        })
        .collect();
    let mut cases: Vec<Case> = types
        .iter()
        .flat_map(|&ty| SHAPES.iter().enumerate().map(move |(i, &s)| (ty, i, s)))
        .map(|(ty, i, (name, k, n))| {
            let w = noise(k * n, 2 * i as u64 + 1, 0.1);
            let x = noise(k * m, 2 * i as u64 + 2, 2.0);
            let gty = ty.ggml();
            let wq = quant::quantize_rows(gty, &w, k).expect("quantize");
            let mut g = Graph::new(8).expect("graph");
            let gw = g.input(gty, &[k as i64, n as i64]).expect("w");
            let gx = g.input(GgmlType::F32, &[k as i64, m as i64]).expect("x");
            let gy = g.mul_mat(gw, gx).expect("mul_mat");
            g.allocate(&[gy], &backend).expect("allocate");
            g.set_bytes(gw, &wq).expect("set w");
            let mut o = Graph::new(8).expect("graph");
            let ow = o.input(gty, &[k as i64, n as i64]).expect("w");
            let ox = o.input(GgmlType::F32, &[k as i64, m as i64]).expect("x");
            assert!(o.can_mul_mat_q8(ow, ox).expect("can"), "no fast path");
            let oy = o.mul_mat_q8(ow, ox).expect("mul_mat_q8");
            o.allocate(&[oy], &backend).expect("allocate");
            o.set_bytes(ow, &wq).expect("set w");
            Case {
                ty,
                name,
                k,
                n,
                wq,
                x,
                ggml: g,
                gx,
                gy,
                op: o,
                ox,
                oy,
                xq: vec![0; m * qgemm::xq_stride(k)],
                y: vec![0.0; n * m],
            }
        })
        .collect();
    println!(
        "{types:?} [K x N] x f32 [K x {m}], {reps} interleaved runs (all types and shapes in \
         each)"
    );
    // Correctness first (and warm-up).
    for c in &mut cases {
        c.ggml.set_f32(c.gx, &c.x).unwrap();
        c.ggml.compute(&mut backend).unwrap();
        qgemm::quantize_activations_parallel(&pool, &c.x, c.k, &mut c.xq);
        qgemm::gemm_typed_parallel(&pool, c.ty, &c.wq, c.k, c.n, &c.xq, m, &mut c.y);
        c.op.set_f32(c.ox, &c.x).unwrap();
        c.op.compute(&mut backend).unwrap();
        let want = c.ggml.read_f32(c.gy).unwrap();
        assert_eq!(
            c.op.read_f32(c.oy).unwrap(),
            &c.y[..],
            "op and direct call differ"
        );
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = want
            .iter()
            .zip(&c.y)
            .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
        println!(
            "  {:?} {:<5} max |ggml - qgemm| / max |ggml| = {:.2e}",
            c.ty,
            c.name,
            err / scale
        );
    }
    // One thread, the calling one: thread CPU time is immune to other processes' load.
    let mut one = Backend::new(1).expect("backend");
    let mut cpu = vec![[Vec::new(), Vec::new()]; cases.len()];
    for _ in 0..reps {
        for (c, t) in cases.iter_mut().zip(&mut cpu) {
            c.ggml.set_f32(c.gx, &c.x).unwrap();
            let start = thread_cpu_ms();
            c.ggml.compute(&mut one).unwrap();
            t[0].push(thread_cpu_ms() - start);
            c.op.set_f32(c.ox, &c.x).unwrap();
            let start = thread_cpu_ms();
            c.op.compute(&mut one).unwrap();
            t[1].push(thread_cpu_ms() - start);
        }
    }
    println!("1 thread, thread CPU time (min / median ms):");
    report(&cases, &mut cpu, &["ggml", "mul_mat_q8"]);
    let mut times = vec![[Vec::new(), Vec::new(), Vec::new()]; cases.len()];
    for _ in 0..reps {
        for (c, t) in cases.iter_mut().zip(&mut times) {
            c.ggml.set_f32(c.gx, &c.x).unwrap();
            let start = Instant::now();
            c.ggml.compute(&mut backend).unwrap();
            t[0].push(start.elapsed().as_secs_f64() * 1e3);
            c.op.set_f32(c.ox, &c.x).unwrap();
            let start = Instant::now();
            c.op.compute(&mut backend).unwrap();
            t[1].push(start.elapsed().as_secs_f64() * 1e3);
            let start = Instant::now();
            qgemm::quantize_activations_parallel(&pool, &c.x, c.k, &mut c.xq);
            qgemm::gemm_typed_parallel(&pool, c.ty, &c.wq, c.k, c.n, &c.xq, m, &mut c.y);
            t[2].push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!("{threads} threads, wall time (min / median ms):");
    report(&cases, &mut times, &["ggml", "mul_mat_q8", "rayon"]);
}

/// Per weight type: per shape and summed over the layer, min and median of each variant, and
/// the speed-up of each over the first (ggml) by both.
fn report<const V: usize>(cases: &[Case], times: &mut [[Vec<f64>; V]], names: &[&str; V]) {
    let mut start = 0;
    while start < cases.len() {
        let ty = cases[start].ty;
        let end = start + cases[start..].iter().take_while(|c| c.ty == ty).count();
        report_type(&cases[start..end], &mut times[start..end], names);
        start = end;
    }
}

fn report_type<const V: usize>(cases: &[Case], times: &mut [[Vec<f64>; V]], names: &[&str; V]) {
    let mut head = format!("  {:<6}shape   K     N  ", format!("{:?}", cases[0].ty));
    for (i, name) in names.iter().enumerate() {
        head += &format!(" {name:>16}");
        if i > 0 {
            head += "  speed-up (min/med)";
        }
    }
    println!("{head}");
    let mut sums = [[0.0; 2]; V];
    let line = |label: String, stats: &[[f64; 2]; V]| {
        let mut s = label;
        for (i, st) in stats.iter().enumerate() {
            s += &format!(" {:>7.2} / {:>6.2}", st[0], st[1]);
            if i > 0 {
                s += &format!(
                    "  {:>6.2}x / {:>5.2}x ",
                    stats[0][0] / st[0],
                    stats[0][1] / st[1]
                );
            }
        }
        println!("{s}");
    };
    for (c, t) in cases.iter().zip(times.iter_mut()) {
        let stats: [[f64; 2]; V] = std::array::from_fn(|i| {
            let v = &mut t[i];
            v.sort_by(f64::total_cmp);
            [v[0], v[v.len() / 2]]
        });
        for (s, st) in sums.iter_mut().zip(&stats) {
            s[0] += st[0];
            s[1] += st[1];
        }
        line(
            format!("        {:<5} {:>5} {:>5}", c.name, c.k, c.n),
            &stats,
        );
    }
    line(format!("        {:<17}", "layer"), &sums);
}

/// CPU time of the calling thread in ms (Linux).
fn thread_cpu_ms() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a valid clock id and a writable timespec of the C layout.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.sec as f64 * 1e3 + ts.nsec as f64 * 1e-6
}
