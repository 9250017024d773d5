//! Helpers of the C API tests: the built libraries, an installed prefix, a tiny model, compiling
//! C programs against the installed header and library, and the `unmask` command's answer.
#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;
use unmask_quantize::convert::{convert_synth, ConvertOptions};
use unmask_quantize::synth::{Preset, SynthModel};

pub use unmask_tests::{describe, repo_root, unmask_bin};

/// Where this build's libraries are: `target/release/deps`, the directory of the test
/// executable, where `cargo test` writes `libunmask.so`/`libunmask.a` (it copies them up to
/// `target/release` only for `cargo build`, so that copy can be stale or missing).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("test directory").to_path_buf();
    if deps.join("libunmask.so").exists() {
        return deps;
    }
    deps.parent().map(Path::to_path_buf).unwrap_or(deps)
}

/// A temporary prefix with libunmask installed by `ffi/install.sh --no-build`, and the tiny
/// synthetic model.
pub struct Setup {
    pub dir: TempDir,
    pub prefix: PathBuf,
    pub model: PathBuf,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temporary directory");
        let prefix = dir.path().join("prefix");
        let out = Command::new("bash")
            .arg(repo_root().join("ffi/install.sh"))
            .arg("--prefix")
            .arg(&prefix)
            .arg("--no-build")
            .arg("--from")
            .arg(lib_dir())
            .output()
            .expect("run ffi/install.sh");
        assert!(out.status.success(), "install.sh: {}", describe(&out));
        let model = dir.path().join("tiny.gguf");
        let options = ConvertOptions {
            target: "q8_0".parse().expect("type"),
            overwrite: true,
            progress: false,
            allow_requantize: false,
            throttle: Default::default(),
        };
        let synth = SynthModel::new(Preset::Tiny, 0).expect("synth tiny");
        convert_synth(&synth, &model, &options).expect("write tiny.gguf");
        Setup { dir, prefix, model }
    }

    pub fn lib(&self) -> PathBuf {
        self.prefix.join("lib")
    }

    /// The installed libunmask.so (the unversioned name).
    pub fn shared_lib(&self) -> PathBuf {
        self.lib().join("libunmask.so")
    }

    /// `Libs.private` of the installed unmask.pc: what a static link needs besides libunmask.a.
    pub fn private_libs(&self) -> Vec<String> {
        let pc =
            std::fs::read_to_string(self.lib().join("pkgconfig/unmask.pc")).expect("unmask.pc");
        let line = pc
            .lines()
            .find_map(|l| l.strip_prefix("Libs.private:"))
            .expect("Libs.private in unmask.pc");
        line.split_whitespace().map(str::to_string).collect()
    }

    /// Compiles `sources` with the system C compiler against the installed header and the
    /// shared (`static_link == false`) or static library. Returns the executable.
    pub fn compile(&self, sources: &[&Path], name: &str, static_link: bool) -> PathBuf {
        let exe = self.dir.path().join(name);
        let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
        cc.args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O1",
        ])
        .arg("-I")
        .arg(self.prefix.join("include"))
        .args(sources)
        .arg("-o")
        .arg(&exe);
        if static_link {
            cc.arg(self.lib().join("libunmask.a"))
                .args(self.private_libs());
        } else {
            cc.arg("-L")
                .arg(self.lib())
                .arg(format!("-Wl,-rpath,{}", self.lib().display()))
                .arg("-lunmask");
        }
        cc.arg("-lpthread");
        let out = cc.output().expect("run the C compiler `cc`");
        assert!(out.status.success(), "compiling {name}: {}", describe(&out));
        exe
    }
}

/// Runs a program, failing with its output unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `unmask generate --json` with these arguments, parsed.
pub fn cli_json(model: &Path, prompt: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(unmask_bin())
        .args(["generate", "--json", "-m"])
        .arg(model)
        .args(["-p", prompt])
        .args(args)
        .output()
        .expect("run unmask");
    assert!(out.status.success(), "unmask generate: {}", describe(&out));
    serde_json::from_slice(&out.stdout).expect("JSON from unmask generate")
}

/// The ids of a JSON array.
pub fn json_ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("integer"))
        .collect()
}

/// The Python interpreter: `UNMASK_PYTHON`, else the repository's `.venv`, else `python3`
/// (the ctypes example needs only the standard library).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("UNMASK_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// A copy of the model `src` (in the same folder, named `name`) whose file stores its own
/// generation settings: `unmask.generation.<key>` replaced (`Some`) or removed (`None`).
pub fn with_generation(
    src: &Path,
    name: &str,
    edits: &[(&str, Option<unmask_kernels::gguf::GgufValue>)],
) -> PathBuf {
    let dst = src.with_file_name(name);
    unmask_quantize::restamp::with_generation_settings(src, &dst, edits).expect("copy the model");
    dst
}

/// The tiny model with its own generation settings: 16 steps per 32 new tokens, temperature
/// 0.2, maskgit_plus, top-k 7, top-p 1 (off), alg_temp 0.5.
pub fn own_settings_model(setup: &Setup) -> PathBuf {
    use unmask_kernels::gguf::GgufValue;
    with_generation(
        &setup.model,
        "own.gguf",
        &[
            ("max_new_tokens", Some(GgufValue::U32(32))),
            ("steps", Some(GgufValue::U32(16))),
            ("temperature", Some(GgufValue::F32(0.2))),
            ("alg", Some(GgufValue::String("maskgit_plus".into()))),
            ("top_k", Some(GgufValue::U32(7))),
            ("top_p", Some(GgufValue::F32(1.0))),
            ("alg_temp", Some(GgufValue::F32(0.5))),
        ],
    )
}
