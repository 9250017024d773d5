//! The chat format of a conversation: arbitrary text cut into messages ("role:content" parts
//! separated by U+0001) is either refused with an error or gives a prompt that starts with the
//! system turn and ends with the opened assistant turn when one is asked for.
#![no_main]
use libfuzzer_sys::fuzz_target;
use unmask_dream::chat::{conversation_prompt, Message, Role};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let mut messages = Vec::new();
    for part in text.split('\u{1}') {
        let (role, content) = part.split_once(':').unwrap_or(("user", part));
        match role.parse::<Role>() {
            Ok(role) => messages.push(Message::new(role, content)),
            Err(e) => assert!(e.to_string().contains("unknown role")),
        }
    }
    let add_assistant = flags & 1 == 1;
    if let Ok(prompt) = conversation_prompt(&messages, add_assistant) {
        assert!(prompt.starts_with("<|im_start|>system\n"));
        if add_assistant {
            assert!(prompt.ends_with("<|im_start|>assistant\n"));
        }
    }
});
