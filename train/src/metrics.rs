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
        let kept: Vec<StepMetrics> = if keep_up_to > 0 && path.exists() {
            read(&path)?
                .into_iter()
                .filter(|m| m.step <= keep_up_to)
                .collect()
        } else {
            Vec::new()
        };
        let mut text = String::new();
        for m in &kept {
            text.push_str(
                &serde_json::to_string(m).map_err(|e| Error::InvalidArgument(e.to_string()))?,
            );
            text.push('\n');
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
