//! `unmask_log_set`: the host program's log callback, which receives ggml's messages and the
//! library's warnings (a thread count above the machine's CPUs, a generation setting of a model
//! file that is out of range and skipped). Without one they go to standard error.

use crate::error::{c_message, entry};
use std::ffi::{c_char, c_void};
use std::sync::Arc;
use unmask_kernels::log::{self, LogLevel};

/// `unmask_log_callback` (nullable).
#[allow(non_camel_case_types)]
pub type unmask_log_callback = Option<unsafe extern "C" fn(i32, *const c_char, *mut c_void)>;

/// The C callback and its user data.
struct CSink {
    callback: unsafe extern "C" fn(i32, *const c_char, *mut c_void),
    user_data: *mut c_void,
}

// SAFETY: the header requires the callback to be callable from any thread with `user_data`
// (ggml logs from its worker threads); the pointer is only passed back to it, never read here.
unsafe impl Send for CSink {}
// SAFETY: as above; the callback and the pointer are never modified after construction.
unsafe impl Sync for CSink {}

impl CSink {
    fn send(&self, level: LogLevel, text: &str) {
        let text = c_message(text);
        // SAFETY: the caller of unmask_log_set vouched for the function and its user data; the
        // text is NUL-terminated and lives until the callback returns (its documented lifetime).
        unsafe { (self.callback)(level as i32, text.as_ptr(), self.user_data) };
    }
}

/// `unmask_log_set`: NULL restores the default (standard error).
#[no_mangle]
pub extern "C" fn unmask_log_set(callback: unmask_log_callback, user_data: *mut c_void) {
    entry(
        |_| (),
        || {
            let sink = callback.map(|callback| {
                let sink = CSink {
                    callback,
                    user_data,
                };
                Arc::new(move |level: LogLevel, text: &str| sink.send(level, text)) as log::LogSink
            });
            log::set_sink(sink);
            Ok(())
        },
    )
}
