/*
 * unmask.h - the C API of unmask, a runtime for masked-diffusion code models (DiffuCoder, Dream)
 * on GGML. Link with -lunmask (shared) or libunmask.a plus its private libraries (see
 * `pkg-config --libs --static unmask`).
 *
 * This header is kept by hand. The structs below mirror #[repr(C)] structs in ffi/src/params.rs
 * and ffi/src/generate.rs field for field; ffi/tests/c_api.rs checks their sizes and offsets.
 *
 * Conventions (those of llama.h):
 *   - Opaque handles: unmask_model_t (immutable mapped weights, shared by any number of threads
 *     and contexts) and unmask_context_t (the state and buffers of one generation at a time).
 *   - Parameter structs are passed by value; start from unmask_*_default_params().
 *   - Every fallible function returns an unmask_status_t (0 = success), except the llama-style
 *     functions that fill a caller buffer (tokenize, detokenize, apply_chat): they return the
 *     count written, minus the required size when the buffer is too small, or UNMASK_SIZE_ERROR
 *     (INT32_MIN) on any other failure, whose status code unmask_last_status() then gives.
 *   - After a failure, unmask_last_error() describes it. No call crashes on NULL handles or
 *     buffers, invalid UTF-8 or bad parameters, and no Rust panic crosses this boundary: an
 *     internal panic becomes UNMASK_ERR_INTERNAL.
 *   - Text is UTF-8. A text argument comes with a byte length; a negative length means the text
 *     is NUL-terminated.
 *   - Token ids are int32_t.
 *
 * Handles are checked: every handle argument is looked up in a table of live handles, so a NULL,
 * freed or foreign handle gives UNMASK_ERR_NULL_ARGUMENT / UNMASK_ERR_INVALID_HANDLE instead of
 * touching memory, and freeing a handle twice is harmless. (The check cannot tell a stale handle
 * from a new one that reuses its address: do not keep handles after freeing them.) The pointers
 * *inside* a result (tokens, canvas, text) and buffers you pass are not checked beyond NULL:
 * they must be valid for the sizes you give.
 *
 * Thread safety, in one paragraph (each function repeats its own rule):
 *   - Functions that take a `const unmask_model_t *` are thread-safe: any number of threads may
 *     call them at once on one model, including while contexts of that model generate.
 *   - A context is used by one thread at a time. A call on a context that is already inside a
 *     call (from another thread, or from its own step callback) is refused with UNMASK_ERR_BUSY;
 *     it does not block and does not corrupt anything. The exception is unmask_context_cancel,
 *     which any thread may call on any context at any time.
 *   - Freeing is safe at any time: a model freed while contexts use it stays alive until its last
 *     context is freed; a context freed while it generates on another thread is released when
 *     that generation returns.
 *   - unmask_last_error(NULL) and unmask_last_status() are per thread.
 *   - unmask_log_set is global: the callback it sets may be called from any thread.
 */
#ifndef UNMASK_H
#define UNMASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && !defined(UNMASK_STATIC)
#define UNMASK_API __declspec(dllimport)
#elif defined(__GNUC__)
#define UNMASK_API __attribute__((visibility("default")))
#else
#define UNMASK_API
#endif

/* ABI version: changes whenever a signature or a struct layout changes incompatibly. The shared
 * library's SONAME is libunmask.so.<UNMASK_ABI_VERSION - 1>. */
#define UNMASK_ABI_VERSION 2
#define UNMASK_VERSION_MAJOR 0
#define UNMASK_VERSION_MINOR 1
#define UNMASK_VERSION_PATCH 0

/* ---------------------------------------------------------------------------------------------
 * Status codes
 * ------------------------------------------------------------------------------------------- */

typedef int32_t unmask_status_t;

#define UNMASK_OK 0
/* Generation stopped because the step callback returned false or unmask_context_cancel was
 * called; the result holds the canvas of the steps completed. Not an error. */
