/*
 * api_test.c - checks of the C API run by ffi/tests/c_api.rs, compiled against the installed
 * header and library only.
 *
 *   api_test layout                       sizes and offsets of the public structs
 *   api_test cancel MODEL K               cancel at step K, then reuse the context
 *   api_test threads MODEL                two pthreads, one model, a context each
 *   api_test abuse MODEL CORRUPT TRUNC    NULLs, bad sizes, bad parameters, freed handles...
 *   api_test defaults MODEL N             the model's default parameters, and a generation with
 *                                         them (N new tokens when N > 0, else the model's)
 *   api_test interrupt MODEL              unmask_context_cancel while idle and from a second thread
 *   api_test log MODEL BAD_SETTINGS       unmask_log_set receives the library's warnings
 *   api_test chat MODEL                   unmask_apply_chat_messages: conversations and errors
 *   api_test race MODEL THREADS ROUNDS    THREADS contexts generating at once, 2 compute threads
 *                                         each, plus a context cancelled from the main thread
 *
 * Every mode prints "ok" as its last line when all its checks passed (and exits 0); a failed
 * check prints "FAIL <line>: <what>" and exits 1.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep, sysconf under -std=c11 */
#include "unmask.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int failures = 0;
#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            printf("FAIL %d: %s (last error: %s)\n", __LINE__, #cond, unmask_last_error(NULL)); \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

static unmask_generate_params small_params(uint64_t seed) {
    unmask_generate_params p = unmask_generate_default_params();
    p.max_new_tokens = 32;
    p.steps = 16;
    p.seed = seed;
    p.temperature = 0.7f;
    return p;
}

/* The default context parameters with n compute threads. */
static unmask_context_params params_with_threads(int32_t n) {
    unmask_context_params cp = unmask_context_default_params();
    cp.n_threads = n;
    return cp;
}

static const int32_t PROMPT[] = {5, 6, 7, 8, 9, 10};
#define N_PROMPT ((int32_t)(sizeof PROMPT / sizeof PROMPT[0]))

/* ---- layout ------------------------------------------------------------------------------ */

#define FIELD(T, f) printf(#T "." #f " %zu\n", offsetof(T, f))
static int layout(void) {
    printf("unmask_context_params %zu\n", sizeof(unmask_context_params));
    FIELD(unmask_context_params, n_threads);
    printf("unmask_generate_params %zu\n", sizeof(unmask_generate_params));
    FIELD(unmask_generate_params, seed);
    FIELD(unmask_generate_params, max_new_tokens);
    FIELD(unmask_generate_params, steps);
    FIELD(unmask_generate_params, alg);
    FIELD(unmask_generate_params, temperature);
    FIELD(unmask_generate_params, top_p);
    FIELD(unmask_generate_params, top_k);
    FIELD(unmask_generate_params, alg_temp);
    FIELD(unmask_generate_params, eps);
    FIELD(unmask_generate_params, block_length);
    FIELD(unmask_generate_params, chat);
    FIELD(unmask_generate_params, n_threads);
    FIELD(unmask_generate_params, cache);
    FIELD(unmask_generate_params, threshold);
    printf("unmask_step_t %zu\n", sizeof(unmask_step_t));
    FIELD(unmask_step_t, positions);
    FIELD(unmask_step_t, tokens);
    FIELD(unmask_step_t, canvas);
    FIELD(unmask_step_t, step);
    FIELD(unmask_step_t, n_steps);
    FIELD(unmask_step_t, n_committed);
    FIELD(unmask_step_t, n_canvas);
    FIELD(unmask_step_t, n_prompt);
    FIELD(unmask_step_t, n_masked);
    FIELD(unmask_step_t, seconds);
    printf("unmask_chat_message_t %zu\n", sizeof(unmask_chat_message_t));
    FIELD(unmask_chat_message_t, role);
    FIELD(unmask_chat_message_t, content);
    printf("unmask_result_t %zu\n", sizeof(unmask_result_t));
    FIELD(unmask_result_t, tokens);
    FIELD(unmask_result_t, canvas);
    FIELD(unmask_result_t, text);
    FIELD(unmask_result_t, n_tokens);
    FIELD(unmask_result_t, n_answer_tokens);
    FIELD(unmask_result_t, n_canvas);
    FIELD(unmask_result_t, n_prompt);
    FIELD(unmask_result_t, text_len);
    FIELD(unmask_result_t, steps);
    FIELD(unmask_result_t, forward_passes);
    FIELD(unmask_result_t, cancelled);
    FIELD(unmask_result_t, seconds);
    /* The defaults as C sees them, by value through the ABI. */
    unmask_generate_params d = unmask_generate_default_params();
    printf("defaults %d %d %d %.3f %.3f %d %.3f %.4f %d %d %d %llu %d %.3f\n", d.max_new_tokens,
           d.steps, d.alg, d.temperature, d.top_p, d.top_k, d.alg_temp, d.eps, d.block_length,
           d.chat, d.n_threads, (unsigned long long)d.seed, d.cache, d.threshold);
    printf("ok\n");
    return 0;
}

/* ---- cancel ------------------------------------------------------------------------------ */

struct counter {
    int32_t cancel_at;
    int32_t calls;
    int32_t last_step;
    int32_t mask_id;
    int32_t bad_progress; /* steps whose n_masked or seconds were wrong */
    double last_seconds;
};

static bool count_and_cancel(const unmask_step_t *step, void *user_data) {
    struct counter *c = user_data;
    c->calls++;
    c->last_step = step->step;
    /* The progress fields, against the canvas itself and the previous step. */
    int32_t masked = 0;
    for (int32_t i = step->n_prompt; i < step->n_canvas; i++) masked += step->canvas[i] == c->mask_id;
    if (step->n_masked != masked || !(step->seconds >= c->last_seconds)) c->bad_progress++;
    c->last_seconds = step->seconds;
    return step->step != c->cancel_at;
}

