//! A probe of libllama (the llama.cpp inside `llama-cpp-sys-2`): loads a GGUF the way llama.cpp
//! would and reports what it understood, and runs its forward pass over a whole canvas the way
//! llama.cpp's diffusion example does. Tests and benchmarks use it as an independent implementation.

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

/// A libllama model and context that evaluates whole canvases (non-causal models need the whole
/// sequence in one micro-batch), returning logits for every position, as llama.cpp's diffusion
/// example configures it (default flash-attention setting, logits requested for all tokens).
pub struct LlamaForward {
    model: std::ptr::NonNull<sys::llama_model>,
    ctx: std::ptr::NonNull<sys::llama_context>,
    batch: sys::llama_batch,
    capacity: usize,
    n_vocab: usize,
}

impl LlamaForward {
    /// Loads `path` on the CPU for canvases of up to `max_tokens`, with `threads` threads.
    pub fn new(path: &Path, max_tokens: usize, threads: usize) -> Result<Self> {
        Self::with_gpu(path, max_tokens, threads, false)
    }

    /// As [`new`](Self::new); with `gpu`, every layer is offloaded to the GPU devices in ggml's
    /// registry (a loaded CUDA backend, see [`crate::device`]), as `-ngl 99` does.
    pub fn with_gpu(path: &Path, max_tokens: usize, threads: usize, gpu: bool) -> Result<Self> {
        init();
        let c_path = CString::new(path.as_os_str().to_string_lossy().as_bytes())
            .map_err(|_| Error::Llama("path contains a NUL byte".into()))?;
        let max_tokens = max_tokens.clamp(1, i32::MAX as usize);
        // SAFETY: default parameters from llama.cpp; only plain fields are changed.
        let mut mparams = unsafe { sys::llama_model_default_params() };
        mparams.n_gpu_layers = if gpu { 999 } else { 0 };
        // SAFETY: valid path and parameters; NULL is handled.
        let model = std::ptr::NonNull::new(unsafe {
            sys::llama_model_load_from_file(c_path.as_ptr(), mparams)
        })
        .ok_or_else(|| Error::Llama(format!("cannot load {}", path.display())))?;
        // SAFETY: as above.
        let mut cparams = unsafe { sys::llama_context_default_params() };
        cparams.n_ctx = max_tokens as u32;
        cparams.n_batch = max_tokens as u32;
        cparams.n_ubatch = max_tokens as u32;
        cparams.n_threads = threads as i32;
        cparams.n_threads_batch = threads as i32;
        cparams.no_perf = true;
        // SAFETY: `model` is live; NULL is handled (the model is freed then).
        let ctx = match std::ptr::NonNull::new(unsafe {
            sys::llama_init_from_model(model.as_ptr(), cparams)
        }) {
            Some(ctx) => ctx,
            None => {
                // SAFETY: freeing the model we loaded.
                unsafe { sys::llama_model_free(model.as_ptr()) };
                return Err(Error::Llama("cannot create a llama context".into()));
            }
        };
        // SAFETY: the vocab belongs to the live model; the batch is freed in Drop.
        let (n_vocab, batch) = unsafe {
            (
                sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(model.as_ptr())).max(0)
                    as usize,
                sys::llama_batch_init(max_tokens as i32, 0, 1),
            )
        };
        Ok(LlamaForward {
            model,
            ctx,
            batch,
            capacity: max_tokens,
            n_vocab,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Runs the forward pass over `tokens` (positions 0..n) and returns the logits of every
    /// position, row-major `[n][n_vocab]`, borrowed from llama.cpp's output buffer.
    pub fn logits(&mut self, tokens: &[i32]) -> Result<&[f32]> {
        if tokens.is_empty() || tokens.len() > self.capacity {
            return Err(Error::Llama(format!(
                "{} tokens for a context of {}",
                tokens.len(),
                self.capacity
            )));
        }
        if let Some(&bad) = tokens
            .iter()
            .find(|&&t| t < 0 || t as usize >= self.n_vocab)
        {
            return Err(Error::Llama(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        let n = tokens.len();
        // SAFETY: the batch was created for `capacity` >= n tokens with one sequence id each.
        unsafe {
            self.batch.n_tokens = n as i32;
            for (i, &t) in tokens.iter().enumerate() {
                *self.batch.token.add(i) = t;
                *self.batch.pos.add(i) = i as i32;
                *self.batch.n_seq_id.add(i) = 1;
                *(*self.batch.seq_id.add(i)) = 0;
                *self.batch.logits.add(i) = 1;
            }
        }
        // SAFETY: context and batch are live and consistent.
        let status = unsafe { sys::llama_decode(self.ctx.as_ptr(), self.batch) };
        if status != 0 {
            return Err(Error::Llama(format!(
                "llama_decode failed with status {status}"
            )));
        }
        // SAFETY: with logits requested for all n tokens, llama.cpp's buffer holds n * n_vocab
        // floats that stay valid until the next decode (which needs `&mut self`).
        unsafe {
            let ptr = sys::llama_get_logits(self.ctx.as_ptr());
            if ptr.is_null() {
                return Err(Error::Llama("no logits".into()));
            }
            Ok(std::slice::from_raw_parts(ptr, n * self.n_vocab))
        }
    }
}

impl Drop for LlamaForward {
    fn drop(&mut self) {
        // SAFETY: each handle is owned and freed exactly once, context before model.
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_free(self.ctx.as_ptr());
            sys::llama_model_free(self.model.as_ptr());
        }
    }
}