#define UNMASK_CANCELLED 1
/* A required pointer (handle, text, buffer, out-parameter) is NULL. */
#define UNMASK_ERR_NULL_ARGUMENT (-1)
/* A parameter is out of range (a generation parameter, a negative length, ...). */
#define UNMASK_ERR_INVALID_ARGUMENT (-2)
/* A text argument is not valid UTF-8. */
#define UNMASK_ERR_INVALID_UTF8 (-3)
/* A handle that is not (or no longer) a live handle of this library. */
#define UNMASK_ERR_INVALID_HANDLE (-4)
/* The context is already inside another call. */
#define UNMASK_ERR_BUSY (-5)
/* The model file cannot be opened or read. */
#define UNMASK_ERR_IO (-6)
/* The file is not a valid Dream GGUF model (bad magic, truncated, inconsistent, ...). */
#define UNMASK_ERR_MODEL (-7)
/* The tokenizer failed. */
#define UNMASK_ERR_TOKENIZER (-8)
/* A token id is negative or outside the model's vocabulary. */
#define UNMASK_ERR_BAD_TOKEN (-9)
/* The prompt plus max_new_tokens exceeds the model's context length. */
#define UNMASK_ERR_CONTEXT_OVERFLOW (-10)
/* GGML failed (out of memory for the compute buffers, cannot start threads, ...). */
#define UNMASK_ERR_BACKEND (-11)
/* A bug in unmask (a caught internal panic). The context stays usable. */
#define UNMASK_ERR_INTERNAL (-12)
/* The requested device is not available (e.g. "cuda" without libggml-cuda.so or without a GPU;
 * unmask_last_error says what was looked for). */
#define UNMASK_ERR_DEVICE (-13)

/* What the buffer-filling functions return on failures other than "buffer too small". */
#define UNMASK_SIZE_ERROR INT32_MIN

/* ---------------------------------------------------------------------------------------------
 * Handles (opaque)
 * ------------------------------------------------------------------------------------------- */

typedef struct unmask_model unmask_model_t;     /* see "Model" */
typedef struct unmask_context unmask_context_t; /* see "Context" */

/* ---------------------------------------------------------------------------------------------
 * Version and errors
 * ------------------------------------------------------------------------------------------- */

/* The library's version, e.g. "0.1.0" (static string). Thread-safe. */
UNMASK_API const char *unmask_version(void);

/* The library's UNMASK_ABI_VERSION; compare with the header's to detect a mismatched library.
 * Thread-safe. */
UNMASK_API uint32_t unmask_abi_version(void);

/* A static English description of a status code ("unknown status" for unknown codes). Never
 * NULL. Thread-safe. */
UNMASK_API const char *unmask_status_string(unmask_status_t status);

/* The message of the last failed call: with ctx == NULL, of the calling thread (any function);
 * with a context, of the last failed call on that context (from any thread). "" when there was
 * none; never NULL. A success does not clear it (like errno). The string stays valid until the
 * next failed call on this thread (ctx == NULL) or on that context, or until the context is
 * freed. An invalid ctx gives the thread's message. Thread-safe. */
UNMASK_API const char *unmask_last_error(const unmask_context_t *ctx);

/* The status code of the calling thread's last failed call (UNMASK_OK if none). Use it after a
 * function returned UNMASK_SIZE_ERROR or -1. Thread-safe (per thread). */
UNMASK_API unmask_status_t unmask_last_status(void);

/* Log levels of unmask_log_callback (ggml's levels). */
#define UNMASK_LOG_DEBUG 1
#define UNMASK_LOG_INFO 2
#define UNMASK_LOG_WARN 3
#define UNMASK_LOG_ERROR 4

/* Receives one log message: ggml's messages as ggml writes them (a line may come in parts, each
 * at the level of its first part) and the library's warnings as one line each. text is
 * NUL-terminated, usually ends with a newline, and is valid only during the call. Called from
 * any thread, ggml's worker threads included, possibly at the same time from several: keep it
 * short and thread-safe, and call no unmask function from it except unmask_log_set. */
typedef void (*unmask_log_callback)(int32_t level, const char *text, void *user_data);

