//! The tokenizer must survive the trip into GGUF arrays and back unchanged: a rebuilt tokenizer
//! that splits one string differently would feed the model ids it was never trained on.

use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;

use tokenizers::Tokenizer;
use unmask_dream::tokenizer_meta::{
    tokenizer_from_vocab, vocab_from_tokenizer_json, GgufVocab, TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNUSED, TOKEN_TYPE_USER_DEFINED,
};
use unmask_dream::Error;
use unmask_quantize::synth_tokenizer::{synth_tokenizer_json, SYNTH_SPECIAL_TOKENS};

/// DiffuCoder's config.json vocab_size: 152064 embedding rows for 151668 tokenizer ids.
const DIFFUCODER_VOCAB_SIZE: usize = 152064;

fn real_tokenizer_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/diffucoder-tokenizer.json.gz");
        let file = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        let mut json = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut json)
            .expect("fixture is valid gzip UTF-8");
        json
    })
}

fn real_vocab() -> &'static GgufVocab {
    static VOCAB: OnceLock<GgufVocab> = OnceLock::new();
    VOCAB.get_or_init(|| {
        vocab_from_tokenizer_json(real_tokenizer_json(), DIFFUCODER_VOCAB_SIZE)
            .expect("real tokenizer converts")
    })
}

fn merges_in_file(json: &str) -> usize {
    let root: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    root["model"]["merges"].as_array().expect("merges").len()
}

/// Strings chosen to hit every branch of the Qwen2 split regex and the added-token matcher.
const SAMPLES: &[&str] = &[
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Foo:\n\tdef bar(self):\n\t\treturn {'a': [1, 2, 3]}  \n",
    "for (int i = 0; i < 10; ++i) { sum += a[i]; }\r\n",
    "line one\r\nline two\r\n\r\n  indented after CRLF\n",
    "trailing spaces   ",
    "   leading spaces and\ttabs\t\t",
    "Numbers: 1234567890, 3.14159, -42, 1e-9, 0xFF",
    "Unicode: café naïve Ελληνικά русский язык עברית العربية",
    "CJK: 你好，世界！日本語のテキスト。한국어 텍스트.",
    "Emoji: 🦀🐍 👩‍💻 ❤️ 🇯🇵",
    "It's, they're, we've, I'm, you'll, he'd, IT'S LOUD",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a quicksort in Python.<|im_end|>\n<|im_start|>assistant\n",
    "<|mask|><|mask|><|mask|><|dlm_pad|><|endoftext|>",
    "<|fim_prefix|>def f(x):<|fim_suffix|>\n    return y<|fim_middle|><tool_call>{}</tool_call>",
    "",
    " ",
    "\n\n\n",
    "mixed\u{00a0}non-breaking\u{2003}spaces and zero\u{200b}width",
];

fn assert_same_encoding(original: &Tokenizer, rebuilt: &Tokenizer, text: &str) {
    let want = original.encode(text, false).expect("original encodes");
    let got = rebuilt.encode(text, false).expect("rebuilt encodes");
    assert_eq!(got.get_ids(), want.get_ids(), "ids differ for {text:?}");
    let decoded = rebuilt
        .decode(got.get_ids(), false)
        .expect("rebuilt decodes");
    let original_decoded = original
        .decode(want.get_ids(), false)
        .expect("original decodes");
    assert_eq!(decoded, original_decoded, "decode differs for {text:?}");
    assert_eq!(decoded, text, "round trip changed {text:?}");
}

