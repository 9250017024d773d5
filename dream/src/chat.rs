//! The Instruct prompt format (docs/model.md §5) for a conversation, and the post-processing of
//! an answer.

use crate::tokens::SpecialTokens;
use crate::{Error, Result};
use tokenizers::Tokenizer;

/// The system prompt of Dream's and DiffuCoder's published Instruct prompt, used when a
/// conversation brings none.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// Who speaks a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => Err(Error::Chat(format!(
                "unknown role `{other}` (expected system, user or assistant)"
            ))),
        }
    }
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// The ChatML prompt of `messages`, ending with an opened assistant turn when `add_assistant`.
///
/// - A system message may only come first; without one, [`DEFAULT_SYSTEM_PROMPT`] is used.
/// - A user turn ends with a newline before `<|im_end|>`: DiffuCoder's published prompt puts it
///   there (docs/model.md §5), so one user message gives exactly that prompt. System and
///   assistant turns end at their content.
pub fn conversation_prompt(messages: &[Message], add_assistant: bool) -> Result<String> {
    if messages.is_empty() {
        return Err(Error::Chat("the conversation has no messages".into()));
    }
    let (system, turns) = match messages.split_first() {
        Some((first, rest)) if first.role == Role::System => (first.content.as_str(), rest),
        _ => (DEFAULT_SYSTEM_PROMPT, messages),
    };
    if let Some(i) = turns.iter().position(|m| m.role == Role::System) {
        let index = messages.len() - turns.len() + i;
        return Err(Error::Chat(format!(
            "message {index} is a system message; only the first message may be one"
        )));
    }
    let mut prompt = format!("<|im_start|>system\n{system}<|im_end|>\n");
    for message in turns {
        let end = if message.role == Role::User { "\n" } else { "" };
        prompt.push_str(&format!(
            "<|im_start|>{}\n{}{end}<|im_end|>\n",
            message.role.as_str(),
            message.content
        ));
    }
    if add_assistant {
        prompt.push_str("<|im_start|>assistant\n");
    }
    Ok(prompt)
}

/// The Instruct prompt of one user message with the default system prompt: Dream's and
/// DiffuCoder's published prompt.
pub fn instruct_prompt(query: &str) -> String {
    // One user message is always a valid conversation.
    conversation_prompt(&[Message::new(Role::User, query)], true)
        .expect("a single user message is a valid conversation")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Message {
        Message::new(Role::User, text)
    }

    #[test]
    fn one_user_message_is_the_published_instruct_prompt() {
        // docs/model.md §5, spelled out.
        let published = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a sort\n<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(instruct_prompt("Write a sort"), published);
        assert_eq!(
            conversation_prompt(&[user("Write a sort")], true).unwrap(),
            published
        );
    }

    #[test]
    fn a_conversation_with_a_system_prompt_and_earlier_turns() {
        let messages = [
            Message::new(Role::System, "Be brief."),
            user("hi"),
            Message::new(Role::Assistant, "hello"),
            user("more"),
        ];
        assert_eq!(
            conversation_prompt(&messages, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi\n<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nmore\n<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            conversation_prompt(&messages[..3], false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi\n<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        );
    }

    #[test]
    fn conversations_the_format_cannot_express_are_refused() {
        assert!(matches!(
            conversation_prompt(&[], true),
            Err(Error::Chat(_))
        ));
        let late_system = [user("hi"), Message::new(Role::System, "x")];
        let err = conversation_prompt(&late_system, true).unwrap_err();
        assert!(
            err.to_string().contains("message 1 is a system message"),
            "{err}"
        );
        assert!("tool".parse::<Role>().is_err());
        assert_eq!("assistant".parse::<Role>().unwrap(), Role::Assistant);
    }
}
