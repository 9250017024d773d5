//! The training data of `unmask-train sft` (docs/training.md §6, "SFT"): what each file is, how it
//! becomes training sequences, and the report the run prints.
//!
//! Data: `.jsonl` files of `{"prompt", "response"}` pairs, `.json` arrays of them, or plain text
//! files, tokenized with the model folder's `tokenizer.json` (no special tokens added). The
//! format of each file, its counts and its truncated pairs are printed ([`DataReport`]). By
//! default (`chat`) a pair is wrapped in the chat template that `unmask generate` prompts with
//! (`unmask_dream::chat::instruct_prompt`), its response ending with `<|im_end|>`, so that the
//! trained model sees questions in the format it is asked them.
//! - A pair becomes `prompt ++ response (++ EOS when append_eos)`. Sequences longer than
//!   `max_len` are truncated, not packed: the prompt keeps its last `max_len - 1` tokens at most,
//!   then the response is cut to fit. A pair with an empty prompt uses the response's first token
//!   as the prompt.
//! - A text file is split into consecutive windows of `max_len` tokens; in each, the first token
//!   is the "prompt" and the rest the response.
//! - With `pack` (pretraining), the text files are instead one stream: each file's tokens, then
//!   EOS (with `append_eos`), file after file, cut into windows of exactly `max_len` tokens (a
//!   shorter tail is dropped unless it is the only window), token 0 of each the "prompt". Every
//!   sequence then has one length, and the loss is Dream's masked-diffusion loss on plain text.
//! - With `response_len` N (SFT for generation), every pair's response (its `<|im_end|>` and
//!   EOS included) is filled with `<|dlm_pad|>` to exactly N tokens, and the pads are trained
//!   like any response token: the model learns to size its answer by filling the tail of a
//!   canvas of N masks with pads, which is how Dream-Instruct answers and where the runtime cuts
//!   the answer. A response longer than N is left out (a cut body would teach answers with no
//!   end) and counted; the prompt keeps its last `max_len - N` tokens at most.
//!
//! The graph needs a prompt of at least one token: logits are shifted (position `k - 1` predicts
//! token `k`), so position 0 is never predicted and cannot be a training target; every
//! [`Example`] has one.

use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use unmask_dream::tokens::DLM_PAD;

/// One training sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    /// At least 1 and below `tokens.len()`.
    pub prompt_len: usize,
}

#[derive(Deserialize)]
struct PairLine {
    prompt: String,
    response: String,
}

/// A pair as one sequence of at most `max_len` tokens (see the module documentation).
pub fn pair_example(prompt: &[u32], response: &[u32], max_len: usize) -> Option<Example> {
    let (prompt, response) = if prompt.is_empty() {
        response
            .split_first()
            .map(|(f, r)| (vec![*f], r.to_vec()))?
    } else {
        (prompt.to_vec(), response.to_vec())
    };
    if response.is_empty() || max_len < 2 {
        return None;
    }
    let keep_prompt = prompt.len().min(max_len - 1);
    let mut tokens = prompt[prompt.len() - keep_prompt..].to_vec();
    let room = max_len - keep_prompt;
    tokens.extend_from_slice(&response[..response.len().min(room)]);
    Some(Example {
        tokens,
        prompt_len: keep_prompt,
    })
}

fn tokenizer_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{}: {e}", path.display()))
}

/// How a data file was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    /// One `{"prompt", "response"}` object per line.
    JsonLines,
    /// A JSON array of `{"prompt", "response"}` objects.
    JsonArray,
    /// Plain text, split into windows of `max_len` tokens.
    Text,
}

impl DataFormat {
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::JsonLines => "JSON lines of prompt/response pairs",
            DataFormat::JsonArray => "a JSON array of prompt/response pairs",
            DataFormat::Text => "plain text",
        }
    }
}

