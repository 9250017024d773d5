//! Models: loading a GGUF file into a shared, immutable handle, and the information getters.

use crate::error::{entry, status_entry, FfiError, FfiResult};
use crate::handles::Table;
use crate::status::{self, Status};
use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use tokenizers::Tokenizer;
use unmask_kernels::device::DeviceRequest;
use unmask_runtime::Model;

/// `unmask_model_t`: never dereferenced, only looked up in [`MODELS`].
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct unmask_model {
    _opaque: [u8; 0],
}

/// A loaded model and what the getters report.
pub struct ModelEntry {
    pub model: Arc<Model>,
    pub n_params: i64,
    /// Where the model runs (`cpu`, `CUDA0 (NVIDIA H200)`), for `unmask_model_device`.
    pub device: CString,
    /// The tokenizer kept between calls (see [`ModelEntry::tokenizer`]).
    tokenizer: Mutex<TokenizerHold>,
}

/// Whether the tokenizer is kept for the model's lifetime, and the kept one.
struct TokenizerHold {
    keep: bool,
    held: Option<Arc<Tokenizer>>,
}

impl ModelEntry {
    /// The model's tokenizer. Built on first use; with `keep` (the default) it is then held
    /// until the model is freed, so later calls cost microseconds instead of a rebuild (about
    /// 0.3 s for a 151k-token vocabulary). Everything else that asks the model for its tokenizer
    /// (`unmask_generate_text`, ...) gets the same one while it is held.
    pub fn tokenizer(&self) -> FfiResult<Arc<Tokenizer>> {
        let mut hold = self
            .tokenizer
            .lock()
            .map_err(|_| FfiError::Internal("tokenizer lock poisoned".into()))?;
        if let Some(t) = &hold.held {
            return Ok(t.clone());
        }
        let t = self.model.tokenizer()?;
        if hold.keep {
            hold.held = Some(t.clone());
        }
        Ok(t)
    }

    /// `unmask_model_keep_tokenizer`: keeps the tokenizer from now on, or drops the kept one
    /// (it is then built for each call and freed after it).
    pub fn keep_tokenizer(&self, keep: bool) -> FfiResult<()> {
        let mut hold = self
            .tokenizer
            .lock()
            .map_err(|_| FfiError::Internal("tokenizer lock poisoned".into()))?;
        hold.keep = keep;
        if !keep {
            hold.held = None;
        }
        Ok(())
    }
}

/// The live model handles.
pub static MODELS: LazyLock<Table<ModelEntry>> = LazyLock::new(|| Table::new("model"));

/// The C string of the only architecture a model can have (loading checks it).
const ARCHITECTURE: &CStr = c"dream";

#[cfg(unix)]
fn path_from(path: &CStr) -> FfiResult<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(path.to_bytes())))
}

#[cfg(not(unix))]
fn path_from(path: &CStr) -> FfiResult<PathBuf> {
    Ok(PathBuf::from(
        path.to_str().map_err(|_| FfiError::Utf8("path"))?,
    ))
}

fn load(path: &CStr, device: &DeviceRequest) -> FfiResult<ModelEntry> {
    let placement = unmask_kernels::device::resolve(device)
        .map_err(|e| FfiError::Runtime(unmask_runtime::Error::Kernels(e)))?;
    let description = CString::new(placement.describe()).unwrap_or_default();
    let model = Model::load_on(&path_from(path)?, &placement)?;
    if i32::try_from(model.n_vocab).is_err() {
        return Err(FfiError::Runtime(unmask_runtime::Error::Model(format!(
            "a vocabulary of {} ids does not fit the C API's int32_t ids",
            model.n_vocab
        ))));
    }
    // The settings a file stores out of range are skipped by unmask_model_default_params; say
    // so once, here, as `unmask generate` does on every run.
    for ignored in &unmask_runtime::settings::FileSettings::of(&model).ignored {
        unmask_kernels::log::warn(&ignored.to_string());
    }
    let n_params = model
        .weights
        .file()
        .tensors()
        .iter()
        .map(|t| t.n_elements())
        .sum::<u64>();
    Ok(ModelEntry {
        model: Arc::new(model),
        n_params: i64::try_from(n_params).unwrap_or(i64::MAX),
        device: description,
        tokenizer: Mutex::new(TokenizerHold {
            keep: true,
            held: None,
        }),
    })
}

/// `unmask_model_load`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn unmask_model_load(
    path: *const c_char,
    out: *mut *mut unmask_model,
) -> Status {
    // SAFETY: the caller's contract is the one `unmask_model_load_on` needs; the device name is
    // a static NUL-terminated string.
    unsafe { unmask_model_load_on(path, c"cpu".as_ptr(), out) }
}

/// `unmask_model_load_on`: as `unmask_model_load`, on the device named by `device` (NULL:
/// "auto").
///
/// # Safety
/// `path` and `device` are NULL or NUL-terminated strings; `out` is NULL or valid for one
/// pointer write.
#[no_mangle]
pub unsafe extern "C" fn unmask_model_load_on(
    path: *const c_char,
    device: *const c_char,
    out: *mut *mut unmask_model,
) -> Status {
    status_entry(|| {
        if out.is_null() {
            return Err(FfiError::Null("out"));
        }
        // SAFETY: out is non-NULL and valid for a write by the caller's contract.
        unsafe { *out = std::ptr::null_mut() };
        if path.is_null() {
            return Err(FfiError::Null("path"));
        }
        let request = if device.is_null() {
            DeviceRequest::Auto
        } else {
            // SAFETY: non-NULL and NUL-terminated by the caller's contract.
            let text = unsafe { CStr::from_ptr(device) }
                .to_str()
                .map_err(|_| FfiError::Utf8("device"))?;
            text.parse::<DeviceRequest>()
                .map_err(|e| FfiError::InvalidArgument(e.to_string()))?
        };
        // SAFETY: non-NULL and NUL-terminated by the caller's contract.
        let path = unsafe { CStr::from_ptr(path) };
        let handle = MODELS.insert(Arc::new(load(path, &request)?));
        // SAFETY: as above.
        unsafe { *out = handle.cast_mut().cast() };
        Ok(status::OK)
    })
}

