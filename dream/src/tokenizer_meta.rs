//! Moves a Qwen2-style byte-level BPE tokenizer between its two homes: the Hugging Face
//! `tokenizer.json` that ships with a DiffuCoder/Dream checkpoint and the `tokenizer.ggml.*`
//! arrays of a GGUF file.
//!
//! [`vocab_from_tokenizer_json`] produces the arrays exactly as llama.cpp's
//! `convert_hf_to_gguf.py` writes them for a Qwen2/Dream model (`tokenizer.ggml.model = "gpt2"`,
//! `tokenizer.ggml.pre = "qwen2"`), so GGUF files made by either tool carry the same vocabulary.
//! [`tokenizer_from_vocab`] goes the other way, for GGUF files produced by llama.cpp that carry no
//! copy of the original `tokenizer.json`. The converter's `synth_tokenizer_json` builds a tiny tokenizer of the
//! same shape so tests can make small models without shipping the 7 MB real one.

use std::collections::HashMap;
use std::str::FromStr;

use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// `tokenizer.ggml.model` for every Qwen2-family tokenizer.
pub const GGML_TOKENIZER_MODEL: &str = "gpt2";
/// `tokenizer.ggml.pre`: selects llama.cpp's Qwen2 pre-tokenizer regex.
pub const GGML_TOKENIZER_PRE: &str = "qwen2";

/// GGUF token types (`tokenizer.ggml.token_type`), as numbered by llama.cpp's `gguf.TokenType`.
pub const TOKEN_TYPE_NORMAL: i32 = 1;
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
pub const TOKEN_TYPE_UNUSED: i32 = 5;
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// The Dream mask token that diffusion decoding fills in.
pub const MASK_TOKEN: &str = "<|mask|>";

