//! `unmask-train pairs`: function-level training pairs cut from Python files, for SFT in the
//! Instruct format: the prompt is a function's signature and docstring, the response the rest of
//! its body, both dedented so that prompt + response is the function as a top-level definition.
//! Every `def` or `async def` (methods and nested functions too) whose body starts with a
//! docstring and continues after it becomes a pair, unless its body past the docstring is longer
//! than `max_body_lines` or its lines cannot be dedented (a string continuation less indented
//! than the `def`). Decorators are left out.
//!
//! Python's own parser does the cutting (`function_pairs.py`, run by the given interpreter with
//! `-I`, the files passed by path): the files are parsed, never run. Files that do not parse are
//! counted, not fatal.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The cutting script (see the module documentation).
const SCRIPT: &str = include_str!("function_pairs.py");

/// One pair, as a line of the output file (the `prompt`/`response` keys `sft` reads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionPair {
    pub prompt: String,
    pub response: String,
    pub source: String,
    pub name: String,
    pub line: u64,
}

/// The pairs of `files` (in file order, then source order) and the count of files that do not
/// parse.
pub fn extract_pairs(
    files: &[PathBuf],
    python: &Path,
    max_body_lines: usize,
) -> Result<(Vec<FunctionPair>, usize)> {
    let job = serde_json::json!({ "files": files, "max_body_lines": max_body_lines });
    let mut child = Command::new(python)
        .args(["-I", "-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Io {
            path: python.to_path_buf(),
            source: e,
        })?;
    // Write the job from another thread: the child's output may fill its pipe first.
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::InvalidArgument("no stdin for the Python child".into()))?;
    let writer = std::thread::spawn(move || stdin.write_all(job.to_string().as_bytes()));
    let out = child.wait_with_output().map_err(|e| Error::Io {
        path: python.to_path_buf(),
        source: e,
    })?;
    let written = writer
        .join()
        .map_err(|_| Error::InvalidArgument("writing to the Python child panicked".into()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(Error::InvalidArgument(format!(
            "{} failed cutting function pairs: {}",
            python.display(),
            stderr.trim()
        )));
    }
    written.map_err(|e| Error::Io {
        path: python.to_path_buf(),
        source: e,
    })?;
    let pairs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| Error::InvalidArgument(format!("a pair from Python: {e}")))
        })
        .collect::<Result<Vec<FunctionPair>>>()?;
    let unparsable = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["unparsable"].as_u64())
        .unwrap_or(0) as usize;
    Ok((pairs, unparsable))
}