/* Sends every later log message to callback (with user_data, untouched), or with NULL back to
 * the default: the library's warnings on standard error as "warning: ...", ggml's messages as
 * ggml prints them (standard error). The warnings: a context with more threads than the machine's
 * logical CPUs (which makes generation much slower), and each generation setting a model file
 * stores out of range (skipped by unmask_model_default_params), when the model is loaded.
 * Global and thread-safe; a callback set here stays until the next call. */
UNMASK_API void unmask_log_set(unmask_log_callback callback, void *user_data);

/* ---------------------------------------------------------------------------------------------
 * Model
 * ------------------------------------------------------------------------------------------- */

/* Maps a GGUF file written by unmask-quantize or llama.cpp's converter (architecture "dream").
 * Loading copies nothing: the weights stay in the file's memory map. On success *out is a new
 * model to release with unmask_model_free; on failure *out is set to NULL (when out is not NULL).
 * Errors: NULL_ARGUMENT, INVALID_UTF8 (non-Unix only; on Unix the path is raw bytes), IO (missing
 * or unreadable file), MODEL (not GGUF, truncated, corrupted, not a Dream model), TOKENIZER,
 * BACKEND. Thread-safe. */
UNMASK_API unmask_status_t unmask_model_load(const char *path, unmask_model_t **out);

/* As unmask_model_load, on a device: "cpu" (what unmask_model_load does), "cuda" (the first
 * GPU), "cuda:N", "auto" (CUDA when the CUDA backend library and a GPU are present, else the
 * CPU; device == NULL means "auto"), or "ggml-cpu" (the GPU code path on ggml's CPU device, for
 * testing). On a GPU the weights are copied into its memory and every step's work stays there;
 * the CUDA backend (libggml-cuda.so, see README) is looked for in $UNMASK_BACKEND_DIR, next to
 * the executable and in ../lib/unmask relative to it. Errors: those of unmask_model_load,
 * INVALID_ARGUMENT (unknown device name), INVALID_UTF8, DEVICE (not available; the message says
 * why). Thread-safe. */
UNMASK_API unmask_status_t unmask_model_load_on(const char *path, const char *device, unmask_model_t **out);

/* Where the model runs: "cpu", or the device and its description ("CUDA0 (NVIDIA H200)").
 * Valid until the model handle is freed; NULL for a NULL or invalid model. Thread-safe. */
UNMASK_API const char *unmask_model_device(const unmask_model_t *model);

/* Releases the handle. Contexts made from it keep the weights alive until they are freed.
 * NULL and already-freed handles are ignored. Thread-safe. */
UNMASK_API void unmask_model_free(unmask_model_t *model);

/* Model information. Each returns -1 (and sets the thread's last error) for a NULL or invalid
 * model. Thread-safe. */
UNMASK_API const char *unmask_model_architecture(const unmask_model_t *model); /* "dream"; NULL on error */
UNMASK_API int64_t unmask_model_n_params(const unmask_model_t *model);  /* weights in the file */
UNMASK_API int32_t unmask_model_n_ctx(const unmask_model_t *model);     /* context length */
UNMASK_API int32_t unmask_model_n_vocab(const unmask_model_t *model);   /* output rows (may include padding ids the tokenizer lacks) */
UNMASK_API int32_t unmask_model_n_layers(const unmask_model_t *model);
UNMASK_API int32_t unmask_model_mask_id(const unmask_model_t *model);   /* <|mask|> */
/* The end-of-text id, or -1 when the model has none (or on error). */
UNMASK_API int32_t unmask_model_eos_id(const unmask_model_t *model);
/* 1 when the tokenizer has the chat markers (<|im_start|>, <|im_end|>), else 0; -1 on error. */
UNMASK_API int32_t unmask_model_has_chat(const unmask_model_t *model);

