//! Loss and parameter gradients for fixed inputs (`unmask-train grad`): the coupled-GRPO loss of
//! one mask seed and the masked-diffusion SFT loss, read from and written to the file format of
//! the PyTorch reference `tests/python/grpo_reference.py` (see `GRPO_REFERENCE.md`), so the two
//! can be compared tensor by tensor.
//!
//! Every `(row, pass)` sequence is run through the policy's forward graph; the host computes the
//! log-probabilities, the loss and the per-token weights `w = dLoss/dlp` (f64), turns them into
//! `dLoss/dlogits` rows (`w * (onehot - softmax)` at the row that predicts the token, zero
//! elsewhere) and the gradient graph accumulates their parameter gradients over all sequences.

use crate::batch::{run_jobs, GraphCache, RowJob};
use crate::objective::{grpo, GrpoTerms};
use crate::policy::{Gradients, Policy};
use crate::tensor_file::{read_arrays, write_f32, Array};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use unmask_kernels::backend::Backend;

/// Which loss to differentiate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    CoupledGrpo,
    /// Masked-diffusion SFT; `per_row` selects the `rows` normalisation (LLaDA), else `tokens`.
    Sft {
        per_row: bool,
    },
}

/// A loss value, named per-token tensors `(name, shape, values)` and the parameter gradients.
pub struct GradOutput {
    pub loss: f64,
    pub tensors: Vec<(String, Vec<usize>, Vec<f64>)>,
    pub grads: Gradients,
}

fn get<'a>(inputs: &'a BTreeMap<String, Array>, name: &str) -> Result<&'a Array> {
    inputs
        .get(name)
        .ok_or_else(|| Error::InvalidArgument(format!("input file lacks `{name}`")))
}

fn check_shape(name: &str, a: &Array, shape: &[usize]) -> Result<()> {
    if a.shape != shape {
        return Err(Error::InvalidArgument(format!(
            "`{name}` has shape {:?}, expected {shape:?}",
            a.shape
        )));
    }
    Ok(())
}

/// One value, or one per row.
fn per_row(name: &str, a: &Array, n: usize) -> Result<Vec<f64>> {
    match a.data.len() {
        1 => Ok(vec![a.data[0]; n]),
        m if m == n => Ok(a.data.clone()),
        m => Err(Error::InvalidArgument(format!(
            "`{name}` must hold 1 or N={n} values, has {m}"
        ))),
    }
}

fn token(v: f64, n_vocab: usize, what: &str) -> Result<u32> {
    if v.fract() != 0.0 || v < 0.0 || v >= n_vocab as f64 {
        return Err(Error::InvalidArgument(format!(
            "{what} {v} is not a token id below the vocabulary size {n_vocab}"
        )));
    }
    Ok(v as u32)
}

/// `seqs` `[N, L]` as token ids, with N and L.
fn sequences(inputs: &BTreeMap<String, Array>, n_vocab: usize) -> Result<(Vec<Vec<u32>>, usize)> {
    let seqs = get(inputs, "seqs")?;
    let &[n, len] = seqs.shape.as_slice() else {
        return Err(Error::InvalidArgument(format!(
            "`seqs` must be [N, L], has shape {:?}",
            seqs.shape
        )));
    };
    if n == 0 || len < 2 {
        return Err(Error::InvalidArgument("`seqs` is empty".into()));
    }
    let rows = seqs
        .data
        .chunks(len)
        .map(|r| r.iter().map(|&v| token(v, n_vocab, "seqs entry")).collect())
        .collect::<Result<_>>()?;
    Ok((rows, len))
}

fn mask_id(inputs: &BTreeMap<String, Array>, policy: &Policy) -> Result<u32> {
    let n_vocab = policy.n_vocab();
    match inputs.get("mask_id") {
        Some(a) => token(a.scalar("mask_id")?, n_vocab, "mask_id"),
        None => policy.config.mask_token_id.ok_or_else(|| {
            Error::InvalidArgument("no `mask_id` input and the model has no mask token".into())
        }),
    }
}

