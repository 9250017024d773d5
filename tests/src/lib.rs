//! Shared helpers for unmask's integration tests: synthetic checkpoints in temporary folders,
//! conversions through the library, and the Python interpreter that runs the independent
//! reference checks.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use unmask_quantize::convert::{convert, ConvertOptions, ConvertReport};
use unmask_quantize::synth::{Preset, SynthModel};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The Python interpreter with the reference packages (`.ci/run` creates `.venv`). A missing
/// interpreter fails the test with instructions: a reference check that cannot run has not passed.
pub fn python() -> PathBuf {
    let path = std::env::var_os("UNMASK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "Python reference environment not found at {}; run `bash .ci/run` once (it creates .venv) \
         or set UNMASK_PYTHON",
        path.display()
    );
    path
}

/// Runs a script from `tests/python/` with arguments, returning its output.
pub fn run_python(script: &str, args: &[&str]) -> Output {
    let script = repo_root().join("tests/python").join(script);
    Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
}

/// Writes the synthetic tiny checkpoint (seed `seed`) into `dir`.
pub fn write_tiny_hf(dir: &Path, seed: u64) -> PathBuf {
    let model = SynthModel::new(Preset::Tiny, seed).expect("synth tiny");
    model.write_hf(dir, 1 << 30).expect("write tiny HF folder");
    dir.to_path_buf()
}

/// Converts `input` to `output` with the named target type, overwriting.
pub fn convert_to(input: &Path, output: &Path, target: &str) -> ConvertReport {
    let options = ConvertOptions {
        target: target.parse().expect("target type"),
        overwrite: true,
        progress: false,
        allow_requantize: true,
        throttle: Default::default(),
    };
    convert(input, output, &options)
        .unwrap_or_else(|e| panic!("convert {} -> {target}: {e}", input.display()))
}

/// Every `--type` the quantize tool accepts.
pub const ALL_TARGETS: [&str; 10] = unmask_quantize::mix::TARGET_NAMES;

/// A lossless description of a process's output for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `unmask` binary of this build (cargo builds every workspace binary before running tests).
pub fn unmask_bin() -> PathBuf {
    workspace_bin("unmask")
}

/// A binary of this build by name (`unmask`, `unmask-quantize`, `unmask-train`), next to the test
/// executable's directory.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: build the binaries first (cargo build --release -p unmask-runtime -p \
         unmask-quantize -p unmask-train)",
        bin.display()
    );
    bin
}

/// Relative max-abs error: max |a - b| / max |b|.
pub fn rel_max_abs(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| f64::from(y.abs())).fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

/// A NumPy `.npy` array of little-endian f32 or f64 values, as f64, with its shape.
pub fn read_npy(path: &Path) -> (Vec<f64>, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{} is not a .npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let data = &bytes[start + header_len..];
    let values = if header.contains("'<f4'") {
        data.chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect()
    } else if header.contains("'<f8'") {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else {
        panic!("unsupported dtype in {header}")
    };
    (values, shape)
}

/// Runs `tests/python/reference.py` and returns its stdout, failing loudly on error.
pub fn reference(args: &[&str]) -> String {
    let out = run_python("reference.py", args);
    assert!(
        out.status.success(),
        "reference.py {args:?}: {}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Comma-separated ids.
pub fn csv(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}
