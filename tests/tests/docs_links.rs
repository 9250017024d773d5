//! The documentation points only at things that exist: every link and every repository path
//! named in `README.md`, `CHANGELOG.md` and `docs/*.md` resolves inside the repository.
//!
//! What is checked, outside fenced code blocks and HTML (a commented-out line is a placeholder):
//! - markdown links and images with a relative target: the file or folder must exist inside the
//!   repository, and a `#anchor` must be a heading of the target markdown file (or of the same
//!   file for a bare `#anchor`), with GitHub's heading slugs; links with a scheme (`https:`,
//!   `mailto:`) are not fetched;
//! - inline code spans whose first word is a path into the repository: made only of path
//!   characters, with a `/`, and starting with a folder that exists at the repository root (other
//!   than `target/`, which builds create). `kernels/src/graph.rs` and `scripts/setup.sh --test`
//!   are checked; `target/release/unmask`, `run/checkpoint-N/` and `lib/libunmask.a` are not.
//!
//! The markdown is parsed with pulldown-cmark, so code spans, tables and fences are read as
//! GitHub reads them.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The documentation files whose links are checked.
fn documentation_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
        let mut docs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
    }
    files
}

/// GitHub's anchor for a heading text: lower case; letters, marks, digits, `_`, `-` kept;
/// spaces become `-`; everything else (punctuation, `§`, backticks) dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            // Combining marks count as letters on GitHub.
            c if ('\u{300}'..='\u{36f}').contains(&c) => Some(c),
            _ => None,
        })
        .collect()
}

/// One markdown file, read once: its links, its path-like code spans and its heading anchors.
struct Page {
    links: Vec<String>,
    code_paths: Vec<String>,
    anchors: HashSet<String>,
}

fn parse(text: &str) -> Page {
    let mut page = Page {
        links: Vec::new(),
        code_paths: Vec::new(),
        anchors: HashSet::new(),
    };
    let mut in_fence = false;
    let mut heading: Option<String> = None;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    for event in Parser::new_ext(text, options) {
        match event {
            Event::Start(Tag::CodeBlock(_)) => in_fence = true,
            Event::End(TagEnd::CodeBlock) => in_fence = false,
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                // Repeated headings get -1, -2, ... as on GitHub.
                let n = seen.entry(base.clone()).or_insert(0);
                let anchor = if *n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                };
                *n += 1;
                page.anchors.insert(anchor);
            }
            Event::Text(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t)
                }
            }
            Event::Code(code) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&code)
                }
                if !in_fence {
                    if let Some(first) = code.split_whitespace().next() {
                        page.code_paths.push(first.to_string());
                    }
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) if !in_fence => {
                page.links.push(dest_url.to_string())
            }
            _ => {}
        }
    }
    page
}

/// `path` made lexical (`a/./b/../c` -> `a/c`); None when it climbs above `root`.
fn normalise(root: &Path, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(root).ok()?;
    let mut out = PathBuf::new();
    for part in rel.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(root.join(out))
}

/// Whether a code span's first word names a path into the repository (see the file's doc).
fn is_repo_path(root: &Path, word: &str) -> bool {
    let path_chars = |c: char| c.is_ascii_alphanumeric() || "_.-/".contains(c);
    if !word.contains('/') || !word.chars().all(path_chars) {
        return false;
    }
    let first = word.split('/').next().unwrap_or("");
    !first.is_empty()
        && first != "."
        && first != ".."
        && first != "target"
        && root.join(first).is_dir()
}