/// The coupled per-token log-probability estimate (docs/training.md §4) of `seqs` (all of length
/// `prompt_len + K`) without gradients: three forward passes per row (completion fully masked,
/// masked where `mask_a`, masked where not), combined as
/// `0.5 * (lp_full + lp_a / t)` where `mask_a`, `0.5 * (lp_full + lp_b / (1 - t))` elsewhere.
/// `mask_a` is `[N, K]` row-major, `t` one value per row. Returns `[N, K]` row-major. The same
/// arithmetic as [`coupled_grpo`], so old-policy and reference estimates on the same masks equal
/// the current one bit for bit when the parameters are equal.
pub fn coupled_logp(
    policy: &Policy,
    seqs: &[Vec<u32>],
    prompt_len: usize,
    mask_a: &[bool],
    t: &[f64],
    mask_token: u32,
    backend: &mut Backend,
) -> Result<Vec<f64>> {
    let n = seqs.len();
    let Some(len) = seqs.first().map(Vec::len) else {
        return Ok(Vec::new());
    };
    if prompt_len < 1 || prompt_len >= len || seqs.iter().any(|s| s.len() != len) {
        return Err(Error::InvalidArgument(format!(
            "coupled_logp: rows must share one length > prompt_len {prompt_len} >= 1"
        )));
    }
    let k = len - prompt_len;
    if mask_a.len() != n * k || t.len() != n {
        return Err(Error::InvalidArgument(
            "coupled_logp: mask_a must be [N, K] and t hold N values".into(),
        ));
    }
    let inputs: Vec<Vec<u32>> = (0..n)
        .flat_map(|row| (0..3).map(move |pass| (row, pass)))
        .map(|(row, pass)| {
            pass_input(
                &seqs[row],
                prompt_len,
                &mask_a[row * k..(row + 1) * k],
                pass,
                mask_token,
            )
        })
        .collect();
    let jobs: Vec<RowJob<'_>> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| RowJob {
            input: x,
            targets: &seqs[i / 3],
            lp_at: (prompt_len..len).collect(),
            weights: Vec::new(),
        })
        .collect();
    let mut cache = GraphCache::new(coupled_batch(n, len), len);
    let lp = run_jobs(policy, &mut cache, &jobs, None, backend)?;
    let mut out = vec![0.0; n * k];
    for row in 0..n {
        let (full, a, b) = (&lp[row * 3], &lp[row * 3 + 1], &lp[row * 3 + 2]);
        for j in 0..k {
            let partner = if mask_a[row * k + j] {
                a[j] / t[row]
            } else {
                b[j] / (1.0 - t[row])
            };
            out[row * k + j] = 0.5 * (full[j] + partner);
        }
    }
    Ok(out)
}

/// Tokens a coupled-GRPO batch holds at most (its graph's memory grows with them).
const COUPLED_BATCH_TOKENS: usize = 2048;

/// Sequences per batch for the `3 * n` passes of `n` rows of `len` tokens: a function of the
/// shape only, so that [`coupled_logp`] and [`coupled_grpo`] batch (and round) alike.
fn coupled_batch(n: usize, len: usize) -> usize {
    (COUPLED_BATCH_TOKENS / len.max(1)).clamp(1, (3 * n).max(1))
}

/// Pass `pass` of the coupled estimate for one row (docs/training.md §4): 0 masks the whole
/// completion, 1 the positions `mask_a` marks, 2 the others; the prompt is never masked.
fn pass_input(seq: &[u32], prompt_len: usize, mask_a: &[bool], pass: usize, mask: u32) -> Vec<u32> {
    let mut x = seq.to_vec();
    for (j, &a) in mask_a.iter().enumerate() {
        let masked = match pass {
            0 => true,
            1 => a,
            _ => !a,
        };
        if masked {
            x[prompt_len + j] = mask;
        }
    }
    x
}

