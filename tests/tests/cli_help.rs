//! Every flag and argument of `unmask`, `unmask-quantize` and `unmask-train`, in every
//! subcommand, has a help line. The command tree is walked through the binaries' own `-h`
//! output (the `Commands:` section gives the subcommands), so a flag added without a doc comment
//! fails here.
//!
//! The binaries must be built first: `cargo build --release -p unmask-runtime -p unmask-quantize
//! -p unmask-train` (the `.ci/run` build does).

use std::path::{Path, PathBuf};
use std::process::Command;

fn binary(name: &str) -> PathBuf {
    unmask_tests::workspace_bin(name)
}

/// One entry of an `Arguments:`, `Options:` or `Commands:` section.
#[derive(Debug)]
struct Entry {
    section: String,
    spec: String,
    help: String,
}

/// The entries of a clap `-h` page, in both of clap's layouts: help on the entry's line after
/// two or more spaces, or on the following, deeper-indented lines.
fn entries(page: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut section: Option<String> = None;
    for line in page.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            section = line
                .strip_suffix(':')
                .filter(|h| ["Arguments", "Options", "Commands"].contains(h))
                .map(str::to_string);
            continue;
        }
        let Some(section) = &section else { continue };
        if indent >= 8 {
            // Next-line help of the previous entry.
            if let Some(last) = out.last_mut() {
                last.help.push_str(line.trim());
            }
            continue;
        }
        let body = line.trim_start();
        let (spec, help) = match body.find("  ") {
            Some(i) => (body[..i].to_string(), body[i..].trim().to_string()),
            None => (body.to_string(), String::new()),
        };
        out.push(Entry {
            section: section.clone(),
            spec,
            help,
        });
    }
    out
}

fn help_page(bin: &Path, path: &[String]) -> String {
    let out = Command::new(bin)
        .args(path)
        .arg("-h")
        .output()
        .expect("run the binary");
    assert!(
        out.status.success(),
        "{} {} -h failed: {}",
        bin.display(),
        path.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// Every flag or argument without help text, as "`sub sub --flag`", over the whole tree.
fn missing_help(bin: &Path) -> (Vec<String>, usize) {
    let mut missing = Vec::new();
    let mut checked = 0;
    let mut stack: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = stack.pop() {
        let page = help_page(bin, &path);
        for e in entries(&page) {
            if e.section == "Commands" {
                let name = e.spec.split_whitespace().next().unwrap_or("").to_string();
                if name != "help" && !name.is_empty() {
                    let mut sub = path.clone();
                    sub.push(name);
                    stack.push(sub);
                }
                continue;
            }
            checked += 1;
            if e.help.is_empty() {
                missing.push(format!("{} {}", path.join(" "), e.spec).trim().to_string());
            }
        }
    }
    (missing, checked)
}

fn assert_all_documented(name: &str, at_least: usize) {
    let (missing, checked) = missing_help(&binary(name));
    assert!(
        checked >= at_least,
        "{name}: only {checked} flags found; is the help parser still right?"
    );
    assert!(
        missing.is_empty(),
        "{name}: flags without help text: {missing:#?}"
    );
}

#[test]
fn the_parser_sees_both_layouts_and_missing_help() {
    let page = "About\n\nUsage: x [OPTIONS]\n\nCommands:\n  run   Run it\n  help  Print this\n\n\
                Arguments:\n  <IN>  The input\n\nOptions:\n  -m, --model <MODEL>\n          The \
                model\n      --bare\n      --seed <SEED>  Seed [default: 0]\n  -h, --help     Print help\n";
    let e = entries(page);
    let specs: Vec<(&str, &str)> = e
        .iter()
        .map(|e| (e.spec.as_str(), e.help.as_str()))
        .collect();
    assert_eq!(
        specs,
        vec![
            ("run", "Run it"),
            ("help", "Print this"),
            ("<IN>", "The input"),
            ("-m, --model <MODEL>", "The model"),
            ("--bare", ""),
            ("--seed <SEED>", "Seed [default: 0]"),
            ("-h, --help", "Print help"),
        ]
    );
}

#[test]
fn every_unmask_quantize_flag_has_help() {
    assert_all_documented("unmask-quantize", 15);
}

#[test]
fn every_unmask_train_flag_has_help() {
    assert_all_documented("unmask-train", 60);
}

#[test]
fn every_unmask_flag_has_help() {
    assert_all_documented("unmask", 30);
}