/// What one data file gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    pub path: PathBuf,
    pub format: DataFormat,
    /// Training sequences made from the file (pairs, or text windows).
    pub examples: usize,
    /// Pairs longer than `max_len` tokens, truncated (see [`pair_example`]).
    pub truncated: usize,
    /// The longest pair before truncation, in tokens (0 for text).
    pub longest: usize,
    /// With a response length: pairs whose response does not fit in it, left out.
    pub too_long: usize,
}

/// What the training data was, for the run's log ([`DataReport::lines`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataReport {
    pub files: Vec<FileReport>,
    /// Whether pairs were wrapped in the chat template.
    pub chat: bool,
    /// The chat template was asked for, but the tokenizer has no chat markers.
    pub chat_unavailable: bool,
    pub max_len: usize,
    /// With `pack`: the windows the text files were packed into.
    pub packed_windows: Option<usize>,
    /// The response length pairs were padded to, if any.
    pub response_len: Option<usize>,
}

impl DataReport {
    /// The lines the trainer prints: per file its format and counts, the template used, and a
    /// warning when pairs were truncated.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in &self.files {
            if f.format == DataFormat::Text && self.packed_windows.is_some() {
                continue; // counted together below
            }
            let what = match f.format {
                DataFormat::Text => {
                    format!("{} windows of up to {} tokens", f.examples, self.max_len)
                }
                _ => format!("{} pairs", f.examples),
            };
            out.push(format!(
                "data: {}: {}, {what}",
                f.path.display(),
                f.format.name()
            ));
            if f.too_long > 0 {
                out.push(format!(
                    "data: {} of the pairs in {} have a response longer than --response-len {} \
                     tokens and were left out",
                    f.too_long,
                    f.path.display(),
                    self.response_len.unwrap_or(0)
                ));
            }
            if f.truncated > 0 {
                out.push(format!(
                    "warning: {} of {} pairs in {} are longer than --max-len {} tokens (the \
                     longest has {}) and were truncated: the prompt keeps its end, the response \
                     its start",
                    f.truncated,
                    f.examples,
                    f.path.display(),
                    self.max_len,
                    f.longest
                ));
            }
        }
        if let Some(n) = self.packed_windows {
            let texts = self
                .files
                .iter()
                .filter(|f| f.format == DataFormat::Text)
                .count();
            out.push(format!(
                "data: {texts} text files packed into {n} windows of {} tokens",
                self.max_len
            ));
        }
        let has_pairs = self.files.iter().any(|f| f.format != DataFormat::Text);
        if has_pairs {
            out.push(if self.chat {
                "data: pairs use the chat template (the Instruct prompt `unmask generate` applies \
                 by default), responses end with <|im_end|>; --chat false trains them as plain text"
                    .into()
            } else if self.chat_unavailable {
                "data: the tokenizer has no chat markers (<|im_start|>, <|im_end|>): pairs are \
                 trained as plain text"
                    .into()
            } else {
                "data: pairs are trained as plain text (--chat false)".into()
            });
        }
        out
    }
}

/// How [`load_data`] reads the training data.
#[derive(Clone, Debug)]
pub struct DataOptions<'a> {
    pub tokenizer_json: &'a Path,
    pub max_len: usize,
    /// Appended to every response.
    pub eos: Option<u32>,
    /// Wrap pairs in the chat template when the tokenizer has the markers.
    pub chat: bool,
    /// Pack the text files into one stream of full windows (see the module documentation).
    pub pack: bool,
    /// Fill every pair's response with `<|dlm_pad|>` to exactly this many tokens (see the module
    /// documentation); `None` leaves responses as they are.
    pub response_len: Option<usize>,
}

/// Reads and tokenizes the training data as plain pairs (no chat template).
pub fn load_examples(
    files: &[PathBuf],
    tokenizer_json: &Path,
    max_len: usize,
    eos: Option<u32>,
) -> Result<Vec<Example>> {
    let options = DataOptions {
        tokenizer_json,
        max_len,
        eos,
        chat: false,
        pack: false,
        response_len: None,
    };
    Ok(load_data(files, &options)?.0)
}

