//! Reading C arguments (text with a length, id arrays) and filling caller buffers the llama.h
//! way: the count written, or minus the size needed when the buffer is too small.

use crate::error::{FfiError, FfiResult};
use std::ffi::{c_char, CStr};

/// `text[0..len)`, or up to its NUL when `len < 0`, as UTF-8.
///
/// # Safety
/// `text` is NULL, or valid for reads of `len` bytes (`len >= 0`) or up to a NUL (`len < 0`),
/// and unchanged during the call.
pub unsafe fn text<'a>(text: *const c_char, len: i32, what: &'static str) -> FfiResult<&'a str> {
    if text.is_null() {
        return Err(FfiError::Null(what));
    }
    let bytes = if len < 0 {
        // SAFETY: non-NULL and NUL-terminated by the caller's contract.
        unsafe { CStr::from_ptr(text) }.to_bytes()
    } else {
        // SAFETY: non-NULL and valid for `len` bytes by the caller's contract.
        unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len as usize) }
    };
    std::str::from_utf8(bytes).map_err(|_| FfiError::Utf8(what))
}

/// `ids[0..n)` checked against the vocabulary.
///
/// # Safety
/// `ids` is NULL, or valid for reads of `n` values.
pub unsafe fn token_ids(
    ids: *const i32,
    n: i32,
    n_vocab: usize,
    what: &'static str,
) -> FfiResult<Vec<u32>> {
    if n < 0 {
        return Err(FfiError::InvalidArgument(format!(
            "{what}: negative count {n}"
        )));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    if ids.is_null() {
        return Err(FfiError::Null(what));
    }
    // SAFETY: non-NULL and valid for `n` values by the caller's contract.
    let ids = unsafe { std::slice::from_raw_parts(ids, n as usize) };
    ids.iter()
        .map(|&id| match u32::try_from(id) {
            Ok(t) if (t as usize) < n_vocab => Ok(t),
            _ => Err(FfiError::BadToken(i64::from(id), n_vocab)),
        })
        .collect()
}

/// A count as `int32_t`, or an error when it does not fit.
pub fn count(n: usize) -> FfiResult<i32> {
    i32::try_from(n).map_err(|_| FfiError::InvalidArgument(format!("{n} does not fit in int32_t")))
}

/// A value for a C getter or result field: saturates instead of failing.
pub fn saturate(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Copies `ids` to `buf` (capacity `cap`): returns the count, or minus the count needed.
///
/// # Safety
/// `buf` is NULL, or valid for writes of `cap` values.
pub unsafe fn write_ids(ids: &[u32], buf: *mut i32, cap: i32) -> FfiResult<i32> {
    let needed = count(ids.len())?;
    if cap < 0 {
        return Err(FfiError::InvalidArgument(format!(
            "negative buffer size {cap}"
        )));
    }
    if cap > 0 && buf.is_null() {
        return Err(FfiError::Null("tokens"));
    }
    if needed > cap {
        return Ok(-needed);
    }
    if needed > 0 {
        // SAFETY: buf is non-NULL (needed > 0 implies cap > 0) and valid for cap >= needed
        // values; ids are u32 < 2^31 (vocabularies are checked at load), the same bits as i32.
        unsafe { std::ptr::copy_nonoverlapping(ids.as_ptr().cast::<i32>(), buf, ids.len()) };
    }
    Ok(needed)
}

/// Copies `bytes` and a NUL to `buf` (capacity `cap`, NUL included): returns the byte count
/// without the NUL, or minus the capacity needed (NUL included).
///
/// # Safety
/// `buf` is NULL, or valid for writes of `cap` bytes.
pub unsafe fn write_text(bytes: &[u8], buf: *mut c_char, cap: i32) -> FfiResult<i32> {
    let len = count(bytes.len())?;
    let needed = count(bytes.len() + 1)?;
    if cap < 0 {
        return Err(FfiError::InvalidArgument(format!(
            "negative buffer size {cap}"
        )));
    }
    if cap > 0 && buf.is_null() {
        return Err(FfiError::Null("buf"));
    }
    if needed > cap {
        return Ok(-needed);
    }
    // SAFETY: buf is non-NULL (cap >= needed >= 1) and valid for cap >= len + 1 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
        *buf.add(bytes.len()) = 0;
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_too_small_report_the_size_needed() {
        let mut ids = [0i32; 4];
        // SAFETY: buffers are valid for the capacities given.
        unsafe {
            assert_eq!(write_ids(&[1, 2, 3], std::ptr::null_mut(), 0).unwrap(), -3);
            assert_eq!(write_ids(&[1, 2, 3], ids.as_mut_ptr(), 2).unwrap(), -3);
            assert_eq!(write_ids(&[1, 2, 3], ids.as_mut_ptr(), 4).unwrap(), 3);
            assert!(write_ids(&[1], std::ptr::null_mut(), 1).is_err());
            assert!(write_ids(&[1], ids.as_mut_ptr(), -1).is_err());
            let mut buf = [1 as c_char; 4];
            assert_eq!(write_text(b"abc", buf.as_mut_ptr(), 3).unwrap(), -4);
            assert_eq!(write_text(b"abc", buf.as_mut_ptr(), 4).unwrap(), 3);
            assert_eq!(buf[3], 0);
            assert_eq!(write_text(b"", std::ptr::null_mut(), 0).unwrap(), -1);
        }
        assert_eq!(&ids[..3], &[1, 2, 3]);
    }

    #[test]
    fn text_arguments_are_checked() {
        // SAFETY: pointers to live buffers of the lengths given.
        unsafe {
            assert_eq!(text(c"héllo".as_ptr(), -1, "t").unwrap(), "héllo");
            assert_eq!(text(b"hello".as_ptr().cast(), 2, "t").unwrap(), "he");
            assert!(matches!(
                text(b"\xff\xfe".as_ptr().cast(), 2, "t"),
                Err(FfiError::Utf8("t"))
            ));
            assert!(matches!(
                text(std::ptr::null(), 0, "t"),
                Err(FfiError::Null("t"))
            ));
            assert!(matches!(
                token_ids([1, -2].as_ptr(), 2, 10, "p"),
                Err(FfiError::BadToken(-2, 10))
            ));
            assert!(matches!(
                token_ids([10].as_ptr(), 1, 10, "p"),
                Err(FfiError::BadToken(10, 10))
            ));
            assert_eq!(token_ids([9].as_ptr(), 1, 10, "p").unwrap(), vec![9]);
        }
    }
}