/* Whether the model keeps its tokenizer built between calls. keep != 0 (the default): the first
 * call that needs it (unmask_tokenize, unmask_detokenize, ...) builds it, 0.3-0.6 s and 80 MiB
 * for DiffuCoder's 151k-token vocabulary, and it stays until unmask_model_free, so each later
 * tokenize or detokenize call costs microseconds to milliseconds (a live decoded view of every
 * step is affordable) and unmask_generate_text reuses it. keep == 0: the kept tokenizer is freed
 * now, and each call builds its own and frees it after, so the 80 MiB are not held next to the
 * weights but every call pays the build (0.3-0.6 s on that vocabulary). Returns
 * UNMASK_OK, or NULL_ARGUMENT / INVALID_HANDLE. Thread-safe. */
UNMASK_API unmask_status_t unmask_model_keep_tokenizer(const unmask_model_t *model, int32_t keep);

/* ---------------------------------------------------------------------------------------------
 * Text
 * ------------------------------------------------------------------------------------------- */

/* Token ids of text[0..text_len) (text_len < 0: NUL-terminated), as `unmask generate` encodes
 * a prompt: no BOS, special tokens written in the text (e.g. <|im_start|>) recognised.
 * Returns the number of ids written to tokens; if n_tokens_max is too small, writes nothing and
 * returns minus the number needed (tokens may be NULL when n_tokens_max is 0, to ask for the
 * size). UNMASK_SIZE_ERROR on failure (NULL_ARGUMENT, INVALID_ARGUMENT for n_tokens_max < 0,
 * INVALID_UTF8, INVALID_HANDLE, TOKENIZER). The first call builds the tokenizer, which the
 * model then keeps (see unmask_model_keep_tokenizer for the cost either way). Thread-safe. */
UNMASK_API int32_t unmask_tokenize(const unmask_model_t *model, const char *text, int32_t text_len,
                                   int32_t *tokens, int32_t n_tokens_max);

/* UTF-8 text of tokens[0..n_tokens); special tokens are left out when skip_special != 0 (as the
 * answer text of unmask_generate is). Writes the bytes and a terminating NUL and returns the
 * number of bytes, NUL not counted; if buf_len is too small (it must hold the NUL too), writes
 * nothing and returns minus the size needed, NUL included (buf may be NULL when buf_len is 0).
 * The text may contain NUL bytes if a token decodes to one: use the returned length.
 * UNMASK_SIZE_ERROR on failure (NULL_ARGUMENT, INVALID_ARGUMENT for negative lengths,
 * BAD_TOKEN for ids < 0 or >= n_vocab, INVALID_HANDLE, TOKENIZER). Thread-safe. */
UNMASK_API int32_t unmask_detokenize(const unmask_model_t *model, const int32_t *tokens, int32_t n_tokens,
                                     char *buf, int32_t buf_len, int32_t skip_special);

/* The Instruct chat prompt (docs/model.md §5: ChatML with the default system prompt) around the
 * user's message, exactly what `unmask generate` feeds the model. Same buffer rules as
 * unmask_detokenize. Fails with INVALID_ARGUMENT when the model's tokenizer has no chat markers
 * (unmask_model_has_chat() == 0). Thread-safe. */
UNMASK_API int32_t unmask_apply_chat(const unmask_model_t *model, const char *user_text, int32_t text_len,
                                     char *buf, int32_t buf_len);

/* One turn of a conversation (llama.h's llama_chat_message): role is "system", "user" or
 * "assistant"; both strings are NUL-terminated UTF-8. */
typedef struct unmask_chat_message {
    const char *role;
    const char *content;
} unmask_chat_message_t;

/* The chat prompt of a conversation, as llama_chat_apply_template makes it: ChatML, Dream's
 * default system prompt ("You are a helpful assistant.") when the first message is not a system
 * message, each user turn with the newline before <|im_end|> that DiffuCoder's published prompt
 * has, and, when add_assistant, an opened assistant turn for the model to answer. One user
 * message with add_assistant gives exactly unmask_apply_chat's prompt. Same buffer rules as
 * unmask_detokenize. Errors (UNMASK_SIZE_ERROR, then unmask_last_status()): NULL_ARGUMENT
 * (messages, a role or a content NULL), INVALID_UTF8, INVALID_ARGUMENT (no messages, an unknown
 * role, a system message after the first, a model without chat markers), INVALID_HANDLE.
 * Thread-safe. */
