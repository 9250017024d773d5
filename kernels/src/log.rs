//! Where log lines go: ggml's own messages and the warnings of unmask's libraries reach one sink
//! that a host program may set ([`set_sink`]; the C API's `unmask_log_set`). Without a sink,
//! ggml keeps its default logger (standard error) and warnings go to standard error.
//!
//! The sink receives whole messages: ggml's text as ggml wrote it (usually ending in a newline;
//! a line sent in parts continues at the level of its first part), unmask's warnings as one line
//! ending in a newline.

use llama_cpp_sys_2 as sys;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// How much a log line matters (ggml's levels, without its "continued" pseudo-level).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum LogLevel {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// A receiver of log lines. It may be called from any thread, ggml's workers included, and
/// must not block for long.
pub type LogSink = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

static SINK: RwLock<Option<LogSink>> = RwLock::new(None);
/// The level of ggml's last message, for the parts of a line ggml sends as "continued".
static LAST_GGML_LEVEL: AtomicU32 = AtomicU32::new(sys::GGML_LOG_LEVEL_INFO);

/// Sends every later log line to `sink`, or, with `None`, back to the defaults.
pub fn set_sink(sink: Option<LogSink>) {
    let routed = sink.is_some();
    *SINK.write().unwrap_or_else(PoisonError::into_inner) = sink;
    // SAFETY: ggml_log_set stores a function pointer and a user pointer in a global; the
    // function is a plain `extern "C"` function that never unwinds, the user pointer is unused
    // (NULL), and NULL restores ggml's default logger.
    unsafe {
        if routed {
            sys::ggml_log_set(Some(from_ggml), std::ptr::null_mut());
        } else {
            sys::ggml_log_set(None, std::ptr::null_mut());
        }
    }
}

/// The sink now set, if any (cloned, so that it is called without holding the lock: a sink may
/// itself set another).
fn sink() -> Option<LogSink> {
    SINK.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Logs a warning of unmask's libraries (one message, without a trailing newline): to the sink,
/// else to standard error as `warning: <text>`.
pub fn warn(text: &str) {
    match sink() {
        Some(sink) => sink(LogLevel::Warn, &format!("{text}\n")),
        None => eprintln!("warning: {text}"),
    }
}

impl LogLevel {
    /// The level of a ggml message; ggml's "continued" pseudo-level (and any unknown one) is
    /// `None`, to take the level of the line's first part.
    fn from_ggml(level: sys::ggml_log_level) -> Option<Self> {
        match level {
            sys::GGML_LOG_LEVEL_DEBUG => Some(LogLevel::Debug),
            sys::GGML_LOG_LEVEL_INFO => Some(LogLevel::Info),
            sys::GGML_LOG_LEVEL_WARN => Some(LogLevel::Warn),
            sys::GGML_LOG_LEVEL_ERROR => Some(LogLevel::Error),
            _ => None,
        }
    }
}

/// ggml's log callback while a sink is set.
unsafe extern "C" fn from_ggml(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: ggml passes a NUL-terminated message that lives for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let level = match LogLevel::from_ggml(level) {
        Some(known) => {
            LAST_GGML_LEVEL.store(level, Ordering::Relaxed);
            known
        }
        None => {
            LogLevel::from_ggml(LAST_GGML_LEVEL.load(Ordering::Relaxed)).unwrap_or(LogLevel::Info)
        }
    };
    if let Some(sink) = sink() {
        // A panicking sink must not unwind into ggml's C code.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(level, &text)));
    }
}
