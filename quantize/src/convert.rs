//! The conversion pipeline: plan every tensor (source, shape check, target type), write the GGUF
//! header, then stream each tensor through bounded buffers (map its source bytes, decode a chunk
//! of rows to f32, quantize them in parallel, write) so memory never holds the whole model.

use crate::mix::{choose_type, Target};
use crate::synth::SynthModel;
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use unmask_dream::hf::HfCheckpoint;
use unmask_dream::layout::{self, keys, TensorSpec};
use unmask_dream::safetensors::{decode_to_f32, Entry, SafetensorsFile};
use unmask_dream::tokenizer_meta;
use unmask_dream::DreamConfig;
use unmask_dream::Error as DreamError;
use unmask_kernels::gguf::{GgufArray, GgufFile, GgufValue, GgufWriter, TensorInfo};
use unmask_kernels::{quant, GgmlType};

/// f32 elements decoded at once (32 MiB): large enough for rayon to spread over cores, small
/// enough to be a constant next to the tensors themselves.
const CHUNK_ELEMENTS: u64 = 8 << 20;

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub target: Target,
    pub overwrite: bool,
    pub progress: bool,
    /// Accept a GGUF input whose tensors are already quantized (to a quantized target); refused
    /// otherwise, as llama.cpp's `--allow-requantize` does, because the errors compound.
    pub allow_requantize: bool,
    /// A pause after each tensor, zero but for tests that interrupt a conversion.
    pub throttle: std::time::Duration,
}

/// What a conversion did, for the command line's summary.
#[derive(Debug, Default)]
pub struct ConvertReport {
    pub n_tensors: usize,
    pub n_parameters: u64,
    pub bytes_written: u64,
    pub by_type: BTreeMap<String, usize>,
    pub seconds: f64,
    /// Source tensors that the Dream architecture does not use (e.g. rotary caches).
    pub ignored: Vec<String>,
}

enum Source<'a> {
    Safetensors(&'a SafetensorsFile, &'a Entry),
    Gguf(&'a GgufFile, &'a TensorInfo),
    /// Tensor number `.1` of a synthetic model, generated on the fly.
    Synth(&'a SynthModel, usize),
}

/// The non-tensor facts of a model that go into its GGUF metadata.
pub struct ModelDescription<'a> {
    pub config: &'a DreamConfig,
    pub tokenizer_json: &'a str,
    pub chat_template: Option<&'a str>,
    pub generation: &'a [(String, GgufValue)],
    pub name: String,
}

struct Planned<'a> {
    spec: TensorSpec,
    ty: GgmlType,
    source: Source<'a>,
}

/// Converts a Hugging Face folder or an existing GGUF (requantization) into `output`.
pub fn convert(input: &Path, output: &Path, options: &ConvertOptions) -> Result<ConvertReport> {
    check_output(output, options)?;
    if input.is_dir() {
        let checkpoint = HfCheckpoint::open(input)?;
        let name = input
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "dream".into());
        let metadata = model_metadata(&ModelDescription {
            config: &checkpoint.config,
            tokenizer_json: &checkpoint.tokenizer_json,
            chat_template: checkpoint.chat_template.as_deref(),
            generation: &checkpoint.generation,
            name,
        })?;
        crate::validate::check_metadata(&metadata, &checkpoint.config)?;
        let plan = plan_hf(&checkpoint, options.target)?;
        let ignored = checkpoint
            .tensor_names()
            .filter(|n| !plan.iter().any(|p| &p.spec.hf_name == *n))
            .cloned()
            .collect();
        write(output, metadata, plan, options, ignored)
    } else {
        check_is_gguf(input)?;
        let file = GgufFile::open(input)?;
        let config = layout::config_from_gguf(&file)?;
        let metadata: Vec<(String, GgufValue)> = file
            .metadata()
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    keys::FILE_TYPE | keys::QUANTIZATION_VERSION | keys::QUANT_POLICY
                )
            })
            .cloned()
            .collect();
        crate::validate::check_metadata(&metadata, &config)?;
        let plan = plan_gguf(&file, &config, options.target)?;
        if !options.allow_requantize {
            check_requantize(input, &plan, options.target)?;
        }
        let ignored = file
            .tensors()
            .iter()
            .filter(|t| !plan.iter().any(|p| p.spec.gguf_name == t.name))
            .map(|t| t.name.clone())
            .collect();
        write(output, metadata, plan, options, ignored)
    }
}