/// Every broken reference of the documentation under `root`, as "file: problem" lines.
fn broken_references(root: &Path) -> Vec<String> {
    let mut pages: HashMap<PathBuf, Page> = HashMap::new();
    let mut problems = Vec::new();
    let files = documentation_files(root);
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                pages.insert(file.clone(), parse(&text));
            }
            Err(e) => problems.push(format!("{}: cannot read: {e}", file.display())),
        }
    }
    let anchors_of = |target: &Path, pages: &HashMap<PathBuf, Page>| -> Option<HashSet<String>> {
        if let Some(page) = pages.get(target) {
            return Some(page.anchors.clone());
        }
        std::fs::read_to_string(target)
            .ok()
            .map(|t| parse(&t).anchors)
    };
    for file in &files {
        let Some(page) = pages.get(file) else {
            continue;
        };
        let name = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        let dir = file.parent().unwrap_or(root);
        for link in &page.links {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path_part, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if path_part.is_empty() {
                file.clone()
            } else {
                match normalise(root, &dir.join(path_part)) {
                    Some(t) => t,
                    None => {
                        problems.push(format!("{name}: link `{link}` leaves the repository"));
                        continue;
                    }
                }
            };
            if !target.exists() {
                problems.push(format!("{name}: link `{link}`: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                let is_md = target.extension().is_some_and(|x| x == "md");
                match anchors_of(&target, &pages) {
                    Some(anchors) if is_md && anchors.contains(anchor) => {}
                    _ => problems.push(format!(
                        "{name}: link `{link}`: no heading `#{anchor}` there"
                    )),
                }
            }
        }
        for word in &page.code_paths {
            if is_repo_path(root, word) && !root.join(word.trim_end_matches('/')).exists() {
                problems.push(format!("{name}: path `{word}` does not exist"));
            }
        }
    }
    problems
}

#[test]
fn documentation_links_and_paths_resolve() {
    let root = repo_root();
    let files = documentation_files(&root);
    assert!(
        files.len() >= 3,
        "README.md, CHANGELOG.md and docs/*.md expected, found {files:?}"
    );
    let problems = broken_references(&root);
    assert!(
        problems.is_empty(),
        "broken references in the documentation:\n{}",
        problems.join("\n")
    );
}

/// The checker itself finds what it must: a missing file, a missing anchor, a link out of the
/// repository and a stale path in code, and accepts the working forms of each.
#[test]
fn checker_reports_each_kind_of_broken_reference() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/real.rs"), "").unwrap();
    std::fs::write(root.join("CHANGELOG.md"), "# Changes\n").unwrap();
    std::fs::write(
        root.join("docs/guide.md"),
        "# Guide\n\n## §4. Generation: the loop\n\n## Twice\n\n## Twice\n\n[up](../README.md#top-part)\n",
    )
    .unwrap();
    std::fs::write(
        root.join("README.md"),
        "# Top part\n\n\
         [ok](docs/guide.md#4-generation-the-loop) [ok2](docs/guide.md#twice-1) [self](#top-part)\n\
         [web](https://example.com/x) `src/real.rs` `src/real.rs --flag` `target/release/x` `run/x`\n\
         <!-- [placeholder](docs/later.md) -->\n\n\
         ```sh\nsrc/missing_in_fence.rs [x](nope.md)\n```\n\n\
         [gone](docs/missing.md) [bad anchor](docs/guide.md#no-such) [out](../outside.md)\n\n\
         | a | b |\n|---|---|\n| `src/stale.rs` | x |\n",
    )
    .unwrap();
    let problems = broken_references(root);
    let joined = problems.join("\n");
    assert_eq!(problems.len(), 4, "{joined}");
    assert!(
        joined.contains("`docs/missing.md`: no such file"),
        "{joined}"
    );
    assert!(
        joined.contains("`docs/guide.md#no-such`: no heading"),
        "{joined}"
    );
    assert!(
        joined.contains("`../outside.md` leaves the repository"),
        "{joined}"
    );
    assert!(
        joined.contains("path `src/stale.rs` does not exist"),
        "{joined}"
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("§4. Generation: the denoising loop"),
        "4-generation-the-denoising-loop"
    );
    assert_eq!(slug("GPU (CUDA)"), "gpu-cuda");
    assert_eq!(slug("Using `unmask-train`"), "using-unmask-train");
    assert_eq!(
        slug("Matrix products: the CPU build"),
        "matrix-products-the-cpu-build"
    );
}
