//! `unmask-train tokenizer`: a byte-level BPE tokenizer trained on a corpus, in the form every
//! other part of unmask reads: Qwen2.5's normalizer (NFC), pre-tokenizer (its split regex, then
//! GPT-2's byte-to-character map), post-processor and decoder
//! ([`unmask_dream::tokenizer_meta::qwen2_tokenizer_doc`]), the BPE vocabulary and merges learned
//! by the `tokenizers` crate's trainer, and Dream's special tokens
//! ([`unmask_dream::tokens::SPECIAL_TOKENS`]) at the ids right after the BPE entries, so that chat,
//! masking and post-processing work unchanged and the ids depend only on the vocabulary size.
//!
//! Every byte is in the vocabulary (the trainer starts from the 256 byte symbols), so any text
//! encodes; text in NFC (which source code almost always is) decodes back byte for byte. Files
//! that are not UTF-8 are skipped and reported. Training is deterministic for the same files in
//! the same order and the same settings.

use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tokenizers::models::bpe::BpeTrainerBuilder;
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;
use unmask_dream::tokenizer_meta::{bytes_to_unicode, qwen2_tokenizer_doc};
use unmask_dream::tokens::SPECIAL_TOKENS;

/// The smallest vocabulary accepted: the 256 byte symbols, the special tokens and some merges.
pub const MIN_VOCAB: usize = 512;
/// The largest: token ids must fit the model's embedding and GGUF's token arrays comfortably.
pub const MAX_VOCAB: usize = 262_144;

/// What a training run was given and made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizerReport {
    /// Files trained on, and their bytes.
    pub files: usize,
    pub bytes: u64,
    /// Files skipped because they are not UTF-8.
    pub skipped: Vec<PathBuf>,
    /// Vocabulary size (special tokens included), learned merges, and the id of the first
    /// special token.
    pub vocab: usize,
    pub merges: usize,
    pub first_special: u32,
}

/// Every file under `inputs`: files as given, folders searched recursively for files whose
/// extension is one of `exts` (sorted, so the order does not depend on the file system).
pub fn collect_files(inputs: &[PathBuf], exts: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| Error::Io {
            path: input.clone(),
            source: e,
        })?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(input, exts, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, exts: &[String], out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            walk(&path, exts, out)?;
        } else if kind.is_file() {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if exts.iter().any(|x| x.trim_start_matches('.') == ext) {
                out.push(path);
            }
        }
    }
    Ok(())
}

