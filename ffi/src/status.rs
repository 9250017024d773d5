//! Status codes (`UNMASK_OK`, `UNMASK_ERR_*` in unmask.h) and their descriptions.

use std::ffi::c_char;

/// `unmask_status_t`.
pub type Status = i32;

pub const OK: Status = 0;
pub const CANCELLED: Status = 1;
pub const ERR_NULL_ARGUMENT: Status = -1;
pub const ERR_INVALID_ARGUMENT: Status = -2;
pub const ERR_INVALID_UTF8: Status = -3;
pub const ERR_INVALID_HANDLE: Status = -4;
pub const ERR_BUSY: Status = -5;
pub const ERR_IO: Status = -6;
pub const ERR_MODEL: Status = -7;
pub const ERR_TOKENIZER: Status = -8;
pub const ERR_BAD_TOKEN: Status = -9;
pub const ERR_CONTEXT_OVERFLOW: Status = -10;
pub const ERR_BACKEND: Status = -11;
pub const ERR_INTERNAL: Status = -12;
pub const ERR_DEVICE: Status = -13;

/// What the buffer-filling functions return on failures other than "buffer too small".
pub const SIZE_ERROR: i32 = i32::MIN;

/// The description of `status`, NUL-terminated, for C.
pub fn describe(status: Status) -> &'static [u8] {
    match status {
        OK => b"success\0",
        CANCELLED => b"cancelled by the step callback\0",
        ERR_NULL_ARGUMENT => b"a required pointer argument is NULL\0",
        ERR_INVALID_ARGUMENT => b"invalid argument\0",
        ERR_INVALID_UTF8 => b"text is not valid UTF-8\0",
        ERR_INVALID_HANDLE => b"not a live handle (freed, or not from this library)\0",
        ERR_BUSY => b"the context is already inside another call\0",
        ERR_IO => b"cannot read the file\0",
        ERR_MODEL => b"not a valid Dream GGUF model\0",
        ERR_TOKENIZER => b"tokenizer error\0",
        ERR_BAD_TOKEN => b"token id outside the vocabulary\0",
        ERR_CONTEXT_OVERFLOW => b"prompt plus new tokens exceed the model's context\0",
        ERR_BACKEND => b"GGML backend error\0",
        ERR_INTERNAL => b"internal error (a bug in unmask)\0",
        ERR_DEVICE => b"the requested device is not available\0",
        _ => b"unknown status\0",
    }
}

/// `unmask_status_string`: a static description; never NULL.
#[no_mangle]
pub extern "C" fn unmask_status_string(status: Status) -> *const c_char {
    // Cannot panic: a match over constants returning static data.
    describe(status).as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_description_is_nul_terminated_once() {
        for s in -20..5 {
            let d = describe(s);
            assert_eq!(d.last(), Some(&0));
            assert_eq!(d.iter().filter(|&&b| b == 0).count(), 1);
        }
    }
}
