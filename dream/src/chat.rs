//! The Instruct prompt format (docs/model.md §5) and the post-processing of an answer.

use crate::tokens::SpecialTokens;
use crate::{Error, Result};
use tokenizers::Tokenizer;

/// ChatML with Dream's default system prompt. Note the newline before `<|im_end|>` after the
/// query: DiffuCoder's template puts it there.
pub fn instruct_prompt(query: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{query}\n<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// Token ids of `text` (no BOS: Dream prepends none); special tokens in the text are recognised.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let encoding = tokenizer
        .encode(text, false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(encoding.get_ids().to_vec())
}

/// The answer in `generated`: cut at the first `<|dlm_pad|>`, `<|im_end|>` or `<|endoftext|>`.
pub fn answer_ids<'a>(special: &SpecialTokens, generated: &'a [u32]) -> &'a [u32] {
    let stops = special.stops();
    let end = generated
        .iter()
        .position(|t| stops.contains(t))
        .unwrap_or(generated.len());
    &generated[..end]
}

/// Decodes the answer (special tokens left out).
pub fn answer_text(
    tokenizer: &Tokenizer,
    special: &SpecialTokens,
    generated: &[u32],
) -> Result<String> {
    tokenizer
        .decode(answer_ids(special, generated), true)
        .map_err(|e| Error::Tokenizer(e.to_string()))
}
