//! Our own reader for the safetensors format (8-byte header length, JSON table, raw data):
//! every offset, shape and dtype is validated against the file before a byte of data is read.

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use unmask_kernels::mapping::{map_range, MappedBytes};

/// The safetensors reference implementation refuses headers above 100 MB; so do we.
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Element types. Only the float ones can be converted; the others are recognised so that a
/// checkpoint carrying, say, an I64 buffer we never read still opens, and is rejected only if
/// such a tensor is actually needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    BF16,
    F16,
    F32,
    Other { name: &'static str, size: u64 },
}

const OTHER_DTYPES: [(&str, u64); 11] = [
    ("F64", 8),
    ("I64", 8),
    ("U64", 8),
    ("I32", 4),
    ("U32", 4),
    ("I16", 2),
    ("U16", 2),
    ("I8", 1),
    ("U8", 1),
    ("BOOL", 1),
    ("F8_E4M3", 1),
];

impl Dtype {
    fn parse(name: &str) -> Option<Dtype> {
        match name {
            "BF16" => Some(Dtype::BF16),
            "F16" => Some(Dtype::F16),
            "F32" => Some(Dtype::F32),
            _ => OTHER_DTYPES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(name, size)| Dtype::Other { name, size }),
        }
    }

    pub fn size(self) -> u64 {
        match self {
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
            Dtype::Other { size, .. } => size,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::BF16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::F32 => "F32",
            Dtype::Other { name, .. } => name,
        }
    }
}

/// One tensor of a safetensors file.
#[derive(Clone, Debug)]
pub struct Entry {
    pub dtype: Dtype,
    /// Row-major (PyTorch) order: `[out, in]` for linear weights.
    pub shape: Vec<u64>,
    /// Absolute file offset of the first byte.
    pub offset: u64,
    pub len: u64,
}

impl Entry {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// An opened, validated safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    entries: BTreeMap<String, Entry>,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes).map_err(|_| {
            bad(format!(
                "file of {file_len} bytes is too short for a header"
            ))
        })?;
        let header_len = checked_header_len(len_bytes, file_len).map_err(bad)?;
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| bad(format!("reading header: {e}")))?;
        let data_start = 8 + header_len;
        let entries = parse_header(&header, data_start, file_len).map_err(bad)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// Maps one tensor's bytes; the mapping is released when the returned value is dropped.
    pub fn map(&self, entry: &Entry) -> Result<MappedBytes> {
        Ok(map_range(&self.file, entry.offset, entry.len)?)
    }
}

/// The header length `len_bytes` announce, checked against a file of `file_len` bytes (at
/// least 8) and the size limit.
fn checked_header_len(len_bytes: [u8; 8], file_len: u64) -> Result<u64, String> {
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
        return Err(format!(
            "header length {header_len} exceeds the file ({file_len} bytes) or the 100 MB limit"
        ));
    }
    Ok(header_len)
}

/// Parses and validates the header of a whole safetensors image held in memory, with the checks
/// of [`SafetensorsFile::open`] (for fuzzing and in-memory tests).
pub fn parse_image(bytes: &[u8]) -> Result<BTreeMap<String, Entry>, String> {
    let file_len = bytes.len() as u64;
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("file of {file_len} bytes is too short for a header"))?;
    let header_len = checked_header_len(len_bytes, file_len)?;
    let header = &bytes[8..8 + header_len as usize];
    parse_header(header, 8 + header_len, file_len)
}

