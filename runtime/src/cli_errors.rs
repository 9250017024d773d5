//! How the `unmask` command ends on an error: `error: ` and the chain of causes on stderr, exit
//! status 1, and never a stack trace. (`fn main() -> anyhow::Result<()>` prints one whenever
//! RUST_BACKTRACE is set, which is noise for a wrong path or flag; a panic still prints its own.)

use std::process::ExitCode;

/// The message printed for `error`: its causes joined by ": " (anyhow's alternate format).
pub fn message(error: &anyhow::Error) -> String {
    format!("error: {error:#}")
}

/// Prints `result`'s error as [`message`] does and turns it into the process's exit status.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", message(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_message_has_every_cause_and_no_backtrace() {
        let inner: anyhow::Result<()> = Err(anyhow::anyhow!("No such file or directory"));
        let e = inner.context("opening model.gguf").unwrap_err();
        let text = message(&e);
        assert_eq!(text, "error: opening model.gguf: No such file or directory");
        assert!(!text.contains("backtrace"), "{text}");
    }
}
