//! Models with NaN or infinite numbers are refused at load with an error naming the tensor, not
//! run into an empty answer: a NaN q8_0 block scale, a NaN norm weight, an all-NaN f16 matrix
//! (found by the full check). A clean model loads at every depth.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use unmask_kernels::device::Placement;
use unmask_kernels::gguf::GgufFile;
use unmask_quantize::convert::{convert_synth, ConvertOptions};
use unmask_quantize::synth::{Preset, SynthModel};
use unmask_runtime::model::Depth;
use unmask_runtime::Model;

/// IEEE half-precision quiet NaN, little-endian.
const F16_NAN: [u8; 2] = [0x00, 0x7e];

fn tiny(dir: &Path, target: &str) -> PathBuf {
    let path = dir.join(format!("tiny-{target}.gguf"));
    let options = ConvertOptions {
        target: target.parse().unwrap(),
        overwrite: true,
        progress: false,
        allow_requantize: false,
        throttle: Default::default(),
    };
    convert_synth(&SynthModel::new(Preset::Tiny, 5).unwrap(), &path, &options).unwrap();
    path
}

/// Overwrites `bytes` at `at` bytes into the data of the first tensor whose name satisfies
/// `pick` and whose type is `ty`; returns the tensor's name.
fn corrupt(path: &Path, pick: impl Fn(&str) -> bool, ty: &str, at: u64, bytes: &[u8]) -> String {
    let (offset, name, size) = {
        let f = GgufFile::open(path).unwrap();
        let t = f
            .tensors()
            .iter()
            .find(|t| pick(&t.name) && t.ty.name() == ty)
            .unwrap_or_else(|| panic!("no {ty} tensor to corrupt"));
        (f.data_offset() + t.offset, t.name.clone(), t.size)
    };
    assert!(at + bytes.len() as u64 <= size);
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset + at)).unwrap();
    f.write_all(bytes).unwrap();
    name
}

fn load_err(path: &Path, depth: Depth) -> String {
    match Model::load_checked(path, &Placement::Cpu, depth) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn clean_models_load_at_every_depth() {
    let dir = tempfile::tempdir().unwrap();
    for target in ["q8_0", "f16"] {
        let p = tiny(dir.path(), target);
        for depth in [Depth::None, Depth::Scales, Depth::Full] {
            Model::load_checked(&p, &Placement::Cpu, depth).unwrap();
        }
    }
}

#[test]
fn nan_q8_0_scale_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny(dir.path(), "q8_0");
    // Block 2's f16 scale := NaN (0x7e00).
    let name = corrupt(&p, |_| true, "q8_0", 2 * 34, &F16_NAN);
    let e = load_err(&p, Depth::Scales);
    assert!(
        e.contains(&name) && e.contains("block 2") && e.contains("NaN"),
        "{e}"
    );
    // Unchecked, the same file loads: the check is what refuses it.
    Model::load_checked(&p, &Placement::Cpu, Depth::None).unwrap();
    // Model::load checks by default.
    assert!(Model::load(&p).is_err());
}

#[test]
fn infinite_norm_weight_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny(dir.path(), "q8_0");
    let name = corrupt(
        &p,
        |n| n.contains("norm"),
        "f32",
        4 * 3,
        &f32::INFINITY.to_le_bytes(),
    );
    let e = load_err(&p, Depth::Scales);
    assert!(
        e.contains(&name) && e.contains("element 3") && e.contains("inf"),
        "{e}"
    );
}

#[test]
fn all_nan_f16_matrix_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = tiny(dir.path(), "f16");
    let size = {
        let f = GgufFile::open(&p).unwrap();
        let t = f
            .tensors()
            .iter()
            .find(|t| t.name.ends_with("attn_q.weight") && t.ty.name() == "f16")
            .unwrap();
        t.size
    };
    let nans: Vec<u8> = (0..size / 2).flat_map(|_| F16_NAN).collect();
    let name = corrupt(&p, |n| n.ends_with("attn_q.weight"), "f16", 0, &nans);
    let e = load_err(&p, Depth::Full);
    assert!(e.contains(&name) && e.contains("NaN"), "{e}");
}