/// Trains a tokenizer of `vocab_size` entries (special tokens included) on the UTF-8 `files`;
/// pairs seen fewer than `min_frequency` times are not merged. Returns the `tokenizer.json`
/// text and what was done.
pub fn train_tokenizer(
    files: &[PathBuf],
    vocab_size: usize,
    min_frequency: u64,
) -> Result<(String, TokenizerReport)> {
    if !(MIN_VOCAB..=MAX_VOCAB).contains(&vocab_size) {
        return Err(Error::InvalidArgument(format!(
            "a vocabulary of {vocab_size} tokens: choose {MIN_VOCAB} to {MAX_VOCAB}"
        )));
    }
    let mut texts = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    let mut bytes = 0u64;
    for path in files {
        let raw = std::fs::read(path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
        match String::from_utf8(raw) {
            Ok(text) => {
                bytes += text.len() as u64;
                texts.push(text);
            }
            Err(_) => skipped.push(path.clone()),
        }
    }
    if texts.is_empty() {
        return Err(Error::InvalidArgument(
            "no UTF-8 text to train a tokenizer on".into(),
        ));
    }
    // The pipeline of the result, with only the byte symbols: the trainer learns its model
    // through this normalizer and pre-tokenizer.
    let byte_vocab: Map<String, Value> = bytes_to_unicode()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), Value::from(i)))
        .collect();
    let base = qwen2_tokenizer_doc(byte_vocab, &[], &[]).to_string();
    let mut tokenizer = Tokenizer::from_str(&base).map_err(tokenizer_error)?;
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let bpe_size = vocab_size - SPECIAL_TOKENS.len();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(bpe_size)
        .min_frequency(min_frequency)
        .initial_alphabet(alphabet)
        .show_progress(false)
        .build()
        .into();
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(tokenizer_error)?;
    // Read the learned vocabulary and merges back from the trained tokenizer's own JSON, and
    // write the final document around them with the special tokens after the BPE entries.
    let trained: Value =
        serde_json::from_str(&tokenizer.to_string(false).map_err(tokenizer_error)?)
            .map_err(|e| Error::InvalidArgument(format!("trained tokenizer: {e}")))?;
    let vocab = trained["model"]["vocab"]
        .as_object()
        .cloned()
        .ok_or_else(|| Error::InvalidArgument("trained tokenizer has no vocabulary".into()))?;
    let merges: Vec<(String, String)> = trained["model"]["merges"]
        .as_array()
        .map(|m| m.iter().filter_map(merge_pair).collect())
        .unwrap_or_default();
    let n_bpe = vocab.len();
    let ids_ok = vocab
        .values()
        .all(|v| v.as_u64().is_some_and(|id| (id as usize) < n_bpe));
    if !ids_ok {
        return Err(Error::InvalidArgument(
            "trained tokenizer has ids outside its vocabulary".into(),
        ));
    }
    let first_special = n_bpe as u32;
    let added: Vec<(u32, &str, bool)> = (first_special..)
        .zip(SPECIAL_TOKENS)
        .map(|(id, t)| (id, t, true))
        .collect();
    let doc = qwen2_tokenizer_doc(vocab, &merges, &added);
    let json = serde_json::to_string_pretty(&doc)
        .map_err(|e| Error::InvalidArgument(format!("tokenizer.json: {e}")))?;
    let report = TokenizerReport {
        files: texts.len(),
        bytes,
        skipped,
        vocab: n_bpe + SPECIAL_TOKENS.len(),
        merges: merges.len(),
        first_special,
    };
    Ok((json, report))
}

/// A merge as the trainer writes it: `["a", "b"]` or, in older formats, `"a b"`.
fn merge_pair(v: &Value) -> Option<(String, String)> {
    match v {
        Value::Array(pair) if pair.len() == 2 => {
            Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned()))
        }
        Value::String(s) => {
            let (l, r) = s.split_once(' ')?;
            Some((l.to_owned(), r.to_owned()))
        }
        _ => None,
    }
}

fn tokenizer_error(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("tokenizer: {e}"))
}

/// Writes `text` to `path` through a temporary next to it, renamed into place (removed on an
/// error or a signal: `unmask_kernels::temp_files`).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    unmask_kernels::temp_files::write_file(path, text.as_bytes()).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_corpus_gives_a_loadable_tokenizer_with_the_specials_last() {
        let dir = tempfile::tempdir().unwrap();
        let text = "def add(a, b):\n    return a + b\n\n".repeat(50) + "print('héllo')\n";
        std::fs::write(dir.path().join("a.py"), &text).unwrap();
        std::fs::write(dir.path().join("b.txt"), "ignored: not a .py file").unwrap();
        std::fs::write(dir.path().join("c.py"), [0xffu8, 0xfe, 0x00]).unwrap();
        let files = collect_files(&[dir.path().to_path_buf()], &["py".into()]).unwrap();
        assert_eq!(files.len(), 2);
        let (json, report) = train_tokenizer(&files, MIN_VOCAB, 2).unwrap();
        assert_eq!(report.files, 1);
        assert_eq!(report.skipped.len(), 1, "the non-UTF-8 file");
        let tok = Tokenizer::from_str(&json).unwrap();
        assert_eq!(tok.get_vocab_size(true), report.vocab);
        for (k, t) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(
                tok.token_to_id(t),
                Some(report.first_special + k as u32),
                "{t}"
            );
        }
        assert!(report.merges > 0);
        let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert!(ids.len() < text.len() / 2, "merges shorten the text");
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert!(train_tokenizer(&files, 100, 2).is_err());
    }
}
