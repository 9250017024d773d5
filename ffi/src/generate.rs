//! `unmask_generate` / `unmask_generate_text`: the denoising loop with a C step callback, and
//! the library-owned result.

use crate::args::{self, saturate};
use crate::context::{unmask_context, ContextEntry, CONTEXTS};
use crate::error::{catch, entry, status_entry, FfiError, FfiResult};
use crate::handles::Table;
use crate::params::{unmask_generate_params, Chat, Checked};
use crate::status::{self, Status};
use std::ffi::{c_char, c_void};
use std::sync::{Arc, LazyLock};
use std::time::Instant;
use unmask_dream::chat;
use unmask_runtime::{Control, StepEvent};

/// `unmask_step_t`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug)]
pub struct unmask_step {
    pub positions: *const i32,
    pub tokens: *const i32,
    pub canvas: *const i32,
    pub step: i32,
    pub n_steps: i32,
    pub n_committed: i32,
    pub n_canvas: i32,
    pub n_prompt: i32,
    /// Appended in ABI 2's second release: a caller built against the earlier header reads
    /// the fields above and never these.
    pub n_masked: i32,
    pub seconds: f64,
}

/// `unmask_step_callback` (nullable).
#[allow(non_camel_case_types)]
pub type unmask_step_callback =
    Option<unsafe extern "C" fn(*const unmask_step, *mut c_void) -> bool>;

/// `unmask_result_t`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug)]
pub struct unmask_result {
    pub tokens: *const i32,
    pub canvas: *const i32,
    pub text: *const c_char,
    pub n_tokens: i32,
    pub n_answer_tokens: i32,
    pub n_canvas: i32,
    pub n_prompt: i32,
    pub text_len: i32,
    pub steps: i32,
    pub forward_passes: i32,
    pub cancelled: i32,
    pub seconds: f64,
}

/// A result and the memory its pointers point into. `public` comes first (`repr(C)`), so the
/// handle C gets, the address of the whole, is the address of its `unmask_result_t`.
#[repr(C)]
pub struct OwnedResult {
    public: unmask_result,
    tokens: Vec<i32>,
    canvas: Vec<i32>,
    text: Vec<u8>,
}

// SAFETY: the raw pointers in `public` point into the vectors owned by the same value, which are
// never modified after construction; sharing or moving it between threads is as safe as for the
// vectors themselves.
unsafe impl Send for OwnedResult {}
// SAFETY: as above (immutable after construction).
unsafe impl Sync for OwnedResult {}

/// The live results.
static RESULTS: LazyLock<Table<OwnedResult>> = LazyLock::new(|| Table::new("result"));

fn ids_i32(ids: &[u32]) -> Vec<i32> {
    // Ids are below the vocabulary size, which loading checks fits in int32_t.
    ids.iter().map(|&t| t as i32).collect()
}

/// Runs the loop on the context; the outcome and the result to hand out.
fn run(
    ctx: &ContextEntry,
    prompt: &[u32],
    checked: &Checked,
    callback: unmask_step_callback,
    user_data: *mut c_void,
) -> FfiResult<(Status, OwnedResult)> {
    let mut state = ctx.lock()?;
    let generator = state.generator(&ctx.model, checked.threads)?;
    let (mut positions, mut tokens) = (Vec::<i32>::new(), Vec::<i32>::new());
    let mask = ctx.model.model.special.mask;
    let start = Instant::now();
    let mut on_step = |event: &StepEvent| -> Control {
        let Some(callback) = callback else {
            return Control::Continue;
        };
        positions.clear();
        tokens.clear();
        for &(p, t) in event.committed {
            positions.push(saturate(p));
            tokens.push(t as i32);
        }
        let step = unmask_step {
            positions: positions.as_ptr(),
            tokens: tokens.as_ptr(),
            canvas: event.canvas.as_ptr().cast(),
            step: saturate(event.step),
            n_steps: saturate(event.total_steps),
            n_committed: saturate(positions.len()),
            n_canvas: saturate(event.canvas.len()),
            n_prompt: saturate(event.prompt_len),
            n_masked: saturate(
                event.canvas[event.prompt_len.min(event.canvas.len())..]
                    .iter()
                    .filter(|&&t| t == mask)
                    .count(),
            ),
            seconds: start.elapsed().as_secs_f64(),
        };
        // SAFETY: the caller passed a valid function pointer (or NULL, handled above) and
        // vouches for user_data; `step` and the arrays it points to (u32 ids below 2^31 read as
        // int32_t) live until the callback returns, which the header documents as their lifetime.
        let go_on = unsafe { callback(&step, user_data) };
        if go_on {
            Control::Continue
        } else {
            Control::Cancel
        }
    };
    // The generator may just have been rebuilt (another thread count): cancels go to it now.
    ctx.set_canceller(generator.canceller());
    let generation = generator.generate(prompt, &checked.params, &mut on_step)?;
    drop(state); // decoding the answer does not need the context
    let model = &ctx.model.model;
    let answer_len = chat::answer_ids(&model.special, &generation.tokens).len();
    let tokenizer = model.tokenizer()?;
    let text = chat::answer_text(&tokenizer, &model.special, &generation.tokens)
        .map_err(unmask_runtime::Error::from)?;
    let mut text = text.into_bytes();
    let text_len = saturate(text.len());
    text.push(0);
    let (tokens, canvas) = (ids_i32(&generation.tokens), ids_i32(&generation.canvas));
    let public = unmask_result {
        // Moving the vectors into `OwnedResult` below does not move their heap buffers.
        tokens: tokens.as_ptr(),
        canvas: canvas.as_ptr(),
        text: text.as_ptr().cast(),
        n_tokens: saturate(tokens.len()),
        n_answer_tokens: saturate(answer_len),
        n_canvas: saturate(canvas.len()),
        n_prompt: saturate(generation.prompt_len),
        text_len,
        steps: saturate(generation.steps),
        forward_passes: saturate(generation.forward_passes),
        cancelled: i32::from(generation.cancelled),
        seconds: generation.seconds,
    };
    let outcome = if generation.cancelled {
        status::CANCELLED
    } else {
        status::OK
    };
    Ok((
        outcome,
        OwnedResult {
            public,
            tokens,
            canvas,
            text,
        },
    ))
}

