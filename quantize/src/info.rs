//! `unmask-quantize info`: a readable description of a GGUF file: metadata, tensor table, types,
//! bits per weight and size.

use crate::Result;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use unmask_kernels::gguf::GgufFile;

/// Renders the description of `path` as text.
pub fn describe(path: &Path, show_tensors: bool) -> Result<String> {
    let file = GgufFile::open(path)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: GGUF v{}, {} bytes, alignment {}",
        path.display(),
        file.version(),
        file.file_size(),
        file.alignment()
    );
    let _ = writeln!(out, "\nmetadata ({} keys):", file.metadata().len());
    for (key, value) in file.metadata() {
        let _ = writeln!(out, "  {key:<44} {}", value.summary());
    }
    let mut by_type: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    let (mut params, mut bytes) = (0u64, 0u64);
    if show_tensors {
        let _ = writeln!(out, "\ntensors ({}):", file.tensors().len());
        let _ = writeln!(
            out,
            "  {:<32} {:<6} {:>24} {:>12} {:>6}",
            "name", "type", "shape (ggml order)", "bytes", "bpw"
        );
    }
    for t in file.tensors() {
        let n = t.n_elements();
        params += n;
        bytes += t.size;
        let entry = by_type.entry(t.ty.name()).or_default();
        entry.0 += 1;
        entry.1 += n;
        entry.2 += t.size;
        if show_tensors {
            let shape = format!("{:?}", t.shape);
            let _ = writeln!(
                out,
                "  {:<32} {:<6} {:>24} {:>12} {:>6.2}",
                t.name,
                t.ty.name(),
                shape,
                t.size,
                t.ty.bits_per_weight()
            );
        }
    }
    let _ = writeln!(out, "\nby type:");
    for (ty, (count, n, size)) in &by_type {
        let _ = writeln!(
            out,
            "  {ty:<6} {count:>4} tensors {n:>14} weights {size:>14} bytes"
        );
    }
    let bpw = if params > 0 {
        bytes as f64 * 8.0 / params as f64
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "\ntotal: {} tensors, {params} parameters ({:.3} B), {bytes} bytes of tensor data ({:.1} MiB), {bpw:.2} bits per weight",
        file.tensors().len(),
        params as f64 / 1e9,
        bytes as f64 / (1u64 << 20) as f64
    );
    Ok(out)
}
