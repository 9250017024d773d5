//! `unmask-train corpus`: a reproducible code corpus in a folder: every source file with a chosen
//! extension under the given folders (by default the Python standard library of the machine's
//! interpreter, found through the interpreter itself), without test suites and caches,
//! deduplicated by content, split by file into a training and a held-out part, copied into
//! `train/` and `held-out/`, and described by `manifest.json` (each file's source path, SHA-256,
//! size, part and, with a tokenizer, token count).
//!
//! The split depends only on a file's content (its hash), not on the order the file system
//! lists it in or on the other files, so the same sources give the same corpus on any machine,
//! and adding a file never moves another between parts. Files that are not UTF-8 are skipped and
//! counted. The folder is written under a temporary name and renamed, so it exists only complete.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Folder names whose files are not taken: test suites, bytecode caches, installed packages.
pub const EXCLUDED_DIRS: [&str; 6] = [
    "test",
    "tests",
    "idle_test",
    "__pycache__",
    "site-packages",
    "dist-packages",
];

/// The part of the corpus a file belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    Train,
    HeldOut,
}

impl Part {
    /// The folder of the part inside the corpus.
    pub fn folder(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::HeldOut => "held-out",
        }
    }
}

/// One file of the corpus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusFile {
    /// Path relative to its source folder.
    pub source: String,
    /// Name inside the part's folder (the source path with `/` as `__`).
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
    pub part: Part,
    /// Tokens, when the corpus was made with a tokenizer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub sources: Vec<PathBuf>,
    pub extensions: Vec<String>,
    pub held_out_percent: u32,
    pub files: Vec<CorpusFile>,
    /// Files left out: duplicates of a kept file, and files that are not UTF-8.
    pub duplicates: usize,
    pub not_utf8: usize,
}

impl Manifest {
    /// Files and bytes of a part.
    pub fn totals(&self, part: Part) -> (usize, u64) {
        let files = self.files.iter().filter(|f| f.part == part);
        files.fold((0, 0), |(n, b), f| (n + 1, b + f.bytes))
    }
}

/// The standard library folder of the interpreter `python`.
pub fn python_stdlib(python: &Path) -> Result<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .map_err(|e| Error::Io {
            path: python.to_path_buf(),
            source: e,
        })?;
    if !out.status.success() {
        return Err(Error::InvalidArgument(format!(
            "{} could not say where its standard library is: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} names {} as its standard library, which is not a folder",
            python.display(),
            dir.display()
        )));
    }
    Ok(dir)
}

/// Source files under `dir` with one of `exts`, outside [`EXCLUDED_DIRS`], as paths relative to
/// `dir`, sorted.
fn source_files(dir: &Path, exts: &[String]) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, exts: &[String], out: &mut Vec<PathBuf>) -> Result<()> {
        let io = |e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        };
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io)?;
            let name = entry.file_name();
            if kind.is_dir() {
                if !EXCLUDED_DIRS.iter().any(|x| name == *x) {
                    walk(root, &path, exts, out)?;
                }
            } else if kind.is_file() {
                let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
                if exts.iter().any(|x| x.trim_start_matches('.') == ext) {
                    if let Ok(rel) = path.strip_prefix(root) {
                        out.push(rel.to_path_buf());
                    }
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, exts, &mut out)?;
    out.sort();
    Ok(out)
}

/// Which part a file with this hash goes to: held out when the hash's first 8 bytes, as a
/// number, fall in the lowest `held_out_percent` of the range.
fn part_of(hash: &[u8], held_out_percent: u32) -> Part {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    if u64::from_be_bytes(first) % 100 < u64::from(held_out_percent) {
        Part::HeldOut
    } else {
        Part::Train
    }
}

/// A file's token count (with the tokenizer the corpus is made with).
pub type TokenCounter<'a> = &'a dyn Fn(&str) -> Result<u64>;

/// Builds the corpus of `sources` into the new folder `out` (see the module documentation);
/// `count_tokens` gives a file's token count when a tokenizer was given.
pub fn build_corpus(
    sources: &[PathBuf],
    exts: &[String],
    held_out_percent: u32,
    count_tokens: Option<TokenCounter<'_>>,
    out: &Path,
) -> Result<Manifest> {
    if held_out_percent > 50 {
        return Err(Error::InvalidArgument(format!(
            "--held-out-percent {held_out_percent}: at most 50"
        )));
    }
    if out.exists() {
        return Err(Error::InvalidArgument(format!(
            "{} already exists; choose a new folder",
            out.display()
        )));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| Error::Io { path, source: e }
    };
    // Registered: removed on an error or a signal, renamed onto `out` once complete.
    let tmp = unmask_kernels::temp_files::folder_next_to(out).map_err(io(out))?;
    for part in [Part::Train, Part::HeldOut] {
        let d = tmp.path().join(part.folder());
        std::fs::create_dir(&d).map_err(io(&d))?;
    }
    let mut seen = HashSet::new();
    let mut names = HashSet::new();
    let mut manifest = Manifest {
        sources: sources.to_vec(),
        extensions: exts.to_vec(),
        held_out_percent,
        files: Vec::new(),
        duplicates: 0,
        not_utf8: 0,
    };
    for source in sources {
        for rel in source_files(source, exts)? {
            let path = source.join(&rel);
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let Ok(text) = std::str::from_utf8(&bytes) else {
                manifest.not_utf8 += 1;
                continue;
            };
            let hash = Sha256::digest(&bytes);
            if !seen.insert(hash) {
                manifest.duplicates += 1;
                continue;
            }
            let source_name = rel.to_string_lossy().replace('\\', "/");
            let mut name = source_name.replace('/', "__");
            // Two sources may hold the same relative path: keep names unique.
            let mut k = 1;
            while !names.insert(name.clone()) {
                k += 1;
                name = format!("{k}__{}", source_name.replace('/', "__"));
            }
            let part = part_of(&hash, held_out_percent);
            let dest = tmp.path().join(part.folder()).join(&name);
            std::fs::write(&dest, &bytes).map_err(io(&dest))?;
            let tokens = match count_tokens {
                Some(count) => Some(count(text)?),
                None => None,
            };
            manifest.files.push(CorpusFile {
                source: source_name,
                name,
                sha256: hash.iter().map(|b| format!("{b:02x}")).collect(),
                bytes: bytes.len() as u64,
                part,
                tokens,
            });
        }
    }
    if manifest.files.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no {exts:?} files under {sources:?}"
        )));
    }
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Error::InvalidArgument(format!("manifest: {e}")))?;
    let path = tmp.path().join("manifest.json");
    std::fs::write(&path, json).map_err(io(&path))?;
    tmp.rename_to(out).map_err(io(out))?;
    Ok(manifest)
}
