//! The crate's error type, its status code, the per-thread "last error", and the guard that
//! every `extern "C"` entry point runs its body in: no Rust panic crosses the C boundary.

use crate::status::{self, Status};
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Everything a C API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FfiError {
    #[error("argument `{0}` is NULL")]
    Null(&'static str),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("argument `{0}` is not valid UTF-8")]
    Utf8(&'static str),
    #[error("argument `{0}` is not a live handle (freed, or not from this library)")]
    InvalidHandle(&'static str),
    #[error("the context is already inside another call (one call per context at a time)")]
    Busy,
    #[error("token id {0} is outside the vocabulary (0..{1})")]
    BadToken(i64, usize),
    #[error(transparent)]
    Runtime(#[from] unmask_runtime::Error),
    #[error("internal error (a bug in unmask): {0}")]
    Internal(String),
}

impl FfiError {
    /// The `UNMASK_*` code of this error.
    pub fn status(&self) -> Status {
        use unmask_runtime::Error as R;
        match self {
            FfiError::Null(_) => status::ERR_NULL_ARGUMENT,
            FfiError::InvalidArgument(_) => status::ERR_INVALID_ARGUMENT,
            FfiError::Utf8(_) => status::ERR_INVALID_UTF8,
            FfiError::InvalidHandle(_) => status::ERR_INVALID_HANDLE,
            FfiError::Busy => status::ERR_BUSY,
            FfiError::BadToken(..) => status::ERR_BAD_TOKEN,
            FfiError::Internal(_) => status::ERR_INTERNAL,
            FfiError::Runtime(e) => match e {
                R::Model(_) => status::ERR_MODEL,
                // A folder cannot be opened as a file (as before the check named it); another
                // kind of file is a model error.
                R::NotAModelFile { folder: true, .. } => status::ERR_IO,
                R::NotAModelFile { .. } => status::ERR_MODEL,
                R::Params(_) => status::ERR_INVALID_ARGUMENT,
                R::ContextOverflow { .. } => status::ERR_CONTEXT_OVERFLOW,
                R::BadToken(_) => status::ERR_BAD_TOKEN,
                R::Tokenizer(_) => status::ERR_TOKENIZER,
                R::Kernels(k) => kernels_status(k),
                R::Format(q) => match q {
                    unmask_dream::Error::Io { .. } => status::ERR_IO,
                    unmask_dream::Error::Tokenizer(_) => status::ERR_TOKENIZER,
                    unmask_dream::Error::Chat(_) => status::ERR_INVALID_ARGUMENT,
                    unmask_dream::Error::Kernels(k) => kernels_status(k),
                    _ => status::ERR_MODEL,
                },
            },
        }
    }
}

fn kernels_status(e: &unmask_kernels::Error) -> Status {
    use unmask_kernels::Error as K;
    match e {
        K::Io { .. } => status::ERR_IO,
        // Every failure inside ggml's graphs, buffers and backends (the former catch-all
        // `Ggml` error) is a backend error.
        K::Shape { .. }
        | K::LengthMismatch { .. }
        | K::UnknownTensor { .. }
        | K::UnknownHandle { .. }
        | K::NotAllocated { .. }
        | K::AlreadyAllocated { .. }
        | K::GraphFull { .. }
        | K::UnsupportedOp { .. }
        | K::Gradients(_)
        | K::InvalidArgument { .. }
        | K::Alloc { .. }
        | K::Init(_)
        | K::Bind { .. }
        | K::Compute { .. }
        // The denoising loop turns an aborted graph into a cancelled result; anywhere else it
        // would be a backend that stopped.
        | K::Aborted
        | K::Llama(_) => status::ERR_BACKEND,
        K::Device(_) => status::ERR_DEVICE,
        _ => status::ERR_MODEL,
    }
}

pub type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    /// The calling thread's last failure: its status and message (NUL-terminated).
    static LAST: RefCell<(Status, CString)> = RefCell::new((status::OK, CString::default()));
}

/// `message` as a C string; interior NULs (from user-provided bytes) are shown as `\0`.
pub fn c_message(message: &str) -> CString {
    CString::new(message.replace('\0', "\\0")).unwrap_or_default()
}

/// Records `error` as the calling thread's last error.
pub fn record(error: &FfiError) {
    let entry = (error.status(), c_message(&error.to_string()));
    // `try_with`: during thread teardown the slot may be gone; then there is nobody to tell.
    let _ = LAST.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            *last = entry;
        }
    });
}

/// The thread's last message; valid until the thread's next failure.
pub fn last_message() -> *const c_char {
    LAST.try_with(|last| last.borrow().1.as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The thread's last status.
pub fn last_status() -> Status {
    LAST.try_with(|last| last.borrow().0).unwrap_or(status::OK)
}

/// Runs `f`, turning a panic into [`FfiError::Internal`].
pub fn catch<T>(f: impl FnOnce() -> FfiResult<T>) -> FfiResult<T> {
    // AssertUnwindSafe: after a panic nothing half-updated is observed. Shared state is either
    // behind mutexes whose poisoning is handled where they are locked (the handle tables, a
    // context's generator, which is rebuilt), or owned by the closure and dropped.
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        Err(FfiError::Internal(message))
    })
}

/// The body of an entry point: runs `f` under [`catch`]; on failure records the error for
/// `unmask_last_error` and returns `on_error(status)`.
pub fn entry<T>(on_error: impl FnOnce(Status) -> T, f: impl FnOnce() -> FfiResult<T>) -> T {
    match catch(f) {
        Ok(v) => v,
        Err(e) => {
            record(&e);
            on_error(e.status())
        }
    }
}

/// An entry point that returns a status code.
pub fn status_entry(f: impl FnOnce() -> FfiResult<Status>) -> Status {
    entry(|s| s, f)
}

/// An entry point that returns a count, minus a required size, or `UNMASK_SIZE_ERROR`.
pub fn size_entry(f: impl FnOnce() -> FfiResult<i32>) -> i32 {
    entry(|_| status::SIZE_ERROR, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let s = status_entry(|| panic!("boom {}", 7));
        assert_eq!(s, status::ERR_INTERNAL);
        assert_eq!(last_status(), status::ERR_INTERNAL);
        // SAFETY: the thread's message is a live NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(last_message()) }.to_str().unwrap();
        assert!(msg.contains("boom 7"), "{msg}");
        assert_eq!(size_entry(|| panic!("x")), status::SIZE_ERROR);
    }

    #[test]
    fn messages_with_nul_bytes_survive() {
        record(&FfiError::InvalidArgument("a\0b".into()));
        // SAFETY: as above.
        let msg = unsafe { CStr::from_ptr(last_message()) }.to_str().unwrap();
        assert_eq!(msg, "a\\0b");
    }
}