UNMASK_API int32_t unmask_apply_chat_messages(const unmask_model_t *model, const unmask_chat_message_t *messages,
                                              size_t n_messages, bool add_assistant, char *buf, int32_t buf_len);

/* ---------------------------------------------------------------------------------------------
 * Context
 * ------------------------------------------------------------------------------------------- */

typedef struct unmask_context_params {
    /* Worker threads for the forward pass and the scoring; 0 = the physical cores. */
    int32_t n_threads;
} unmask_context_params;

/* { n_threads = 0 }. Thread-safe. */
UNMASK_API unmask_context_params unmask_context_default_params(void);

/* A new context (CPU backend, thread pool, graph buffers built at the first generation and
 * reused while the canvas length stays the same) on a model. Any number of contexts may share one
 * model, each used by its own thread. Errors: NULL_ARGUMENT, INVALID_HANDLE, INVALID_ARGUMENT
 * (n_threads < 0 or > 512), BACKEND. Thread-safe (the model may be shared). */
UNMASK_API unmask_status_t unmask_context_new(const unmask_model_t *model, unmask_context_params params,
                                              unmask_context_t **out);

/* Releases the context (NULL and already-freed handles are ignored). Safe at any time; see the
 * thread-safety notes at the top. */
UNMASK_API void unmask_context_free(unmask_context_t *ctx);

/* Asks the generation running on ctx to stop, from any thread (the generating one included,
 * e.g. from its step callback or a signal-watching thread): the CPU backend stops the step being
 * computed at the next node of its graph (milliseconds, even for a 7B model), a GPU at the end
 * of the step's graph. The generation then returns UNMASK_CANCELLED with the canvas of the steps
 * completed (result->cancelled = 1) and the context is reusable. Every generation starts
 * uncancelled: a cancel while none runs has no effect, so a "stop" that arrives just after a
 * generation ended never stops the next one, and one that arrives just before a generation's
 * first step may be missed (call it again while the generation runs, e.g. until it returns).
 * Returns UNMASK_OK, NULL_ARGUMENT or INVALID_HANDLE. Thread-safe; never blocks. */
UNMASK_API unmask_status_t unmask_context_cancel(unmask_context_t *ctx);

/* ---------------------------------------------------------------------------------------------
 * Generation
 * ------------------------------------------------------------------------------------------- */

/* How positions are chosen for commitment (docs/model.md §4). */
#define UNMASK_ALG_ORIGIN 0       /* each masked position revealed with probability 1 - s/t */
#define UNMASK_ALG_MASKGIT_PLUS 1 /* confidence = probability of the predicted token */
#define UNMASK_ALG_TOPK_MARGIN 2  /* confidence = top-1 minus top-2 probability */
#define UNMASK_ALG_ENTROPY 3      /* confidence = negative entropy (DiffuCoder-Instruct's choice) */

/* unmask_generate_params.cache: the key/value cache of the fast-decoding modes. */
#define UNMASK_CACHE_NONE 0       /* exact decoding (the default) */
#define UNMASK_CACHE_PREFIX 1     /* cache the positions before the block */
#define UNMASK_CACHE_DUAL 2       /* cache every position outside the block */

/* Every sampling option of `unmask generate`. The built-in defaults (DiffuCoder-Instruct's
 * recommended settings, plus the top-k 50 that Dream's published code applies when none is given):
 * 256 new tokens, steps 0 (one step per new token), entropy, temperature 0.4, top-p 0.95, top-k 50,
 * alg_temp 0, eps 1e-3, no blocks, seed 0, chat automatic, the context's threads, exact decoding
 * (no cache, no threshold). A model file may store its own (unmask.generation.*, from the
 * checkpoint's generation_config.json): unmask_model_default_params gives them over the built-in
 * ones, as `unmask generate` applies them: built-in < model file < the fields you set. */