static int same_tokens(const unmask_result_t *a, const unmask_result_t *b) {
    return a->n_tokens == b->n_tokens &&
           memcmp(a->tokens, b->tokens, sizeof(int32_t) * (size_t)a->n_tokens) == 0;
}

static int cancel(const char *path, int32_t k) {
    unmask_model_t *model = NULL;
    CHECK(unmask_model_load(path, &model) == UNMASK_OK);
    unmask_context_params cp = params_with_threads(1);
    unmask_context_t *ctx = NULL;
    CHECK(unmask_context_new(model, cp, &ctx) == UNMASK_OK);
    unmask_generate_params p = small_params(3);

    /* The reference: a fresh context, no callback. */
    unmask_context_t *fresh = NULL;
    unmask_result_t *expected = NULL;
    CHECK(unmask_context_new(model, cp, &fresh) == UNMASK_OK);
    CHECK(unmask_generate(fresh, PROMPT, N_PROMPT, p, NULL, NULL, &expected) == UNMASK_OK);
    unmask_context_free(fresh);

    struct counter c = {.cancel_at = k, .calls = 0, .last_step = -1, .mask_id = unmask_model_mask_id(model)};
    unmask_result_t *cancelled = NULL;
    unmask_status_t s = unmask_generate(ctx, PROMPT, N_PROMPT, p, count_and_cancel, &c, &cancelled);
    CHECK(s == UNMASK_CANCELLED);
    CHECK(cancelled != NULL);
    CHECK(c.calls == k + 1);
    CHECK(c.last_step == k);
    CHECK(c.bad_progress == 0);
    if (cancelled != NULL) {
        printf("cancelled: status %d, steps %d, callbacks %d, flag %d\n", s, cancelled->steps, c.calls,
               cancelled->cancelled);
        CHECK(cancelled->steps == k + 1);
        CHECK(cancelled->cancelled == 1);
        CHECK(cancelled->n_tokens == p.max_new_tokens);
        int32_t masked = 0;
        for (int32_t i = 0; i < cancelled->n_tokens; i++) {
            masked += cancelled->tokens[i] == unmask_model_mask_id(model);
        }
        printf("still masked after %d steps: %d of %d\n", k + 1, masked, cancelled->n_tokens);
        CHECK(masked > 0);
    }

    /* The same context, reused: the normal result. */
    struct counter all = {.cancel_at = -1, .calls = 0, .last_step = -1, .mask_id = unmask_model_mask_id(model)};
    unmask_result_t *again = NULL;
    CHECK(unmask_generate(ctx, PROMPT, N_PROMPT, p, count_and_cancel, &all, &again) == UNMASK_OK);
    CHECK(all.calls == p.steps);
    CHECK(all.bad_progress == 0);
    CHECK(again != NULL && expected != NULL && same_tokens(again, expected));
    CHECK(again != NULL && again->cancelled == 0 && again->steps == p.steps);

    unmask_result_free(expected);
    unmask_result_free(cancelled);
    unmask_result_free(again);
    unmask_context_free(ctx);
    unmask_model_free(model);
    if (failures == 0) printf("ok\n");
    return failures != 0;
}

/* ---- threads ----------------------------------------------------------------------------- */

struct job {
    const unmask_model_t *model;
    uint64_t seed;
    int rounds;
    unmask_result_t *result; /* the last round's */
    int32_t consistent;      /* every round gave the same ids */
    unmask_status_t status;
};

static void *worker(void *arg) {
    struct job *job = arg;
    unmask_context_params cp = params_with_threads(1);
    unmask_context_t *ctx = NULL;
    job->status = unmask_context_new(job->model, cp, &ctx);
    job->consistent = 1;
    for (int r = 0; r < job->rounds && job->status == UNMASK_OK; r++) {
        unmask_result_t *result = NULL;
        job->status = unmask_generate(ctx, PROMPT, N_PROMPT, small_params(job->seed), NULL, NULL, &result);
        if (job->result != NULL && result != NULL && !same_tokens(job->result, result)) job->consistent = 0;
        unmask_result_free(job->result);
        job->result = result;
    }
    unmask_context_free(ctx);
    return NULL;
}

static void print_ids(const char *label, const unmask_result_t *r) {
    printf("%s", label);
    for (int32_t i = 0; r != NULL && i < r->n_tokens; i++) printf("%s%d", i ? "," : " ", r->tokens[i]);
    printf("\n");
}

static int threads(const char *path, int rounds) {
    unmask_model_t *model = NULL;
    CHECK(unmask_model_load(path, &model) == UNMASK_OK);
    /* Single-threaded runs first, one after the other on the main thread. */
    struct job solo[2] = {{model, 11, 1, NULL, 0, 0}, {model, 22, 1, NULL, 0, 0}};
    worker(&solo[0]);
    worker(&solo[1]);
    CHECK(solo[0].status == UNMASK_OK && solo[1].status == UNMASK_OK);
    CHECK(solo[0].result && solo[1].result && !same_tokens(solo[0].result, solo[1].result));
    /* Then both at once, each thread with its own context on the shared model. */
    struct job both[2] = {{model, 11, rounds, NULL, 0, 0}, {model, 22, rounds, NULL, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, worker, &both[i]) == 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) {
        CHECK(both[i].status == UNMASK_OK);
        CHECK(both[i].consistent == 1);
        CHECK(both[i].result != NULL && solo[i].result != NULL && same_tokens(both[i].result, solo[i].result));
    }
    print_ids("seed 11", both[0].result);
    print_ids("seed 22", both[1].result);
    for (int i = 0; i < 2; i++) {
        unmask_result_free(solo[i].result);
        unmask_result_free(both[i].result);
    }
    unmask_model_free(model);
    if (failures == 0) printf("ok\n");
    return failures != 0;
}

/* ---- abuse ------------------------------------------------------------------------------- */

struct reentry {
    unmask_context_t *ctx;
    unmask_status_t inner;
};