/// The output must be a file name: not a folder, and not an existing file without `overwrite`.
fn check_output(output: &Path, options: &ConvertOptions) -> Result<()> {
    if output.is_dir() {
        return Err(Error::OutputIsFolder(output.to_path_buf()));
    }
    if output.exists() && !options.overwrite {
        return Err(Error::OutputExists(output.to_path_buf()));
    }
    Ok(())
}

/// A file input must be GGUF; anything else is named, with what to give instead.
fn check_is_gguf(input: &Path) -> Result<()> {
    use unmask_dream::sniff::{sniff, FileKind};
    let kind = sniff(input).map_err(|e| Error::io(input, e))?;
    let folder_hint = "unmask-quantize reads a Hugging Face checkpoint folder (config.json, \
                       *.safetensors, tokenizer.json) or a GGUF file";
    let hint = match kind {
        FileKind::Gguf | FileKind::Folder => return Ok(()),
        FileKind::Safetensors | FileKind::Json => format!(
            "Give the folder that holds it{}: {folder_hint}",
            input
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default()
        ),
        FileKind::Text => match run_pointer_target(input) {
            Some(dir) => format!(
                "It is a training run's `latest` pointer: convert the checkpoint folder it names, \
                 {}",
                dir.display()
            ),
            None => folder_hint.to_string(),
        },
        _ => folder_hint.to_string(),
    };
    Err(Error::NotGguf {
        path: input.to_path_buf(),
        kind: kind.description(),
        hint,
    })
}

/// The checkpoint folder named by a training run's `latest` pointer file, when `path` is one.
fn run_pointer_target(path: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let name = text.trim();
    if name.is_empty() || name.contains(['/', '\\', '\n']) {
        return None;
    }
    let dir = path.parent()?.join(name);
    dir.is_dir().then_some(dir)
}

