//! A probe of libllama (the llama.cpp inside `llama-cpp-sys-2`): loads a GGUF the way llama.cpp
//! would and reports what it understood. Tests use it to prove that our files interchange.

use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::sync::{Mutex, Once};

/// What llama.cpp reports after loading a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LlamaModelInfo {
    pub architecture: String,
    pub n_params: u64,
    pub n_vocab: i32,
    pub n_ctx_train: i32,
    pub n_layer: i32,
    pub n_embd: i32,
}

static INIT: Once = Once::new();
/// llama.cpp's log lines, kept so that a failed load can say why (llama.cpp returns only NULL).
static LOG: Mutex<String> = Mutex::new(String::new());

unsafe extern "C" fn capture_log(
    _level: sys::ggml_log_level,
    text: *const c_char,
    _user: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated message that outlives this call.
    let line = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if let Ok(mut log) = LOG.lock() {
        if log.len() > 64 * 1024 {
            log.clear();
        }
        log.push_str(&line);
    }
}

fn init() {
    INIT.call_once(|| {
        // SAFETY: one-time global initialisation; the callback is a plain function that never
        // unwinds and touches only a mutex-protected string.
        unsafe {
            sys::llama_log_set(Some(capture_log), std::ptr::null_mut());
            sys::llama_backend_init();
        }
    });
}

fn read_meta(model: *const sys::llama_model, key: &str) -> Option<String> {
    let key = CString::new(key).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: `model` is live, `key` NUL-terminated, and `buf` has the size we pass.
    let n = unsafe {
        sys::llama_model_meta_val_str(model, key.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    if n < 0 {
        return None;
    }
    buf.truncate((n as usize).min(buf.len() - 1));
    String::from_utf8(buf).ok()
}

/// Loads `path` with llama.cpp on the CPU (weights mmapped, nothing offloaded) and reports it.
pub fn probe_model(path: &Path) -> Result<LlamaModelInfo> {
    init();
    let c_path = CString::new(path.as_os_str().to_string_lossy().as_bytes())
        .map_err(|_| Error::Llama("path contains a NUL byte".into()))?;
    if let Ok(mut log) = LOG.lock() {
        log.clear();
    }
    // SAFETY: default parameters from llama.cpp itself; only plain fields are changed.
    let mut params = unsafe { sys::llama_model_default_params() };
    params.n_gpu_layers = 0;
    // SAFETY: valid path and parameters; llama.cpp catches its own exceptions and returns NULL.
    let model = unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), params) };
    if model.is_null() {
        let log = LOG.lock().map(|l| l.clone()).unwrap_or_default();
        let reason: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("error") || l.contains("failed"))
            .collect();
        return Err(Error::Llama(format!(
            "llama_model_load_from_file failed: {}",
            reason.join(" | ")
        )));
    }
    // SAFETY: `model` is a live model until freed below; the vocab pointer belongs to it.
    let info = unsafe {
        LlamaModelInfo {
            architecture: read_meta(model, "general.architecture").unwrap_or_default(),
            n_params: sys::llama_model_n_params(model),
            n_vocab: sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(model)),
            n_ctx_train: sys::llama_model_n_ctx_train(model),
            n_layer: sys::llama_model_n_layer(model),
            n_embd: sys::llama_model_n_embd(model),
        }
    };
    // SAFETY: freed exactly once.
    unsafe { sys::llama_model_free(model) };
    Ok(info)
}
