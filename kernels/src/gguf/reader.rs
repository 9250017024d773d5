use super::value::{type_id, GgufArray, GgufValue};
use super::{align_up, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_TENSOR_NAME};
use crate::{Error, GgmlType, Result};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

/// One entry of the tensor table, validated: its bytes lie inside the data section.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `shape[0]` is the row length (contiguous), e.g. `[in, out]` for a linear weight.
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Bytes the tensor occupies.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A mapped, fully validated GGUF file. Tensor data is borrowed from the mapping, never copied.
pub struct GgufFile {
    file: File,
    map: Mmap,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let context = || format!("opening {}", path.display());
        let file = File::open(path).map_err(|e| Error::io(context(), e))?;
        // SAFETY (of the mapping's contents): memmap2's `map` is unsafe only because another
        // process could truncate or modify the file while mapped. We map read-only and document
        // that model files must not be modified while in use, as llama.cpp does.
        let map = map_read_only(&file)?;
        let parsed = parse(&map)?;
        Ok(GgufFile {
            file,
            map,
            version: parsed.version,
            key_index: index_of(parsed.metadata.iter().map(|(k, _)| k)),
            metadata: parsed.metadata,
            tensor_index: index_of(parsed.tensors.iter().map(|t| &t.name)),
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// Releases the parsed metadata (a model's vocabulary arrays and stored tokenizer take tens of
    /// MiB) once the caller has read what it needs; tensors stay usable.
    pub fn drop_metadata(&mut self) {
        self.metadata = Vec::new();
        self.key_index = HashMap::new();
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The whole mapped file.
    pub fn mapped_bytes(&self) -> &[u8] {
        &self.map
    }

    /// Gives back the resident pages of `len` bytes at `offset` of the mapping (after they were
    /// copied elsewhere, e.g. into a GPU's memory); touching them again reads them from the file.
    pub fn release_pages(&self, offset: usize, len: usize) {
        if len == 0
            || offset
                .checked_add(len)
                .is_none_or(|end| end > self.map.len())
        {
            return;
        }
        // SAFETY: a private, read-only file mapping holds only clean pages: MADV_DONTNEED drops
        // this process's copies and the next access reads the same bytes from the file (which
        // must not change while in use, as for the mapping itself). The range lies inside the
        // mapping (checked above); memmap2 aligns it to pages. Failure only keeps the pages.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
        };
    }

    /// Maps just this tensor's bytes with a mapping of their own, which releases its pages when
    /// dropped: streaming over every tensor this way keeps the resident set bounded.
    pub fn map_tensor(&self, info: &TensorInfo) -> Result<crate::mapping::MappedBytes> {
        crate::mapping::map_range(&self.file, self.data_offset + info.offset, info.size)
    }

    /// The tensor's bytes, straight from the mapping.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        // Both bounds were checked against the mapping's length in `parse`; `info` may come from
        // another file, so fall back to an empty slice rather than panic.
        let start = self.data_offset + info.offset;
        let end = start + info.size;
        self.map
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }
}

fn map_read_only(file: &File) -> Result<Mmap> {
    let len = file
        .metadata()
        .map_err(|e| Error::io("reading file size", e))?
        .len();
    // Linux cannot map an empty file; it is simply a truncated header.
    if len == 0 {
        return Err(Error::InvalidGguf {
            offset: 0,
            message: "empty file".into(),
        });
    }
    // SAFETY: read-only private mapping of a file we just opened; see `GgufFile::open`.
    unsafe { Mmap::map(file) }.map_err(|e| Error::io("mapping file", e))
}

fn index_of<'a>(names: impl Iterator<Item = &'a String>) -> HashMap<String, usize> {
    names.enumerate().map(|(i, n)| (n.clone(), i)).collect()
}

/// Most entries reserved before they are read.
const PREALLOCATE_MAX: usize = 4096;

