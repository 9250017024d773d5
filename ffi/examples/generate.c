/*
 * generate.c - load a model, apply the chat template, tokenize, generate with a step callback
 * and print the result, using only unmask.h and libunmask.
 *
 *   cc generate.c $(pkg-config --cflags --libs unmask) -o generate
 *   ./generate model.gguf "Write a function that reverses a string" --steps 64 --max-new-tokens 64
 *
 * Options (the same names and defaults as `unmask generate`): --max-new-tokens N, --steps N,
 * --alg origin|maskgit_plus|topk_margin|entropy, --temperature F, --top-p F, --top-k N,
 * --alg-temp F, --eps F, --block-length N, --seed N, --threads N, --no-chat, and
 * --cancel-at K (stop after step K from the callback).
 *
 * Output: model information, the prompt ids, one line per step ("step I: POS=ID ..."), the
 * status, the generated ids, and the answer text after a line "--- text ---".
 */
#include "unmask.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct progress {
    int32_t cancel_at; /* -1: never */
    int32_t calls;
};

static bool on_step(const unmask_step_t *step, void *user_data) {
    struct progress *progress = user_data;
    progress->calls++;
    printf("step %d:", step->step);
    for (int32_t i = 0; i < step->n_committed; i++) {
        printf(" %d=%d", step->positions[i], step->tokens[i]);
    }
    printf("\n");
    return step->step != progress->cancel_at;
}

static int fail(const char *what, unmask_status_t status, const unmask_context_t *ctx) {
    fprintf(stderr, "%s: %s (%d): %s\n", what, unmask_status_string(status), status,
            unmask_last_error(ctx));
    return 1;
}

static int parse_alg(const char *name) {
    static const char *names[] = {"origin", "maskgit_plus", "topk_margin", "entropy"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) return i;
    }
    return -1;
}

static int parse_cache(const char *name) {
    static const char *names[] = {"none", "prefix", "dual"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(name, names[i]) == 0) return i;
    }
    return -1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL PROMPT [options]\n", argv[0]);
        return 2;
    }
    if (unmask_abi_version() != UNMASK_ABI_VERSION) {
        fprintf(stderr, "libunmask ABI %u, header %d\n", unmask_abi_version(), UNMASK_ABI_VERSION);
        return 1;
    }
    const char *model_path = argv[1];
    const char *prompt = argv[2];
    unmask_model_t *model = NULL;
    unmask_status_t status = unmask_model_load(model_path, &model);
    if (status != UNMASK_OK) return fail("load", status, NULL);
    /* The settings `unmask generate` uses on this file without flags: the built-in defaults and
     * the generation settings stored in the file. The options below replace them. */
    unmask_generate_params params;
    status = unmask_model_default_params(model, &params);
    if (status != UNMASK_OK) return fail("default params", status, NULL);
    unmask_context_params cparams = unmask_context_default_params();
    struct progress progress = {.cancel_at = -1, .calls = 0};
    int chat = 1;
    for (int i = 3; i < argc; i++) {
        const char *opt = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(opt, "--no-chat") == 0) { chat = 0; continue; }
        if (val == NULL) { fprintf(stderr, "%s needs a value\n", opt); return 2; }
        i++;
        if (strcmp(opt, "--max-new-tokens") == 0) params.max_new_tokens = atoi(val);
        else if (strcmp(opt, "--steps") == 0) params.steps = atoi(val);
        else if (strcmp(opt, "--alg") == 0) params.alg = parse_alg(val);
        else if (strcmp(opt, "--temperature") == 0) params.temperature = strtof(val, NULL);
        else if (strcmp(opt, "--top-p") == 0) params.top_p = strtof(val, NULL);
        else if (strcmp(opt, "--top-k") == 0) params.top_k = atoi(val);
        else if (strcmp(opt, "--alg-temp") == 0) params.alg_temp = strtof(val, NULL);
        else if (strcmp(opt, "--eps") == 0) params.eps = strtof(val, NULL);
        else if (strcmp(opt, "--block-length") == 0) params.block_length = atoi(val);
        else if (strcmp(opt, "--cache") == 0) params.cache = parse_cache(val);
        else if (strcmp(opt, "--threshold") == 0) params.threshold = strtof(val, NULL);
        else if (strcmp(opt, "--seed") == 0) params.seed = strtoull(val, NULL, 10);
        else if (strcmp(opt, "--threads") == 0) cparams.n_threads = atoi(val);
        else if (strcmp(opt, "--cancel-at") == 0) progress.cancel_at = atoi(val);
        else { fprintf(stderr, "unknown option %s\n", opt); return 2; }
    }

    printf("unmask %s, model: %s, %lld parameters, context %d, vocabulary %d, mask id %d\n",
           unmask_version(), unmask_model_architecture(model),
           (long long)unmask_model_n_params(model), unmask_model_n_ctx(model),
           unmask_model_n_vocab(model), unmask_model_mask_id(model));

    /* The prompt text: the Instruct template when the model has it (as `unmask generate`). */
    char *text = NULL;
    if (chat && unmask_model_has_chat(model) == 1) {
        int32_t need = -unmask_apply_chat(model, prompt, -1, NULL, 0); /* ask for the size */
        text = malloc((size_t)need);
        if (text == NULL || unmask_apply_chat(model, prompt, -1, text, need) < 0) {
            return fail("apply_chat", unmask_last_status(), NULL);
        }
    } else {
        size_t len = strlen(prompt);
        text = malloc(len + 1);
        if (text == NULL) return 1;
        memcpy(text, prompt, len + 1);
    }

    /* Tokenize: a first guess, grown to the size asked for if too small. */
    int32_t capacity = 16;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)capacity);
    int32_t n_ids = unmask_tokenize(model, text, -1, ids, capacity);
    if (n_ids < 0 && n_ids != UNMASK_SIZE_ERROR) {
        capacity = -n_ids;
        ids = realloc(ids, sizeof(int32_t) * (size_t)capacity);
        n_ids = unmask_tokenize(model, text, -1, ids, capacity);
    }
    if (n_ids < 0) return fail("tokenize", unmask_last_status(), NULL);
    printf("prompt %d ids:", n_ids);
    for (int32_t i = 0; i < n_ids; i++) printf("%s%d", i ? "," : " ", ids[i]);
    printf("\n");

    unmask_context_t *ctx = NULL;
    status = unmask_context_new(model, cparams, &ctx);
    if (status != UNMASK_OK) return fail("context", status, NULL);

    unmask_result_t *result = NULL;
    status = unmask_generate(ctx, ids, n_ids, params, on_step, &progress, &result);
    if (status != UNMASK_OK && status != UNMASK_CANCELLED) return fail("generate", status, ctx);
    printf("status %d (%s), %d steps, %d forward passes, %d callbacks, %.3f s\n", status,
           unmask_status_string(status), result->steps, result->forward_passes, progress.calls,
           result->seconds);
    printf("tokens");
    for (int32_t i = 0; i < result->n_tokens; i++) printf("%s%d", i ? "," : " ", result->tokens[i]);
    printf("\nanswer %d tokens, %d bytes\n--- text ---\n", result->n_answer_tokens, result->text_len);
    fwrite(result->text, 1, (size_t)result->text_len, stdout);

    unmask_result_free(result);
    unmask_context_free(ctx);
    unmask_model_free(model);
    free(ids);
    free(text);
    return 0;
}