#[test]
fn real_vocab_matches_llama_cpp_layout() {
    let vocab = real_vocab();
    assert_eq!(vocab.tokens.len(), DIFFUCODER_VOCAB_SIZE);
    assert_eq!(vocab.token_types.len(), DIFFUCODER_VOCAB_SIZE);

    assert_eq!(vocab.mask_id, Some(151666));
    assert_eq!(vocab.tokens[151666], "<|mask|>");
    assert_eq!(vocab.token_types[151666], TOKEN_TYPE_CONTROL);
    assert_eq!(vocab.tokens[151667], "<|dlm_pad|>");
    assert_eq!(vocab.token_types[151667], TOKEN_TYPE_CONTROL);
    assert_eq!(vocab.tokens[151643], "<|endoftext|>");
    assert_eq!(vocab.tokens[151644], "<|im_start|>");
    assert_eq!(vocab.tokens[151645], "<|im_end|>");

    // `special: false` in the file: `<tool_call>` stays USER_DEFINED, while `<|fim_prefix|>`
    // looks special and, as in llama.cpp's converter, becomes CONTROL.
    assert_eq!(vocab.tokens[151657], "<tool_call>");
    assert_eq!(vocab.token_types[151657], TOKEN_TYPE_USER_DEFINED);
    assert_eq!(vocab.tokens[151659], "<|fim_prefix|>");
    assert_eq!(vocab.token_types[151659], TOKEN_TYPE_CONTROL);

    assert_eq!(vocab.tokens[0], "!");
    assert_eq!(vocab.tokens[220], "\u{120}");
    assert!(vocab.token_types[..151643]
        .iter()
        .all(|&t| t == TOKEN_TYPE_NORMAL));

    for id in 151668..DIFFUCODER_VOCAB_SIZE {
        assert_eq!(vocab.tokens[id], format!("[PAD{id}]"));
        assert_eq!(vocab.token_types[id], TOKEN_TYPE_UNUSED);
    }

    assert_eq!(vocab.merges.len(), merges_in_file(real_tokenizer_json()));
    assert_eq!(vocab.merges[0], "\u{120} \u{120}");
    assert!(vocab.merges.iter().all(|m| m.split(' ').count() == 2));

    assert_eq!(vocab.bos_id, None);
    assert_eq!(vocab.eos_id, None);
    assert_eq!(vocab.pad_id, None);
}

#[test]
fn real_tokenizer_rebuilt_from_gguf_arrays_encodes_identically() {
    let original = Tokenizer::from_str(real_tokenizer_json()).expect("original loads");
    let vocab = real_vocab();
    let rebuilt = tokenizer_from_vocab(&vocab.tokens, &vocab.token_types, &vocab.merges)
        .expect("rebuilt tokenizer");

    assert_eq!(rebuilt.get_vocab(true), original.get_vocab(true));
    assert_eq!(rebuilt.token_to_id("<|mask|>"), Some(151666));
    assert_eq!(rebuilt.id_to_token(151667).as_deref(), Some("<|dlm_pad|>"));
    assert_eq!(rebuilt.id_to_token(151700), None);

    for text in SAMPLES {
        assert_same_encoding(&original, &rebuilt, text);
    }
    let long: String = SAMPLES.concat().repeat(3);
    assert_same_encoding(&original, &rebuilt, &long);
}

#[test]
fn synth_tokenizer_is_small_and_round_trips() {
    let json = synth_tokenizer_json();
    assert_eq!(
        json,
        synth_tokenizer_json(),
        "synthetic tokenizer is deterministic"
    );
    let tokenizer = Tokenizer::from_str(&json).expect("synthetic tokenizer loads");

    let total = tokenizer.get_vocab_size(true);
    let bpe = tokenizer.get_vocab_size(false);
    assert!(total < 512, "synthetic vocab has {total} entries");
    let merges = merges_in_file(&json);
    assert!((150..=250).contains(&merges), "{merges} merges");
    assert_eq!(bpe, 256 + merges);
    assert_eq!(total, bpe + SYNTH_SPECIAL_TOKENS.len());
    for (k, token) in SYNTH_SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tokenizer.token_to_id(token), Some((bpe + k) as u32));
    }

    for text in SAMPLES {
        let enc = tokenizer.encode(*text, false).expect("encodes");
        assert!(enc.get_ids().iter().all(|&id| (id as usize) < total));
        let decoded = tokenizer.decode(enc.get_ids(), false).expect("decodes");
        assert_eq!(decoded, *text);
    }

    // The merges were learned from Python, so Python should compress well below one id a byte.
    let code = "def main():\n    return self.items\n";
    let ids = tokenizer.encode(code, false).expect("encodes");
    assert!(ids.len() * 2 < code.len(), "{} ids", ids.len());
    let mask = tokenizer
        .encode("x = <|mask|><|mask|>", false)
        .expect("encodes");
    let mask_id = tokenizer.token_to_id("<|mask|>").expect("mask");
    assert_eq!(&mask.get_ids()[mask.len() - 2..], &[mask_id, mask_id]);
}

