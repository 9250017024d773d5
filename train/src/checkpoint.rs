//! Checkpoints: a Hugging Face folder (config, tokenizer and generation files copied from the
//! source model, `model.safetensors` in bf16 or f32) plus the training state needed to resume
//! bit-identically: `trainer_state.json` (step, seed, data cursor, schedule, hyper-parameters)
//! and `optimizer.safetensors` (AdamW moments `m.<GGUF name>`, `v.<GGUF name>` in f32 and, when
//! the model file is not f32, the f32 master weights `param.<GGUF name>`).
//!
//! Writes are atomic: everything goes into `OUT/.tmp-ckpt-N`, each file and the folder are
//! fsynced, the folder is renamed to `OUT/checkpoint-N` (fsync of `OUT`), then the pointer file
//! `OUT/latest` (the folder name) is replaced by writing `OUT/.latest.tmp` and renaming it. A
//! `checkpoint-N` folder therefore only exists complete. The temporaries are removed on every
//! error and, in the `unmask-train` binary, on SIGINT/SIGTERM/SIGHUP
//! (`unmask_kernels::temp_files`); one left by a crash or SIGKILL is never read and is removed
//! by [`find_latest`]. After a save, [`prune`] keeps the newest `keep` checkpoints.

use crate::optim::AdamW;
use crate::policy::Policy;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use unmask_dream::safetensors::{decode_to_f32, encode_header, Dtype, SafetensorsFile};
use unmask_kernels::temp_files::TempPath;

/// The dtype of `model.safetensors`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    Bf16,
    F32,
}

/// Everything but the tensors that a resumed run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer updates done (the checkpoint's N).
    pub step: u64,
    /// The run's seed. Every random draw of update `k` comes from generators seeded by
    /// `(seed, k, micro-batch)`, so `(seed, step)` is the whole random state.
    pub seed: u64,
    /// Training examples consumed so far (the data cursor; the order of epoch `e` is a seeded
    /// permutation, so the cursor fixes the position).
    pub examples_seen: u64,
    /// The run's settings (for the record and for checks on resume).
    pub config: serde_json::Value,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// Files of the source folder that are not weights or training state are copied verbatim.
fn is_copied(name: &str) -> bool {
    let weights = [
        ".safetensors",
        ".safetensors.index.json",
        ".bin",
        ".pt",
        ".pth",
        ".gguf",
        ".ckpt",
        ".h5",
        ".msgpack",
    ];
    !name.starts_with('.')
        && name != "trainer_state.json"
        && !weights.iter().any(|ext| name.ends_with(ext))
}

