//! The special tokens Dream's generation relies on (docs/model.md §5): the mask token a canvas
//! starts from, and the markers at which an answer ends.

use crate::config::DreamConfig;
use crate::{Error, Result};
use tokenizers::Tokenizer;

/// The padding a finished answer is filled with (docs/model.md §5): the runtime cuts an answer
/// at the first one, and SFT with a response length trains the model to write it.
pub const DLM_PAD: &str = "<|dlm_pad|>";

/// Dream's special tokens, in the id order the tokenizers unmask makes give them (after their
/// BPE entries): the end of text, the chat markers, the beginning of text, the mask a canvas
/// starts from and the padding a finished answer is filled with. The names are the real
/// Qwen2.5/Dream ones, so code that looks them up by text works on every model.
pub const SPECIAL_TOKENS: [&str; 6] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|beginoftext|>",
    "<|mask|>",
    DLM_PAD,
];

/// Token ids with a role in generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    pub mask: u32,
    pub eos: Option<u32>,
    pub im_start: Option<u32>,
    pub im_end: Option<u32>,
    pub dlm_pad: Option<u32>,
}

impl SpecialTokens {
    /// Tokens at which an answer ends (docs/model.md §5).
    pub fn stops(&self) -> Vec<u32> {
        [self.dlm_pad, self.im_end, self.eos]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The special tokens of a model with this configuration and tokenizer: ids from the
    /// configuration when it has them, else looked up by their usual names.
    pub fn find(config: &DreamConfig, tokenizer: &Tokenizer) -> Result<Self> {
        let id = |t: &str| tokenizer.token_to_id(t);
        let mask = config
            .mask_token_id
            .or_else(|| id("<|mask|>"))
            .ok_or(Error::NoMaskToken)?;
        Ok(SpecialTokens {
            mask,
            eos: config.eos_token_id.or_else(|| id("<|endoftext|>")),
            im_start: id("<|im_start|>"),
            im_end: id("<|im_end|>"),
            dlm_pad: id(DLM_PAD),
        })
    }

    /// Whether the tokenizer knows the chat markers (so the Instruct format can be used).
    pub fn supports_chat(&self) -> bool {
        self.im_start.is_some() && self.im_end.is_some()
    }
}