typedef struct unmask_generate_params {
    uint64_t seed;           /* seed of unmask's own random generator (xoshiro256**) */
    int32_t max_new_tokens;  /* length of the canvas to fill, >= 1 */
    int32_t steps;           /* denoising steps, 1..max_new_tokens; 0 (the default): follow
                                max_new_tokens, as `unmask generate` without --steps: the steps per
                                new token the model file stores (rounded, 1..max_new_tokens), else
                                one step per new token */
    int32_t alg;             /* UNMASK_ALG_* */
    float temperature;       /* >= 0; 0 takes the most likely token */
    float top_p;             /* nucleus filter in (0, 1]; 1 disables it */
    int32_t top_k;           /* keep the k most likely tokens; 0 disables */
    float alg_temp;          /* >= 0; temperature of the choice of positions (0: most confident) */
    float eps;               /* in (0, 1): final time of the schedule linspace(1, eps, steps + 1) */
    int32_t block_length;    /* 0: one block; else denoise blocks of this many tokens left to right
                                (must divide max_new_tokens; steps a multiple of the block count) */
    int32_t chat;            /* unmask_generate_text only: -1 automatic (on when the model has the
                                chat markers), 0 the text as is, 1 the Instruct template (error if
                                the model lacks the markers). Ignored by unmask_generate. */
    int32_t n_threads;       /* 0: the context's; else rebuild the context's workers with this many */
    int32_t cache;           /* UNMASK_CACHE_*: approximate fast decoding with a key/value cache
                                (docs/fast-decoding.md). NONE (default): exact decoding. PREFIX: per
                                block, the block and everything after it run against the cached
                                keys/values of the positions before it. DUAL: only the block runs,
                                against the cached keys/values of every other position (fastest).
                                With a cache, block_length 0 means 32 and must divide max_new_tokens;
                                steps must be a multiple of the block count and, without a
                                threshold, give at least 2 steps per block. alg must not be ORIGIN. */
    float threshold;         /* 0 (default): off. In (0, 1]: confidence-threshold parallel decoding,
                                approximate: each pass commits the most confident position and every
                                other whose predicted token's probability is >= threshold (Fast-dLLM
                                uses 0.9). With UNMASK_CACHE_NONE: no blocks (block_length 0), steps
                                must divide max_new_tokens; with a cache each block runs until done. */
} unmask_generate_params;

/* The built-in defaults above. Thread-safe. */
UNMASK_API unmask_generate_params unmask_generate_default_params(void);

/* Fills *out with the defaults for this model: the built-in ones, replaced by each valid
 * generation setting its file stores (max_new_tokens, alg, temperature, top_p, top_k, alg_temp,
 * eps; top_p 1 and top_k 0 in the file turn the filters off), exactly the settings
 * `unmask generate` uses on that file without flags. steps is 0, so the file's steps per token
 * apply to whatever max_new_tokens you then set. A stored value out of range (top_p 1.5, an
 * unknown alg, NaN) is skipped, leaving the built-in one. Returns UNMASK_OK, NULL_ARGUMENT (model
 * or out is NULL) or INVALID_HANDLE; on failure *out (when not NULL) holds the built-in defaults.
 * Thread-safe. */
UNMASK_API unmask_status_t unmask_model_default_params(const unmask_model_t *model, unmask_generate_params *out);

/* What the step callback sees after each denoising step. Valid only during the callback. */
typedef struct unmask_step {
    const int32_t *positions; /* canvas positions committed in this step, increasing */
    const int32_t *tokens;    /* the ids committed there (tokens[i] at positions[i]). As in Dream,
                                 an id may be the mask id itself: that position stays masked and
                                 is committed again at a later step. */
    const int32_t *canvas;    /* the whole canvas after this step, prompt included */
    int32_t step;             /* step index over the whole run (blocks included), from 0 */
    int32_t n_steps;          /* steps requested */
    int32_t n_committed;      /* length of positions and tokens (0: this step committed nothing) */
    int32_t n_canvas;         /* n_prompt + max_new_tokens */
    int32_t n_prompt;         /* the generated part is canvas[n_prompt .. n_canvas) */
    /* Progress (appended to ABI 2; programs built against the earlier header never read them): */
    int32_t n_masked;         /* positions of the generated part still masked after this step */
    double seconds;           /* wall time since the generation began: with step, n_steps and
                                 n_masked, enough for a progress bar with tokens/s and an ETA */
} unmask_step_t;

