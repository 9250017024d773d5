//! Where log lines go: ggml's own messages and the warnings of unmask's libraries reach one sink
//! that a host program may set ([`set_sink`]; the C API's `unmask_log_set`). Without a sink,
//! ggml keeps its default logger (standard error) and warnings go to standard error.
//!
//! The sink receives whole messages: ggml's text as ggml wrote it (usually ending in a newline;
//! a line sent in parts continues at the level of its first part), unmask's warnings as one line
//! ending in a newline.

use llama_cpp_sys_2 as sys;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicI32, Ordering};
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
static LAST_GGML_LEVEL: AtomicI32 = AtomicI32::new(LogLevel::Info as i32);

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

/// Logs a warning of unmask's libraries: to the sink, else to standard error as
/// `warning: <text>`.
pub fn warn(text: &str) {
    emit(LogLevel::Warn, text);
}

/// Logs `text` (one message, without a trailing newline) at `level`.
pub fn emit(level: LogLevel, text: &str) {
    match sink() {
        Some(sink) => sink(level, &format!("{text}\n")),
        None if level >= LogLevel::Warn => {
            let label = if level == LogLevel::Error {
                "error"
            } else {
                "warning"
            };
            eprintln!("{label}: {text}");
        }
        None => {}
    }
}

/// ggml's log callback while a sink is set.
unsafe extern "C" fn from_ggml(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: ggml passes a NUL-terminated message that lives for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let level = match level {
        sys::GGML_LOG_LEVEL_CONT => LAST_GGML_LEVEL.load(Ordering::Relaxed),
        other => {
            let level = (other as i32).clamp(LogLevel::Debug as i32, LogLevel::Error as i32);
            LAST_GGML_LEVEL.store(level, Ordering::Relaxed);
            level
        }
    };
    let level = match level {
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        _ => LogLevel::Error,
    };
    if let Some(sink) = sink() {
        // A panicking sink must not unwind into ggml's C code.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(level, &text)));
    }
}
