//! Moves a Qwen2-style byte-level BPE tokenizer between its two homes: the Hugging Face
//! `tokenizer.json` that ships with a DiffuCoder/Dream checkpoint and the `tokenizer.ggml.*`
//! arrays of a GGUF file.
//!
//! [`vocab_from_tokenizer_json`] produces the arrays exactly as llama.cpp's
//! `convert_hf_to_gguf.py` writes them for a Qwen2/Dream model (`tokenizer.ggml.model = "gpt2"`,
//! `tokenizer.ggml.pre = "qwen2"`), so GGUF files made by either tool carry the same vocabulary.
//! [`tokenizer_from_vocab`] goes the other way, for GGUF files produced by llama.cpp that carry no
//! copy of the original `tokenizer.json`. [`synth_tokenizer_json`] builds a tiny tokenizer of the
//! same shape so tests can make small models without shipping the 7 MB real one.

use std::collections::{BTreeMap, HashMap};
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

/// The special tokens of [`synth_tokenizer_json`], in id order right after its BPE entries. The
/// names are the real Qwen2.5/Dream ones so code that looks them up by text works on both.
pub const SYNTH_SPECIAL_TOKENS: [&str; 6] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|beginoftext|>",
    "<|mask|>",
    "<|dlm_pad|>",
];

/// How many merges the synthetic tokenizer learns: enough that common words become one or two
/// tokens, few enough that 256 bytes + merges + specials stay under a 512-entry embedding.
const SYNTH_MERGES: usize = 200;

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

/// A small, deterministic Qwen2-style `tokenizer.json` for tiny test models.
///
/// Ids 0..256 are the GPT-2 byte-level symbols for bytes 0..256, then the merges learned by plain
/// pair counting on an embedded corpus of Python and English, then [`SYNTH_SPECIAL_TOKENS`]. The
/// whole vocabulary stays under 512.
pub fn synth_tokenizer_json() -> String {
    let byte_chars = bytes_to_unicode();

    let mut vocab: Vec<String> = byte_chars.iter().map(|c| c.to_string()).collect();
    let mut ids: HashMap<String, u32> = (0u32..)
        .zip(vocab.iter().cloned())
        .map(|(i, t)| (t, i))
        .collect();

    // Words as symbol sequences with their frequency; BTreeMap keeps the training deterministic.
    let mut word_counts: BTreeMap<String, usize> = BTreeMap::new();
    for word in split_words(SYNTH_CORPUS) {
        *word_counts.entry(word.to_owned()).or_default() += 1;
    }
    let mut words: Vec<(Vec<String>, usize)> = word_counts
        .into_iter()
        .map(|(word, count)| {
            let symbols = word
                .bytes()
                .map(|b| byte_chars[usize::from(b)].to_string())
                .collect();
            (symbols, count)
        })
        .collect();

    let mut merges: Vec<(String, String)> = Vec::new();
    while merges.len() < SYNTH_MERGES {
        let mut pair_counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (symbols, count) in &words {
            for w in symbols.windows(2) {
                *pair_counts.entry((&w[0], &w[1])).or_default() += count;
            }
        }
        // Highest count wins; ties go to the smallest pair in BTreeMap order.
        let mut best: Option<((&str, &str), usize)> = None;
        for (&pair, &count) in &pair_counts {
            if best.is_none_or(|(_, c)| count > c) {
                best = Some((pair, count));
            }
        }
        let Some(((left, right), count)) = best else {
            break;
        };
        // A pair seen once is memorising the corpus, not learning from it.
        if count < 2 {
            break;
        }
        let (left, right) = (left.to_owned(), right.to_owned());
        let merged = format!("{left}{right}");
        for (symbols, _) in &mut words {
            apply_merge(symbols, &left, &right, &merged);
        }
        if !ids.contains_key(&merged) {
            let next = u32::try_from(vocab.len()).unwrap_or(u32::MAX);
            ids.insert(merged.clone(), next);
            vocab.push(merged);
        }
        merges.push((left, right));
    }

    let mut vocab_map = Map::new();
    for (id, token) in (0u32..).zip(&vocab) {
        vocab_map.insert(token.clone(), json!(id));
    }
    let added: Vec<(u32, &str, bool)> = (0u32..)
        .zip(SYNTH_SPECIAL_TOKENS)
        .map(|(k, token)| (vocab.len() as u32 + k, token, true))
        .collect();
    format!("{:#}", qwen2_tokenizer_doc(vocab_map, &merges, &added))
}

