//! Code tasks in the AceCode-87K JSON-lines format (docs/training.md §3):
//! one object per line with `question` (text) and `test_cases` (list of assert strings).
//! An optional `id` is kept; other fields (AceCode's `source`, ...) are ignored; blank lines are
//! skipped.
//!
//! [`Task::prompt_text`] is the *user* text of the training prompt: the question, plus
//! `"\nTest cases: <first assert>"` when the question has no code fence. The Instruct chat wrapping
//! is the runtime's job (`chat::instruct_prompt`).

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// One code task.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Task {
    /// AceCode's `id`, when present (completion files may refer to a task by it).
    #[serde(default)]
    pub id: Option<String>,
    pub question: String,
    pub test_cases: Vec<String>,
}

impl Task {
    /// The user text of the training prompt (see the module docs).
    pub fn prompt_text(&self) -> String {
        match self.test_cases.first() {
            Some(first) if !self.question.contains("```") => {
                format!("{}\nTest cases: {}", self.question, first)
            }
            _ => self.question.clone(),
        }
    }
}

/// Parses JSON-lines task text; `path` only names the source in errors.
pub fn parse_tasks(text: &str, path: &Path) -> Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| Error::Jsonl {
            path: path.to_path_buf(),
            line: line_no,
            msg,
        };
        let task: Task = serde_json::from_str(line).map_err(|e| err(format!("not a task: {e}")))?;
        if task.question.trim().is_empty() {
            return Err(err("empty `question`".into()));
        }
        if task.test_cases.is_empty() {
            return Err(err("`test_cases` is empty".into()));
        }
        if let Some(j) = task.test_cases.iter().position(|t| t.trim().is_empty()) {
            return Err(err(format!("test case {j} is empty")));
        }
        tasks.push(task);
    }
    Ok(tasks)
}

/// Reads and parses a JSON-lines task file.
pub fn load_tasks(path: &Path) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_tasks(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_builds_prompts() {
        let text = r#"{"question": "Write add(a, b).", "test_cases": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "id": "x"}

{"question": "Fix this:\n```python\ndef f(): pass\n```", "test_cases": ["assert f() is None"]}
"#;
        let tasks = parse_tasks(text, Path::new("t.jsonl")).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(
            tasks[0].prompt_text(),
            "Write add(a, b).\nTest cases: assert add(1, 2) == 3"
        );
        assert_eq!(tasks[1].prompt_text(), tasks[1].question);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "{\"question\": \"q\", \"test_cases\": [\"assert 1\"]}\nnot json\n",
                2,
                "not a task",
            ),
            ("\n\n{\"question\": \"q\"}\n", 3, "test_cases"),
            (
                "{\"question\": \" \", \"test_cases\": [\"assert 1\"]}\n",
                1,
                "empty `question`",
            ),
            ("{\"question\": \"q\", \"test_cases\": []}\n", 1, "is empty"),
            (
                "{\"question\": \"q\", \"test_cases\": [\"assert 1\", \"\"]}\n",
                1,
                "test case 1",
            ),
            ("{\"question\": 3, \"test_cases\": []}\n", 1, "not a task"),
        ];
        for (text, line, needle) in cases {
            let e = parse_tasks(text, Path::new("bad.jsonl")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("bad.jsonl:{line}:")), "{msg}");
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn shipped_toy_tasks_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/toy_tasks.jsonl");
        let tasks = load_tasks(&path).unwrap();
        assert!(tasks.len() >= 20);
        for t in &tasks {
            assert!((3..=5).contains(&t.test_cases.len()), "{t:?}");
            assert!(t.test_cases.iter().all(|c| c.starts_with("assert ")));
            assert!(t.prompt_text().contains("\nTest cases: assert "));
        }
    }
}
