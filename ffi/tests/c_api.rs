//! The C API from C: programs compiled with the system C compiler against only the installed
//! header and library (`ffi/install.sh --no-build` into a temporary prefix).
//!
//! - `ffi/examples/generate.c`, linked against the shared and the static library (and through
//!   pkg-config and CMake where those tools exist), gives exactly the ids, per-step commits and
//!   text of `unmask generate --json` with the same settings;
//! - `ffi/tests/c/api_test.c`: the header's struct layout equals the Rust structs'; cancelling
//!   from the callback at step k stops after k + 1 steps (steps 0..=k) with UNMASK_CANCELLED and
//!   the context is reusable; two pthreads with their own contexts on one model generate at once
//!   and get their single-threaded results; abuse (NULLs, bad sizes and parameters, invalid UTF-8,
//!   corrupted and truncated files, freed handles, re-entry) gives status codes, never a crash.

mod common;

use common::{cli_json, json_ids, run_ok, Setup};
use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use unmask::{
    unmask_chat_message, unmask_context_params, unmask_generate_params, unmask_result, unmask_step,
};

fn example() -> std::path::PathBuf {
    common::repo_root().join("ffi/examples/generate.c")
}

fn api_test() -> std::path::PathBuf {
    common::repo_root().join("ffi/tests/c/api_test.c")
}

/// What `generate.c` printed.
#[derive(Debug, Default)]
struct ExampleRun {
    n_prompt: usize,
    commits: Vec<Vec<(i64, i64)>>,
    status: i32,
    tokens: Vec<i64>,
    text: Vec<u8>,
}

fn parse_example(stdout: &[u8]) -> ExampleRun {
    let marker = b"--- text ---\n";
    let at = stdout
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("text marker in the output");
    let head = String::from_utf8_lossy(&stdout[..at]);
    let mut run = ExampleRun {
        text: stdout[at + marker.len()..].to_vec(),
        ..Default::default()
    };
    for line in head.lines() {
        if let Some(rest) = line.strip_prefix("prompt ") {
            run.n_prompt = rest.split(' ').next().unwrap().parse().unwrap();
        } else if let Some(rest) = line.strip_prefix("step ") {
            let (index, pairs) = rest.split_once(':').unwrap();
            assert_eq!(index.parse::<usize>().unwrap(), run.commits.len(), "{line}");
            run.commits.push(
                pairs
                    .split_whitespace()
                    .map(|pair| {
                        let (p, t) = pair.split_once('=').unwrap();
                        (p.parse().unwrap(), t.parse().unwrap())
                    })
                    .collect(),
            );
        } else if let Some(rest) = line.strip_prefix("status ") {
            run.status = rest.split(' ').next().unwrap().parse().unwrap();
        } else if let Some(rest) = line.strip_prefix("tokens") {
            run.tokens = rest
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().unwrap())
                .collect();
        }
    }
    run
}

