//! A copy of a GGUF file with some of its stored generation settings (`unmask.generation.*`)
//! replaced or removed, every other metadata entry and every tensor byte for byte as they were:
//! how tests give a synthetic model the settings a real checkpoint's `generation_config.json`
//! would have stored.

use crate::Result;
use std::path::Path;
use unmask_dream::layout::keys::GENERATION_PREFIX;
use unmask_kernels::gguf::{GgufFile, GgufValue, GgufWriter};

/// Writes to `dst` a copy of `src` whose `unmask.generation.<name>` entries are replaced (`Some`)
/// or removed (`None`) for each `(name, value)` of `edits`.
pub fn with_generation_settings(
    src: &Path,
    dst: &Path,
    edits: &[(&str, Option<GgufValue>)],
) -> Result<()> {
    let file = GgufFile::open(src)?;
    let mut metadata = file.metadata().to_vec();
    for (name, value) in edits {
        let key = format!("{GENERATION_PREFIX}{name}");
        metadata.retain(|(k, _)| *k != key);
        if let Some(v) = value {
            metadata.push((key, v.clone()));
        }
    }
    let mut writer = GgufWriter::new();
    for (k, v) in metadata {
        writer.set(&k, v);
    }
    for t in file.tensors() {
        writer.add_tensor(&t.name, &t.shape, t.ty)?;
    }
    let mut data = writer.begin(dst, true)?;
    for t in file.tensors() {
        data.write(file.tensor_data(t))?;
    }
    data.finish()?;
    Ok(())
}
