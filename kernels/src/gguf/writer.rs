use super::value::{GgufArray, GgufValue};
use super::TensorInfo;
use super::{align_up, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_TENSOR_NAME};
use crate::temp_files::TempPath;
use crate::{Error, GgmlType, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Collects metadata and the tensor table of a GGUF file before any byte is written: GGUF puts
/// the table (with every offset) in front of the data, so all shapes and types must be known.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<TensorInfo>,
    next_offset: u64,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a key, replacing an earlier value but keeping its position.
    pub fn set(&mut self, key: &str, value: GgufValue) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// Declares the next tensor. `shape` is in ggml order (row length first).
    pub fn add_tensor(&mut self, name: &str, shape: &[u64], ty: GgmlType) -> Result<()> {
        if name.is_empty() || name.len() >= MAX_TENSOR_NAME {
            return Err(Error::Writer(format!(
                "tensor name {name:?} must be 1..=63 bytes"
            )));
        }
        if shape.is_empty() || shape.len() > MAX_DIMS || shape.contains(&0) {
            return Err(Error::Writer(format!(
                "tensor `{name}` has invalid shape {shape:?}"
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::Writer(format!("tensor `{name}` declared twice")));
        }
        if !shape[0].is_multiple_of(ty.block_size()) {
            return Err(Error::Writer(format!(
                "tensor `{name}`: row length {} does not fit {ty} blocks of {}",
                shape[0],
                ty.block_size()
            )));
        }
        let n = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::Writer(format!("tensor `{name}` shape overflows")))?;
        let size = ty.bytes_for(n)?;
        let offset = self.next_offset;
        self.next_offset = align_up(offset + size, DEFAULT_ALIGNMENT)
            .ok_or_else(|| Error::Writer("file size overflows".into()))?;
        self.tensors.push(TensorInfo {
            name: name.to_string(),
            shape: shape.to_vec(),
            ty,
            offset,
            size,
        });
        Ok(())
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Creates a temporary file beside `path`, writes the header and tensor table, and returns
    /// the writer for the data. Refuses an existing `path` unless `overwrite`.
    pub fn begin(mut self, path: &Path, overwrite: bool) -> Result<GgufDataWriter> {
        if !overwrite && path.exists() {
            return Err(Error::io(
                format!("{} already exists", path.display()),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        // We always write the default alignment; drop any different value carried over from an
        // input file so that readers compute the same offsets as we did.
        self.metadata.retain(|(k, _)| k != ALIGNMENT_KEY);
        self.metadata.push((
            ALIGNMENT_KEY.into(),
            GgufValue::U32(DEFAULT_ALIGNMENT as u32),
        ));

        let temp_path = temp_path_for(path);
        // Registered before it exists, so that a signal right after its creation removes it too.
        // (A file of that name already there is refused by `create_new`, and then removed: the
        // name holds our process id, so it is a leftover of an earlier process with that id.)
        let temp = TempPath::new(&temp_path);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(|e| Error::io(format!("creating {}", temp_path.display()), e))?;
        let mut out = GgufDataWriter {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            temp: Some(temp),
            temp_path,
            final_path: path.to_path_buf(),
            overwrite,
            tensors: std::mem::take(&mut self.tensors),
            current: 0,
            written_in_current: 0,
            position: 0,
        };
        let header = encode_header(&self.metadata, &out.tensors);
        out.raw_write(&header)?;
        let padded = align_up(out.position, DEFAULT_ALIGNMENT).unwrap_or(out.position);
        out.pad_to(padded)?;
        out.position = 0; // from here on, positions are relative to the data section
        Ok(out)
    }
}

fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Streams tensor data in declaration order. Dropped before [`finish`](Self::finish) completes
/// (an error, including a failed final rename), it removes its temporary file; a signal removes it
/// too when the binary installed [`crate::temp_files::remove_on_signal`]. An interrupted
/// conversion therefore leaves nothing behind.
pub struct GgufDataWriter {
    file: Option<BufWriter<File>>,
    temp: Option<TempPath>,
    temp_path: PathBuf,
    final_path: PathBuf,
    overwrite: bool,
    tensors: Vec<TensorInfo>,
    current: usize,
    written_in_current: u64,
    position: u64,
}

impl GgufDataWriter {
    /// The tensor whose bytes are expected next, or None when all are written.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.current)
    }

    /// Appends bytes of the current tensor; a tensor may arrive in several pieces.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(t) = self.tensors.get(self.current) else {
            return Err(Error::Writer(
                "more data than the declared tensors hold".into(),
            ));
        };
        let (name, size, offset) = (t.name.clone(), t.size, t.offset);
        if self.written_in_current + bytes.len() as u64 > size {
            return Err(Error::Writer(format!(
                "tensor `{name}` given more than its {size} bytes"
            )));
        }
        if self.written_in_current == 0 {
            self.pad_to(offset)?;
        }
        self.raw_write(bytes)?;
        self.written_in_current += bytes.len() as u64;
        if self.written_in_current == size {
            self.current += 1;
            self.written_in_current = 0;
        }
        Ok(())
    }

    /// Flushes, syncs and renames the temporary file onto the final path.
    pub fn finish(mut self) -> Result<()> {
        if let Some(t) = self.tensors.get(self.current) {
            return Err(Error::Writer(format!(
                "tensor `{}` was not fully written",
                t.name
            )));
        }
        let context = format!("writing {}", self.temp_path.display());
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::Writer("already finished".into()))?;
        let file = file
            .into_inner()
            .map_err(|e| Error::io(&context, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&context, e))?;
        drop(file);
        if !self.overwrite && self.final_path.exists() {
            return Err(Error::io(
                format!("{} appeared while converting", self.final_path.display()),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let temp = self
            .temp
            .take()
            .ok_or_else(|| Error::Writer("already finished".into()))?;
        temp.rename_to(&self.final_path)
            .map_err(|e| Error::io(format!("renaming onto {}", self.final_path.display()), e))?;
        Ok(())
    }

    fn raw_write(&mut self, bytes: &[u8]) -> Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::Writer("already finished".into()))?;
        file.write_all(bytes)
            .map_err(|e| Error::io(format!("writing {}", self.temp_path.display()), e))?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, target: u64) -> Result<()> {
        const ZEROS: [u8; DEFAULT_ALIGNMENT as usize] = [0; DEFAULT_ALIGNMENT as usize];
        while self.position < target {
            let n = (target - self.position).min(ZEROS.len() as u64) as usize;
            self.raw_write(&ZEROS[..n])?;
        }
        Ok(())
    }
}

impl Drop for GgufDataWriter {
    fn drop(&mut self) {
        // Close before removing; the `TempPath` removes the file unless it was renamed.
        self.file.take();
        self.temp.take();
    }
}

fn encode_header(metadata: &[(String, GgufValue)], tensors: &[TensorInfo]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut out, key);
        out.extend_from_slice(&value.type_id().to_le_bytes());
        put_value(&mut out, value);
    }
    for t in tensors {
        put_string(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in &t.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ty.id().to_le_bytes());
        out.extend_from_slice(&t.offset.to_le_bytes());
    }
    out
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &GgufValue) {
    match value {
        GgufValue::U8(v) => out.push(*v),
        GgufValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::Bool(v) => out.push(u8::from(*v)),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::Array(a) => {
            out.extend_from_slice(&a.element_type_id().to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            put_array(out, a);
        }
    }
}

fn put_array(out: &mut Vec<u8>, array: &GgufArray) {
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match array {
        GgufArray::U8(v) => out.extend_from_slice(v),
        GgufArray::I8(v) => le!(v),
        GgufArray::U16(v) => le!(v),
        GgufArray::I16(v) => le!(v),
        GgufArray::U32(v) => le!(v),
        GgufArray::I32(v) => le!(v),
        GgufArray::F32(v) => le!(v),
        GgufArray::U64(v) => le!(v),
        GgufArray::I64(v) => le!(v),
        GgufArray::F64(v) => le!(v),
        GgufArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        GgufArray::String(v) => v.iter().for_each(|s| put_string(out, s)),
    }
}