#[test]
fn synth_tokenizer_survives_gguf_round_trip() {
    let json = synth_tokenizer_json();
    let original = Tokenizer::from_str(&json).expect("loads");
    let vocab = vocab_from_tokenizer_json(&json, 512).expect("converts");
    assert_eq!(vocab.tokens.len(), 512);
    let bpe = original.get_vocab_size(false);
    assert_eq!(vocab.mask_id, Some((bpe + 4) as u32));
    assert!(vocab.token_types[bpe..bpe + 6]
        .iter()
        .all(|&t| t == TOKEN_TYPE_CONTROL));
    assert!(vocab.token_types[bpe + 6..]
        .iter()
        .all(|&t| t == TOKEN_TYPE_UNUSED));

    let rebuilt =
        tokenizer_from_vocab(&vocab.tokens, &vocab.token_types, &vocab.merges).expect("rebuilds");
    assert_eq!(rebuilt.get_vocab(true), original.get_vocab(true));
    for text in SAMPLES {
        assert_same_encoding(&original, &rebuilt, text);
    }
}

#[test]
fn added_tokens_keep_their_ids_when_not_right_after_the_bpe_entries() {
    let json = synth_tokenizer_json();
    let vocab = vocab_from_tokenizer_json(&json, 512).expect("converts");
    let bpe = Tokenizer::from_str(&json)
        .expect("loads")
        .get_vocab_size(false);

    // Three unused rows between the BPE entries and the specials, and the specials reversed.
    let mut tokens: Vec<String> = vocab.tokens[..bpe].to_vec();
    let mut types: Vec<i32> = vocab.token_types[..bpe].to_vec();
    for k in 0..3 {
        tokens.push(format!("[PAD{}]", bpe + k));
        types.push(TOKEN_TYPE_UNUSED);
    }
    for token in SYNTH_SPECIAL_TOKENS.iter().rev() {
        tokens.push((*token).to_owned());
        types.push(TOKEN_TYPE_CONTROL);
    }
    tokens.push("<tool_call>".to_owned());
    types.push(TOKEN_TYPE_USER_DEFINED);

    let rebuilt = tokenizer_from_vocab(&tokens, &types, &vocab.merges).expect("rebuilds");
    for (id, token) in tokens.iter().enumerate() {
        if types[id] == TOKEN_TYPE_UNUSED {
            assert_eq!(rebuilt.token_to_id(token), None);
        } else {
            assert_eq!(rebuilt.token_to_id(token), Some(id as u32), "{token}");
        }
    }
    let text = "a<|mask|>b<tool_call><|endoftext|>";
    let enc = rebuilt.encode(text, false).expect("encodes");
    assert!(enc.get_ids().contains(&((bpe + 3 + 1) as u32)));
    assert_eq!(rebuilt.decode(enc.get_ids(), false).expect("decodes"), text);
}

fn expect_tokenizer_error<T: std::fmt::Debug>(result: unmask_dream::Result<T>) -> String {
    match result {
        Err(Error::Tokenizer(message)) => message,
        other => panic!("expected a tokenizer error, got {other:?}"),
    }
}

