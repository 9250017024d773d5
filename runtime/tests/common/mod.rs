//! What the runtime's command-line tests share: the `unmask` binary run with arguments (and
//! standard input), and the tiny synthetic model.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use unmask_quantize::convert::{convert_synth, ConvertOptions};
use unmask_quantize::synth::{Preset, SynthModel};

/// `unmask ARGS` with `stdin` piped in, without backtraces and without a `$UNMASK_MODEL` from
/// the caller's environment.
pub fn unmask_with_input(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_unmask"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("UNMASK_MODEL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run unmask");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait for unmask")
}

/// `unmask ARGS` with an empty standard input.
pub fn unmask(args: &[&str]) -> Output {
    unmask_with_input(args, "")
}

/// The tiny synthetic model (q8_0) of weight seed `seed`, as `dir/tiny.gguf`.
pub fn tiny_model(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join("tiny.gguf");
    let options = ConvertOptions {
        target: "q8_0".parse().unwrap(),
        overwrite: true,
        progress: false,
        allow_requantize: false,
        throttle: Default::default(),
    };
    convert_synth(
        &SynthModel::new(Preset::Tiny, seed).unwrap(),
        &path,
        &options,
    )
    .unwrap();
    path
}
