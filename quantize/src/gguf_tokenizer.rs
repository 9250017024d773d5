//! The tokenizer of a GGUF file: the original `tokenizer.json` when we stored it
//! (`unmask.tokenizer_json`), otherwise one rebuilt from llama.cpp's `tokenizer.ggml.*` arrays,
//! which is all a file made by llama.cpp's converter carries.

use crate::dream::keys;
use crate::{tokenizer_meta, Error, Result};
use std::str::FromStr;
use tokenizers::Tokenizer;
use unmask_kernels::gguf::{GgufFile, GgufValue};

/// Where a GGUF file's tokenizer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerSource {
    /// The verbatim `tokenizer.json` stored by unmask-quantize.
    Verbatim,
    /// Rebuilt from `tokenizer.ggml.tokens`, `token_type` and `merges`.
    Rebuilt,
}

/// Loads the tokenizer a GGUF file describes.
pub fn load_tokenizer(file: &GgufFile) -> Result<(Tokenizer, TokenizerSource)> {
    if let Some(json) = file.get(keys::TOKENIZER_JSON).and_then(GgufValue::as_str) {
        let tokenizer = Tokenizer::from_str(json)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", keys::TOKENIZER_JSON)))?;
        return Ok((tokenizer, TokenizerSource::Verbatim));
    }
    let model = file
        .get(keys::TOKENIZER_MODEL)
        .and_then(GgufValue::as_str)
        .unwrap_or("");
    if model != tokenizer_meta::GGML_TOKENIZER_MODEL {
        return Err(Error::Tokenizer(format!(
            "tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") vocabularies can be rebuilt"
        )));
    }
    let array = |key: &str| {
        file.get(key)
            .and_then(GgufValue::as_array)
            .ok_or_else(|| Error::Tokenizer(format!("`{key}` is missing or not an array")))
    };
    let tokens = array(keys::TOKENS)?
        .as_strings()
        .ok_or_else(|| Error::Tokenizer(format!("`{}` is not a string array", keys::TOKENS)))?;
    let types: Vec<i32> = array(keys::TOKEN_TYPE)?
        .to_i64_vec()
        .and_then(|v| v.into_iter().map(|t| i32::try_from(t).ok()).collect())
        .ok_or_else(|| {
            Error::Tokenizer(format!("`{}` is not an integer array", keys::TOKEN_TYPE))
        })?;
    let merges = array(keys::MERGES)?
        .as_strings()
        .ok_or_else(|| Error::Tokenizer(format!("`{}` is not a string array", keys::MERGES)))?;
    let tokenizer = tokenizer_meta::tokenizer_from_vocab(tokens, &types, merges)?;
    Ok((tokenizer, TokenizerSource::Rebuilt))
}