fn parse_header(
    header: &[u8],
    data_start: u64,
    file_len: u64,
) -> Result<BTreeMap<String, Entry>, String> {
    let text = std::str::from_utf8(header).map_err(|e| format!("header is not UTF-8: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("header is not JSON: {e}"))?;
    let table = json.as_object().ok_or("header is not a JSON object")?;
    let data_len = file_len - data_start;
    let mut entries = BTreeMap::new();
    for (name, info) in table {
        if name == "__metadata__" {
            continue;
        }
        let entry = parse_entry(name, info, data_start, data_len)?;
        entries.insert(name.clone(), entry);
    }
    let mut spans: Vec<(&String, &Entry)> = entries.iter().collect();
    spans.sort_by_key(|(_, e)| (e.offset, e.len));
    for pair in spans.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.1.offset + a.1.len > b.1.offset {
            return Err(format!("tensors `{}` and `{}` overlap", a.0, b.0));
        }
    }
    Ok(entries)
}

fn parse_entry(
    name: &str,
    info: &serde_json::Value,
    data_start: u64,
    data_len: u64,
) -> Result<Entry, String> {
    let dtype_name = info
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| format!("tensor `{name}` has no dtype"))?;
    let dtype = Dtype::parse(dtype_name)
        .ok_or_else(|| format!("tensor `{name}` has unknown dtype `{dtype_name}`"))?;
    let shape: Vec<u64> = info
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| format!("tensor `{name}` has no shape"))?
        .iter()
        .map(|d| d.as_u64())
        .collect::<Option<_>>()
        .ok_or_else(|| format!("tensor `{name}` has a non-integer dimension"))?;
    if shape.len() > 4 {
        return Err(format!(
            "tensor `{name}` has {} dimensions (at most 4)",
            shape.len()
        ));
    }
    let offsets = info
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .filter(|o| o.len() == 2)
        .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
        .ok_or_else(|| format!("tensor `{name}` has malformed data_offsets"))?;
    let (begin, end) = offsets;
    if begin > end || end > data_len {
        return Err(format!(
            "tensor `{name}` data_offsets [{begin}, {end}] fall outside the {data_len} data bytes"
        ));
    }
    let expected = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("tensor `{name}` shape {shape:?} overflows"))?;
    if expected != end - begin {
        return Err(format!(
            "tensor `{name}` shape {shape:?} of {dtype_name} needs {expected} bytes but its data_offsets span {}",
            end - begin
        ));
    }
    Ok(Entry {
        dtype,
        shape,
        offset: data_start + begin,
        len: end - begin,
    })
}

/// Decodes little-endian elements of `dtype` to f32, appending to `out`. `tensor` names the
/// tensor in the error for non-float dtypes.
pub fn decode_to_f32(tensor: &str, dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) -> Result<()> {
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Dtype::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        Dtype::Other { name, .. } => {
            return Err(Error::UnsupportedDtype {
                name: tensor.to_string(),
                dtype: name.to_string(),
            })
        }
    }
    Ok(())
}

/// Writes a safetensors file (used by `synth` and tests): header, then data in the given order.
pub fn write_file(path: &Path, tensors: &[(String, Dtype, Vec<u64>, Vec<u8>)]) -> Result<()> {
    let text = encode_header(tensors.iter().map(|(name, dtype, shape, data)| {
        (name.as_str(), *dtype, shape.as_slice(), data.len() as u64)
    }));
    let mut out = std::io::BufWriter::new(File::create(path).map_err(|e| Error::io(path, e))?);
    use std::io::Write;
    let write = |out: &mut std::io::BufWriter<File>, bytes: &[u8]| {
        out.write_all(bytes).map_err(|e| Error::io(path, e))
    };
    write(&mut out, &text)?;
    for (_, _, _, data) in tensors {
        write(&mut out, data)?;
    }
    out.flush().map_err(|e| Error::io(path, e))
}

/// The 8-byte length and JSON table of a safetensors file whose tensors (name, dtype, shape,
/// byte length) follow in this order; padded so the data starts 8-byte aligned, as the reference
/// writer does.
pub fn encode_header<'a>(
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [u64], u64)>,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape, len) in tensors {
        let end = offset + len;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made image: the JSON header spelled out, then the data bytes.
    fn image(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        bytes
    }

    #[test]
    fn an_image_in_memory_gets_the_checks_of_a_file() {
        let header = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}}"#;
        let entries = parse_image(&image(header, 22)).unwrap();
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(entries["b"].len, 6);
        // The same image opened as a file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, image(header, 22)).unwrap();
        assert_eq!(SafetensorsFile::open(&path).unwrap().entries().len(), 2);

        assert!(parse_image(&image(header, 21)).is_err(), "data cut short");
        assert!(parse_image(&[1, 2, 3]).unwrap_err().contains("too short"));
        let mut huge = image(header, 22);
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_image(&huge).unwrap_err().contains("exceeds the file"));
    }
}
