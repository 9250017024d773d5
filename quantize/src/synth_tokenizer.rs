//! A small, deterministic Qwen2-style byte-level BPE tokenizer for the tiny synthetic model:
//! the 256 byte tokens, merges learned by plain pair counting from an embedded corpus, and
//! Dream's special tokens right after the BPE entries.

use serde_json::{json, Map};
use std::collections::{BTreeMap, HashMap};
use unmask_dream::tokenizer_meta::{bytes_to_unicode, qwen2_tokenizer_doc};

/// The special tokens of [`synth_tokenizer_json`], in id order right after its BPE entries.
pub use unmask_dream::tokens::SPECIAL_TOKENS as SYNTH_SPECIAL_TOKENS;

/// How many merges the synthetic tokenizer learns: enough that common words become one or two
/// tokens, few enough that 256 bytes + merges + specials stay under a 512-entry embedding.
const SYNTH_MERGES: usize = 200;

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
    use std::str::FromStr;
    use tokenizers::Tokenizer;

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