/// Refuses to quantize tensors that are quantized already (see [`Error::Requantize`]).
fn check_requantize(input: &Path, plan: &[Planned<'_>], target: Target) -> Result<()> {
    let mut types = std::collections::BTreeSet::new();
    for p in plan {
        if let Source::Gguf(_, info) = &p.source {
            if info.ty.is_quantized() && p.ty.is_quantized() {
                types.insert(info.ty.name());
            }
        }
    }
    if types.is_empty() {
        return Ok(());
    }
    Err(Error::Requantize {
        path: input.to_path_buf(),
        types: types.into_iter().collect::<Vec<_>>().join(", "),
        target: target.to_string(),
    })
}

/// Writes a synthetic model straight to GGUF, without an HF folder in between.
pub fn convert_synth(
    model: &SynthModel,
    output: &Path,
    options: &ConvertOptions,
) -> Result<ConvertReport> {
    check_output(output, options)?;
    let metadata = model_metadata(&ModelDescription {
        config: &model.config,
        tokenizer_json: &model.tokenizer_json,
        chat_template: Some(crate::synth::CHAT_TEMPLATE),
        generation: &unmask_dream::hf::generation_metadata(&crate::synth::generation_json(
            &model.config,
        )),
        name: "unmask-synth".into(),
    })?;
    crate::validate::check_metadata(&metadata, &model.config)?;
    let plan = layout::tensor_specs(&model.config)
        .into_iter()
        .enumerate()
        .map(|(i, spec)| Planned {
            ty: type_for(&spec, &model.config, options.target),
            spec,
            source: Source::Synth(model, i),
        })
        .collect();
    write(output, metadata, plan, options, Vec::new())
}

/// Architecture, tokenizer and generation metadata of a model.
pub fn model_metadata(d: &ModelDescription<'_>) -> Result<Vec<(String, GgufValue)>> {
    let c = d.config;
    let mut out: Vec<(String, GgufValue)> = layout::architecture_metadata(c)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    out.push((keys::NAME.into(), GgufValue::String(d.name.clone())));
    let vocab_size = usize::try_from(c.vocab_size)
        .map_err(|_| DreamError::Tokenizer("vocab too large".into()))?;
    let vocab = tokenizer_meta::vocab_from_tokenizer_json(d.tokenizer_json, vocab_size)?;
    out.push((
        keys::TOKENIZER_MODEL.into(),
        GgufValue::String("gpt2".into()),
    ));
    out.push((
        keys::TOKENIZER_PRE.into(),
        GgufValue::String("qwen2".into()),
    ));
    out.push((
        keys::TOKENS.into(),
        GgufValue::Array(GgufArray::String(vocab.tokens)),
    ));
    out.push((
        keys::TOKEN_TYPE.into(),
        GgufValue::Array(GgufArray::I32(vocab.token_types)),
    ));
    out.push((
        keys::MERGES.into(),
        GgufValue::Array(GgufArray::String(vocab.merges)),
    ));
    let ids = [
        (keys::BOS_ID, c.bos_token_id),
        (keys::EOS_ID, c.eos_token_id),
        (keys::PAD_ID, c.pad_token_id),
        (keys::MASK_ID, c.mask_token_id.or(vocab.mask_id)),
    ];
    for (key, id) in ids {
        if let Some(id) = id {
            out.push((key.into(), GgufValue::U32(id)));
        }
    }
    // Dream prepends no BOS (docs/model.md §5); llama.cpp would otherwise add one.
    out.push((keys::ADD_BOS.into(), GgufValue::Bool(false)));
    if let Some(template) = d.chat_template {
        out.push((
            keys::CHAT_TEMPLATE.into(),
            GgufValue::String(template.to_string()),
        ));
    }
    out.push((
        keys::TOKENIZER_JSON.into(),
        GgufValue::String(d.tokenizer_json.to_string()),
    ));
    out.extend(d.generation.iter().cloned());
    Ok(out)
}

fn plan_hf(checkpoint: &HfCheckpoint, target: Target) -> Result<Vec<Planned<'_>>> {
    let c = &checkpoint.config;
    layout::tensor_specs(c)
        .into_iter()
        .map(|spec| {
            let (file, entry) = checkpoint
                .find(&spec.hf_name)
                .ok_or_else(|| Error::MissingTensor(spec.hf_name.clone()))?;
            if entry.shape != spec.hf_shape {
                return Err(Error::ShapeMismatch {
                    name: spec.hf_name.clone(),
                    expected: spec.hf_shape.clone(),
                    actual: entry.shape.clone(),
                });
            }
            if matches!(entry.dtype, unmask_dream::safetensors::Dtype::Other { .. }) {
                return Err(DreamError::UnsupportedDtype {
                    name: spec.hf_name.clone(),
                    dtype: entry.dtype.name().into(),
                }
                .into());
            }
            let ty = type_for(&spec, c, target);
            Ok(Planned {
                spec,
                ty,
                source: Source::Safetensors(file, entry),
            })
        })
        .collect()
}

fn plan_gguf<'a>(file: &'a GgufFile, c: &DreamConfig, target: Target) -> Result<Vec<Planned<'a>>> {
    layout::tensor_specs(c)
        .into_iter()
        .map(|spec| {
            let info = file
                .tensor(&spec.gguf_name)
                .ok_or_else(|| Error::MissingTensor(spec.gguf_name.clone()))?;
            if info.shape != spec.gguf_shape() {
                return Err(Error::ShapeMismatch {
                    name: spec.gguf_name.clone(),
                    expected: spec.gguf_shape(),
                    actual: info.shape.clone(),
                });
            }
            let ty = type_for(&spec, c, target);
            Ok(Planned {
                spec,
                ty,
                source: Source::Gguf(file, info),
            })
        })
        .collect()
}

