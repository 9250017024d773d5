//! GGUF v3, ggml's single-file model format: an ordered key/value metadata table, a tensor table,
//! then aligned tensor data. [`GgufFile`] maps a file and validates every count, length, offset and
//! shape before use; [`GgufWriter`] streams a file out header first, data after, through a
//! temporary name that is renamed only once everything is on disk.

mod reader;
mod value;
mod writer;

pub use reader::{parse_header, GgufFile, TensorInfo};
pub use value::{GgufArray, GgufValue};
pub use writer::{GgufDataWriter, GgufWriter};

/// "GGUF" read as a little-endian u32.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// ggml's GGML_MAX_NAME: names must be shorter than this (NUL included), or llama.cpp refuses them.
pub const MAX_TENSOR_NAME: usize = 64;
pub const ALIGNMENT_KEY: &str = "general.alignment";

pub(crate) fn align_up(value: u64, alignment: u64) -> Option<u64> {
    value
        .checked_add(alignment - 1)
        .map(|v| v / alignment * alignment)
}
