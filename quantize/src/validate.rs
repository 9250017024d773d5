//! What the runtime will require of a converted file's metadata, checked before the converter
//! writes anything: the tokenizer the runtime builds (the stored `tokenizer.json` when present,
//! else the `tokenizer.ggml.*` arrays) must build; it must fit the model's vocabulary; and the
//! mask token must exist inside it. A file that passes here loads in `unmask generate`; one that
//! does not is refused with the reason instead of being written.

use unmask_dream::layout::keys;
use unmask_dream::tokenizer::TokenizerSpec;
use unmask_dream::{DreamConfig, Error as DreamError, Result};
use unmask_kernels::gguf::GgufValue;

/// Checks `metadata` (as it will be written) against `config`.
pub fn check_metadata(metadata: &[(String, GgufValue)], config: &DreamConfig) -> Result<()> {
    let get = |k: &str| metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let spec = TokenizerSpec::from_metadata(&get)?;
    let n_vocab = config.vocab_size as usize;
    if let TokenizerSpec::Arrays { tokens, .. } = &spec {
        if tokens.len() > n_vocab {
            return Err(DreamError::Tokenizer(format!(
                "{} tokens in `{}` but the model's vocabulary has {n_vocab} rows",
                tokens.len(),
                keys::TOKENS
            )));
        }
    }
    let tokenizer = spec.build()?;
    let size = tokenizer.get_vocab_size(true);
    if size > n_vocab {
        return Err(DreamError::Tokenizer(format!(
            "the tokenizer has {size} tokens but the model's vocabulary has {n_vocab} rows"
        )));
    }
    let mask = config
        .mask_token_id
        .or_else(|| {
            get(keys::MASK_ID)
                .and_then(GgufValue::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        })
        .or_else(|| tokenizer.token_to_id("<|mask|>"))
        .ok_or_else(|| {
            DreamError::Tokenizer(
                "the model has no mask token (tokenizer.ggml.mask_token_id)".into(),
            )
        })?;
    if mask as usize >= n_vocab {
        return Err(DreamError::Tokenizer(format!(
            "the mask token {mask} is outside the vocabulary of {n_vocab}"
        )));
    }
    Ok(())
}
