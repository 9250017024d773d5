//! unmask-ffi: the C API of unmask, built as `libunmask` (shared and static) with the hand-kept
//! header `include/unmask.h`, which documents every function, its errors and its thread safety.
//!
//! Design (llama.h's conventions): opaque handles for a model (immutable mapped weights, shared
//! across threads) and contexts (one generation at a time each); parameter structs by value with
//! `*_default_params()`; status codes from every fallible call and a per-thread (or per-context)
//! last-error message. Handles are addresses looked up in tables of live objects
//! ([`handles`]), never dereferenced, so NULL, freed and foreign handles give status codes and
//! double frees are harmless. Every `extern "C"` function runs its body under `catch_unwind`
//! ([`error::entry`]): no panic crosses the boundary. The `unsafe` code is confined to reading
//! and writing the caller's buffers ([`args`]) and calling the step callback.

pub mod args;
pub mod context;
pub mod error;
pub mod generate;
pub mod handles;
pub mod log;
pub mod model;
pub mod params;
pub mod status;
pub mod tokenize;

pub use context::unmask_context;
pub use generate::{unmask_result, unmask_step};
pub use model::unmask_model;
pub use params::{unmask_context_params, unmask_generate_params};
pub use tokenize::unmask_chat_message;

use std::ffi::c_char;

/// Must equal `UNMASK_ABI_VERSION` in unmask.h (and the SONAME in build.rs).
pub const ABI_VERSION: u32 = 2;

/// `unmask_version`: the crate version, e.g. "0.1.0".
#[no_mangle]
pub extern "C" fn unmask_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    error::entry(|_| c"".as_ptr(), || Ok(VERSION.as_ptr().cast()))
}

/// `unmask_abi_version`.
#[no_mangle]
pub extern "C" fn unmask_abi_version() -> u32 {
    error::entry(|_| ABI_VERSION, || Ok(ABI_VERSION))
}

/// `unmask_last_error`: the context's last message, or the thread's for NULL or an invalid
/// context. Never records an error itself (that would replace the message being asked for).
#[no_mangle]
pub extern "C" fn unmask_last_error(ctx: *const unmask_context) -> *const c_char {
    let context = error::catch(|| context::CONTEXTS.get(ctx));
    match context {
        Ok(context) => context.last_error(),
        Err(_) => error::last_message(),
    }
}

/// `unmask_last_status`.
#[no_mangle]
pub extern "C" fn unmask_last_status() -> status::Status {
    error::catch(|| Ok(error::last_status())).unwrap_or(status::ERR_INTERNAL)
}

// Handles are shared between threads: what they hold must allow it.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<model::ModelEntry>();
    shared::<context::ContextEntry>();
};

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    /// `#define NAME VALUE` lines of the header, values parsed as integers.
    fn header_macros() -> HashMap<String, i64> {
        include_str!("../include/unmask.h")
            .lines()
            .filter_map(|l| l.strip_prefix("#define "))
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let name = parts.next()?;
                let value = parts.next()?.trim_matches(|c| c == '(' || c == ')');
                let value = if value == "INT32_MIN" {
                    i64::from(i32::MIN)
                } else {
                    value.parse().ok()?
                };
                Some((name.to_string(), value))
            })
            .collect()
    }

    #[test]
    fn header_constants_equal_the_librarys() {
        use crate::{params as p, status as s};
        let h = header_macros();
        let version: Vec<i64> = env!("CARGO_PKG_VERSION")
            .split('.')
            .map(|v| v.parse().unwrap())
            .collect();
        let expected: [(&str, i64); 30] = [
            ("UNMASK_ABI_VERSION", i64::from(crate::ABI_VERSION)),
            ("UNMASK_VERSION_MAJOR", version[0]),
            ("UNMASK_VERSION_MINOR", version[1]),
            ("UNMASK_VERSION_PATCH", version[2]),
            ("UNMASK_OK", s::OK.into()),
            ("UNMASK_CANCELLED", s::CANCELLED.into()),
            ("UNMASK_ERR_NULL_ARGUMENT", s::ERR_NULL_ARGUMENT.into()),
            (
                "UNMASK_ERR_INVALID_ARGUMENT",
                s::ERR_INVALID_ARGUMENT.into(),
            ),
            ("UNMASK_ERR_INVALID_UTF8", s::ERR_INVALID_UTF8.into()),
            ("UNMASK_ERR_INVALID_HANDLE", s::ERR_INVALID_HANDLE.into()),
            ("UNMASK_ERR_BUSY", s::ERR_BUSY.into()),
            ("UNMASK_ERR_IO", s::ERR_IO.into()),
            ("UNMASK_ERR_MODEL", s::ERR_MODEL.into()),
            ("UNMASK_ERR_TOKENIZER", s::ERR_TOKENIZER.into()),
            ("UNMASK_ERR_BAD_TOKEN", s::ERR_BAD_TOKEN.into()),
            (
                "UNMASK_ERR_CONTEXT_OVERFLOW",
                s::ERR_CONTEXT_OVERFLOW.into(),
            ),
            ("UNMASK_ERR_BACKEND", s::ERR_BACKEND.into()),
            ("UNMASK_ERR_INTERNAL", s::ERR_INTERNAL.into()),
            ("UNMASK_ERR_DEVICE", s::ERR_DEVICE.into()),
            ("UNMASK_SIZE_ERROR", s::SIZE_ERROR.into()),
            ("UNMASK_ALG_ORIGIN", p::ALG_ORIGIN.into()),
            ("UNMASK_ALG_MASKGIT_PLUS", p::ALG_MASKGIT_PLUS.into()),
            ("UNMASK_ALG_TOPK_MARGIN", p::ALG_TOPK_MARGIN.into()),
            ("UNMASK_ALG_ENTROPY", p::ALG_ENTROPY.into()),
            ("UNMASK_CACHE_NONE", p::CACHE_NONE.into()),
            ("UNMASK_CACHE_PREFIX", p::CACHE_PREFIX.into()),
            ("UNMASK_CACHE_DUAL", p::CACHE_DUAL.into()),
            // The SONAME build.rs sets is libunmask.so.<ABI - 1>.
            ("UNMASK_ABI_VERSION", 2),
            ("UNMASK_VERSION_MAJOR", 0),
            ("UNMASK_VERSION_MINOR", 1),
        ];
        for (name, value) in expected {
            assert_eq!(h.get(name), Some(&value), "{name}");
        }
        assert!(include_str!("../build.rs").contains("libunmask.so.1"));
        // Every status the library defines has its own description.
        let codes: Vec<i64> = h
            .iter()
            .filter(|(k, _)| {
                k.starts_with("UNMASK_ERR_") || *k == "UNMASK_OK" || *k == "UNMASK_CANCELLED"
            })
            .map(|(_, &v)| v)
            .collect();
        assert_eq!(codes.len(), 15);
        for code in codes {
            assert_ne!(s::describe(code as i32), s::describe(12345), "{code}");
        }
    }
}