/// The coupled-GRPO loss of one mask seed (docs/training.md §1, §4) and its gradients.
pub fn coupled_grpo(
    policy: &Policy,
    inputs: &BTreeMap<String, Array>,
    backend: &mut Backend,
) -> Result<GradOutput> {
    let n_vocab = policy.n_vocab();
    let (seqs, len) = sequences(inputs, n_vocab)?;
    let n = seqs.len();
    let p = get(inputs, "prompt_len")?.scalar("prompt_len")?;
    if p.fract() != 0.0 || p < 1.0 || p >= len as f64 {
        return Err(Error::InvalidArgument(format!(
            "prompt_len {p} must be in 1..L-1 (L = {len})"
        )));
    }
    let p = p as usize;
    let k = len - p;
    let mask_a = get(inputs, "mask_a")?;
    check_shape("mask_a", mask_a, &[n, k])?;
    let mask_a: Vec<bool> = mask_a.data.iter().map(|&v| v != 0.0).collect();
    let cmask = get(inputs, "completion_mask")?;
    check_shape("completion_mask", cmask, &[n, k])?;
    let adv = get(inputs, "advantages")?;
    if adv.data.len() != n {
        return Err(Error::InvalidArgument(format!(
            "`advantages` must hold N={n} values, has {}",
            adv.data.len()
        )));
    }
    let t = per_row("t", get(inputs, "t")?, n)?;
    if let Some(bad) = t.iter().find(|t| !(**t > 0.0 && **t < 1.0)) {
        return Err(Error::InvalidArgument(format!(
            "t = {bad} is not in (0, 1)"
        )));
    }
    let beta = get(inputs, "beta")?.scalar("beta")?;
    let clip_eps = get(inputs, "clip_eps")?.scalar("clip_eps")?;
    let optional = |name: &str| -> Result<Option<&Array>> {
        inputs
            .get(name)
            .map(|a| check_shape(name, a, &[n, k]).map(|_| a))
            .transpose()
    };
    let old = optional("old_logp")?;
    let reference = optional("ref_logp")?;
    if beta != 0.0 && reference.is_none() {
        return Err(Error::InvalidArgument(
            "beta != 0 needs `ref_logp` in the input file".into(),
        ));
    }
    let mask = mask_id(inputs, policy)?;

    let inputs: Vec<Vec<u32>> = (0..n)
        .flat_map(|row| (0..3).map(move |pass| (row, pass)))
        .map(|(row, pass)| pass_input(&seqs[row], p, &mask_a[row * k..(row + 1) * k], pass, mask))
        .collect();
    let mut jobs: Vec<RowJob<'_>> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| RowJob {
            input: x,
            targets: &seqs[i / 3],
            lp_at: (p..len).collect(),
            weights: Vec::new(),
        })
        .collect();
    let mut cache = GraphCache::new(coupled_batch(n, len), len);
    let lps = run_jobs(policy, &mut cache, &jobs, None, backend)?;
    let mut lp = [vec![0.0; n * k], vec![0.0; n * k], vec![0.0; n * k]];
    for (i, v) in lps.iter().enumerate() {
        lp[i % 3][(i / 3) * k..(i / 3 + 1) * k].copy_from_slice(v);
    }
    let logp: Vec<f64> = (0..n * k)
        .map(|j| {
            let tr = t[j / k];
            let partner = if mask_a[j] {
                lp[1][j] / tr
            } else {
                lp[2][j] / (1.0 - tr)
            };
            0.5 * (lp[0][j] + partner)
        })
        .collect();
    let result = grpo(&GrpoTerms {
        n,
        k,
        logp: &logp,
        old_logp: old.map(|a| a.data.as_slice()),
        ref_logp: reference.map(|a| a.data.as_slice()),
        advantages: &adv.data,
        completion_mask: &cmask.data,
        beta,
        clip_eps,
    });
    // dLoss/dlp_X: the §5 per-token weights of each pass.
    let mut w = [vec![0.0; n * k], vec![0.0; n * k], vec![0.0; n * k]];
    for j in 0..n * k {
        let tr = t[j / k];
        let d = result.dlogp[j];
        w[0][j] = 0.5 * d;
        if mask_a[j] {
            w[1][j] = 0.5 * d / tr;
        } else {
            w[2][j] = 0.5 * d / (1.0 - tr);
        }
    }
    let mut grads = policy.zero_grads()?;
    for (i, job) in jobs.iter_mut().enumerate() {
        let (row, pass) = (i / 3, i % 3);
        job.lp_at.clear();
        job.weights = (0..k).map(|j| (p + j, w[pass][row * k + j])).collect();
    }
    run_jobs(policy, &mut cache, &jobs, Some(&mut grads), backend)?;
    let shape = vec![n, k];
    let [lp_full, lp_a, lp_b] = lp;
    let [w_full, w_a, w_b] = w;
    let tensors = [
        ("logp", logp),
        ("lp_full", lp_full),
        ("lp_a", lp_a),
        ("lp_b", lp_b),
        ("ratio", result.ratio),
        ("per_token", result.per_token),
        ("dlogp", result.dlogp),
        ("w_full", w_full),
        ("w_a", w_a),
        ("w_b", w_b),
    ]
    .into_iter()
    .map(|(name, v)| (name.to_string(), shape.clone(), v))
    .collect();
    Ok(GradOutput {
        loss: result.loss,
        tensors,
        grads,
    })
}