/// The format of a data file: `.jsonl` is JSON lines and `.json` a JSON array of pairs (anything
/// else in a `.json` file is refused); for other names the content decides: a JSON array of pair
/// objects, JSON lines whose first line is a pair object, else plain text.
fn detect_format(path: &Path, text: &str) -> Result<DataFormat> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let trimmed = text.trim_start();
    let array_of_pairs = || {
        trimmed.starts_with('[')
            && serde_json::from_str::<Vec<serde_json::Value>>(text).is_ok_and(|items| {
                items
                    .first()
                    .is_some_and(|v| v.get("prompt").is_some() && v.get("response").is_some())
            })
    };
    match ext {
        "jsonl" => Ok(DataFormat::JsonLines),
        "json" => {
            if array_of_pairs() {
                return Ok(DataFormat::JsonArray);
            }
            let found = match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Array(a)) if a.is_empty() => "an empty array".to_string(),
                Ok(serde_json::Value::Array(_)) => {
                    "an array whose first item is not a {\"prompt\", \"response\"} object".into()
                }
                Ok(serde_json::Value::Object(_)) => "a JSON object".into(),
                Ok(_) => "a JSON scalar".into(),
                Err(e) => format!("invalid JSON ({e})"),
            };
            Err(Error::InvalidArgument(format!(
                "{}: a .json data file must be an array of {{\"prompt\", \"response\"}} objects \
                 (or use .jsonl, one object per line, or a text file); found {found}",
                path.display()
            )))
        }
        _ if array_of_pairs() => Ok(DataFormat::JsonArray),
        _ => {
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let pair_line = serde_json::from_str::<serde_json::Value>(first)
                .is_ok_and(|v| v.get("prompt").is_some() && v.get("response").is_some());
            Ok(if pair_line {
                DataFormat::JsonLines
            } else {
                DataFormat::Text
            })
        }
    }
}

/// `paths` with every folder replaced by the files under it (recursively, hidden entries
/// skipped, in name order).
pub fn expand_folders(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let io = |e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        };
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .collect::<std::io::Result<_>>()
            .map_err(io)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Reads and tokenizes the training data, and says what it was (see [`DataReport`]); folders