/// Writes a safetensors file tensor by tensor and fsyncs it.
pub(crate) fn write_safetensors<V: AsRef<[f32]>>(
    path: &Path,
    tensors: &[(String, Dtype, Vec<u64>, V)],
) -> Result<()> {
    let size = |d: Dtype, v: &[f32]| v.len() as u64 * if d == Dtype::BF16 { 2 } else { 4 };
    let header = encode_header(
        tensors
            .iter()
            .map(|(n, d, s, v)| (n.as_str(), *d, s.as_slice(), size(*d, v.as_ref()))),
    );
    let file = File::create(path).map_err(io(path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&header).map_err(io(path))?;
    let mut buf = Vec::new();
    for (_, dtype, _, values) in tensors {
        for chunk in values.as_ref().chunks(1 << 20) {
            buf.clear();
            match dtype {
                Dtype::BF16 => buf.extend(
                    chunk
                        .iter()
                        .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()),
                ),
                _ => buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes())),
            }
            out.write_all(&buf).map_err(io(path))?;
        }
    }
    let file = out.into_inner().map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io(path))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The folder name of checkpoint `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("checkpoint-{step}")
}

/// Saves a checkpoint atomically as `out/checkpoint-<state.step>` and points `out/latest` at it.
pub fn save(
    out: &Path,
    source: &Path,
    policy: &Policy,
    opt: &AdamW,
    state: &TrainerState,
    dtype: SaveDtype,
) -> Result<PathBuf> {
    save_with_reference(out, source, policy, opt, state, dtype, None)
}

/// The file of a checkpoint that holds a reference policy (f32, GGUF names), when there is one.
pub const REFERENCE_FILE: &str = "reference.safetensors";

/// [`save`], plus, when given, the reference policy of coupled-GRPO as [`REFERENCE_FILE`] in the
/// same atomic folder.
pub fn save_with_reference(
    out: &Path,
    source: &Path,
    policy: &Policy,
    opt: &AdamW,
    state: &TrainerState,
    dtype: SaveDtype,
    reference: Option<&Policy>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let name = checkpoint_name(state.step);
    let tmp_path = out.join(format!(".tmp-ckpt-{}", state.step));
    if tmp_path.exists() {
        std::fs::remove_dir_all(&tmp_path).map_err(io(&tmp_path))?;
    }
    // Registered before it exists: from its creation on, an error or a signal removes the
    // partial folder.
    let guard = TempPath::new(&tmp_path);
    std::fs::create_dir(&tmp_path).map_err(io(&tmp_path))?;
    let tmp = guard.path();
    for entry in std::fs::read_dir(source).map_err(io(source))? {
        let entry = entry.map_err(io(source))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if !entry.file_type().map_err(io(source))?.is_file() || !is_copied(file_name) {
            continue;
        }
        let bytes = std::fs::read(entry.path()).map_err(io(&entry.path()))?;
        write_synced(&tmp.join(file_name), &bytes)?;
    }
    let params = &policy.params;
    let st_dtype = match dtype {
        SaveDtype::Bf16 => Dtype::BF16,
        SaveDtype::F32 => Dtype::F32,
    };
    let mut model = Vec::with_capacity(policy.specs.len());
    for spec in &policy.specs {
        model.push((
            spec.hf_name.clone(),
            st_dtype,
            spec.hf_shape.clone(),
            params.get(&spec.gguf_name)?,
        ));
    }
    write_safetensors(&tmp.join("model.safetensors"), &model)?;
    let mut state_tensors = Vec::new();
    for spec in &policy.specs {
        let (m, v) = opt.state.moments(&spec.gguf_name)?;
        let shape = spec.hf_shape.clone();
        state_tensors.push((
            format!("m.{}", spec.gguf_name),
            Dtype::F32,
            shape.clone(),
            m,
        ));
        state_tensors.push((
            format!("v.{}", spec.gguf_name),
            Dtype::F32,
            shape.clone(),
            v,
        ));
        if dtype != SaveDtype::F32 {
            state_tensors.push((
                format!("param.{}", spec.gguf_name),
                Dtype::F32,
                shape,
                params.get(&spec.gguf_name)?,
            ));
        }
    }
    write_safetensors(&tmp.join("optimizer.safetensors"), &state_tensors)?;
    if let Some(reference) = reference {
        let mut tensors = Vec::with_capacity(reference.specs.len());
        for spec in &reference.specs {
            tensors.push((
                spec.gguf_name.clone(),
                Dtype::F32,
                spec.hf_shape.clone(),
                reference.params.get(&spec.gguf_name)?,
            ));
        }
        write_safetensors(&tmp.join(REFERENCE_FILE), &tensors)?;
    }
    let mut json =
        serde_json::to_value(state).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    json["optimizer_step"] = opt.step.into();
    let text =
        serde_json::to_string_pretty(&json).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    // Written last: a folder with trainer_state.json has everything.
    write_synced(&tmp.join("trainer_state.json"), text.as_bytes())?;
    sync_dir(tmp)?;
    let dest = out.join(&name);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    guard.rename_to(&dest).map_err(io(&dest))?;
    sync_dir(out)?;
    let pointer_tmp = TempPath::new(out.join(".latest.tmp"));
    write_synced(pointer_tmp.path(), format!("{name}\n").as_bytes())?;
    let pointer = out.join("latest");
    pointer_tmp.rename_to(&pointer).map_err(io(&pointer))?;
    sync_dir(out)?;
    Ok(dest)
}

/// Removes all but the newest `keep` complete checkpoints of `out` (`keep` 0: none removed).
/// The checkpoint `latest` names is never removed. Returns the removed folders.
pub fn prune(out: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let latest = std::fs::read_to_string(out.join("latest"))
        .ok()
        .map(|t| t.trim().to_string());
    let mut steps: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(out).map_err(io(out))? {
        let entry = entry.map_err(io(out))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if entry.path().join("trainer_state.json").is_file() {
                steps.push((step, entry.path()));
            }
        }
    }
    steps.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut removed = Vec::new();
    for (step, path) in steps.into_iter().skip(keep) {
        if latest.as_deref() == Some(checkpoint_name(step).as_str()) {
            continue;
        }
        std::fs::remove_dir_all(&path).map_err(io(&path))?;
        removed.push(path);
    }
    Ok(removed)
}

/// The run settings recorded in a checkpoint's `trainer_state.json` (what `--resume` starts
/// from).
pub fn recorded_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
    Ok(state.config)
}

/// Creates the output folder of a run and returns its latest complete checkpoint; a fresh
/// run (`resume` false) refuses a folder that already holds checkpoints.
pub fn prepare_out(out: &Path, resume: bool) -> Result<Option<(u64, PathBuf)>> {
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let latest = find_latest(out)?;
    if latest.is_some() && !resume {
        return Err(Error::InvalidArgument(format!(
            "{} already holds checkpoints: pass --resume or choose another --out",
            out.display()
        )));
    }
    Ok(latest)
}

/// Removes partial checkpoints (`.tmp-*`) of `out` and returns the complete checkpoint with the
/// highest step, if any. The `latest` pointer names the same folder unless a crash fell between
/// the folder's rename and the pointer's update; the folders are authoritative.
pub fn find_latest(out: &Path) -> Result<Option<(u64, PathBuf)>> {
    if !out.exists() {
        return Ok(None);
    }
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(out).map_err(io(out))? {
        let entry = entry.map_err(io(out))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(".tmp-") {
            if path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            } else {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
            continue;
        }
        let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if path.join("trainer_state.json").is_file() && best.as_ref().is_none_or(|b| step > b.0) {
            best = Some((step, path));
        }
    }
    Ok(best)
}

/// Loads a checkpoint's weights (f32 masters when present), AdamW moments and counter into
/// `policy` and `opt` (no graph may hold the policy's parameters), and returns its state.
pub fn load(dir: &Path, policy: &mut Policy, opt: &mut AdamW) -> Result<TrainerState> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", state_path.display())))?;
    let state: TrainerState = serde_json::from_value(json.clone())
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", state_path.display())))?;
    let opt_step = json["optimizer_step"].as_u64().unwrap_or(state.step);
    let optimizer = SafetensorsFile::open(&dir.join("optimizer.safetensors"))?;
    let model = SafetensorsFile::open(&dir.join("model.safetensors"))?;
    let read = |file: &SafetensorsFile, name: &str, n: usize| -> Result<Vec<f32>> {
        let entry = file.entries().get(name).ok_or_else(|| {
            Error::InvalidArgument(format!("{}: no tensor `{name}`", file.path().display()))
        })?;
        let mut v = Vec::with_capacity(n);
        decode_to_f32(name, entry.dtype, &file.map(entry)?, &mut v)?;
        if v.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{}: `{name}` has {} values, expected {n}",
                file.path().display(),
                v.len()
            )));
        }
        Ok(v)
    };
    let params = Arc::get_mut(&mut policy.params)
        .ok_or_else(|| Error::InvalidArgument("the parameters are still used by a graph".into()))?;
    for spec in &policy.specs {
        let n = params.len(&spec.gguf_name)?;
        let master = format!("param.{}", spec.gguf_name);
        let values = if optimizer.entries().contains_key(&master) {
            read(&optimizer, &master, n)?
        } else {
            read(&model, &spec.hf_name, n)?
        };
        params.set(&spec.gguf_name, &values)?;
        let m = read(&optimizer, &format!("m.{}", spec.gguf_name), n)?;
        let v = read(&optimizer, &format!("v.{}", spec.gguf_name), n)?;
        opt.state.set_moments(&spec.gguf_name, &m, &v)?;
    }
    opt.step = opt_step;
    Ok(state)
}

/// Loads the reference policy saved by [`save_with_reference`] into `reference` (no graph may
/// hold its parameters). Errors when the checkpoint has none.
pub fn load_reference(dir: &Path, reference: &mut Policy) -> Result<()> {
    let file = SafetensorsFile::open(&dir.join(REFERENCE_FILE))?;
    let params = Arc::get_mut(&mut reference.params)
        .ok_or_else(|| Error::InvalidArgument("the parameters are still used by a graph".into()))?;
    let mut v = Vec::new();
    for spec in &reference.specs {
        let name = &spec.gguf_name;
        let entry = file.entries().get(name).ok_or_else(|| {
            Error::InvalidArgument(format!("{}: no tensor `{name}`", file.path().display()))
        })?;
        v.clear();
        decode_to_f32(name, entry.dtype, &file.map(entry)?, &mut v)?;
        params.set(name, &v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_state_files_are_not_copied() {
        for name in [
            "model.safetensors",
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "trainer_state.json",
            ".latest.tmp",
        ] {
            assert!(!is_copied(name), "{name}");
        }
        for name in [
            "config.json",
            "tokenizer.json",
            "generation_config.json",
            "modeling_dream.py",
        ] {
            assert!(is_copied(name), "{name}");
        }
    }
}
