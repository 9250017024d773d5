//! Quantization error per type on the 0.5b synthetic shape (`cargo bench -p unmask-tests --bench
//! quant_error`): every weight of the model is generated, quantized with the type each policy
//! chooses, dequantized, and compared with the f32 source. Prints a Markdown table of relative
//! RMSE (over all weights) and bits per weight (over the whole file).

use std::time::Instant;
use unmask_dream::layout::tensor_specs;
use unmask_kernels::quant;
use unmask_quantize::mix::{choose_type, Target};
use unmask_quantize::synth::{Preset, SynthModel};

const TARGETS: [&str; 9] = [
    "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k", "q4_k_m", "q4_k", "q4_0",
];

#[derive(Default, Clone)]
struct Tally {
    err2: f64,
    sig2: f64,
    bytes: u64,
    worst: f64,
}

fn main() {
    let preset = match std::env::var("UNMASK_BENCH_PRESET").as_deref() {
        Ok("tiny") => Preset::Tiny,
        _ => Preset::HalfB,
    };
    let model = SynthModel::new(preset, 0).expect("synth model");
    let c = model.config.clone();
    let targets: Vec<Target> = TARGETS.iter().map(|t| t.parse().expect("target")).collect();
    let mut tallies = vec![Tally::default(); targets.len()];
    let mut n_params = 0u64;
    let start = Instant::now();
    let mut rows = Vec::new();
    let mut back = Vec::new();
    for (index, spec) in tensor_specs(&c).iter().enumerate() {
        let row_len = *spec.hf_shape.last().unwrap_or(&1);
        let n_rows: u64 = spec.hf_shape.iter().rev().skip(1).product();
        n_params += row_len * n_rows;
        let chunk = ((16u64 << 20) / row_len).max(1);
        let mut tensor: Vec<Tally> = vec![Tally::default(); targets.len()];
        let mut row = 0;
        while row < n_rows {
            let take = chunk.min(n_rows - row);
            rows.clear();
            model.rows(index, spec, row, take, &mut rows);
            for (t, target) in targets.iter().enumerate() {
                let ty = choose_type(
                    *target,
                    spec.role,
                    spec.layer,
                    c.num_hidden_layers,
                    row_len,
                    c.tie_word_embeddings,
                );
                let q = quant::quantize_rows(ty, &rows, row_len as usize).expect("quantize");
                back.clear();
                quant::dequantize_into(ty, &q, &mut back).expect("dequantize");
                let tally = &mut tensor[t];
                tally.bytes += q.len() as u64;
                for (a, b) in rows.iter().zip(&back) {
                    tally.err2 += f64::from(a - b).powi(2);
                    tally.sig2 += f64::from(*a).powi(2);
                }
            }
            row += take;
        }
        for (total, t) in tallies.iter_mut().zip(tensor) {
            let rel = if t.sig2 > 0.0 {
                (t.err2 / t.sig2).sqrt()
            } else {
                0.0
            };
            total.err2 += t.err2;
            total.sig2 += t.sig2;
            total.bytes += t.bytes;
            total.worst = total.worst.max(rel);
        }
    }
    println!(
        "quantization error on the {preset:?} synthetic shape ({n_params} parameters, {:.0} s)\n",
        start.elapsed().as_secs_f64()
    );
    println!("| type | bits/weight | relative RMSE (all weights) | worst tensor |");
    println!("|---|---|---|---|");
    for (name, t) in TARGETS.iter().zip(&tallies) {
        println!(
            "| {name} | {:.2} | {:.5} | {:.5} |",
            t.bytes as f64 * 8.0 / n_params as f64,
            (t.err2 / t.sig2).sqrt(),
            t.worst
        );
    }
}
