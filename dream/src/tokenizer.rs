//! The tokenizer of a GGUF file: the original `tokenizer.json` when we stored it
//! (`unmask.tokenizer_json`), otherwise one rebuilt from llama.cpp's `tokenizer.ggml.*` arrays,
//! which is all a file made by llama.cpp's converter carries.
//!
//! A [`TokenizerSpec`] is the compact description taken from the file; building the
//! `tokenizers::Tokenizer` from it costs about 80 MiB for a 151k-token vocabulary, so a runtime
//! can build it when it needs to encode or decode and drop it while the model computes.

use crate::layout::keys;
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

/// What a tokenizer is built from.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerSpec {
    Json(String),
    Arrays {
        tokens: Vec<String>,
        types: Vec<i32>,
        merges: Vec<String>,
    },
}

impl TokenizerSpec {
    /// Reads the tokenizer description of `file`.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        Self::from_metadata(&|k| file.get(k))
    }

    /// Reads the tokenizer description from metadata looked up by key (a file's, or the
    /// metadata a converter is about to write).
    pub fn from_metadata<'a>(get: &dyn Fn(&str) -> Option<&'a GgufValue>) -> Result<Self> {
        if let Some(json) = get(keys::TOKENIZER_JSON).and_then(GgufValue::as_str) {
            return Ok(TokenizerSpec::Json(json.to_string()));
        }
        let model = get(keys::TOKENIZER_MODEL)
            .and_then(GgufValue::as_str)
            .unwrap_or("");
        if model != tokenizer_meta::GGML_TOKENIZER_MODEL {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") vocabularies can be rebuilt"
            )));
        }
        let array = |key: &str| {
            get(key)
                .and_then(GgufValue::as_array)
                .ok_or_else(|| Error::Tokenizer(format!("`{key}` is missing or not an array")))
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            array(key)?
                .as_strings()
                .map(<[String]>::to_vec)
                .ok_or_else(|| Error::Tokenizer(format!("`{key}` is not a string array")))
        };
        let types: Vec<i32> = array(keys::TOKEN_TYPE)?
            .to_i64_vec()
            .and_then(|v| v.into_iter().map(|t| i32::try_from(t).ok()).collect())
            .ok_or_else(|| {
                Error::Tokenizer(format!("`{}` is not an integer array", keys::TOKEN_TYPE))
            })?;
        Ok(TokenizerSpec::Arrays {
            tokens: strings(keys::TOKENS)?,
            types,
            merges: strings(keys::MERGES)?,
        })
    }

    pub fn source(&self) -> TokenizerSource {
        match self {
            TokenizerSpec::Json(_) => TokenizerSource::Verbatim,
            TokenizerSpec::Arrays { .. } => TokenizerSource::Rebuilt,
        }
    }

    /// Builds the tokenizer.
    pub fn build(&self) -> Result<Tokenizer> {
        match self {
            TokenizerSpec::Json(json) => Tokenizer::from_str(json)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", keys::TOKENIZER_JSON))),
            TokenizerSpec::Arrays {
                tokens,
                types,
                merges,
            } => tokenizer_meta::tokenizer_from_vocab(tokens, types, merges),
        }
    }
}

/// Loads the tokenizer a GGUF file describes.
pub fn load_tokenizer(file: &GgufFile) -> Result<(Tokenizer, TokenizerSource)> {
    let spec = TokenizerSpec::from_gguf(file)?;
    Ok((spec.build()?, spec.source()))
}