/// `unmask_model_device`: where the model runs; NULL for an invalid model.
#[no_mangle]
pub extern "C" fn unmask_model_device(model: *const unmask_model) -> *const c_char {
    // The string lives in the model entry; the returned pointer stays valid while the handle
    // is live (documented in the header).
    getter(model, std::ptr::null(), |m| m.device.as_ptr())
}

/// `unmask_model_keep_tokenizer`.
#[no_mangle]
pub extern "C" fn unmask_model_keep_tokenizer(model: *const unmask_model, keep: i32) -> Status {
    status_entry(|| {
        MODELS.get(model)?.keep_tokenizer(keep != 0)?;
        Ok(status::OK)
    })
}

/// `unmask_model_free`: NULL and freed handles are ignored.
#[no_mangle]
pub extern "C" fn unmask_model_free(model: *mut unmask_model) {
    entry(
        |_| (),
        || {
            MODELS.remove(model);
            Ok(())
        },
    )
}

/// Runs a getter on a live model; `fallback` (and a recorded error) otherwise.
fn getter<T>(model: *const unmask_model, fallback: T, f: impl FnOnce(&ModelEntry) -> T) -> T {
    entry(
        |_| fallback,
        || {
            let m = MODELS.get(model)?;
            Ok(f(&m))
        },
    )
}

fn id(t: Option<u32>) -> i32 {
    t.and_then(|t| i32::try_from(t).ok()).unwrap_or(-1)
}

/// `unmask_model_architecture`: "dream", or NULL for an invalid model.
#[no_mangle]
pub extern "C" fn unmask_model_architecture(model: *const unmask_model) -> *const c_char {
    getter(model, std::ptr::null(), |_| ARCHITECTURE.as_ptr())
}

/// `unmask_model_n_params`.
#[no_mangle]
pub extern "C" fn unmask_model_n_params(model: *const unmask_model) -> i64 {
    getter(model, -1, |m| m.n_params)
}

/// `unmask_model_n_ctx`.
#[no_mangle]
pub extern "C" fn unmask_model_n_ctx(model: *const unmask_model) -> i32 {
    getter(model, -1, |m| {
        crate::args::saturate(m.model.context_length())
    })
}

/// `unmask_model_n_vocab`.
#[no_mangle]
pub extern "C" fn unmask_model_n_vocab(model: *const unmask_model) -> i32 {
    getter(model, -1, |m| crate::args::saturate(m.model.n_vocab))
}

/// `unmask_model_n_layers`.
#[no_mangle]
pub extern "C" fn unmask_model_n_layers(model: *const unmask_model) -> i32 {
    getter(model, -1, |m| crate::args::saturate(m.model.n_layers()))
}

/// `unmask_model_mask_id`.
#[no_mangle]
pub extern "C" fn unmask_model_mask_id(model: *const unmask_model) -> i32 {
    getter(model, -1, |m| id(Some(m.model.special.mask)))
}

/// `unmask_model_eos_id`.
#[no_mangle]
pub extern "C" fn unmask_model_eos_id(model: *const unmask_model) -> i32 {
    getter(model, -1, |m| id(m.model.special.eos))
}

/// `unmask_model_has_chat`.
#[no_mangle]
pub extern "C" fn unmask_model_has_chat(model: *const unmask_model) -> i32 {
    getter(model, -1, |m| i32::from(m.model.supports_chat()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use unmask_quantize::convert::{convert_synth, ConvertOptions};
    use unmask_quantize::synth::{Preset, SynthModel};

    #[test]
    fn the_tokenizer_is_kept_by_default_and_rebuilt_per_call_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let options = ConvertOptions {
            target: "q8_0".parse().unwrap(),
            overwrite: true,
            progress: false,
            allow_requantize: false,
            throttle: Default::default(),
        };
        convert_synth(&SynthModel::new(Preset::Tiny, 1).unwrap(), &path, &options).unwrap();
        let c_path = CString::new(path.to_str().unwrap()).unwrap();
        let mut handle = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path and a valid out pointer.
        let status = unsafe { unmask_model_load(c_path.as_ptr(), &mut handle) };
        assert_eq!(status, status::OK);
        let entry = MODELS.get(handle).unwrap();
        drop(entry.tokenizer().unwrap());
        let kept = entry.tokenizer().unwrap();
        // Ours and the model entry's: it outlives each call.
        assert_eq!(
            Arc::strong_count(&kept),
            2,
            "the tokenizer is kept between calls"
        );
        // What the runtime asks for (generate_text, ModelSpec::encode) is the kept one too.
        assert!(Arc::ptr_eq(&kept, &entry.model.tokenizer().unwrap()));
        drop(kept);
        assert_eq!(unmask_model_keep_tokenizer(handle, 0), status::OK);
        let own = entry.tokenizer().unwrap();
        assert_eq!(Arc::strong_count(&own), 1, "built for this call only");
        drop(own);
        unmask_model_free(handle);
    }

    #[test]
    fn the_architecture_string_is_the_one_loading_checks() {
        assert_eq!(super::ARCHITECTURE.to_str(), Ok(unmask_dream::layout::ARCH));
    }
}
