//! Read-only memory maps of byte ranges of a file. The converter maps one tensor at a time and
//! drops the mapping afterwards, so the pages it touched leave the process's resident set and
//! peak memory stays bounded by the largest tensor instead of growing to the whole model.

use crate::{Error, Result};
use memmap2::{Mmap, MmapOptions};
use std::fs::File;
use std::ops::Deref;

/// A mapped, read-only byte range.
pub struct MappedBytes {
    map: Option<Mmap>,
}

impl Deref for MappedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or_default()
    }
}

/// Maps `len` bytes of `file` starting at `offset`, after checking the range lies in the file.
pub fn map_range(file: &File, offset: u64, len: u64) -> Result<MappedBytes> {
    let file_len = file
        .metadata()
        .map_err(|e| Error::io("reading file size", e))?
        .len();
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= file_len)
        .ok_or_else(|| {
            Error::io(
                format!("byte range {offset}+{len} lies outside the {file_len}-byte file"),
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            )
        })?;
    if len == 0 || end == offset {
        // Zero-length mappings are not allowed by the OS; an empty view is equivalent.
        return Ok(MappedBytes { map: None });
    }
    let len = usize::try_from(len).map_err(|_| {
        Error::io(
            "mapping",
            std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        )
    })?;
    // SAFETY: a read-only private mapping of a range checked to lie within the file. Mapped
    // files can change under us if another process modifies them; callers treat model files as
    // immutable while converting, as llama.cpp does, and the data is only ever read as bytes.
    let map = unsafe { MmapOptions::new().offset(offset).len(len).map(file) }
        .map_err(|e| Error::io("mapping file range", e))?;
    Ok(MappedBytes { map: Some(map) })
}