/* Called on the generating thread after every step; return false to stop (the generation then
 * returns UNMASK_CANCELLED after exactly step + 1 steps). It may call functions on the model
 * but not on the generating context (UNMASK_ERR_BUSY). */
typedef bool (*unmask_step_callback)(const unmask_step_t *step, void *user_data);

/* A finished (or cancelled) generation, owned by the library: read it, then unmask_result_free.
 * Never write to it. It owns its memory: it stays valid after its context and model are freed,
 * and any thread may read it. */
typedef struct unmask_result {
    const int32_t *tokens;   /* the generated ids: the canvas after the prompt, n_tokens of them,
                                exactly the "tokens" of `unmask generate --json` */
    const int32_t *canvas;   /* the whole canvas, n_canvas ids (still-masked positions hold the mask id) */
    const char *text;        /* the answer: tokens cut at the first <|dlm_pad|>, <|im_end|> or
                                <|endoftext|>, decoded without special tokens; NUL-terminated */
    int32_t n_tokens;        /* = max_new_tokens */
    int32_t n_answer_tokens; /* length of the answer prefix of tokens */
    int32_t n_canvas;
    int32_t n_prompt;
    int32_t text_len;        /* bytes of text, NUL not counted */
    int32_t steps;           /* steps completed (fewer than requested when cancelled) */
    int32_t forward_passes;  /* forward passes run (steps that commit nothing skip theirs) */
    int32_t cancelled;       /* 1 when the callback or unmask_context_cancel stopped the run */
    double seconds;          /* wall time of the denoising loop */
} unmask_result_t;

/* Runs the denoising loop on prompt[0..n_prompt) (ids used as is: no template). callback may be
 * NULL; user_data is passed to it untouched. On UNMASK_OK or UNMASK_CANCELLED *out is a new result
 * (free it with unmask_result_free); on any error *out is NULL. Errors: NULL_ARGUMENT,
 * INVALID_HANDLE, BUSY, INVALID_ARGUMENT (a parameter out of range: the message names it; an empty
 * prompt), BAD_TOKEN, CONTEXT_OVERFLOW, TOKENIZER (decoding the answer), BACKEND, INTERNAL.
 * Deterministic for a seed, thread count aside. The context is reusable after any outcome.
 * Thread safety: one call per context at a time (others get BUSY); contexts of one model run
 * concurrently. */
UNMASK_API unmask_status_t unmask_generate(unmask_context_t *ctx, const int32_t *prompt, int32_t n_prompt,
                                           unmask_generate_params params, unmask_step_callback callback,
                                           void *user_data, unmask_result_t **out);

/* As unmask_generate, from text[0..text_len) (text_len < 0: NUL-terminated): applies the chat
 * template per params.chat and tokenizes exactly as `unmask generate -p TEXT` does. Extra
 * errors: INVALID_UTF8, INVALID_ARGUMENT (chat = 1 on a model without chat markers). Same thread
 * safety as unmask_generate. */
UNMASK_API unmask_status_t unmask_generate_text(unmask_context_t *ctx, const char *text, int32_t text_len,
                                                unmask_generate_params params, unmask_step_callback callback,
                                                void *user_data, unmask_result_t **out);

/* Releases a result. NULL and already-freed results are ignored. Thread-safe, but do not free
 * a result while another thread reads it. */
UNMASK_API void unmask_result_free(unmask_result_t *result);

#ifdef __cplusplus
}
#endif

#endif /* UNMASK_H */