struct Parsed {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// Metadata and tensor table of a GGUF image.
pub type Header = (Vec<(String, GgufValue)>, Vec<TensorInfo>);

/// Parses and validates a whole GGUF image held in memory (for fuzzing and in-memory tests).
pub fn parse_header(bytes: &[u8]) -> Result<Header> {
    parse(bytes).map(|p| (p.metadata, p.tensors))
}

fn parse(bytes: &[u8]) -> Result<Parsed> {
    let mut r = Cursor { bytes, pos: 0 };
    let magic = r.take(4, "magic")?;
    if magic != MAGIC {
        return Err(r.error_at(0, format!("bad magic {magic:02x?}, expected \"GGUF\"")));
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(r.error_at(
            4,
            format!("unsupported GGUF version {version} (need 2 or 3)"),
        ));
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    // Smallest possible entries: key (8-byte length + 1 byte) + type + 1 byte of value; tensor
    // name (8 + 1) + n_dims + one dim + type + offset. Counts that could not fit are hostile.
    r.check_count(n_kv, 14, "metadata entries")?;
    r.check_count(n_tensors, 33, "tensor entries")?;

    // Capacities are capped: a count that fits the file can still be far too many entries to
    // reserve up front (an entry takes more memory than its smallest encoding).
    let mut metadata = Vec::with_capacity((n_kv as usize).min(PREALLOCATE_MAX));
    let mut seen_keys = HashMap::new();
    for _ in 0..n_kv {
        let at = r.pos;
        let key = r.string("metadata key")?;
        if key.is_empty() {
            return Err(r.error_at(at, "empty metadata key".into()));
        }
        if seen_keys.insert(key.clone(), ()).is_some() {
            return Err(r.error_at(at, format!("duplicate metadata key `{key}`")));
        }
        let ty = r.u32("value type")?;
        let value = r.value(ty, &key)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, GgufValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some((_, v)) => {
            return Err(r.error_at(
                0,
                format!("{ALIGNMENT_KEY} must be a u32 power of two, found {v:?}"),
            ))
        }
    };

    let mut tensors = Vec::with_capacity((n_tensors as usize).min(PREALLOCATE_MAX));
    let mut seen_names = HashMap::new();
    for _ in 0..n_tensors {
        let at = r.pos;
        let name = r.string("tensor name")?;
        if name.is_empty() || name.len() >= MAX_TENSOR_NAME {
            return Err(r.error_at(
                at,
                format!("tensor name {name:?} is empty or longer than 63 bytes"),
            ));
        }
        if seen_names.insert(name.clone(), ()).is_some() {
            return Err(r.error_at(at, format!("duplicate tensor `{name}`")));
        }
        let n_dims = r.u32("dimension count")? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.error_at(
                at,
                format!("tensor `{name}` has {n_dims} dimensions (1..=4)"),
            ));
        }
        let mut shape = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            shape.push(r.u64("dimension")?);
        }
        let type_at = r.pos;
        let ty = GgmlType::from_id(r.u32("tensor type")?)
            .map_err(|e| r.error_at(type_at, format!("tensor `{name}`: {e}")))?;
        let offset = r.u64("tensor offset")?;
        let size = tensor_size(&name, &shape, ty).map_err(|m| r.error_at(at, m))?;
        if offset % alignment != 0 {
            return Err(r.error_at(
                at,
                format!("tensor `{name}` offset {offset} is not aligned to {alignment}"),
            ));
        }
        tensors.push(TensorInfo {
            name,
            shape,
            ty,
            offset,
            size,
        });
    }

    let header_end = r.pos as u64;
    let data_offset = align_up(header_end, alignment)
        .ok_or_else(|| r.error_at(header_end, "data offset overflows".into()))?;
    let file_len = bytes.len() as u64;
    if !tensors.is_empty() && data_offset > file_len {
        return Err(r.error_at(
            file_len,
            format!("file ends before its data section at {data_offset}"),
        ));
    }
    let data_len = file_len.saturating_sub(data_offset);
    check_extents(&tensors, data_len, data_offset)?;
    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

fn tensor_size(name: &str, shape: &[u64], ty: GgmlType) -> Result<u64, String> {
    let mut n: u64 = 1;
    for &d in shape {
        if d == 0 || d > i64::MAX as u64 {
            return Err(format!("tensor `{name}` has invalid dimension {d}"));
        }
        n = n
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| format!("tensor `{name}` shape {shape:?} overflows"))?;
    }
    if !shape[0].is_multiple_of(ty.block_size()) {
        return Err(format!(
            "tensor `{name}` row length {} is not a multiple of {}'s block size {}",
            shape[0],
            ty,
            ty.block_size()
        ));
    }
    ty.bytes_for(n).map_err(|e| format!("tensor `{name}`: {e}"))
}