/// One SFT sequence: tokens, prompt length (>= 1: position 0 is never predicted), the mask
/// ratio `t` of its draw and which positions are masked (`mask.len() == tokens.len()`, never a
/// prompt position).
pub struct SftRow<'a> {
    pub tokens: &'a [u32],
    pub prompt_len: usize,
    pub t: f64,
    pub mask: &'a [bool],
}

/// Loss, per-row `lp` (position `k` at index `k - 1`, k in 1..len; only with
/// [`SftOptions::all_lp`]), masked-token count and the parameter gradients (zero when not
/// requested) of [`sft_rows`].
pub struct SftOutput {
    pub loss: f64,
    pub lp: Option<Vec<Vec<f64>>>,
    pub masked: usize,
    pub grads: Gradients,
}

/// How [`sft_rows`] computes.
#[derive(Clone, Copy, Debug)]
pub struct SftOptions {
    /// The `rows` normalisation (LLaDA) instead of `tokens`.
    pub per_row_norm: bool,
    pub mask_token: u32,
    pub with_grads: bool,
    /// Also return the log-probability of every position, masked or not.
    pub all_lp: bool,
}

/// The masked-diffusion SFT loss (docs/training.md §6) of rows of any lengths:
/// `sum_rows sum_masked CE / t / divisor` with divisor the batch's response-token count
/// (`tokens`) or `rows * response tokens of the row` (`per_row_norm`), and, when `with_grads`,
/// its parameter gradients: one forward and one backward pass per batch of the cache's size.
pub fn sft_rows(
    policy: &Policy,
    rows: &[SftRow<'_>],
    opts: SftOptions,
    cache: &mut GraphCache,
    backend: &mut Backend,
) -> Result<SftOutput> {
    let n = rows.len();
    for (i, r) in rows.iter().enumerate() {
        let len = r.tokens.len();
        if len < 2 || r.prompt_len < 1 || r.prompt_len >= len {
            return Err(Error::InvalidArgument(format!(
                "row {i}: prompt_len {} must be in 1..L-1 (L = {len})",
                r.prompt_len
            )));
        }
        if r.mask.len() != len {
            return Err(Error::InvalidArgument(format!(
                "row {i}: mask has {} entries for {len} tokens",
                r.mask.len()
            )));
        }
        if !(r.t > 0.0 && r.t <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "t = {} is not in (0, 1]",
                r.t
            )));
        }
        if r.mask[..r.prompt_len].iter().any(|&m| m) {
            return Err(Error::InvalidArgument(format!(
                "mask marks a prompt position of row {i}; the prompt is never masked"
            )));
        }
    }
    let total_resp = rows
        .iter()
        .map(|r| (r.tokens.len() - r.prompt_len) as f64)
        .sum::<f64>()
        .max(1.0);
    let inputs: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| {
            (0..r.tokens.len())
                .map(|j| {
                    if r.mask[j] {
                        opts.mask_token
                    } else {
                        r.tokens[j]
                    }
                })
                .collect()
        })
        .collect();
    // d loss / d lp(k) for masked k: -1/(t * divisor).
    let divisor = |r: &SftRow<'_>| {
        if opts.per_row_norm {
            ((r.tokens.len() - r.prompt_len) as f64).max(1.0) * n as f64
        } else {
            total_resp
        }
    };
    let masked_at =
        |r: &SftRow<'_>| -> Vec<usize> { (1..r.tokens.len()).filter(|&k| r.mask[k]).collect() };
    let jobs: Vec<RowJob<'_>> = rows
        .iter()
        .zip(&inputs)
        .map(|(r, x)| RowJob {
            input: x,
            targets: r.tokens,
            lp_at: if opts.all_lp {
                (1..r.tokens.len()).collect()
            } else {
                masked_at(r)
            },
            weights: if opts.with_grads {
                let w = -1.0 / (r.t * divisor(r));
                masked_at(r).into_iter().map(|k| (k, w)).collect()
            } else {
                Vec::new()
            },
        })
        .collect();
    let mut grads = policy.zero_grads()?;
    let acc = if opts.with_grads {
        Some(&mut grads)
    } else {
        None
    };
    let lps = run_jobs(policy, cache, &jobs, acc, backend)?;
    let (mut loss, mut masked) = (0.0, 0);
    for ((r, job), lp) in rows.iter().zip(&jobs).zip(&lps) {
        let d = divisor(r);
        for (&k, &v) in job.lp_at.iter().zip(lp) {
            if r.mask[k] {
                loss += -v / r.t / d;
                masked += 1;
            }
        }
    }
    Ok(SftOutput {
        loss,
        lp: opts.all_lp.then_some(lps),
        masked,
        grads,
    })
}

