//! Round trips: HF folder -> GGUF f32 keeps every tensor bit-identical to the safetensors source;
//! a GGUF input requantizes to the same bytes as converting from the HF folder; the direct synth
//! route writes the same bytes as synth -> HF -> GGUF.

use std::path::Path;
use unmask_dream::hf::HfCheckpoint;
use unmask_dream::layout::tensor_specs;
use unmask_dream::safetensors::decode_to_f32;
use unmask_kernels::gguf::GgufFile;
use unmask_kernels::quant::dequantize;
use unmask_quantize::convert::{convert_synth, ConvertOptions};
use unmask_quantize::synth::{Preset, SynthModel};
use unmask_tests::{convert_to, write_tiny_hf};

fn tensor_bytes(path: &Path) -> Vec<(String, String, Vec<u8>)> {
    let file = GgufFile::open(path).unwrap();
    file.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.ty.name().to_string(),
                file.tensor_data(t).to_vec(),
            )
        })
        .collect()
}

#[test]
fn f32_gguf_is_bit_identical_to_the_safetensors_source() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 31);
    let out = dir.path().join("tiny-f32.gguf");
    convert_to(&hf, &out, "f32");
    let checkpoint = HfCheckpoint::open(&hf).unwrap();
    let gguf = GgufFile::open(&out).unwrap();
    let specs = tensor_specs(&checkpoint.config);
    assert_eq!(gguf.tensors().len(), specs.len());
    for spec in specs {
        let (file, entry) = checkpoint.find(&spec.hf_name).unwrap();
        let mut source = Vec::new();
        decode_to_f32(
            &spec.hf_name,
            entry.dtype,
            &file.map(entry).unwrap(),
            &mut source,
        )
        .unwrap();
        let info = gguf.tensor(&spec.gguf_name).unwrap();
        assert_eq!(info.shape, spec.gguf_shape(), "{}", spec.gguf_name);
        let ours = dequantize(info.ty, gguf.tensor_data(info)).unwrap();
        let same_bits = source
            .iter()
            .zip(&ours)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same_bits && source.len() == ours.len(),
            "{} differs",
            spec.gguf_name
        );
    }
}

#[test]
fn requantizing_a_gguf_matches_converting_the_hf_folder() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 32);
    let f32_file = dir.path().join("f32.gguf");
    convert_to(&hf, &f32_file, "f32");
    for target in ["q8_0", "q4_k_m", "q6_k", "bf16"] {
        let from_hf = dir.path().join(format!("hf-{target}.gguf"));
        let from_gguf = dir.path().join(format!("gguf-{target}.gguf"));
        convert_to(&hf, &from_hf, target);
        convert_to(&f32_file, &from_gguf, target);
        assert_eq!(tensor_bytes(&from_hf), tensor_bytes(&from_gguf), "{target}");
        let (a, b) = (
            GgufFile::open(&from_hf).unwrap(),
            GgufFile::open(&from_gguf).unwrap(),
        );
        let keys = |f: &GgufFile| {
            f.metadata()
                .iter()
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&a), keys(&b), "{target}: metadata keys");
    }
}

#[test]
fn direct_synth_gguf_equals_the_hf_route() {
    let dir = tempfile::tempdir().unwrap();
    let hf = write_tiny_hf(&dir.path().join("hf"), 33);
    let via_hf = dir.path().join("via-hf.gguf");
    convert_to(&hf, &via_hf, "q4_k_m");
    let direct = dir.path().join("direct.gguf");
    let model = SynthModel::new(Preset::Tiny, 33).unwrap();
    let options = ConvertOptions {
        target: "q4_k_m".parse().unwrap(),
        overwrite: false,
        progress: false,
        allow_requantize: false,
        throttle: Default::default(),
    };
    convert_synth(&model, &direct, &options).unwrap();
    assert_eq!(tensor_bytes(&via_hf), tensor_bytes(&direct));
}

#[test]
fn different_seeds_give_different_weights() {
    let dir = tempfile::tempdir().unwrap();
    let options = ConvertOptions {
        target: "f32".parse().unwrap(),
        overwrite: false,
        progress: false,
        allow_requantize: false,
        throttle: Default::default(),
    };
    let a = dir.path().join("a.gguf");
    let b = dir.path().join("b.gguf");
    convert_synth(&SynthModel::new(Preset::Tiny, 1).unwrap(), &a, &options).unwrap();
    convert_synth(&SynthModel::new(Preset::Tiny, 2).unwrap(), &b, &options).unwrap();
    assert_ne!(tensor_bytes(&a), tensor_bytes(&b));
}
