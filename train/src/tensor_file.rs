//! Tensor files in the format of the PyTorch loss reference (`tests/python/grpo_reference.py`,
//! `GRPO_REFERENCE.md`): safetensors with named arrays of any integer, float or bool dtype, read
//! as f64 values with their shape; outputs are written as f32.

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use unmask_dream::safetensors::{decode_to_f32, write_file, Dtype, SafetensorsFile};

/// One array: row-major values and shape (empty shape = scalar).
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Array {
    /// The single value of a scalar (any shape of one element).
    pub fn scalar(&self, name: &str) -> Result<f64> {
        match self.data.as_slice() {
            [v] => Ok(*v),
            _ => Err(Error::InvalidArgument(format!(
                "`{name}` must hold one value, has shape {:?}",
                self.shape
            ))),
        }
    }
}

/// Every array of a safetensors file, by name.
pub fn read_arrays(path: &Path) -> Result<BTreeMap<String, Array>> {
    let file = SafetensorsFile::open(path)?;
    let mut out = BTreeMap::new();
    for (name, entry) in file.entries() {
        let bytes = file.map(entry)?;
        let n = entry.n_elements() as usize;
        let data: Vec<f64> = match entry.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                let mut v = Vec::with_capacity(n);
                decode_to_f32(name, entry.dtype, &bytes, &mut v)?;
                v.into_iter().map(f64::from).collect()
            }
            Dtype::Other { name: dtype, size } => {
                let chunks = bytes.chunks_exact(size as usize);
                let word = |c: &[u8]| {
                    let mut b = [0u8; 8];
                    b[..c.len()].copy_from_slice(c);
                    b
                };
                match dtype {
                    "F64" => chunks.map(|c| f64::from_le_bytes(word(c))).collect(),
                    "I64" => chunks.map(|c| i64::from_le_bytes(word(c)) as f64).collect(),
                    "U64" => chunks.map(|c| u64::from_le_bytes(word(c)) as f64).collect(),
                    "I32" => chunks
                        .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                        .collect(),
                    "U32" => chunks
                        .map(|c| f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                        .collect(),
                    "I16" => chunks
                        .map(|c| f64::from(i16::from_le_bytes([c[0], c[1]])))
                        .collect(),
                    "U16" => chunks
                        .map(|c| f64::from(u16::from_le_bytes([c[0], c[1]])))
                        .collect(),
                    "I8" => chunks.map(|c| f64::from(c[0] as i8)).collect(),
                    "U8" | "BOOL" => chunks.map(|c| f64::from(c[0])).collect(),
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "{}: tensor `{name}` has unsupported dtype {other}",
                            path.display()
                        )))
                    }
                }
            }
        };
        if data.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{}: tensor `{name}` decodes to {} values, expected {n}",
                path.display(),
                data.len()
            )));
        }
        let shape = entry.shape.iter().map(|&d| d as usize).collect();
        out.insert(name.clone(), Array { shape, data });
    }
    Ok(out)
}

/// Writes f32 arrays `(name, shape, values)` as a safetensors file.
pub fn write_f32(path: &Path, arrays: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let tensors: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> = arrays
        .iter()
        .map(|(name, shape, values)| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let shape = shape.iter().map(|&d| d as u64).collect();
            (name.clone(), Dtype::F32, shape, bytes)
        })
        .collect();
    write_file(path, &tensors)?;
    Ok(())
}
