//! Contexts: per-thread generation state (CPU backend, worker threads, graph buffers) on a
//! shared model, with the last error of calls on the context.

use crate::error::{c_message, entry, status_entry, FfiError, FfiResult};
use crate::handles::Table;
use crate::model::{unmask_model, ModelEntry, MODELS};
use crate::params::unmask_context_params;
use crate::status::{self, Status};
use std::ffi::{c_char, CString};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, TryLockError};
use unmask_runtime::{Canceller, Generator};

/// `unmask_context_t`: never dereferenced, only looked up in [`CONTEXTS`].
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct unmask_context {
    _opaque: [u8; 0],
}

/// The generator and its thread count.
pub struct ContextState {
    generator: Option<Generator>,
    /// Threads of `generator`.
    threads: usize,
    /// Threads from the context's parameters.
    default_threads: usize,
}

impl ContextState {
    /// The generator with `threads` workers (`None`: the context's), rebuilt when the count
    /// changes or after an internal error dropped it.
    pub fn generator(
        &mut self,
        model: &ModelEntry,
        threads: Option<usize>,
    ) -> FfiResult<&mut Generator> {
        let want = threads.unwrap_or(self.default_threads);
        if self.generator.is_none() || self.threads != want {
            self.generator = None; // free the old workers and buffers first
            self.generator = Some(Generator::new(model.model.clone(), want)?);
            self.threads = want;
        }
        self.generator
            .as_mut()
            .ok_or_else(|| FfiError::Internal("generator missing".into()))
    }
}

/// A context: its model, its state (one call at a time) and its last error.
pub struct ContextEntry {
    pub model: Arc<ModelEntry>,
    state: Mutex<ContextState>,
    last_error: Mutex<CString>,
    /// The canceller of the context's generator, outside `state` because a generation holds
    /// `state` for as long as it runs.
    canceller: Mutex<Canceller>,
}

impl ContextEntry {
    /// The state, for one call: refused while another call holds it (never blocks). After a
    /// panic inside a call the generator is dropped, to be rebuilt from scratch.
    pub fn lock(&self) -> FfiResult<MutexGuard<'_, ContextState>> {
        match self.state.try_lock() {
            Ok(state) => Ok(state),
            Err(TryLockError::WouldBlock) => Err(FfiError::Busy),
            Err(TryLockError::Poisoned(poisoned)) => {
                let mut state = poisoned.into_inner();
                state.generator = None;
                self.state.clear_poison();
                Ok(state)
            }
        }
    }

    /// Makes `canceller` (of the generator about to run) the one cancels go to.
    pub fn set_canceller(&self, canceller: Canceller) {
        *self
            .canceller
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = canceller;
    }

    /// Stops the running generation, if any (see [`Canceller::cancel`]).
    pub fn cancel(&self) {
        self.canceller
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cancel();
    }

    /// Keeps `error` as this context's last error.
    pub fn record(&self, error: &FfiError) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = c_message(&error.to_string());
    }

    /// The last error's message; valid until the next failure on this context or its release.
    pub fn last_error(&self) -> *const c_char {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ptr()
    }
}

/// The live context handles.
pub static CONTEXTS: LazyLock<Table<ContextEntry>> = LazyLock::new(|| Table::new("ctx"));

/// `unmask_context_new`.
///
/// # Safety
/// `out` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn unmask_context_new(
    model: *const unmask_model,
    params: unmask_context_params,
    out: *mut *mut unmask_context,
) -> Status {
    status_entry(|| {
        if out.is_null() {
            return Err(FfiError::Null("out"));
        }
        // SAFETY: out is non-NULL and valid for a write by the caller's contract.
        unsafe { *out = std::ptr::null_mut() };
        let model = MODELS.get(model)?;
        let threads = params.threads()?;
        if let Some(warning) = unmask_kernels::backend::oversubscription_warning(threads) {
            unmask_kernels::log::warn(&warning);
        }
        let generator = Generator::new(model.model.clone(), threads)?;
        let canceller = Mutex::new(generator.canceller());
        let context = ContextEntry {
            model,
            state: Mutex::new(ContextState {
                generator: Some(generator),
                threads,
                default_threads: threads,
            }),
            last_error: Mutex::new(CString::default()),
            canceller,
        };
        let handle = CONTEXTS.insert(Arc::new(context));
        // SAFETY: as above.
        unsafe { *out = handle.cast_mut().cast() };
        Ok(status::OK)
    })
}

/// `unmask_context_free`: NULL and freed handles are ignored.
#[no_mangle]
pub extern "C" fn unmask_context_free(ctx: *mut unmask_context) {
    entry(
        |_| (),
        || {
            CONTEXTS.remove(ctx);
            Ok(())
        },
    )
}

/// `unmask_context_cancel`: the one call allowed on a context from any thread at any time.
#[no_mangle]
pub extern "C" fn unmask_context_cancel(ctx: *mut unmask_context) -> Status {
    status_entry(|| {
        CONTEXTS.get(ctx)?.cancel();
        Ok(status::OK)
    })
}