/// The Qwen2 pre-tokenizer split pattern, byte for byte as in the Qwen2.5 `tokenizer.json`.
pub const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.*` arrays of a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufVocab {
    /// Token text indexed by id, `vocab_size` entries.
    pub tokens: Vec<String>,
    /// One `TOKEN_TYPE_*` per token.
    pub token_types: Vec<i32>,
    /// BPE merges in rank order, each `"left right"`.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub mask_id: Option<u32>,
}

/// Reads a Hugging Face `tokenizer.json` into the arrays llama.cpp's converter would write.
///
/// `vocab_size` is `config.json`'s value: the embedding has that many rows, usually more than
/// the tokenizer has tokens, and the GGUF token list must cover every row. The special-token ids
/// other than the mask come from the model config, not from here, so they are left `None`.
pub fn vocab_from_tokenizer_json(tokenizer_json: &str, vocab_size: usize) -> Result<GgufVocab> {
    // GGUF ids are u32 and we allocate one slot per id, so an absurd size is an input error,
    // not something to try to allocate.
    if vocab_size > u32::MAX as usize {
        return Err(tok_err(format!(
            "vocab_size {vocab_size} does not fit in a 32-bit token id"
        )));
    }
    let root: Value = serde_json::from_str(tokenizer_json)
        .map_err(|e| tok_err(format!("tokenizer.json is not valid JSON: {e}")))?;
    let model = root
        .get("model")
        .and_then(Value::as_object)
        .ok_or_else(|| tok_err("tokenizer.json has no `model` object"))?;
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") => {}
        Some(other) => {
            return Err(tok_err(format!(
                "tokenizer model is `{other}`, only byte-level BPE (Qwen2) is supported"
            )))
        }
        None => return Err(tok_err("tokenizer model has no `type` (expected \"BPE\")")),
    }
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| tok_err("BPE model has no `vocab` object"))?;

    let mut slots: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    for (token, id) in vocab {
        let id = json_id(id, token, vocab_size)?;
        place(&mut slots, id, token, TOKEN_TYPE_NORMAL)?;
    }

    if let Some(added) = root.get("added_tokens") {
        let added = added
            .as_array()
            .ok_or_else(|| tok_err("`added_tokens` is not an array"))?;
        for entry in added {
            let content = entry
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| tok_err(format!("added token without `content`: {entry}")))?;
            let id = entry
                .get("id")
                .ok_or_else(|| tok_err(format!("added token `{content}` has no `id`")))?;
            let id = json_id(id, content, vocab_size)?;
            let special = entry
                .get("special")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            // The converter also promotes tokens that merely look special (`<|fim_prefix|>` is
            // `special: false` in Qwen2.5) to CONTROL, and llama.cpp relies on that to hide them
            // when detokenizing.
            let ty = if special || looks_special(content) {
                TOKEN_TYPE_CONTROL
            } else {
                TOKEN_TYPE_USER_DEFINED
            };
            // Some tokenizers list an added token in the BPE vocab too; that is the same token,
            // and the added-token entry decides its type.
            if let Some((existing, _)) = &slots[id] {
                if existing == content {
                    slots[id] = None;
                }
            }
            place(&mut slots, id, content, ty)?;
        }
    }

    let merges = read_merges(model)?;

    let mut tokens = Vec::with_capacity(vocab_size);
    let mut token_types = Vec::with_capacity(vocab_size);
    let mut mask_id = None;
    for (id, slot) in slots.into_iter().enumerate() {
        match slot {
            Some((token, ty)) => {
                if token == MASK_TOKEN {
                    mask_id = u32::try_from(id).ok();
                }
                tokens.push(token);
                token_types.push(ty);
            }
            None => {
                tokens.push(format!("[PAD{id}]"));
                token_types.push(TOKEN_TYPE_UNUSED);
            }
        }
    }

    Ok(GgufVocab {
        tokens,
        token_types,
        merges,
        bos_id: None,
        eos_id: None,
        pad_id: None,
        mask_id,
    })
}

/// Rebuilds a working Qwen2 tokenizer from GGUF `tokenizer.ggml.{tokens,token_type,merges}`, for
/// GGUF files made by llama.cpp that carry no copy of the original `tokenizer.json`.
///
/// UNUSED entries (the `[PAD…]` rows) get no token at all, CONTROL and USER_DEFINED entries become
/// added tokens (special for CONTROL) with their GGUF ids, everything else is BPE vocabulary.
pub fn tokenizer_from_vocab(
    tokens: &[String],
    token_types: &[i32],
    merges: &[String],
) -> Result<Tokenizer> {
    if tokens.len() != token_types.len() {
        return Err(tok_err(format!(
            "GGUF has {} tokens but {} token types",
            tokens.len(),
            token_types.len()
        )));
    }
    if u32::try_from(tokens.len()).is_err() {
        return Err(tok_err(format!(
            "{} tokens do not fit in 32-bit ids",
            tokens.len()
        )));
    }

    let mut bpe: Vec<(&str, u32)> = Vec::new();
    let mut added: Vec<(u32, &str, bool)> = Vec::new();
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for (id, (token, &ty)) in (0u32..).zip(tokens.iter().zip(token_types)) {
        match ty {
            TOKEN_TYPE_UNUSED => continue,
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED => {
                added.push((id, token, ty == TOKEN_TYPE_CONTROL));
            }
            TOKEN_TYPE_NORMAL | TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_BYTE => bpe.push((token, id)),
            other => {
                return Err(tok_err(format!(
                    "token {id} `{token}` has unknown token type {other}"
                )))
            }
        }
        // A string can map to only one id; a second copy would silently lose an id.
        if let Some(first) = seen.insert(token, id) {
            return Err(tok_err(format!(
                "token `{token}` appears twice, as ids {first} and {id}"
            )));
        }
    }

    // The tokenizers crate ignores the ids in `added_tokens` and numbers added tokens from the
    // BPE vocab size upward, unless the token is also in the BPE vocab, in which case it keeps
    // that id. Qwen2 GGUFs put the added tokens right after the BPE entries, so we mirror the
    // original file there; any other layout gets the added tokens pinned through the BPE vocab.
    let contiguous = (0u32..)
        .zip(&added)
        .all(|(k, &(id, _, _))| usize::try_from(id).ok() == Some(bpe.len() + k as usize));
    let mut vocab = Map::new();
    for &(token, id) in &bpe {
        vocab.insert(token.to_owned(), json!(id));
    }
    if !contiguous {
        for &(id, token, _) in &added {
            vocab.insert(token.to_owned(), json!(id));
        }
    }

    let mut pairs = Vec::with_capacity(merges.len());
    for (rank, merge) in merges.iter().enumerate() {
        // Split where llama.cpp does: at the first space after the first character.
        let split = merge
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(i, _)| i)
            .ok_or_else(|| tok_err(format!("merge {rank} `{merge}` has no space")))?;
        pairs.push((merge[..split].to_owned(), merge[split + 1..].to_owned()));
    }

    let doc = qwen2_tokenizer_doc(vocab, &pairs, &added);
    let tokenizer = Tokenizer::from_str(&doc.to_string())
        .map_err(|e| tok_err(format!("cannot rebuild tokenizer from GGUF vocab: {e}")))?;

    // Cheap insurance that every id landed where the GGUF says: a shifted id would make the
    // model read the wrong embedding row with no visible error.
    for (id, (token, &ty)) in (0u32..).zip(tokens.iter().zip(token_types)) {
        if ty != TOKEN_TYPE_UNUSED && tokenizer.token_to_id(token) != Some(id) {
            return Err(tok_err(format!(
                "rebuilt tokenizer maps `{token}` to {:?}, GGUF says {id}",
                tokenizer.token_to_id(token)
            )));
        }
    }
    Ok(tokenizer)
}

/// The `tokenizer.json` document around a byte-level BPE vocabulary, with the normalizer,
/// pre-tokenizer, post-processor and decoder of the Qwen2.5 original.
pub fn qwen2_tokenizer_doc(
    vocab: Map<String, Value>,
    merges: &[(String, String)],
    added: &[(u32, &str, bool)],
) -> Value {
    let byte_level = json!({
        "type": "ByteLevel",
        "add_prefix_space": false,
        "trim_offsets": false,
        "use_regex": false
    });
    let added_tokens: Vec<Value> = added
        .iter()
        .map(|&(id, content, special)| {
            json!({
                "id": id,
                "content": content,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": special
            })
        })
        .collect();
    let merges: Vec<Value> = merges.iter().map(|(l, r)| json!([l, r])).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": { "type": "NFC" },
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": { "Regex": QWEN2_SPLIT_REGEX },
                    "behavior": "Isolated",
                    "invert": false
                },
                byte_level
            ]
        },
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges
        }
    })
}

pub(crate) fn tok_err(message: impl Into<String>) -> Error {
    Error::Tokenizer(message.into())
}

fn json_id(id: &Value, token: &str, vocab_size: usize) -> Result<usize> {
    let id = id
        .as_u64()
        .ok_or_else(|| tok_err(format!("token `{token}` has id {id}, not a whole number")))?;
    match usize::try_from(id) {
        Ok(id) if id < vocab_size => Ok(id),
        _ => Err(tok_err(format!(
            "token `{token}` has id {id}, outside the model's vocab_size {vocab_size}"
        ))),
    }
}

fn place(slots: &mut [Option<(String, i32)>], id: usize, token: &str, ty: i32) -> Result<()> {
    match &slots[id] {
        Some((existing, _)) => Err(tok_err(format!(
            "id {id} is used twice, by `{existing}` and `{token}`"
        ))),
        None => {
            slots[id] = Some((token.to_owned(), ty));
            Ok(())
        }
    }
}

fn read_merges(model: &Map<String, Value>) -> Result<Vec<String>> {
    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| tok_err("BPE model has no `merges` array"))?;
    merges
        .iter()
        .enumerate()
        .map(|(rank, merge)| match merge {
            Value::String(s) if s.chars().skip(1).any(|c| c == ' ') => Ok(s.clone()),
            Value::Array(pair) => match pair.as_slice() {
                // GGUF stores merges as one space-separated string, so a space inside a part
                // would be ambiguous; the converter writes it as its byte-level symbol U+0120.
                [Value::String(l), Value::String(r)] => Ok(format!(
                    "{} {}",
                    l.replace(' ', "\u{120}"),
                    r.replace(' ', "\u{120}")
                )),
                _ => Err(tok_err(format!(
                    "merge {rank} is not a pair of strings: {merge}"
                ))),
            },
            _ => Err(tok_err(format!("merge {rank} is malformed: {merge}"))),
        })
        .collect()
}

/// llama.cpp's `does_token_look_special`: added tokens that are control tokens in practice even
/// when `tokenizer.json` does not flag them special.
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// GPT-2's reversible byte-to-unicode table: printable Latin-1 bytes map to themselves, the rest
/// to U+0100 upward in byte order, so every byte has a visible, non-space symbol.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0u32;
    for b in 0u8..=255 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(b)
        } else {
            next += 1;
            255 + next
        };
        table[usize::from(b)] = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_permutation_of_visible_symbols() {
        let table = bytes_to_unicode();
        let mut sorted: Vec<char> = table.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
        assert_eq!(table[usize::from(b' ')], '\u{120}');
        assert_eq!(table[usize::from(b'\n')], '\u{10a}');
        assert_eq!(table[usize::from(b'a')], 'a');
    }
}
