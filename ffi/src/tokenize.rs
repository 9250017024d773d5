//! Text <-> ids with the model's tokenizer, and the Instruct chat prompt of one message or of a
//! conversation, into caller buffers.

use crate::args;
use crate::error::{size_entry, FfiError, FfiResult};
use crate::model::{unmask_model, ModelEntry, MODELS};
use std::ffi::c_char;
use unmask_dream::chat::{self, Message, Role};

/// `unmask_tokenize`.
///
/// # Safety
/// `text` as in [`args::text`]; `tokens` NULL or valid for `n_tokens_max` writes.
#[no_mangle]
pub unsafe extern "C" fn unmask_tokenize(
    model: *const unmask_model,
    text: *const c_char,
    text_len: i32,
    tokens: *mut i32,
    n_tokens_max: i32,
) -> i32 {
    size_entry(|| {
        let model = MODELS.get(model)?;
        // SAFETY: forwarded caller contract.
        let text = unsafe { args::text(text, text_len, "text") }?;
        // Held for the call: `ModelSpec::encode` then finds it in the model's cache.
        let _tokenizer = model.tokenizer()?;
        let ids = model.model.encode(text)?;
        // SAFETY: forwarded caller contract.
        unsafe { args::write_ids(&ids, tokens, n_tokens_max) }
    })
}

/// `unmask_detokenize`.
///
/// # Safety
/// `tokens` NULL or valid for `n_tokens` reads; `buf` NULL or valid for `buf_len` writes.
#[no_mangle]
pub unsafe extern "C" fn unmask_detokenize(
    model: *const unmask_model,
    tokens: *const i32,
    n_tokens: i32,
    buf: *mut c_char,
    buf_len: i32,
    skip_special: i32,
) -> i32 {
    size_entry(|| {
        let model = MODELS.get(model)?;
        // SAFETY: forwarded caller contract.
        let ids = unsafe { args::token_ids(tokens, n_tokens, model.model.n_vocab, "tokens") }?;
        let text = model
            .tokenizer()?
            .decode(&ids, skip_special != 0)
            .map_err(|e| unmask_runtime::Error::Tokenizer(e.to_string()))?;
        // SAFETY: forwarded caller contract.
        unsafe { args::write_text(text.as_bytes(), buf, buf_len) }
    })
}

/// Refuses a model whose tokenizer cannot express the chat format.
fn require_chat(model: &ModelEntry) -> FfiResult<()> {
    if model.model.supports_chat() {
        return Ok(());
    }
    Err(FfiError::InvalidArgument(
        "the model's tokenizer has no chat markers (<|im_start|>, <|im_end|>)".into(),
    ))
}

/// `unmask_apply_chat`.
///
/// # Safety
/// `user_text` as in [`args::text`]; `buf` NULL or valid for `buf_len` writes.
#[no_mangle]
pub unsafe extern "C" fn unmask_apply_chat(
    model: *const unmask_model,
    user_text: *const c_char,
    text_len: i32,
    buf: *mut c_char,
    buf_len: i32,
) -> i32 {
    size_entry(|| {
        let model = MODELS.get(model)?;
        // SAFETY: forwarded caller contract.
        let text = unsafe { args::text(user_text, text_len, "user_text") }?;
        require_chat(&model)?;
        let prompt = chat::instruct_prompt(text);
        // SAFETY: forwarded caller contract.
        unsafe { args::write_text(prompt.as_bytes(), buf, buf_len) }
    })
}

/// `unmask_chat_message_t`: one turn of a conversation, both strings NUL-terminated UTF-8.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct unmask_chat_message {
    pub role: *const c_char,
    pub content: *const c_char,
}

/// `unmask_apply_chat_messages`.
///
/// # Safety
/// `messages` NULL or valid for `n_messages` reads, each string NULL or NUL-terminated; `buf`
/// NULL or valid for `buf_len` writes.
#[no_mangle]
pub unsafe extern "C" fn unmask_apply_chat_messages(
    model: *const unmask_model,
    messages: *const unmask_chat_message,
    n_messages: usize,
    add_assistant: bool,
    buf: *mut c_char,
    buf_len: i32,
) -> i32 {
    size_entry(|| {
        let model = MODELS.get(model)?;
        if messages.is_null() {
            return Err(FfiError::Null("messages"));
        }
        if n_messages > 1 << 20 {
            return Err(FfiError::InvalidArgument(format!(
                "n_messages {n_messages} is more than a conversation can hold"
            )));
        }
        // SAFETY: non-NULL and valid for n_messages reads by the caller's contract.
        let raw = unsafe { std::slice::from_raw_parts(messages, n_messages) };
        let mut conversation = Vec::with_capacity(raw.len());
        for m in raw {
            // SAFETY: forwarded caller contract (NUL-terminated or NULL).
            let role = unsafe { args::text(m.role, -1, "messages[].role") }?;
            // SAFETY: as above.
            let content = unsafe { args::text(m.content, -1, "messages[].content") }?;
            let role: Role = role
                .parse()
                .map_err(|e: unmask_dream::Error| FfiError::InvalidArgument(e.to_string()))?;
            conversation.push(Message::new(role, content));
        }
        require_chat(&model)?;
        let prompt = chat::conversation_prompt(&conversation, add_assistant)
            .map_err(|e| FfiError::InvalidArgument(e.to_string()))?;
        // SAFETY: forwarded caller contract.
        unsafe { args::write_text(prompt.as_bytes(), buf, buf_len) }
    })
}