/// stand for the files under them ([`expand_folders`]).
pub fn load_data(files: &[PathBuf], o: &DataOptions<'_>) -> Result<(Vec<Example>, DataReport)> {
    let files = &expand_folders(files)?;
    let tok = tokenizers::Tokenizer::from_file(o.tokenizer_json)
        .map_err(|e| tokenizer_error(o.tokenizer_json, e))?;
    let has_markers =
        tok.token_to_id("<|im_start|>").is_some() && tok.token_to_id("<|im_end|>").is_some();
    let chat = o.chat && has_markers;
    let pad = match o.response_len {
        Some(n) if n + 1 > o.max_len => {
            return Err(Error::InvalidArgument(format!(
                "--response-len {n} leaves no room for a prompt in --max-len {}",
                o.max_len
            )))
        }
        Some(_) => Some(tok.token_to_id(DLM_PAD).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--response-len pads responses with {DLM_PAD}, and {} has no such token",
                o.tokenizer_json.display()
            ))
        })?),
        None => None,
    };
    let encode = |text: &str, path: &Path| -> Result<Vec<u32>> {
        Ok(tok
            .encode(text, false)
            .map_err(|e| tokenizer_error(path, e))?
            .get_ids()
            .to_vec())
    };
    let mut out = Vec::new();
    let mut report = DataReport {
        files: Vec::new(),
        chat,
        chat_unavailable: o.chat && !has_markers,
        max_len: o.max_len,
        packed_windows: None,
        response_len: o.response_len,
    };
    let mut stream: Vec<u32> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let format = detect_format(path, &text)?;
        let mut file = FileReport {
            path: path.clone(),
            format,
            examples: 0,
            truncated: 0,
            longest: 0,
            too_long: 0,
        };
        let pairs: Vec<(usize, Result<PairLine, String>)> = match format {
            DataFormat::JsonLines => text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| (i + 1, serde_json::from_str(l).map_err(|e| e.to_string())))
                .collect(),
            DataFormat::JsonArray => {
                let items: Vec<serde_json::Value> = serde_json::from_str(&text)
                    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i + 1, serde_json::from_value(v).map_err(|e| e.to_string())))
                    .collect()
            }
            DataFormat::Text => Vec::new(),
        };
        // JSON lines are numbered by line, array items by position (`item N`).
        let at = |n: usize| match format {
            DataFormat::JsonArray => format!("item {n}"),
            _ => format!("line {n}"),
        };
        for (n, pair) in pairs {
            let pair = pair.map_err(|e| Error::Jsonl {
                path: path.clone(),
                line: n,
                msg: format!("{}: not a {{\"prompt\", \"response\"}} object: {e}", at(n)),
            })?;
            let (prompt_text, response_text) = if chat {
                (
                    unmask_dream::chat::instruct_prompt(&pair.prompt),
                    format!("{}<|im_end|>", pair.response),
                )
            } else {
                (pair.prompt, pair.response)
            };
            let mut prompt = encode(&prompt_text, path)?;
            let mut response = encode(&response_text, path)?;
            response.extend(o.eos);
            if let (Some(n), Some(pad)) = (o.response_len, pad) {
                if response.len() > n {
                    file.too_long += 1;
                    continue;
                }
                response.resize(n, pad);
                // The prompt keeps its end, so that the padded response fits whole.
                let room = o.max_len.saturating_sub(n).max(1);
                prompt.drain(..prompt.len().saturating_sub(room));
            }
            let total = prompt.len() + response.len();
            let ex = pair_example(&prompt, &response, o.max_len).ok_or_else(|| Error::Jsonl {
                path: path.clone(),
                line: n,
                msg: format!("{}: the pair has fewer than two tokens", at(n)),
            })?;
            file.longest = file.longest.max(total);
            if total > o.max_len {
                file.truncated += 1;
            }
            file.examples += 1;
            out.push(ex);
        }
        if format == DataFormat::Text && o.pack {
            stream.extend(encode(&text, path)?);
            stream.extend(o.eos);
        } else if format == DataFormat::Text {
            let ids = encode(&text, path)?;
            for window in ids.chunks(o.max_len) {
                if window.len() >= 2 {
                    file.examples += 1;
                    out.push(Example {
                        tokens: window.to_vec(),
                        prompt_len: 1,
                    });
                }
            }
        }
        report.files.push(file);
    }
    if o.pack && !stream.is_empty() {
        let windows: Vec<&[u32]> = stream.chunks(o.max_len).collect();
        let full = windows.iter().filter(|w| w.len() == o.max_len).count();
        let keep = if full == 0 { windows.len() } else { full };
        for w in windows.into_iter().take(keep).filter(|w| w.len() >= 2) {
            out.push(Example {
                tokens: w.to_vec(),
                prompt_len: 1,
            });
        }
        report.packed_windows = Some(keep);
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument("the training data is empty".into()));
    }
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_truncated_keeping_the_prompt_end() {
        let ex = pair_example(&[1, 2, 3], &[4, 5, 6], 5).unwrap();
        assert_eq!(ex.tokens, vec![1, 2, 3, 4, 5]);
        assert_eq!(ex.prompt_len, 3);
        let ex = pair_example(&[1, 2, 3, 4, 5, 6], &[7, 8], 4).unwrap();
        assert_eq!(ex.tokens, vec![4, 5, 6, 7]);
        assert_eq!(ex.prompt_len, 3);
        let ex = pair_example(&[], &[7, 8, 9], 8).unwrap();
        assert_eq!((ex.tokens, ex.prompt_len), (vec![7, 8, 9], 1));
        assert!(pair_example(&[], &[7], 8).is_none());
        assert!(pair_example(&[1], &[], 8).is_none());
    }
}
