//! The code reward (docs/training.md §3): `reward = 2.0 * pass_rate + 0.5 * format`.
//!
//! `format` is [`crate::format`]'s score. `pass_rate` is the fraction of the task's asserts that
//! pass, each run as `python3 -c "<code>\n<assert>"` in its own sandboxed process (5 s wall-clock
//! timeout by default); it is counted only when `format == 1.0` (else 0 and nothing is run).
//! Completions are scored in parallel with rayon; the parallelism is the pool's size (the global
//! pool, or the one passed to [`score_batch_in`]); the tests of one completion run one after the
//! other.

use rayon::prelude::*;
use serde::Serialize;

use crate::format::{clean_completion, format_score_with};
use crate::sandbox::Sandbox;
use crate::tasks::Task;
use crate::Result;

/// Weight of the pass rate.
pub const PASS_WEIGHT: f64 = 2.0;
/// Weight of the format score.
pub const FORMAT_WEIGHT: f64 = 0.5;

/// The score of one completion.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Score {
    pub reward: f64,
    pub format: f64,
    pub pass_rate: f64,
    /// Asserts that passed / were run (0 / 0 when the format is not 1.0).
    pub passed: usize,
    pub run: usize,
}

/// Scores one decoded completion (special tokens may still be in it) for `task`.
pub fn score_completion(sandbox: &Sandbox, task: &Task, decoded: &str) -> Result<Score> {
    let text = clean_completion(decoded);
    let mut parse_err = None;
    let (format, code) = format_score_with(&text, |code| match sandbox.parses(code) {
        Ok(p) => p,
        Err(e) => {
            parse_err = Some(e);
            false
        }
    });
    if let Some(e) = parse_err {
        return Err(e);
    }
    let mut passed = 0;
    let mut run = 0;
    if format == 1.0 {
        let code = code.expect("format 1.0 has a block");
        for test in &task.test_cases {
            run += 1;
            if sandbox.run_test(&code, test)? {
                passed += 1;
            }
        }
    }
    let pass_rate = if run == 0 {
        0.0
    } else {
        passed as f64 / run as f64
    };
    Ok(Score {
        reward: PASS_WEIGHT * pass_rate + FORMAT_WEIGHT * format,
        format,
        pass_rate,
        passed,
        run,
    })
}

/// Scores `(task, decoded completion)` pairs in parallel on rayon's global pool.
pub fn score_batch(sandbox: &Sandbox, items: &[(&Task, &str)]) -> Vec<Result<Score>> {
    items
        .par_iter()
        .map(|(task, text)| score_completion(sandbox, task, text))
        .collect()
}

/// [`score_batch`] on a given pool (its size bounds the number of concurrent sandboxes).
pub fn score_batch_in(
    pool: &rayon::ThreadPool,
    sandbox: &Sandbox,
    items: &[(&Task, &str)],
) -> Vec<Result<Score>> {
    pool.install(|| score_batch(sandbox, items))
}
