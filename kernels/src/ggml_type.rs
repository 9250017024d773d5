use crate::{Error, Result};
use llama_cpp_sys_2 as sys;

/// A ggml tensor type, as stored in GGUF files. Only ids that the vendored ggml knows and that
/// have a block layout are representable, so every `GgmlType` has a valid block and byte size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(sys::GGML_TYPE_F32);
    pub const F16: GgmlType = GgmlType(sys::GGML_TYPE_F16);
    pub const BF16: GgmlType = GgmlType(sys::GGML_TYPE_BF16);
    pub const Q4_0: GgmlType = GgmlType(sys::GGML_TYPE_Q4_0);
    pub const Q4_1: GgmlType = GgmlType(sys::GGML_TYPE_Q4_1);
    pub const Q5_0: GgmlType = GgmlType(sys::GGML_TYPE_Q5_0);
    pub const Q5_1: GgmlType = GgmlType(sys::GGML_TYPE_Q5_1);
    pub const Q8_0: GgmlType = GgmlType(sys::GGML_TYPE_Q8_0);
    pub const Q2_K: GgmlType = GgmlType(sys::GGML_TYPE_Q2_K);
    pub const Q3_K: GgmlType = GgmlType(sys::GGML_TYPE_Q3_K);
    pub const Q4_K: GgmlType = GgmlType(sys::GGML_TYPE_Q4_K);
    pub const Q5_K: GgmlType = GgmlType(sys::GGML_TYPE_Q5_K);
    pub const Q6_K: GgmlType = GgmlType(sys::GGML_TYPE_Q6_K);
    pub const I32: GgmlType = GgmlType(sys::GGML_TYPE_I32);

    /// Validates a type id read from a file against the vendored ggml's type table.
    pub fn from_id(id: u32) -> Result<Self> {
        if id >= sys::GGML_TYPE_COUNT {
            return Err(Error::UnknownType(id));
        }
        let ty = GgmlType(id);
        // Removed types (Q4_2, Q4_0_4_4, ...) keep a slot in ggml's table with block size 0.
        if ty.traits().blck_size <= 0 || ty.traits().type_size == 0 {
            return Err(Error::UnknownType(id));
        }
        Ok(ty)
    }

    pub fn id(self) -> u32 {
        self.0
    }

    fn traits(self) -> &'static sys::ggml_type_traits {
        // SAFETY: `self.0 < GGML_TYPE_COUNT` (checked at construction or a ggml constant), and
        // ggml_get_type_traits returns a pointer into a static table that lives for the program.
        unsafe { &*sys::ggml_get_type_traits(self.0) }
    }

    /// Elements per block (1 for float types, 32 or 256 for quantized ones).
    pub fn block_size(self) -> u64 {
        self.traits().blck_size as u64
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.traits().type_size as u64
    }

    pub fn is_quantized(self) -> bool {
        self.traits().is_quantized
    }

    /// ggml's lower-case name ("q4_K", "f16", ...).
    pub fn name(self) -> &'static str {
        let ptr = self.traits().type_name;
        if ptr.is_null() {
            return "unknown";
        }
        // SAFETY: non-null type names in ggml's static trait table are NUL-terminated literals.
        let cstr = unsafe { std::ffi::CStr::from_ptr(ptr) };
        cstr.to_str().unwrap_or("unknown")
    }

    /// Bytes that `n_elements` of this type occupy, or an error when the count does not fill
    /// whole blocks or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Result<u64> {
        let block = self.block_size();
        if !n_elements.is_multiple_of(block) {
            return Err(Error::Quantize {
                ty: self.name(),
                reason: format!(
                    "{n_elements} elements is not a multiple of the block size {block}"
                ),
            });
        }
        (n_elements / block)
            .checked_mul(self.type_size())
            .ok_or_else(|| Error::Quantize {
                ty: self.name(),
                reason: format!("{n_elements} elements overflow the byte size"),
            })
    }

    /// Average storage bits per weight.
    pub fn bits_per_weight(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_gguf_specification() {
        // Values from ggml's documented block structs; a mismatch means the vendored ggml moved.
        let expected = [
            (GgmlType::F32, 1, 4),
            (GgmlType::F16, 1, 2),
            (GgmlType::BF16, 1, 2),
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q4_K, 256, 144),
            (GgmlType::Q5_K, 256, 176),
            (GgmlType::Q6_K, 256, 210),
        ];
        for (ty, block, size) in expected {
            assert_eq!((ty.block_size(), ty.type_size()), (block, size), "{ty}");
        }
        assert!((GgmlType::Q4_K.bits_per_weight() - 4.5).abs() < 1e-9);
    }

    #[test]
    fn removed_and_out_of_range_ids_are_rejected() {
        for id in [4, 5, 31, 1000, u32::MAX] {
            assert!(GgmlType::from_id(id).is_err(), "id {id}");
        }
        assert_eq!(GgmlType::from_id(12).unwrap(), GgmlType::Q4_K);
    }

    #[test]
    fn byte_sizes_require_whole_blocks() {
        assert_eq!(GgmlType::Q4_K.bytes_for(512).unwrap(), 288);
        assert!(GgmlType::Q4_K.bytes_for(100).is_err());
        assert!(GgmlType::F32.bytes_for(u64::MAX).is_err());
    }
}