/// The masked-diffusion SFT loss (docs/training.md §6, normalisation of GRPO_REFERENCE.md) and
/// its gradients.
pub fn sft(
    policy: &Policy,
    inputs: &BTreeMap<String, Array>,
    per_row_norm: bool,
    backend: &mut Backend,
) -> Result<GradOutput> {
    let n_vocab = policy.n_vocab();
    let (seqs, len) = sequences(inputs, n_vocab)?;
    let n = seqs.len();
    let plens = per_row("prompt_len", get(inputs, "prompt_len")?, n)?;
    if let Some(bad) = plens
        .iter()
        .find(|&&v| v.fract() != 0.0 || v < 1.0 || v >= len as f64)
    {
        return Err(Error::InvalidArgument(format!(
            "prompt_len {bad} must be in 1..L-1 (L = {len})"
        )));
    }
    let plens: Vec<usize> = plens.iter().map(|&v| v as usize).collect();
    let t = per_row("t", get(inputs, "t")?, n)?;
    if let Some(bad) = t.iter().find(|t| !(**t > 0.0 && **t <= 1.0)) {
        return Err(Error::InvalidArgument(format!(
            "t = {bad} is not in (0, 1]"
        )));
    }
    let mask = get(inputs, "mask")?;
    check_shape("mask", mask, &[n, len])?;
    let mask: Vec<bool> = mask.data.iter().map(|&v| v != 0.0).collect();
    let mask_token = mask_id(inputs, policy)?;
    let rows: Vec<SftRow<'_>> = (0..n)
        .map(|row| SftRow {
            tokens: &seqs[row],
            prompt_len: plens[row],
            t: t[row],
            mask: &mask[row * len..(row + 1) * len],
        })
        .collect();
    let opts = SftOptions {
        per_row_norm,
        mask_token,
        with_grads: true,
        all_lp: true,
    };
    let mut cache = GraphCache::new(n, len);
    let out = sft_rows(policy, &rows, opts, &mut cache, backend)?;
    let mut lp_out = vec![0.0; n * len];
    let mut ce_out = vec![0.0; n * len];
    for (row, lp) in out.lp.iter().flatten().enumerate() {
        lp_out[row * len + 1..(row + 1) * len].copy_from_slice(lp);
        for kpos in 1..len {
            if mask[row * len + kpos] {
                ce_out[row * len + kpos] = -lp[kpos - 1];
            }
        }
    }
    let tensors = vec![
        ("lp".to_string(), vec![n, len], lp_out),
        ("ce".to_string(), vec![n, len], ce_out),
    ];
    Ok(GradOutput {
        loss: out.loss,
        tensors,
        grads: out.grads,
    })
}

/// `unmask-train grad`: reads the policy and the inputs, computes the loss and gradients, and
/// writes `loss`, the per-token tensors and `grad.<HF name>` (HF shapes) as f32 safetensors.
pub fn run_files(
    hf: &Path,
    inputs: &Path,
    out: &Path,
    kind: LossKind,
    threads: usize,
    device: Option<&str>,
) -> Result<GradOutput> {
    let (_, mut backend) = crate::device::training_backend(device, threads)?;
    let policy = Policy::load_hf_on(hf, Some(&backend))?;
    let arrays = read_arrays(inputs)?;
    let result = match kind {
        LossKind::CoupledGrpo => coupled_grpo(&policy, &arrays, &mut backend)?,
        LossKind::Sft { per_row } => sft(&policy, &arrays, per_row, &mut backend)?,
    };
    let mut arrays_out: Vec<(String, Vec<usize>, Vec<f32>)> =
        vec![("loss".into(), vec![1], vec![result.loss as f32])];
    for (name, shape, values) in &result.tensors {
        let values = values.iter().map(|&v| v as f32).collect();
        arrays_out.push((name.clone(), shape.clone(), values));
    }
    for spec in &policy.specs {
        let grad = result.grads.by_name.get(&spec.gguf_name).ok_or_else(|| {
            Error::InvalidArgument(format!("no gradient for `{}`", spec.gguf_name))
        })?;
        let shape = spec.hf_shape.iter().map(|&d| d as usize).collect();
        arrays_out.push((format!("grad.{}", spec.hf_name), shape, grad.clone()));
    }
    write_f32(out, &arrays_out)?;
    Ok(result)
}