/// Runs the example and `unmask generate --json` with the same options; asserts they agree.
fn assert_example_matches_cli(exe: &Path, model: &Path, prompt: &str, options: &[&str]) {
    let out = Command::new(exe)
        .arg(model)
        .arg(prompt)
        .args(options)
        .output()
        .expect("run the example");
    assert!(out.status.success(), "{}", common::describe(&out));
    let c = parse_example(&out.stdout);
    let cli = cli_json(model, prompt, options);
    let context = format!("{} {options:?}", exe.display());
    assert_eq!(c.status, 0, "{context}");
    assert_eq!(c.tokens, json_ids(&cli["tokens"]), "ids, {context}");
    assert_eq!(
        c.text,
        cli["text"].as_str().unwrap().as_bytes(),
        "text, {context}"
    );
    assert_eq!(
        c.n_prompt as u64,
        cli["prompt_tokens"].as_u64().unwrap(),
        "{context}"
    );
    let cli_commits: Vec<Vec<i64>> = cli["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(json_ids)
        .collect();
    let c_positions: Vec<Vec<i64>> = c
        .commits
        .iter()
        .map(|step| step.iter().map(|&(p, _)| p).collect())
        .collect();
    assert_eq!(c_positions, cli_commits, "positions per step, {context}");
    // The last id the callback saw committed at a position is its final id (an earlier one can
    // be the mask id itself: such a position stays masked and is committed again later).
    let mut last = HashMap::new();
    for &(p, t) in c.commits.iter().flatten() {
        last.insert(p, t);
    }
    for (p, t) in last {
        assert_eq!(c.tokens[p as usize - c.n_prompt], t, "{context}");
    }
}

const PROMPT: &str = "Write a function that reverses a string";

#[test]
fn c_example_matches_the_cli_with_shared_and_static_library() {
    let setup = Setup::new();
    let shared = setup.compile(&[&example()], "generate_shared", false);
    let static_exe = setup.compile(&[&example()], "generate_static", true);
    let ldd = Command::new("ldd").arg(&static_exe).output();
    if let Ok(ldd) = ldd {
        let ldd = String::from_utf8_lossy(&ldd.stdout);
        assert!(
            !ldd.contains("libunmask"),
            "the static build needs no libunmask.so: {ldd}"
        );
    }
    let defaults: &[&str] = &[
        "--max-new-tokens",
        "32",
        "--steps",
        "16",
        "--seed",
        "7",
        "--threads",
        "1",
    ];
    for exe in [&shared, &static_exe] {
        assert_example_matches_cli(exe, &setup.model, PROMPT, defaults);
    }
    // Every sampling option, through the shared library.
    let variants: [&[&str]; 6] = [
        &[
            "--max-new-tokens",
            "32",
            "--steps",
            "8",
            "--alg",
            "maskgit_plus",
            "--temperature",
            "0",
            "--top-k",
            "20",
            "--block-length",
            "16",
            "--no-chat",
            "--threads",
            "1",
        ],
        &[
            "--max-new-tokens",
            "24",
            "--steps",
            "12",
            "--alg",
            "topk_margin",
            "--alg-temp",
            "0.5",
            "--top-p",
            "1",
            "--eps",
            "0.01",
            "--seed",
            "5",
            "--threads",
            "2",
        ],
        &[
            "--max-new-tokens",
            "16",
            "--steps",
            "16",
            "--alg",
            "origin",
            "--temperature",
            "1",
            "--seed",
            "9",
        ],
        // The fast-decoding modes (cache, block length, threshold).
        &[
            "--max-new-tokens",
            "32",
            "--steps",
            "32",
            "--cache",
            "dual",
            "--block-length",
            "8",
            "--threshold",
            "0.2",
            "--temperature",
            "0",
        ],
        &[
            "--max-new-tokens",
            "32",
            "--steps",
            "8",
            "--cache",
            "prefix",
            "--block-length",
            "16",
            "--temperature",
            "0",
        ],
        &[
            "--max-new-tokens",
            "32",
            "--steps",
            "16",
            "--threshold",
            "0.3",
            "--temperature",
            "0.5",
            "--seed",
            "3",
        ],
    ];
    for options in variants {
        assert_example_matches_cli(&shared, &setup.model, PROMPT, options);
    }
}

#[test]
fn pkg_config_and_cmake_packages_build_the_example() {
    let setup = Setup::new();
    let options: &[&str] = &["--max-new-tokens", "16", "--steps", "8", "--threads", "1"];
    let pc_path = setup.lib().join("pkgconfig");
    let pkg = Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", &pc_path)
        .args(["--cflags", "--libs", "unmask"])
        .output();
    match pkg {
        Ok(out) if out.status.success() => {
            let flags = String::from_utf8_lossy(&out.stdout).into_owned();
            let exe = setup.dir.path().join("generate_pkgconfig");
            let mut cc = Command::new("cc");
            cc.arg(example())
                .args(flags.split_whitespace())
                .arg(format!("-Wl,-rpath,{}", setup.lib().display()))
                .arg("-o")
                .arg(&exe);
            run_ok(&mut cc);
            assert_example_matches_cli(&exe, &setup.model, PROMPT, options);
        }
        _ => eprintln!("pkg-config not available: its check is skipped"),
    }
    if Command::new("cmake").arg("--version").output().is_err() {
        eprintln!("cmake not available: its check is skipped");
        return;
    }
    let project = setup.dir.path().join("cmake-project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("CMakeLists.txt"),
        format!(
            "cmake_minimum_required(VERSION 3.16)\nproject(unmask_example C)\n\
             find_package(unmask 0.1 REQUIRED)\n\
             add_executable(gen_shared \"{0}\")\ntarget_link_libraries(gen_shared PRIVATE unmask::unmask)\n\
             add_executable(gen_static \"{0}\")\ntarget_link_libraries(gen_static PRIVATE unmask::unmask_static)\n",
            example().display()
        ),
    )
    .unwrap();
    let build = project.join("build");
    run_ok(
        Command::new("cmake")
            .arg("-S")
            .arg(&project)
            .arg("-B")
            .arg(&build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", setup.prefix.display())),
    );
    run_ok(Command::new("cmake").arg("--build").arg(&build));
    for exe in ["gen_shared", "gen_static"] {
        assert_example_matches_cli(&build.join(exe), &setup.model, PROMPT, options);
    }
}

#[test]
fn header_structs_have_the_rust_layout() {
    let setup = Setup::new();
    let exe = setup.compile(&[&api_test()], "api_test", false);
    let out = run_ok(Command::new(&exe).arg("layout"));
    let c: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    let size = |name: &str| -> usize { c[name].parse().unwrap_or_else(|_| panic!("{name}")) };
    macro_rules! check {
        ($c_name:literal, $t:ty, [$($f:ident),*]) => {
            assert_eq!(size($c_name), size_of::<$t>(), "sizeof({})", $c_name);
            $(assert_eq!(
                size(concat!($c_name, ".", stringify!($f))),
                offset_of!($t, $f),
                "offsetof({}, {})", $c_name, stringify!($f)
            );)*
        };
    }
    check!("unmask_context_params", unmask_context_params, [n_threads]);
    check!(
        "unmask_generate_params",
        unmask_generate_params,
        [
            seed,
            max_new_tokens,
            steps,
            alg,
            temperature,
            top_p,
            top_k,
            alg_temp,
            eps,
            block_length,
            chat,
            n_threads,
            cache,
            threshold
        ]
    );
    check!(
        "unmask_step_t",
        unmask_step,
        [
            positions,
            tokens,
            canvas,
            step,
            n_steps,
            n_committed,
            n_canvas,
            n_prompt,
            n_masked,
            seconds
        ]
    );
    check!(
        "unmask_chat_message_t",
        unmask_chat_message,
        [role, content]
    );
    check!(
        "unmask_result_t",
        unmask_result,
        [
            tokens,
            canvas,
            text,
            n_tokens,
            n_answer_tokens,
            n_canvas,
            n_prompt,
            text_len,
            steps,
            forward_passes,
            cancelled,
            seconds
        ]
    );
    // The defaults crossed the ABI by value intact: the CLI's.
    assert_eq!(
        c["defaults"],
        "256 0 3 0.400 0.950 50 0.000 0.0010 0 -1 0 0 0 0.000"
    );
    assert_eq!(out.lines().last(), Some("ok"));

    // The header is also valid C++ (extern "C", no C-only constructs).
    if Command::new("c++").arg("--version").output().is_ok() {
        let source = setup.dir.path().join("header.cpp");
        std::fs::write(
            &source,
            "#include \"unmask.h\"\nint main() { return unmask_abi_version() == UNMASK_ABI_VERSION ? 0 : 1; }\n",
        )
        .unwrap();
        run_ok(
            Command::new("c++")
                .args(["-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-I"])
                .arg(setup.prefix.join("include"))
                .arg(&source),
        );
    }
}

#[test]
fn cancel_at_step_k_stops_after_k_plus_one_steps_and_the_context_is_reusable() {
    let setup = Setup::new();
    let exe = setup.compile(&[&api_test()], "api_test", false);
    for k in [0, 5] {
        let out = run_ok(
            Command::new(&exe)
                .arg("cancel")
                .arg(&setup.model)
                .arg(k.to_string()),
        );
        assert!(
            out.contains(&format!(
                "cancelled: status 1, steps {}, callbacks {}, flag 1",
                k + 1,
                k + 1
            )),
            "{out}"
        );
        assert_eq!(out.lines().last(), Some("ok"), "{out}");
    }
    // And through the example's --cancel-at, with the static library.
    let static_exe = setup.compile(&[&example()], "generate_static", true);
    let out = Command::new(&static_exe)
        .arg(&setup.model)
        .arg(PROMPT)
        .args([
            "--max-new-tokens",
            "16",
            "--steps",
            "8",
            "--threads",
            "1",
            "--cancel-at",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::describe(&out));
    let run = parse_example(&out.stdout);
    assert_eq!(run.status, 1, "UNMASK_CANCELLED");
    assert_eq!(run.commits.len(), 3, "steps 0, 1, 2 ran");
}

#[test]
fn unmask_context_cancel_stops_a_generation_from_another_thread() {
    let setup = Setup::new();
    let exe = setup.compile(&[&api_test()], "api_test", false);
    let out = run_ok(Command::new(&exe).arg("interrupt").arg(&setup.model));
    assert!(out.contains("after a cancel while idle: steps 16"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("interrupted: status 1 after "))
        .unwrap_or_else(|| panic!("{out}"));
    let steps: usize = line["interrupted: status 1 after ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(steps < 256, "{line}");
    assert_eq!(out.lines().last(), Some("ok"), "{out}");
}

#[test]
fn the_log_callback_receives_the_librarys_warnings_and_null_restores_stderr() {
    use unmask_kernels::gguf::GgufValue;
    let setup = Setup::new();
    let bad = common::with_generation(
        &setup.model,
        "bad-top-p.gguf",
        &[("top_p", Some(GgufValue::F32(1.5)))],
    );
    let exe = setup.compile(&[&api_test()], "api_test", false);
    let out = Command::new(&exe)
        .arg("log")
        .arg(&setup.model)
        .arg(&bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", common::describe(&out));
    assert_eq!(stdout.lines().last(), Some("ok"), "{stdout}");
    assert!(
        stdout.contains("log 3: the model file's unmask.generation.top_p = 1.5 is ignored"),
        "{stdout}"
    );
    // Only the load after unmask_log_set(NULL, NULL) wrote to standard error, once.
    assert_eq!(
        stderr
            .matches("warning: the model file's unmask.generation.top_p")
            .count(),
        1,
        "{stderr}"
    );
}

#[test]
fn apply_chat_messages_builds_conversations_and_refuses_what_chatml_cannot_say() {
    let setup = Setup::new();
    let exe = setup.compile(&[&api_test()], "api_test", false);
    let out = run_ok(Command::new(&exe).arg("chat").arg(&setup.model));
    assert_eq!(out.lines().last(), Some("ok"), "{out}");
}

/// The runtime library's own result for the prompt and seed `api_test.c` uses.
fn library_tokens(model: &Path, seed: u64) -> Vec<i64> {
    use unmask_runtime::{Control, GenerateParams, Generator, Model};
    let model = Arc::new(Model::load(model).unwrap());
    let params = GenerateParams {
        max_new_tokens: 32,
        steps: 16,
        temperature: 0.7,
        seed,
        ..Default::default()
    };
    let g = Generator::new(model, 1)
        .unwrap()
        .generate(&[5, 6, 7, 8, 9, 10], &params, &mut |_| Control::Continue)
        .unwrap();
    g.tokens.iter().map(|&t| i64::from(t)).collect()
}

#[test]
fn two_threads_with_their_own_contexts_share_one_model() {
    let setup = Setup::new();
    let exe = setup.compile(&[&api_test()], "api_test", false);
    let out = run_ok(Command::new(&exe).arg("threads").arg(&setup.model).arg("4"));
    assert_eq!(out.lines().last(), Some("ok"), "{out}");
    for seed in [11u64, 22] {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("seed {seed} ")))
            .unwrap_or_else(|| panic!("{out}"));
        let ids: Vec<i64> = line.split(',').map(|s| s.parse().unwrap()).collect();
        assert_eq!(ids, library_tokens(&setup.model, seed), "seed {seed}");
    }
}

#[test]
fn abuse_gives_status_codes_never_a_crash() {
    let setup = Setup::new();
    let exe = setup.compile(&[&api_test()], "api_test", false);
    let bytes = std::fs::read(&setup.model).unwrap();
    let corrupt = setup.dir.path().join("corrupt.gguf");
    let mut c = bytes.clone();
    c[8..24].fill(0xff); // tensor and metadata counts
    std::fs::write(&corrupt, c).unwrap();
    let truncated = setup.dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = Command::new(&exe)
        .arg("abuse")
        .arg(&setup.model)
        .arg(&corrupt)
        .arg(&truncated)
        .env("RUST_BACKTRACE", "0")
        .env("UNMASK_BACKEND_DIR", "/nonexistent-unmask-backends")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", common::describe(&out));
    assert_eq!(stdout.lines().last(), Some("ok"), "{stdout}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        common::describe(&out)
    );
}

#[test]
fn model_default_params_are_the_files_settings_as_the_cli_applies_them() {
    let setup = Setup::new();
    let model = common::own_settings_model(&setup);
    let exe = setup.compile(&[&api_test()], "api_test", false);
    let field = |out: &str, line: &str, name: &str| -> String {
        let l = out
            .lines()
            .find(|l| l.starts_with(&format!("{line} ")))
            .unwrap_or_else(|| panic!("{out}"));
        l.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {l}"))
            .to_string()
    };
    for n in [0, 64] {
        let out = run_ok(
            Command::new(&exe)
                .arg("defaults")
                .arg(&model)
                .arg(n.to_string()),
        );
        assert_eq!(out.lines().last(), Some("ok"), "{out}");
        // Built-in < model file: the file's values, the built-in ones where it has none.
        for (name, builtin, file) in [
            ("max_new_tokens", "256", "32"),
            ("steps", "0", "0"),
            ("alg", "3", "1"),
            ("temperature", "0.4", "0.2"),
            ("top_p", "0.95", "1"),
            ("top_k", "50", "7"),
            ("alg_temp", "0", "0.5"),
            ("eps", "0.001", "0.001"),
            ("seed", "0", "0"),
            ("cache", "0", "0"),
        ] {
            assert_eq!(field(&out, "builtin", name), builtin, "{name}: {out}");
            assert_eq!(field(&out, "model", name), file, "{name}: {out}");
        }
        // The same generation as `unmask generate` on the file without those flags, steps 0
        // following the file's 16 steps per 32 tokens.
        let mut cli = Command::new(common::unmask_bin());
        cli.arg("generate").arg("-m").arg(&model).args([
            "--prompt-ids",
            "5,6,7,8,9,10",
            "--json",
            "-t",
            "1",
        ]);
        if n > 0 {
            cli.args(["--max-new-tokens", &n.to_string()]);
        }
        let json: serde_json::Value = serde_json::from_str(&run_ok(&mut cli)).unwrap();
        let steps: i64 = out
            .lines()
            .find_map(|l| l.strip_prefix("steps "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(steps, json["steps"].as_i64().unwrap(), "{out}");
        assert_eq!(steps, if n == 0 { 16 } else { 32 });
        let tokens: Vec<i64> = out
            .lines()
            .find_map(|l| l.strip_prefix("tokens "))
            .unwrap()
            .split(',')
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(tokens, json_ids(&json["tokens"]), "n = {n}");
    }
}