fn type_for(spec: &TensorSpec, c: &DreamConfig, target: Target) -> GgmlType {
    let row_len = spec.hf_shape.last().copied().unwrap_or(1);
    choose_type(
        target,
        spec.role,
        spec.layer,
        c.num_hidden_layers,
        row_len,
        c.tie_word_embeddings,
    )
}

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn write(
    output: &Path,
    metadata: Vec<(String, GgufValue)>,
    plan: Vec<Planned<'_>>,
    options: &ConvertOptions,
    ignored: Vec<String>,
) -> Result<ConvertReport> {
    let start = Instant::now();
    let mut writer = GgufWriter::new();
    for (key, value) in metadata {
        writer.set(&key, value);
    }
    writer.set(keys::FILE_TYPE, GgufValue::U32(options.target.file_type()));
    if options.target.is_quantized() {
        writer.set(keys::QUANTIZATION_VERSION, GgufValue::U32(2));
    }
    writer.set(
        keys::QUANT_POLICY,
        GgufValue::String(options.target.to_string()),
    );
    let mut report = ConvertReport {
        ignored,
        ..Default::default()
    };
    for p in &plan {
        writer.add_tensor(&p.spec.gguf_name, &p.spec.gguf_shape(), p.ty)?;
        *report.by_type.entry(p.ty.name().to_string()).or_default() += 1;
    }
    let total_bytes: u64 = writer.tensors().iter().map(|t| t.size).sum();
    let mut data = writer.begin(output, options.overwrite)?;
    let bar = progress_bar(options.progress, total_bytes);
    let mut f32_buf: Vec<f32> = Vec::new();
    let mut out_buf: Vec<u8> = Vec::new();
    for p in &plan {
        bar.set_message(p.spec.gguf_name.clone());
        let row_len = p.spec.hf_shape.last().copied().unwrap_or(1);
        let n_rows = p.spec.hf_shape.iter().rev().skip(1).product::<u64>();
        let rows_per_chunk = (CHUNK_ELEMENTS / row_len).max(1);
        let source_bytes = match &p.source {
            Source::Safetensors(file, entry) => Some(file.map(entry)?),
            Source::Gguf(file, info) => Some(file.map_tensor(info)?),
            Source::Synth(..) => None,
        };
        let mut row = 0;
        while row < n_rows {
            let rows = rows_per_chunk.min(n_rows - row);
            f32_buf.clear();
            decode_rows(
                p,
                source_bytes.as_deref().unwrap_or_default(),
                row,
                rows,
                &mut f32_buf,
            )?;
            if let Some(i) = f32_buf.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    name: p.spec.hf_name.clone(),
                    index: (row * row_len) as usize + i,
                });
            }
            out_buf.resize(
                quant::quantized_size(p.ty, rows as usize, row_len as usize)?,
                0,
            );
            quant::quantize_rows_into(p.ty, &f32_buf, row_len as usize, &mut out_buf)?;
            data.write(&out_buf)?;
            bar.inc(out_buf.len() as u64);
            row += rows;
        }
        report.n_tensors += 1;
        if !options.throttle.is_zero() {
            std::thread::sleep(options.throttle);
        }
        report.n_parameters += p.spec.hf_shape.iter().product::<u64>();
        report.bytes_written +=
            quant::quantized_size(p.ty, n_rows as usize, row_len as usize)? as u64;
    }
    data.finish()?;
    bar.finish_and_clear();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn decode_rows(
    p: &Planned<'_>,
    bytes: &[u8],
    first_row: u64,
    n_rows: u64,
    out: &mut Vec<f32>,
) -> Result<()> {
    let row_len = p.spec.hf_shape.last().copied().unwrap_or(1);
    let name = &p.spec.hf_name;
    let row_bytes = match &p.source {
        Source::Safetensors(_, entry) => row_len * entry.dtype.size(),
        Source::Gguf(_, info) => info.ty.bytes_for(row_len)?,
        Source::Synth(model, index) => {
            model.rows(*index, &p.spec, first_row, n_rows, out);
            return Ok(());
        }
    };
    let start = (first_row * row_bytes) as usize;
    let end = start + (n_rows * row_bytes) as usize;
    let slice = bytes.get(start..end).ok_or_else(|| Error::ShapeMismatch {
        name: name.to_string(),
        expected: vec![first_row + n_rows, row_len],
        actual: vec![bytes.len() as u64 / row_bytes.max(1), row_len],
    })?;
    match &p.source {
        Source::Safetensors(_, entry) => Ok(decode_to_f32(name, entry.dtype, slice, out)?),
        Source::Gguf(_, info) => Ok(quant::dequantize_into(info.ty, slice, out)?),
        Source::Synth(..) => Ok(()),
    }
}