static bool reenter(const unmask_step_t *step, void *user_data) {
    struct reentry *r = user_data;
    unmask_result_t *out = NULL;
    r->inner = unmask_generate(r->ctx, PROMPT, N_PROMPT, small_params(1), NULL, NULL, &out);
    (void)step;
    return false;
}

static bool free_own_context(const unmask_step_t *step, void *user_data) {
    unmask_context_free(*(unmask_context_t **)user_data); /* released when the call returns */
    return step->step < 3;
}

static int abuse(const char *path, const char *corrupt, const char *truncated) {
    unmask_model_t *model = (unmask_model_t *)0x1;
    unmask_context_t *ctx = NULL;
    unmask_result_t *result = NULL;
    unmask_context_params cp = params_with_threads(1);

    /* Versions and messages. */
    CHECK(unmask_abi_version() == UNMASK_ABI_VERSION);
    CHECK(strlen(unmask_version()) > 0);
    CHECK(strcmp(unmask_status_string(UNMASK_OK), "success") == 0);
    CHECK(strcmp(unmask_status_string(12345), "unknown status") == 0);
    for (int s = -13; s <= 1; s++) CHECK(unmask_status_string(s) != NULL);
    CHECK(strcmp(unmask_status_string(UNMASK_ERR_DEVICE), "unknown status") != 0);
    CHECK(unmask_last_error(NULL) != NULL);

    /* Loading. */
    CHECK(unmask_model_load(NULL, &model) == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(model == NULL);
    CHECK(strstr(unmask_last_error(NULL), "path") != NULL);
    CHECK(unmask_last_status() == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_model_load(path, NULL) == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_model_load("/nonexistent/model.gguf", &model) == UNMASK_ERR_IO);
    CHECK(model == NULL);
    CHECK(strstr(unmask_last_error(NULL), "nonexistent") != NULL);
    CHECK(unmask_model_load("/", &model) == UNMASK_ERR_IO);
    CHECK(unmask_model_load("", &model) == UNMASK_ERR_IO);
    CHECK(unmask_model_load(corrupt, &model) == UNMASK_ERR_MODEL);
    printf("corrupted: %s\n", unmask_last_error(NULL));
    CHECK(unmask_model_load(truncated, &model) == UNMASK_ERR_MODEL);
    printf("truncated: %s\n", unmask_last_error(NULL));
    CHECK(model == NULL);

    /* Devices (the test runs with UNMASK_BACKEND_DIR pointing nowhere: no CUDA backend). */
    model = (unmask_model_t *)0x1;
    CHECK(unmask_model_load_on(path, "cuda", &model) == UNMASK_ERR_DEVICE);
    CHECK(model == NULL);
    CHECK(strstr(unmask_last_error(NULL), "libggml-cuda.so") != NULL);
    printf("cuda: %s\n", unmask_last_error(NULL));
    CHECK(unmask_model_load_on(path, "tpu", &model) == UNMASK_ERR_INVALID_ARGUMENT);
    CHECK(strstr(unmask_last_error(NULL), "expected auto, cpu, cuda") != NULL);
    CHECK(unmask_model_load_on(path, "\xff", &model) == UNMASK_ERR_INVALID_UTF8);
    CHECK(unmask_model_load_on(NULL, "cpu", &model) == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_model_load_on(path, "cpu", NULL) == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_model_load_on(truncated, "ggml-cpu", &model) == UNMASK_ERR_MODEL);
    CHECK(unmask_model_device(NULL) == NULL);
    {
        /* auto falls back to the CPU; ggml-cpu runs the device path; both generate the same. */
        unmask_model_t *on_auto = NULL, *on_dev = NULL;
        unmask_context_t *c1 = NULL, *c2 = NULL;
        unmask_result_t *r1 = NULL, *r2 = NULL;
        CHECK(unmask_model_load_on(path, NULL, &on_auto) == UNMASK_OK);
        CHECK(on_auto && strcmp(unmask_model_device(on_auto), "cpu") == 0);
        CHECK(unmask_model_load_on(path, "ggml-cpu", &on_dev) == UNMASK_OK);
        CHECK(on_dev && strncmp(unmask_model_device(on_dev), "CPU", 3) == 0);
        CHECK(unmask_context_new(on_auto, cp, &c1) == UNMASK_OK);
        CHECK(unmask_context_new(on_dev, cp, &c2) == UNMASK_OK);
        CHECK(unmask_generate(c1, PROMPT, N_PROMPT, small_params(1), NULL, NULL, &r1) == UNMASK_OK);
        CHECK(unmask_generate(c2, PROMPT, N_PROMPT, small_params(1), NULL, NULL, &r2) == UNMASK_OK);
        CHECK(r1 && r2 && same_tokens(r1, r2));
        unmask_result_free(r1);
        unmask_result_free(r2);
        unmask_context_free(c1);
        unmask_context_free(c2);
        unmask_model_free(on_auto);
        unmask_model_free(on_dev);
    }
    model = NULL;

    /* Getters and free functions with NULL and bogus handles. */
    CHECK(unmask_model_architecture(NULL) == NULL);
    CHECK(unmask_model_n_params(NULL) == -1);
    CHECK(unmask_model_n_ctx(NULL) == -1);
    CHECK(unmask_model_n_vocab((const unmask_model_t *)PROMPT) == -1);
    CHECK(unmask_last_status() == UNMASK_ERR_INVALID_HANDLE);
    CHECK(unmask_model_n_layers(NULL) == -1);
    CHECK(unmask_model_mask_id(NULL) == -1);
    CHECK(unmask_model_eos_id(NULL) == -1);
    CHECK(unmask_model_has_chat(NULL) == -1);
    unmask_model_free(NULL);
    unmask_context_free(NULL);
    unmask_result_free(NULL);
    unmask_model_free((unmask_model_t *)PROMPT); /* not a handle: ignored, never dereferenced */
    unmask_context_free((unmask_context_t *)PROMPT);
    unmask_result_free((unmask_result_t *)PROMPT);

    CHECK(unmask_model_load(path, &model) == UNMASK_OK);
    CHECK(strcmp(unmask_model_architecture(model), "dream") == 0);

    /* The model's default parameters: NULLs and bogus handles refused, *out then the built-in
     * defaults. */
    unmask_generate_params filled = small_params(9);
    CHECK(unmask_model_default_params(NULL, &filled) == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(filled.max_new_tokens == unmask_generate_default_params().max_new_tokens && filled.seed == 0);
    CHECK(unmask_model_default_params(model, NULL) == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_model_default_params((const unmask_model_t *)PROMPT, &filled) == UNMASK_ERR_INVALID_HANDLE);
    CHECK(strlen(unmask_last_error(NULL)) > 0);
    CHECK(unmask_model_default_params(model, &filled) == UNMASK_OK);
    CHECK(filled.steps == 0 && filled.chat == -1 && filled.n_threads == 0);
    int32_t n_vocab = unmask_model_n_vocab(model);
    CHECK(n_vocab > 0);

    /* Tokenize. */
    int32_t ids[64];
    char buf[512];
    CHECK(unmask_tokenize(NULL, "hi", -1, ids, 64) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_tokenize(model, NULL, 3, ids, 64) == UNMASK_SIZE_ERROR);
    int32_t need = unmask_tokenize(model, "hello world", -1, NULL, 0);
    CHECK(need < 0 && need != UNMASK_SIZE_ERROR);
    CHECK(unmask_tokenize(model, "hello world", -1, ids, -need - 1) == need); /* one short */
    CHECK(unmask_tokenize(model, "hello world", -1, ids, 64) == -need);
    CHECK(unmask_tokenize(model, "hello world", 5, ids, 64) > 0);      /* "hello" */
    CHECK(unmask_tokenize(model, "", 0, ids, 64) == 0);
    CHECK(unmask_tokenize(model, "hello", -1, NULL, 4) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_tokenize(model, "hello", -1, ids, -5) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_INVALID_ARGUMENT);
    CHECK(unmask_tokenize(model, "bad \xff\xfe utf-8", -1, ids, 64) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_INVALID_UTF8);
    CHECK(unmask_tokenize(model, "\xc3", 1, ids, 64) == UNMASK_SIZE_ERROR); /* cut sequence */
    CHECK(unmask_last_status() == UNMASK_ERR_INVALID_UTF8);

    /* Detokenize. */
    int32_t n = unmask_tokenize(model, "hello world", -1, ids, 64);
    need = unmask_detokenize(model, ids, n, NULL, 0, 0);
    CHECK(need == -(int32_t)strlen("hello world") - 1);
    CHECK(unmask_detokenize(model, ids, n, buf, -need - 1, 0) == need); /* no room for the NUL */
    CHECK(unmask_detokenize(model, ids, n, buf, sizeof buf, 0) == (int32_t)strlen("hello world"));
    CHECK(strcmp(buf, "hello world") == 0);
    CHECK(unmask_detokenize(model, NULL, 0, buf, sizeof buf, 0) == 0 && buf[0] == 0);
    CHECK(unmask_detokenize(model, NULL, 2, buf, sizeof buf, 0) == UNMASK_SIZE_ERROR);
    CHECK(unmask_detokenize(model, ids, -1, buf, sizeof buf, 0) == UNMASK_SIZE_ERROR);
    int32_t bad_ids[2] = {1, -7};
    CHECK(unmask_detokenize(model, bad_ids, 2, buf, sizeof buf, 0) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_BAD_TOKEN);
    bad_ids[1] = n_vocab;
    CHECK(unmask_detokenize(model, bad_ids, 2, buf, sizeof buf, 0) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_BAD_TOKEN);
    bad_ids[1] = n_vocab - 1; /* a padding id the tokenizer lacks: no crash either way */
    int32_t pad = unmask_detokenize(model, bad_ids, 2, buf, sizeof buf, 0);
    CHECK(pad >= 0 || unmask_last_status() == UNMASK_ERR_TOKENIZER);

    /* Chat template. */
    need = unmask_apply_chat(model, "hi", -1, NULL, 0);
    CHECK(need < -1 && need != UNMASK_SIZE_ERROR);
    CHECK(unmask_apply_chat(model, "hi", -1, buf, 1) == need);
    CHECK(unmask_apply_chat(model, "hi", -1, buf, sizeof buf) == -need - 1);
    CHECK(strstr(buf, "<|im_start|>user\nhi\n<|im_end|>") != NULL);
    CHECK(unmask_apply_chat(model, NULL, -1, buf, sizeof buf) == UNMASK_SIZE_ERROR);
    CHECK(unmask_apply_chat(model, "\x80", -1, buf, sizeof buf) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_INVALID_UTF8);

    /* Contexts. */
    CHECK(unmask_context_new(NULL, cp, &ctx) == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_context_new(model, cp, NULL) == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_context_new((unmask_model_t *)buf, cp, &ctx) == UNMASK_ERR_INVALID_HANDLE);
    unmask_context_params bad_cp = cp;
    bad_cp.n_threads = -2;
    CHECK(unmask_context_new(model, bad_cp, &ctx) == UNMASK_ERR_INVALID_ARGUMENT);
    bad_cp.n_threads = 100000;
    CHECK(unmask_context_new(model, bad_cp, &ctx) == UNMASK_ERR_INVALID_ARGUMENT);
    CHECK(ctx == NULL);
    CHECK(unmask_context_new(model, cp, &ctx) == UNMASK_OK);

    /* Generation arguments. */
    unmask_generate_params p = small_params(1);
    CHECK(unmask_generate(NULL, PROMPT, N_PROMPT, p, NULL, NULL, &result) == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_generate(ctx, PROMPT, N_PROMPT, p, NULL, NULL, NULL) == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_generate(ctx, NULL, 3, p, NULL, NULL, &result) == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(strstr(unmask_last_error(ctx), "prompt") != NULL); /* the context's message too */
    CHECK(unmask_generate(ctx, PROMPT, 0, p, NULL, NULL, &result) == UNMASK_ERR_INVALID_ARGUMENT);
    CHECK(unmask_generate(ctx, PROMPT, -4, p, NULL, NULL, &result) == UNMASK_ERR_INVALID_ARGUMENT);
    int32_t oob[3] = {1, 2, n_vocab};
    CHECK(unmask_generate(ctx, oob, 3, p, NULL, NULL, &result) == UNMASK_ERR_BAD_TOKEN);
    oob[2] = -1;
    CHECK(unmask_generate(ctx, oob, 3, p, NULL, NULL, &result) == UNMASK_ERR_BAD_TOKEN);
    CHECK(unmask_generate((unmask_context_t *)model, PROMPT, N_PROMPT, p, NULL, NULL, &result) ==
          UNMASK_ERR_INVALID_HANDLE);
    CHECK(result == NULL);

    /* Every bad parameter: INVALID_ARGUMENT with a message, never a crash. */
    unmask_generate_params bad[16];
    int nb = 0;
    for (int i = 0; i < 16; i++) bad[i] = p;
    bad[nb++].max_new_tokens = 0;
    bad[nb++].max_new_tokens = -5;
    bad[nb++].steps = -1; /* 0 means one step per new token */
    bad[nb++].steps = p.max_new_tokens + 1;
    bad[nb++].alg = 9;
    bad[nb++].temperature = -1.0f;
    bad[nb].temperature = 0.0f; bad[nb++].temperature /= 0.0f; /* NaN */
    bad[nb++].top_p = 0.0f;
    bad[nb++].top_p = 1.5f;
    bad[nb++].top_k = -3;
    bad[nb++].alg_temp = -0.5f;
    bad[nb++].eps = 1.0f;
    bad[nb++].block_length = 5; /* does not divide 32 */
    bad[nb++].chat = 7;
    bad[nb++].n_threads = -1;
    for (int i = 0; i < nb; i++) {
        unmask_status_t s = unmask_generate(ctx, PROMPT, N_PROMPT, bad[i], NULL, NULL, &result);
        if (s != UNMASK_ERR_INVALID_ARGUMENT) printf("bad params #%d gave %d\n", i, s);
        CHECK(s == UNMASK_ERR_INVALID_ARGUMENT);
        CHECK(result == NULL);
        CHECK(strlen(unmask_last_error(ctx)) > 0);
    }
    unmask_generate_params huge = p;
    huge.max_new_tokens = 1 << 30;
    huge.steps = 4;
    CHECK(unmask_generate(ctx, PROMPT, N_PROMPT, huge, NULL, NULL, &result) == UNMASK_ERR_CONTEXT_OVERFLOW);
    CHECK(unmask_generate_text(ctx, "\xfe", -1, p, NULL, NULL, &result) == UNMASK_ERR_INVALID_UTF8);
    CHECK(unmask_generate_text(ctx, NULL, -1, p, NULL, NULL, &result) == UNMASK_ERR_NULL_ARGUMENT);

    /* A callback that calls back into its own context is refused, not deadlocked. */
    struct reentry re = {ctx, 0};
    CHECK(unmask_generate(ctx, PROMPT, N_PROMPT, p, reenter, &re, &result) == UNMASK_CANCELLED);
    CHECK(re.inner == UNMASK_ERR_BUSY);
    unmask_result_free(result);

    /* Still usable after all that; result double free is ignored. */
    CHECK(unmask_generate(ctx, PROMPT, N_PROMPT, p, NULL, NULL, &result) == UNMASK_OK);
    CHECK(result != NULL && result->n_tokens == p.max_new_tokens && result->text[result->text_len] == 0);
    unmask_result_free(result);
    unmask_result_free(result);
    CHECK(unmask_generate_text(ctx, "hello", -1, p, NULL, NULL, &result) == UNMASK_OK);
    unmask_result_free(result);

    /* A context freed from its own callback finishes the call, then is gone. */
    unmask_context_t *doomed = NULL;
    CHECK(unmask_context_new(model, cp, &doomed) == UNMASK_OK);
    CHECK(unmask_generate(doomed, PROMPT, N_PROMPT, p, free_own_context, &doomed, &result) == UNMASK_CANCELLED);
    CHECK(result != NULL && result->steps == 4);
    unmask_result_free(result);
    CHECK(unmask_generate(doomed, PROMPT, N_PROMPT, p, NULL, NULL, &result) == UNMASK_ERR_INVALID_HANDLE);

    /* The model freed first: the context keeps it alive; handles freed twice are ignored. */
    unmask_model_free(model);
    unmask_model_free(model);
    CHECK(unmask_model_n_vocab(model) == -1);
    CHECK(unmask_model_default_params(model, &filled) == UNMASK_ERR_INVALID_HANDLE);
    CHECK(unmask_last_status() == UNMASK_ERR_INVALID_HANDLE);
    CHECK(unmask_generate(ctx, PROMPT, N_PROMPT, p, NULL, NULL, &result) == UNMASK_OK);
    unmask_result_free(result);
    unmask_context_free(ctx);
    unmask_context_free(ctx);
    CHECK(unmask_generate(ctx, PROMPT, N_PROMPT, p, NULL, NULL, &result) == UNMASK_ERR_INVALID_HANDLE);
    CHECK(strlen(unmask_last_error(ctx)) > 0); /* a freed context: the thread's message */

    if (failures == 0) printf("ok\n");
    return failures != 0;
}

/* ---- defaults --------------------------------------------------------------------------- */

static void print_params(const char *label, const unmask_generate_params *p) {
    printf("%s max_new_tokens=%d steps=%d alg=%d temperature=%.6g top_p=%.6g top_k=%d alg_temp=%.6g "
           "eps=%.6g block_length=%d chat=%d n_threads=%d seed=%llu cache=%d threshold=%.6g\n",
           label, p->max_new_tokens, p->steps, p->alg, p->temperature, p->top_p, p->top_k,
           p->alg_temp, p->eps, p->block_length, p->chat, p->n_threads,
           (unsigned long long)p->seed, p->cache, p->threshold);
}

static int defaults(const char *path, int32_t n) {
    unmask_model_t *model = NULL;
    CHECK(unmask_model_load(path, &model) == UNMASK_OK);
    unmask_generate_params builtin = unmask_generate_default_params();
    unmask_generate_params p;
    CHECK(unmask_model_default_params(model, &p) == UNMASK_OK);
    print_params("builtin", &builtin);
    print_params("model", &p);
    if (n > 0) p.max_new_tokens = n;
    unmask_context_params cp = params_with_threads(1);
    unmask_context_t *ctx = NULL;
    unmask_result_t *r = NULL;
    CHECK(unmask_context_new(model, cp, &ctx) == UNMASK_OK);
    CHECK(unmask_generate(ctx, PROMPT, N_PROMPT, p, NULL, NULL, &r) == UNMASK_OK);
    if (r != NULL) {
        printf("steps %d\n", r->steps);
        print_ids("tokens", r);
    }
    unmask_result_free(r);
    unmask_context_free(ctx);
    unmask_model_free(model);
    if (failures == 0) printf("ok\n");
    return failures != 0;
}

/* ---- interrupt --------------------------------------------------------------------------- */

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

struct long_run {
    unmask_context_t *ctx;
    unmask_generate_params params;
    atomic_int started; /* a step has completed */
    atomic_int done;
    int32_t callbacks;
    unmask_status_t status;
    unmask_result_t *result;
};

static bool note_step(const unmask_step_t *step, void *user_data) {
    (void)step;
    struct long_run *run = user_data;
    run->callbacks++;
    atomic_store(&run->started, 1);
    return true; /* never cancels itself: only the other thread does */
}

static void *run_long(void *arg) {
    struct long_run *run = arg;
    run->status = unmask_generate(run->ctx, PROMPT, N_PROMPT, run->params, note_step, run, &run->result);
    atomic_store(&run->done, 1);
    return NULL;
}

static int interrupt(const char *path) {
    unmask_model_t *model = NULL;
    CHECK(unmask_model_load(path, &model) == UNMASK_OK);
    unmask_context_params cp = params_with_threads(1);
    unmask_context_t *ctx = NULL, *fresh = NULL;
    CHECK(unmask_context_new(model, cp, &ctx) == UNMASK_OK);
    unmask_generate_params p = small_params(3);
    unmask_result_t *expected = NULL, *r = NULL;
    CHECK(unmask_context_new(model, cp, &fresh) == UNMASK_OK);
    CHECK(unmask_generate(fresh, PROMPT, N_PROMPT, p, NULL, NULL, &expected) == UNMASK_OK);
    unmask_context_free(fresh);

    /* A cancel while idle does not stop the next generation. */
    CHECK(unmask_context_cancel(ctx) == UNMASK_OK);
    CHECK(unmask_generate(ctx, PROMPT, N_PROMPT, p, NULL, NULL, &r) == UNMASK_OK);
    printf("after a cancel while idle: steps %d\n", r ? r->steps : -1);
    CHECK(r != NULL && expected != NULL && same_tokens(r, expected) && r->steps == p.steps);
    unmask_result_free(r);
    r = NULL;

    /* From a second thread, while a long generation runs on the first: cancel every millisecond
     * from the first completed step until it returns. */
    struct long_run run = {.ctx = ctx, .params = p};
    run.params.max_new_tokens = 256;
    run.params.steps = 256;
    atomic_init(&run.started, 0);
    atomic_init(&run.done, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, run_long, &run) == 0);
    for (int waited = 0; !atomic_load(&run.started) && !atomic_load(&run.done) && waited < 60000; waited++) sleep_ms(1);
    int cancels = 0;
    for (; !atomic_load(&run.done) && cancels < 60000; cancels++) {
        CHECK(unmask_context_cancel(ctx) == UNMASK_OK);
        sleep_ms(1);
    }
    pthread_join(t, NULL);
    CHECK(run.status == UNMASK_CANCELLED);
    CHECK(run.result != NULL && run.result->cancelled == 1);
    CHECK(run.result != NULL && run.result->steps < run.params.steps);
    /* The step being computed when the cancel came was abandoned: every completed step, and
     * only those, reached the callback. */
    CHECK(run.result != NULL && run.result->steps == run.callbacks);
    printf("interrupted: status %d after %d of %d steps (%d cancel calls)\n", run.status,
           run.result ? run.result->steps : -1, run.params.steps, cancels);
    unmask_result_free(run.result);

    /* The context is reusable, and uncancelled. */
    CHECK(unmask_generate(ctx, PROMPT, N_PROMPT, p, NULL, NULL, &r) == UNMASK_OK);
    CHECK(r != NULL && expected != NULL && same_tokens(r, expected));
    unmask_result_free(r);

    CHECK(unmask_context_cancel(NULL) == UNMASK_ERR_NULL_ARGUMENT);
    unmask_context_free(ctx);
    CHECK(unmask_context_cancel(ctx) == UNMASK_ERR_INVALID_HANDLE);
    unmask_result_free(expected);
    unmask_model_free(model);
    if (failures == 0) printf("ok\n");
    return failures != 0;
}

/* ---- race -------------------------------------------------------------------------------- */

/* For ThreadSanitizer (scripts/sanitize-thread.sh): N threads, each with its own context on one
 * shared model and two compute threads per context, generate at once, calling the model's
 * thread-safe text functions between generations; meanwhile a long generation on one more
 * context is cancelled from the main thread every millisecond, and restarted, until the racers
 * finish. Every racer's generations must equal the same seed's generation run alone. */

struct racer {
    const unmask_model_t *model;
    uint64_t seed;
    int rounds;
    const unmask_result_t *expected;
    int32_t mismatches;
    int32_t text_errors;
    unmask_status_t status;
    atomic_int *finished; /* incremented when the racer is done */
};

static void *racer_run(void *arg) {
    struct racer *r = arg;
    unmask_context_params cp = params_with_threads(2);
    unmask_context_t *ctx = NULL;
    r->status = unmask_context_new(r->model, cp, &ctx);
    for (int i = 0; i < r->rounds && r->status == UNMASK_OK; i++) {
        unmask_result_t *out = NULL;
        r->status = unmask_generate(ctx, PROMPT, N_PROMPT, small_params(r->seed), NULL, NULL, &out);
        if (out == NULL || !same_tokens(out, r->expected)) r->mismatches++;
        unmask_result_free(out);
        int32_t ids[64];
        char text[1024];
        int32_t n = unmask_tokenize(r->model, "def add(a, b):\n    return a + b\n", -1, ids, 64);
        if (n <= 0 || unmask_detokenize(r->model, ids, n, text, (int32_t)sizeof text, 1) <= 0) r->text_errors++;
        if (unmask_model_has_chat(r->model) && unmask_apply_chat(r->model, "hi", -1, text, (int32_t)sizeof text) <= 0)
            r->text_errors++;
    }
    unmask_context_free(ctx);
    atomic_fetch_add(r->finished, 1);
    return NULL;
}

static int race(const char *path, int n_racers, int rounds) {
    if (n_racers < 1 || n_racers > 16 || rounds < 1) {
        printf("FAIL: race needs 1-16 threads and at least one round\n");
        return 1;
    }
    unmask_model_t *model = NULL;
    CHECK(unmask_model_load(path, &model) == UNMASK_OK);
    if (model == NULL) return 1;
    /* The references, one generation at a time on this thread. */
    unmask_result_t *expected[16] = {NULL};
    unmask_context_params cp = params_with_threads(2);
    unmask_context_t *solo = NULL;
    CHECK(unmask_context_new(model, cp, &solo) == UNMASK_OK);
    for (int i = 0; i < n_racers; i++)
        CHECK(unmask_generate(solo, PROMPT, N_PROMPT, small_params(100 + (uint64_t)i), NULL, NULL, &expected[i]) ==
              UNMASK_OK);
    unmask_context_free(solo);

    struct racer racers[16];
    pthread_t t[16];
    atomic_int finished;
    atomic_init(&finished, 0);
    for (int i = 0; i < n_racers; i++) {
        racers[i] = (struct racer){model, 100 + (uint64_t)i, rounds, expected[i], 0, 0, UNMASK_OK, &finished};
        CHECK(pthread_create(&t[i], NULL, racer_run, &racers[i]) == 0);
    }
    /* The cancelled context: long generations, each cancelled from here while it runs. */
    unmask_context_t *victim = NULL;
    CHECK(unmask_context_new(model, cp, &victim) == UNMASK_OK);
    int generations = 0, cancelled = 0, cancels = 0;
    while (victim != NULL && (generations == 0 || atomic_load(&finished) < n_racers)) {
        struct long_run run = {.ctx = victim, .params = small_params(7)};
        run.params.max_new_tokens = 128;
        run.params.steps = 128;
        atomic_init(&run.started, 0);
        atomic_init(&run.done, 0);
        pthread_t g;
        CHECK(pthread_create(&g, NULL, run_long, &run) == 0);
        for (int waited = 0; !atomic_load(&run.started) && !atomic_load(&run.done) && waited < 60000; waited++)
            sleep_ms(1);
        while (!atomic_load(&run.done)) {
            CHECK(unmask_context_cancel(victim) == UNMASK_OK);
            cancels++;
            sleep_ms(1);
        }
        pthread_join(g, NULL);
        CHECK(run.status == UNMASK_CANCELLED || run.status == UNMASK_OK);
        generations++;
        cancelled += run.status == UNMASK_CANCELLED;
        unmask_result_free(run.result);
    }
    for (int i = 0; i < n_racers; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < n_racers; i++) {
        CHECK(racers[i].status == UNMASK_OK);
        CHECK(racers[i].mismatches == 0);
        CHECK(racers[i].text_errors == 0);
    }
    CHECK(cancelled >= 1);
    printf("race: %d threads x %d generations matched their solo runs; %d of %d long generations cancelled (%d "
           "cancel calls)\n",
           n_racers, rounds, cancelled, generations, cancels);
    unmask_context_free(victim);
    for (int i = 0; i < n_racers; i++) unmask_result_free(expected[i]);
    unmask_model_free(model);
    if (failures == 0) printf("ok\n");
    return failures != 0;
}

/* ---- log --------------------------------------------------------------------------------- */

struct log_lines {
    int calls;
    int warnings;
    int ignored_top_p; /* warnings naming the out-of-range stored setting */
    int threads;       /* warnings about more threads than CPUs */
};

static void collect(int32_t level, const char *text, void *user_data) {
    struct log_lines *lines = user_data;
    lines->calls++;
    if (level != UNMASK_LOG_WARN) return;
    lines->warnings++;
    lines->ignored_top_p += strstr(text, "unmask.generation.top_p") != NULL;
    lines->threads += strstr(text, "threads on") != NULL;
    printf("log %d: %s", level, text);
}

static int log_mode(const char *path, const char *bad_settings) {
    struct log_lines lines = {0};
    unmask_log_set(collect, &lines);
    unmask_model_t *model = NULL, *plain = NULL;
    CHECK(unmask_model_load(bad_settings, &model) == UNMASK_OK);
    CHECK(lines.ignored_top_p == 1);
    CHECK(unmask_model_load(path, &plain) == UNMASK_OK);
    CHECK(lines.ignored_top_p == 1); /* a file without bad settings warns of nothing */

    /* More threads than the machine has CPUs. */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unmask_context_params cp = unmask_context_default_params();
    cp.n_threads = (int32_t)(cpus > 0 && cpus < 512 ? cpus + 1 : 512);
    unmask_context_t *ctx = NULL;
    CHECK(unmask_context_new(plain, cp, &ctx) == UNMASK_OK);
    unmask_context_free(ctx);
    if (cpus > 0 && cpus < 512) CHECK(lines.threads == 1);
    cp.n_threads = 1;
    CHECK(unmask_context_new(plain, cp, &ctx) == UNMASK_OK);
    unmask_context_free(ctx);
    CHECK(lines.threads <= 1);

    /* Back to the default (standard error): the callback hears nothing more. */
    unmask_log_set(NULL, NULL);
    int before = lines.calls;
    unmask_model_t *again = NULL;
    CHECK(unmask_model_load(bad_settings, &again) == UNMASK_OK);
    CHECK(lines.calls == before);
    printf("warnings %d (ignored top_p %d, threads %d)\n", lines.warnings, lines.ignored_top_p, lines.threads);
    unmask_model_free(again);
    unmask_model_free(plain);
    unmask_model_free(model);
    if (failures == 0) printf("ok\n");
    return failures != 0;
}

/* ---- chat -------------------------------------------------------------------------------- */

static int chat(const char *path) {
    unmask_model_t *model = NULL;
    CHECK(unmask_model_load(path, &model) == UNMASK_OK);
    char one[512], many[1024];
    /* One user message: exactly unmask_apply_chat's prompt. */
    unmask_chat_message_t hi[] = {{"user", "hi"}};
    int32_t n = unmask_apply_chat_messages(model, hi, 1, true, one, sizeof one);
    char single[512];
    CHECK(n > 0 && unmask_apply_chat(model, "hi", -1, single, sizeof single) == n);
    CHECK(n > 0 && strcmp(one, single) == 0);
    /* A conversation with a system prompt and an earlier exchange (docs/model.md §5). */
    unmask_chat_message_t talk[] = {
        {"system", "Be brief."}, {"user", "hi"}, {"assistant", "hello"}, {"user", "more"}};
    const char *want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi\n<|im_end|>\n"
                       "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nmore\n<|im_end|>\n"
                       "<|im_start|>assistant\n";
    n = unmask_apply_chat_messages(model, talk, 4, true, many, sizeof many);
    CHECK(n == (int32_t)strlen(want) && strcmp(many, want) == 0);
    /* Without the opened assistant turn, it ends with the last message. */
    n = unmask_apply_chat_messages(model, talk, 3, false, many, sizeof many);
    CHECK(n > 0 && strcmp(many + n - strlen("hello<|im_end|>\n"), "hello<|im_end|>\n") == 0);
    /* The buffer rules of unmask_detokenize. */
    int32_t need = unmask_apply_chat_messages(model, talk, 4, true, NULL, 0);
    CHECK(need == -(int32_t)strlen(want) - 1);
    CHECK(unmask_apply_chat_messages(model, talk, 4, true, many, -need) == -need - 1);
    /* Errors. */
    unmask_chat_message_t tool[] = {{"tool", "x"}};
    CHECK(unmask_apply_chat_messages(model, tool, 1, true, many, sizeof many) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_INVALID_ARGUMENT);
    unmask_chat_message_t late[] = {{"user", "hi"}, {"system", "x"}};
    CHECK(unmask_apply_chat_messages(model, late, 2, true, many, sizeof many) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_INVALID_ARGUMENT);
    CHECK(unmask_apply_chat_messages(model, talk, 0, true, many, sizeof many) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_INVALID_ARGUMENT);
    unmask_chat_message_t null_content[] = {{"user", NULL}};
    CHECK(unmask_apply_chat_messages(model, null_content, 1, true, many, sizeof many) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_NULL_ARGUMENT);
    unmask_chat_message_t bad_utf8[] = {{"user", "\x80"}};
    CHECK(unmask_apply_chat_messages(model, bad_utf8, 1, true, many, sizeof many) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_INVALID_UTF8);
    CHECK(unmask_apply_chat_messages(model, NULL, 1, true, many, sizeof many) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_NULL_ARGUMENT);
    CHECK(unmask_apply_chat_messages(NULL, talk, 4, true, many, sizeof many) == UNMASK_SIZE_ERROR);
    CHECK(unmask_last_status() == UNMASK_ERR_NULL_ARGUMENT);
    printf("conversation prompt %d bytes\n", (int)strlen(want));
    unmask_model_free(model);
    if (failures == 0) printf("ok\n");
    return failures != 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "layout") == 0) return layout();
    if (strcmp(mode, "cancel") == 0 && argc == 4) return cancel(argv[2], atoi(argv[3]));
    if (strcmp(mode, "threads") == 0 && argc >= 3) return threads(argv[2], argc > 3 ? atoi(argv[3]) : 3);
    if (strcmp(mode, "abuse") == 0 && argc == 5) return abuse(argv[2], argv[3], argv[4]);
    if (strcmp(mode, "defaults") == 0 && argc == 4) return defaults(argv[2], atoi(argv[3]));
    if (strcmp(mode, "interrupt") == 0 && argc == 3) return interrupt(argv[2]);
    if (strcmp(mode, "log") == 0 && argc == 4) return log_mode(argv[2], argv[3]);
    if (strcmp(mode, "chat") == 0 && argc == 3) return chat(argv[2]);
    if (strcmp(mode, "race") == 0 && argc == 5) return race(argv[2], atoi(argv[3]), atoi(argv[4]));
    fprintf(stderr,
            "usage: %s layout | cancel MODEL K | threads MODEL [ROUNDS] | abuse MODEL CORRUPT TRUNCATED | "
            "defaults MODEL N | interrupt MODEL | log MODEL BAD_SETTINGS | chat MODEL | race MODEL THREADS ROUNDS\n",
            argv[0]);
    return 2;
}
