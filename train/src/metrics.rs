//! Per-update metrics as JSON lines (`OUT/metrics.jsonl`) and a progress bar on a terminal.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based update number.
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Sequence tokens processed in the update.
    pub tokens: u64,
    /// Masked (predicted) tokens.
    pub masked: u64,
    pub tokens_per_s: f64,
    /// Wall time of the update.
    pub seconds: f64,
}

/// Appends metrics lines; on resume, lines of updates after the checkpoint (which will be
/// redone) are dropped first, so step numbers continue without duplicates.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    bar: Option<indicatif::ProgressBar>,
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads `metrics.jsonl` (skipping a torn last line).
pub fn read(path: &Path) -> Result<Vec<StepMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

impl MetricsLog {
    /// Opens `out/metrics.jsonl`, keeping only updates `<= keep_up_to` (0 for a fresh run).
    pub fn open(out: &Path, keep_up_to: u64, total: u64) -> Result<Self> {
        let path = out.join("metrics.jsonl");
        let mut text = String::new();
        if keep_up_to > 0 && path.exists() {
            // Any line format with a `step` field (SFT's and GRPO's lines).
            let old = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            for line in old.lines() {
                let step = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
                if step.is_some_and(|s| s <= keep_up_to) {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        let tmp = out.join(".metrics.jsonl.tmp");
        std::fs::write(&tmp, text).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_position(keep_up_to);
            bar
        });
        Ok(MetricsLog { path, file, bar })
    }

    pub fn log(&mut self, m: &StepMetrics) -> Result<()> {
        let line = serde_json::to_string(m).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        writeln!(self.file, "{line}").map_err(|e| io(&self.path, e))?;
        self.file.flush().map_err(|e| io(&self.path, e))?;
        if let Some(bar) = &self.bar {
            bar.set_position(m.step);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s",
                m.loss, m.lr, m.grad_norm, m.tokens_per_s
            ));
        }
        Ok(())
    }

    /// Appends any serializable line for update `step`, with `msg` on the progress bar.
    pub fn log_line<T: Serialize>(&mut self, step: u64, line: &T, msg: String) -> Result<()> {
        let line =
            serde_json::to_string(line).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        writeln!(self.file, "{line}").map_err(|e| io(&self.path, e))?;
        self.file.flush().map_err(|e| io(&self.path, e))?;
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(msg);
        }
        Ok(())
    }

    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
