//! The format reward (docs/training.md §3).
//!
//! Spec: 1.0 when the completion (special tokens removed) is exactly one ```` ```python ```` block
//! ending with "```\n", with only plain text before it, and the code parses as Python; 0.5 when the
//! block shape is right but the code does not parse; 0 otherwise.
//!
//! # Interpretation (decided here, from the spec rather than the released regex)
//!
//! The cleaned completion ([`clean_completion`]) has the shape right iff it is exactly
//! `PREFIX + "```python\n" + CODE + "```\n"` where
//! - `PREFIX` ("only plain text before it") contains no "```" anywhere; it may be empty and need
//!   not end in a newline;
//! - the opening fence is exactly "```python" followed by a newline: no other language tag
//!   ("```py", "```python3"), no trailing spaces, `\n` not `\r\n`;
//! - `CODE` contains no "```" ("exactly one block": a second fence of any kind is refused), and is
//!   empty or ends in `\n`, i.e. the closing fence stands at the start of its own line as a
//!   Markdown fence must ("x = 1```" does not close a block);
//! - the closing fence is "```" followed by exactly one `\n`, and it is the end of the text:
//!   nothing after it, not even whitespace or another newline ("ending with ```\n").
//!
//! An empty `CODE` parses (an empty module), so "```python\n```\n" gets format 1.0; it cannot pass
//! any test, so its reward is 0.5.
//!
//! "Parses as Python" is `ast.parse` (syntax only; nothing is compiled or executed), run by the
//! sandboxed interpreter ([`crate::sandbox::Sandbox::parses`]). Errors that only the compiler
//! raises (`return` outside a function, ...) therefore still count as parsing.

/// Special-token strings of the DiffuCoder/Dream (Qwen2.5) tokenizer that may appear in decoded
/// text. All of them are removed by [`strip_special_tokens`].
pub const SPECIAL_TOKENS: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|dlm_pad|>",
    "<|mask|>",
    "<|beginoftext|>",
];

/// Tokens that end a completion: the training `completion_mask` stops at the first `<|im_end|>`
/// (§1), and `<|endoftext|>` ends generation too.
pub const END_TOKENS: &[&str] = &["<|im_end|>", "<|endoftext|>"];

/// Removes every occurrence of the [`SPECIAL_TOKENS`].
pub fn strip_special_tokens(text: &str) -> String {
    let mut s = text.to_string();
    for t in SPECIAL_TOKENS {
        if s.contains(t) {
            s = s.replace(t, "");
        }
    }
    s
}

/// The text that is scored for a decoded completion: cut at the first end token ([`END_TOKENS`];
/// what follows is outside the completion mask), then all remaining special tokens removed
/// (e.g. `<|dlm_pad|>` or a leftover `<|mask|>` inside the text).
pub fn clean_completion(decoded: &str) -> String {
    let end = END_TOKENS
        .iter()
        .filter_map(|t| decoded.find(t))
        .min()
        .unwrap_or(decoded.len());
    strip_special_tokens(&decoded[..end])
}

const FENCE: &str = "```";
const OPEN: &str = "```python\n";
const CLOSE: &str = "```\n";

/// When `text` (already cleaned) has the required block shape, the code inside the block.
pub fn extract_block(text: &str) -> Option<&str> {
    let open = text.find(FENCE)?;
    // The first fence must be the opening one: the prefix is plain text.
    if !text[open..].starts_with(OPEN) {
        return None;
    }
    let code_start = open + OPEN.len();
    let rest = &text[code_start..];
    let close = rest.find(FENCE)?;
    // The closing fence must be the end: "```\n" and nothing after.
    if &rest[close..] != CLOSE {
        return None;
    }
    let code = &rest[..close];
    if !(code.is_empty() || code.ends_with('\n')) {
        return None;
    }
    Some(code)
}

/// The format score from the block shape and a parse verdict for the code:
/// `parses` is only called when the shape is right.
pub fn format_score_with<F>(text: &str, parses: F) -> (f64, Option<String>)
where
    F: FnOnce(&str) -> bool,
{
    match extract_block(text) {
        None => (0.0, None),
        Some(code) => {
            let score = if parses(code) { 1.0 } else { 0.5 };
            (score, Some(code.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(
            clean_completion("a<|dlm_pad|>b<|mask|>\n<|im_end|>junk<|endoftext|>"),
            "ab\n"
        );
        assert_eq!(clean_completion("x<|endoftext|>y<|im_end|>"), "x");
        assert_eq!(strip_special_tokens("<|im_start|>q<|im_end|>"), "q");
    }

    #[test]
    fn shapes() {
        let good = [
            ("```python\nx = 1\n```\n", "x = 1\n"),
            ("Here you go:\n```python\nx = 1\n```\n", "x = 1\n"),
            ("Sure! ```python\nx = 1\n```\n", "x = 1\n"),
            ("```python\n```\n", ""),
            (
                "text with `inline` and ``double`` ticks\n```python\nx = 1\n\n```\n",
                "x = 1\n\n",
            ),
        ];
        for (t, code) in good {
            assert_eq!(extract_block(t), Some(code), "{t:?}");
        }
        let bad = [
            "",
            "x = 1\n",
            "```python\nx = 1\n```",     // no newline after the closing fence
            "```python\nx = 1\n```\n\n", // extra newline after
            "```python\nx = 1\n``` \n",  // space after the closing fence
            "```python\nx = 1\n```\nThat's it.", // text after the block
            "```python\nx = 1\n```\n```python\ny = 2\n```\n", // two blocks
            "```\nx = 1\n```\n```python\ny = 2\n```\n", // another fence before
            "```python\nx = 1\n",        // missing closing fence
            "```py\nx = 1\n```\n",       // other language tag
            "```python3\nx = 1\n```\n",
            "```Python\nx = 1\n```\n",
            "```python \nx = 1\n```\n",
            "```python\r\nx = 1\r\n```\n",
            "```python\nx = 1```\n",       // fence not on its own line
            "```python\ns = '```'\n```\n", // a fence inside the code
            "```pythonx = 1\n```\n",
        ];
        for t in bad {
            assert_eq!(extract_block(t), None, "{t:?}");
        }
    }

    #[test]
    fn score_uses_the_parse_verdict() {
        let t = "```python\nx = 1\n```\n";
        assert_eq!(format_score_with(t, |_| true).0, 1.0);
        assert_eq!(format_score_with(t, |_| false).0, 0.5);
        let (s, code) = format_score_with("no block", |_| panic!("not called"));
        assert_eq!((s, code), (0.0, None));
    }
}
