//! `unmask chat`: a multi-turn conversation on the terminal (or from piped lines). Each turn is
//! generated over the whole conversation so far, in the Instruct chat format
//! (`unmask_dream::chat::conversation_prompt`); the oldest turns are left out when the
//! conversation does not fit the model's context.

use crate::cli_decoding::{settings_error, PRECEDENCE};
use crate::cli_generate::{load_model, GenerationFlags, Resolved, StepProgress};
use anyhow::{bail, Result};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use unmask_dream::chat::{answer_text, conversation_prompt, encode, Message, Role};
use unmask_runtime::{Control, Generator, StepEvent};

const COMMANDS: &str = "Each line you type is one message (end a line with \\ to continue it on \
the next). /reset starts a new conversation, /exit (or end of input, Ctrl-D) ends the session.";

#[derive(clap::Args)]
#[command(after_help = format!("{COMMANDS}\n\n{PRECEDENCE}"))]
pub struct ChatArgs {
    /// (The model's tokenizer must have the chat markers <|im_start|> and <|im_end|>.)
    #[command(flatten)]
    model: crate::cli_model::ModelArg,
    /// The system prompt. Default: "You are a helpful assistant." (Dream's).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    flags: GenerationFlags,
    /// Print one JSON object per turn (the turn, the full prompt, its token count, the answer,
    /// steps, seconds, turns left out) instead of the answer's text.
    #[arg(long)]
    json: bool,
    /// No progress bar (it is shown on a terminal only, never when stderr is piped).
    #[arg(short, long)]
    quiet: bool,
}

/// The conversation: an optional system message, then alternating turns.
struct Conversation {
    system: Option<String>,
    turns: Vec<Message>,
}

impl Conversation {
    fn messages(&self) -> Vec<Message> {
        let system = self.system.iter().map(|s| Message::new(Role::System, s));
        system.chain(self.turns.iter().cloned()).collect()
    }
}

/// The next message from `input`: `None` at the end of input. Lines ending in `\` continue.
fn read_message(input: &mut impl BufRead) -> Result<Option<String>> {
    let mut message = String::new();
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok((!message.is_empty()).then_some(message));
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.strip_suffix('\\') {
            Some(part) => {
                message.push_str(part);
                message.push('\n');
            }
            None => {
                message.push_str(line);
                return Ok(Some(message));
            }
        }
    }
}

pub fn run(args: ChatArgs) -> Result<()> {
    let model_path = args.model.path()?;
    let (model, placement) = load_model(&model_path, &args.flags.device)?;
    if !model.supports_chat() {
        bail!(
            "{}: the model's tokenizer has no chat markers (<|im_start|>, <|im_end|>); use \
             `unmask generate --no-chat` for plain continuation",
            model_path.display()
        );
    }
    let model = Arc::new(model);
    let Resolved {
        settings, params, ..
    } = args.flags.resolve(&model)?;
    let tokenizer = model.tokenizer()?;
    let special = model.special.clone();
    let context = model.context_length();
    args.flags.warn_oversubscription();
    let mut generator = Generator::new(model, args.flags.threads)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive && !args.json {
        eprintln!(
            "unmask chat: {} on {}. {COMMANDS}",
            model_path.display(),
            placement.describe()
        );
    }
    let mut conversation = Conversation {
        system: args.system.clone(),
        turns: Vec::new(),
    };
    let mut input = std::io::stdin().lock();
    let mut turn = 0usize;
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = read_message(&mut input)? else {
            break;
        };
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                conversation.turns.clear();
                if interactive {
                    eprintln!("(new conversation)");
                }
                continue;
            }
            _ => {}
        }
        conversation.turns.push(Message::new(Role::User, line));
        // Leave out the oldest exchanges (a user turn and its answer) until the prompt and the
        // answer fit the context.
        let mut dropped = 0usize;
        let (prompt, ids) = loop {
            let prompt = conversation_prompt(&conversation.messages(), true)?;
            let ids = encode(&tokenizer, &prompt)?;
            if ids.len() + params.max_new_tokens <= context || conversation.turns.len() == 1 {
                break (prompt, ids);
            }
            conversation.turns.drain(..2);
            dropped += 1;
        };
        if ids.len() + params.max_new_tokens > context {
            eprintln!(
                "error: this message ({} prompt tokens) and {} new tokens do not fit the model's \
                 context of {context} tokens; send a shorter one or lower --max-new-tokens",
                ids.len(),
                params.max_new_tokens
            );
            conversation.turns.pop();
            continue;
        }
        if dropped > 0 && !args.json {
            eprintln!("(left out the {dropped} oldest exchange(s) to fit the context)");
        }
        let mut progress = StepProgress::on_terminal(params.max_new_tokens, args.quiet);
        let mut on_step = |event: &StepEvent| {
            if let Some(progress) = &mut progress {
                progress.update(event);
            }
            Control::Continue
        };
        let result = generator.generate(&ids, &params, &mut on_step);
        if let Some(progress) = &progress {
            progress.finish();
        }
        let result = result.map_err(|e| settings_error(e, &settings))?;
        let answer = answer_text(&tokenizer, &special, &result.tokens)?;
        if args.json {
            let json = serde_json::json!({
                "turn": turn,
                "prompt": prompt,
                "prompt_tokens": ids.len(),
                "tokens": result.tokens,
                "answer": answer,
                "steps": result.steps,
                "seconds": result.seconds,
                "dropped_exchanges": dropped,
            });
            println!("{json}");
        } else {
            println!("{answer}");
        }
        std::io::stdout().flush()?;
        conversation
            .turns
            .push(Message::new(Role::Assistant, answer));
        turn += 1;
    }
    Ok(())
}