/// The shared body of both entry points: `prompt` computes the prompt ids from the context.
fn generate_into(
    ctx: *mut unmask_context,
    out: *mut *mut unmask_result,
    params: &unmask_generate_params,
    callback: unmask_step_callback,
    user_data: *mut c_void,
    prompt: impl FnOnce(&ContextEntry, &Checked) -> FfiResult<Vec<u32>>,
) -> Status {
    status_entry(|| {
        if out.is_null() {
            return Err(FfiError::Null("out"));
        }
        // SAFETY: out is non-NULL and valid for a write by the caller's contract.
        unsafe { *out = std::ptr::null_mut() };
        let context = CONTEXTS.get(ctx)?;
        // Failures from here on are also the context's last error.
        let outcome = catch(|| {
            let checked = params.check_for(&context.model.model)?;
            let prompt = prompt(&context, &checked)?;
            run(&context, &prompt, &checked, callback, user_data)
        });
        let (status, result) = outcome.inspect_err(|e| context.record(e))?;
        let handle = RESULTS.insert(Arc::new(result));
        // SAFETY: as above.
        unsafe { *out = handle.cast_mut().cast() };
        Ok(status)
    })
}

/// `unmask_generate`.
///
/// # Safety
/// `prompt` NULL or valid for `n_prompt` reads; `callback` NULL or a function of that type,
/// safe to call with `user_data`; `out` NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn unmask_generate(
    ctx: *mut unmask_context,
    prompt: *const i32,
    n_prompt: i32,
    params: unmask_generate_params,
    callback: unmask_step_callback,
    user_data: *mut c_void,
    out: *mut *mut unmask_result,
) -> Status {
    generate_into(ctx, out, &params, callback, user_data, |context, _| {
        if n_prompt < 1 {
            return Err(FfiError::InvalidArgument(format!(
                "n_prompt must be at least 1 (got {n_prompt})"
            )));
        }
        // SAFETY: forwarded caller contract.
        unsafe { args::token_ids(prompt, n_prompt, context.model.model.n_vocab, "prompt") }
    })
}

/// `unmask_generate_text`.
///
/// # Safety
/// `text` as in [`args::text`]; the rest as for [`unmask_generate`].
#[no_mangle]
pub unsafe extern "C" fn unmask_generate_text(
    ctx: *mut unmask_context,
    text: *const c_char,
    text_len: i32,
    params: unmask_generate_params,
    callback: unmask_step_callback,
    user_data: *mut c_void,
    out: *mut *mut unmask_result,
) -> Status {
    generate_into(
        ctx,
        out,
        &params,
        callback,
        user_data,
        |context, checked| {
            // SAFETY: forwarded caller contract.
            let text = unsafe { args::text(text, text_len, "text") }?;
            let model = &context.model.model;
            let chat = match checked.chat {
                Chat::Off => false,
                Chat::Auto => model.supports_chat(),
                Chat::On if model.supports_chat() => true,
                Chat::On => {
                    return Err(FfiError::InvalidArgument(
                        "chat = 1, but the model's tokenizer has no chat markers".into(),
                    ))
                }
            };
            // Exactly `unmask generate -p TEXT [--no-chat]`.
            let ids = if chat {
                model.encode(&chat::instruct_prompt(text))?
            } else {
                model.encode(text)?
            };
            Ok(ids)
        },
    )
}

/// `unmask_result_free`: NULL and freed results are ignored.
#[no_mangle]
pub extern "C" fn unmask_result_free(result: *mut unmask_result) {
    entry(
        |_| (),
        || {
            RESULTS.remove(result);
            Ok(())
        },
    )
}