/// The `tokenizer.json` document around a byte-level BPE vocabulary, with the normalizer,
/// pre-tokenizer, post-processor and decoder of the Qwen2.5 original.
fn qwen2_tokenizer_doc(
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

fn tok_err(message: impl Into<String>) -> Error {
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
fn bytes_to_unicode() -> [char; 256] {
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

fn apply_merge(symbols: &mut Vec<String>, left: &str, right: &str, merged: &str) {
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && symbols[i] == left && symbols[i + 1] == right {
            out.push(merged.to_owned());
            i += 2;
        } else {
            out.push(std::mem::take(&mut symbols[i]));
            i += 1;
        }
    }
    *symbols = out;
}

/// Splits text the way [`QWEN2_SPLIT_REGEX`] does, so the synthetic merges are ones the real
/// pre-tokenizer lets fire. Only the training corpus goes through here; `char` classes stand in
/// for the regex's Unicode ones, which agree on the corpus.
fn split_words(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut words = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let len = match_len(&chars, i).max(1);
        let start = chars[i].0;
        let end = chars.get(i + len).map_or(text.len(), |&(pos, _)| pos);
        words.push(&text[start..end]);
        i += len;
    }
    words
}

/// Length in chars of the regex match starting at `i`, trying the alternatives in order.
fn match_len(chars: &[(usize, char)], i: usize) -> usize {
    let at = |k: usize| chars.get(k).map(|&(_, c)| c);
    let is_letter = |c: Option<char>| c.is_some_and(char::is_alphabetic);
    let is_number = |c: Option<char>| c.is_some_and(char::is_numeric);
    let is_space = |c: Option<char>| c.is_some_and(char::is_whitespace);
    let is_newline = |c: Option<char>| matches!(c, Some('\r' | '\n'));
    let is_punct = |c: Option<char>| c.is_some() && !is_letter(c) && !is_number(c) && !is_space(c);
    let run = |from: usize, pred: &dyn Fn(Option<char>) -> bool| {
        (from..).take_while(|&k| pred(at(k))).count()
    };

    if at(i) == Some('\'') {
        for suffix in ["s", "t", "re", "ve", "m", "ll", "d"] {
            let matches = suffix
                .chars()
                .enumerate()
                .all(|(k, s)| at(i + 1 + k).is_some_and(|c| c.eq_ignore_ascii_case(&s)));
            if matches {
                return 1 + suffix.len();
            }
        }
    }
    if is_letter(at(i)) {
        return run(i, &is_letter);
    }
    if !is_newline(at(i)) && !is_number(at(i)) && is_letter(at(i + 1)) {
        return 1 + run(i + 1, &is_letter);
    }
    if is_number(at(i)) {
        return 1;
    }
    let lead = usize::from(at(i) == Some(' ') && is_punct(at(i + 1)));
    if is_punct(at(i + lead)) {
        let body = run(i + lead, &is_punct);
        return lead + body + run(i + lead + body, &is_newline);
    }
    let spaces = run(i, &is_space);
    if let Some(last_newline) = (i..i + spaces).rev().find(|&k| is_newline(at(k))) {
        return last_newline + 1 - i;
    }
    if i + spaces == chars.len() || spaces == 1 {
        spaces
    } else {
        // `\s+(?!\S)` leaves the last space to lead the next word.
        spaces - 1
    }
}

/// Training text for [`synth_tokenizer_json`]: code and prose of the kind the test prompts use.
const SYNTH_CORPUS: &str = r#"def add(a, b):
    """Return the sum of two numbers."""
    return a + b


def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from an empty stack")
        return self.items.pop()

    def __len__(self):
        return len(self.items)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    for i in range(2, int(n ** 0.5) + 1):
        if n % i == 0:
            return False
    return True


def read_lines(path):
    with open(path, "r", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def count_words(text):
    counts = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


import os
import sys
from typing import List, Optional


def main(args: List[str]) -> int:
    if len(args) < 2:
        print("usage: main.py <file>")
        return 1
    for name in args[1:]:
        if not os.path.exists(name):
            print(f"missing file: {name}", file=sys.stderr)
            continue
        lines = read_lines(name)
        print(f"{name}: {len(lines)} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

Write a function that returns the sum of the even numbers in a list.
The function should take a list of integers and return an integer.
If the list is empty, the function should return zero.
This is a test of the model. The model reads the prompt and writes the code.
A diffusion model fills in the masked tokens of the answer in a few steps.
Each step unmasks the tokens the model is most confident about.
The quick brown fox jumps over the lazy dog, and then it runs away into the forest.
Please explain what this code does and how it could be made faster.
The answer should be short, clear and correct, with a small example.
"#;

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

    #[test]
    fn splitter_follows_the_qwen2_regex() {
        assert_eq!(
            split_words("def f(x):\n    return x's 12\n\n  "),
            vec![
                "def", " f", "(x", "):\n", "   ", " return", " x", "'s", " ", "1", "2", "\n\n",
                "  "
            ]
        );
    }

    /// The hand-written splitter must agree with the tokenizers crate running the real regex,
    /// or the synthetic merges would be learned across boundaries they can never cross.
    #[test]
    fn splitter_agrees_with_the_real_pre_tokenizer_on_the_corpus() {
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

        let tokenizer = Tokenizer::from_str(&synth_tokenizer_json()).expect("synth loads");
        let pre = tokenizer.get_pre_tokenizer().expect("has a pre-tokenizer");
        let table = bytes_to_unicode();
        let extra = "x=1;y = 'it''S'\r\n\t\tz  \n  \n(a)[b]{c}\"\"\" .. ->   ";
        for text in [SYNTH_CORPUS, extra] {
            let mut pretokenized = PreTokenizedString::from(text);
            pre.pre_tokenize(&mut pretokenized).expect("pre-tokenizes");
            let want: Vec<String> = pretokenized
                .get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(s, _, _)| s.to_owned())
                .collect();
            let got: Vec<String> = split_words(text)
                .into_iter()
                .map(|w| w.bytes().map(|b| table[usize::from(b)]).collect())
                .collect();
            assert_eq!(got, want);
        }
    }
}