fn check_extents(tensors: &[TensorInfo], data_len: u64, data_offset: u64) -> Result<()> {
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    let mut previous_end = 0u64;
    let mut previous_name = "";
    for t in order {
        let end = t.offset.checked_add(t.size).filter(|&e| e <= data_len).ok_or_else(|| {
            Error::InvalidGguf {
                offset: data_offset + t.offset,
                message: format!(
                    "tensor `{}` ({} bytes at data offset {}) runs past the end of the file ({} data bytes)",
                    t.name, t.size, t.offset, data_len
                ),
            }
        })?;
        if t.offset < previous_end {
            return Err(Error::InvalidGguf {
                offset: data_offset + t.offset,
                message: format!("tensor `{}` overlaps tensor `{previous_name}`", t.name),
            });
        }
        previous_end = end;
        previous_name = &t.name;
    }
    Ok(())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn error_at(&self, offset: impl TryInto<u64>, message: String) -> Error {
        Error::InvalidGguf {
            offset: offset.try_into().unwrap_or(u64::MAX),
            message,
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.error_at(
                self.pos,
                format!(
                    "truncated: {what} needs {n} bytes, {} left",
                    self.remaining()
                ),
            ));
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Rejects a count whose minimal encoding could not fit in the rest of the file, before any
    /// allocation sized by it.
    fn check_count(&self, count: u64, min_bytes_each: u64, what: &str) -> Result<()> {
        match count.checked_mul(min_bytes_each) {
            Some(total) if total <= self.remaining() as u64 => Ok(()),
            _ => Err(self.error_at(
                self.pos,
                format!(
                    "{count} {what} cannot fit in the {} bytes left",
                    self.remaining()
                ),
            )),
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or_else(|| {
                self.error_at(
                    at,
                    format!(
                        "{what} length {len} exceeds the {} bytes left",
                        self.remaining()
                    ),
                )
            })?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.error_at(at, format!("{what} is not valid UTF-8: {e}")))
    }

    fn value(&mut self, ty: u32, key: &str) -> Result<GgufValue> {
        Ok(match ty {
            type_id::U8 => GgufValue::U8(self.array::<1>(key)?[0]),
            type_id::I8 => GgufValue::I8(i8::from_le_bytes(self.array(key)?)),
            type_id::U16 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            type_id::I16 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            type_id::U32 => GgufValue::U32(self.u32(key)?),
            type_id::I32 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            type_id::F32 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            type_id::U64 => GgufValue::U64(self.u64(key)?),
            type_id::I64 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            type_id::F64 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            type_id::BOOL => GgufValue::Bool(self.boolean(key)?),
            type_id::STRING => GgufValue::String(self.string(key)?),
            type_id::ARRAY => GgufValue::Array(self.array_value(key)?),
            other => {
                return Err(self.error_at(
                    self.pos - 4,
                    format!("key `{key}` has unknown value type {other}"),
                ))
            }
        })
    }

    fn boolean(&mut self, key: &str) -> Result<bool> {
        let at = self.pos;
        match self.array::<1>(key)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.error_at(
                at,
                format!("key `{key}`: boolean byte {b} is neither 0 nor 1"),
            )),
        }
    }

    fn array_value(&mut self, key: &str) -> Result<GgufArray> {
        let at = self.pos;
        let elem = self.u32(key)?;
        let count = self.u64(key)?;
        let min_size = match elem {
            type_id::U8 | type_id::I8 | type_id::BOOL => 1,
            type_id::U16 | type_id::I16 => 2,
            type_id::U32 | type_id::I32 | type_id::F32 => 4,
            type_id::U64 | type_id::I64 | type_id::F64 | type_id::STRING => 8,
            type_id::ARRAY => {
                return Err(
                    self.error_at(at, format!("key `{key}`: nested arrays are not supported"))
                )
            }
            other => {
                return Err(self.error_at(
                    at,
                    format!("key `{key}`: unknown array element type {other}"),
                ))
            }
        };
        self.check_count(count, min_size, &format!("elements of `{key}`"))?;
        let n = count as usize;
        macro_rules! read_all {
            ($variant:ident, $read:expr) => {{
                let mut v = Vec::with_capacity(n.min(PREALLOCATE_MAX));
                for _ in 0..n {
                    v.push($read(self)?);
                }
                GgufArray::$variant(v)
            }};
        }
        Ok(match elem {
            type_id::U8 => GgufArray::U8(self.take(n, key)?.to_vec()),
            type_id::I8 => read_all!(I8, |c: &mut Self| c.array(key).map(i8::from_le_bytes)),
            type_id::U16 => read_all!(U16, |c: &mut Self| c.array(key).map(u16::from_le_bytes)),
            type_id::I16 => read_all!(I16, |c: &mut Self| c.array(key).map(i16::from_le_bytes)),
            type_id::U32 => read_all!(U32, |c: &mut Self| c.u32(key)),
            type_id::I32 => read_all!(I32, |c: &mut Self| c.array(key).map(i32::from_le_bytes)),
            type_id::F32 => read_all!(F32, |c: &mut Self| c.array(key).map(f32::from_le_bytes)),
            type_id::U64 => read_all!(U64, |c: &mut Self| c.u64(key)),
            type_id::I64 => read_all!(I64, |c: &mut Self| c.array(key).map(i64::from_le_bytes)),
            type_id::F64 => read_all!(F64, |c: &mut Self| c.array(key).map(f64::from_le_bytes)),
            type_id::BOOL => read_all!(Bool, |c: &mut Self| c.boolean(key)),
            _ => read_all!(String, |c: &mut Self| c.string(key)),
        })
    }
}