#[test]
fn bad_tokenizer_json_is_rejected() {
    expect_tokenizer_error(vocab_from_tokenizer_json("this is not json", 512));
    expect_tokenizer_error(vocab_from_tokenizer_json("{\"model\": 3}", 512));
    expect_tokenizer_error(vocab_from_tokenizer_json("", 512));

    let wordpiece = r###"{"model": {"type": "WordPiece", "unk_token": "[UNK]",
        "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
        "vocab": {"[UNK]": 0, "a": 1}}}"###;
    let message = expect_tokenizer_error(vocab_from_tokenizer_json(wordpiece, 512));
    assert!(message.contains("WordPiece"), "{message}");

    let out_of_range = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 7},
        "merges": ["a b"]}}"#;
    let message = expect_tokenizer_error(vocab_from_tokenizer_json(out_of_range, 4));
    assert!(
        message.contains("`ab`") && message.contains('7'),
        "{message}"
    );

    let added_out_of_range = r#"{"added_tokens": [{"id": 4, "content": "<|mask|>",
        "special": true}], "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}"#;
    expect_tokenizer_error(vocab_from_tokenizer_json(added_out_of_range, 4));

    let duplicate = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}}"#;
    let message = expect_tokenizer_error(vocab_from_tokenizer_json(duplicate, 4));
    assert!(message.contains("id 0"), "{message}");

    let added_clash = r#"{"added_tokens": [{"id": 1, "content": "<|mask|>",
        "special": true}], "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}"#;
    expect_tokenizer_error(vocab_from_tokenizer_json(added_clash, 4));

    let bad_merge = r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a"]]}}"#;
    expect_tokenizer_error(vocab_from_tokenizer_json(bad_merge, 4));

    let negative = r#"{"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}}"#;
    expect_tokenizer_error(vocab_from_tokenizer_json(negative, 4));
}

#[test]
fn both_merge_spellings_are_accepted() {
    let strings = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
        "merges": ["a b"]}, "added_tokens": [{"id": 3, "content": "<|mask|>", "special": true},
        {"id": 4, "content": "<x>", "special": false}]}"#;
    let pairs = strings.replace("[\"a b\"]", "[[\"a\", \"b\"]]");
    let a = vocab_from_tokenizer_json(strings, 6).expect("string merges");
    let b = vocab_from_tokenizer_json(&pairs, 6).expect("pair merges");
    assert_eq!(a, b);
    assert_eq!(a.merges, vec!["a b".to_owned()]);
    assert_eq!(a.mask_id, Some(3));
    assert_eq!(
        a.token_types,
        vec![
            TOKEN_TYPE_NORMAL,
            TOKEN_TYPE_NORMAL,
            TOKEN_TYPE_NORMAL,
            TOKEN_TYPE_CONTROL,
            TOKEN_TYPE_USER_DEFINED,
            TOKEN_TYPE_UNUSED
        ]
    );
    assert_eq!(a.tokens[5], "[PAD5]");
}

#[test]
fn bad_gguf_arrays_are_rejected() {
    let tokens: Vec<String> = ["a", "b", "ab"].iter().map(|s| (*s).to_owned()).collect();
    let merges = vec!["a b".to_owned()];
    let normal = vec![TOKEN_TYPE_NORMAL; 3];

    tokenizer_from_vocab(&tokens, &normal, &merges).expect("minimal vocab builds");
    expect_tokenizer_error(tokenizer_from_vocab(&tokens, &normal[..2], &merges));
    expect_tokenizer_error(tokenizer_from_vocab(&tokens, &[1, 1, 9], &merges));
    expect_tokenizer_error(tokenizer_from_vocab(&tokens, &normal, &["ab".to_owned()]));
    // A merge whose parts are not in the vocabulary cannot be loaded.
    expect_tokenizer_error(tokenizer_from_vocab(&tokens, &normal, &["a c".to_owned()]));
    let duplicated: Vec<String> = ["a", "b", "a"].iter().map(|s| (*s).to_owned()).collect();
    expect_tokenizer_error(tokenizer_from_vocab(&duplicated, &normal, &[]));
}
