/* Times unmask_tokenize and unmask_detokenize per call, with the tokenizer kept by the model
 * (the default) and with unmask_model_keep_tokenizer(model, 0).
 *
 *   cc tokenize_timing.c $(pkg-config --cflags --libs unmask) -o tokenize_timing
 *   ./tokenize_timing model.gguf [calls]
 *
 * Without unmask_model_keep_tokenizer in the library (older versions), build with
 * -DNO_KEEP_TOKENIZER: every call then rebuilds the tokenizer. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "unmask.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void run(unmask_model_t *model, const char *label, int calls) {
    const char *text = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n";
    int32_t ids[256];
    char buf[4096];
    double t0 = now(), tok = 0, detok = 0;
    for (int i = 0; i < calls; i++) {
        double a = now();
        int32_t n = unmask_tokenize(model, text, -1, ids, 256);
        double b = now();
        int32_t m = unmask_detokenize(model, ids, n, buf, (int32_t)sizeof buf, 1);
        double c = now();
        if (n <= 0 || m <= 0) {
            fprintf(stderr, "failed: %s\n", unmask_last_error(NULL));
            exit(1);
        }
        /* The first call builds the tokenizer in every mode; report it apart. */
        if (i == 0) {
            printf("%s: first tokenize %.1f ms, first detokenize %.1f ms\n", label, (b - a) * 1e3, (c - b) * 1e3);
        } else {
            tok += b - a;
            detok += c - b;
        }
    }
    if (calls > 1) {
        printf("%s: later calls: tokenize %.3f ms, detokenize %.3f ms per call (%d calls, %.1f s in all)\n",
               label, tok / (calls - 1) * 1e3, detok / (calls - 1) * 1e3, calls - 1, now() - t0);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [calls]\n", argv[0]);
        return 2;
    }
    int calls = argc > 2 ? atoi(argv[2]) : 10;
    unmask_model_t *model;
    if (unmask_model_load(argv[1], &model) != UNMASK_OK) {
        fprintf(stderr, "load: %s\n", unmask_last_error(NULL));
        return 1;
    }
#ifndef NO_KEEP_TOKENIZER
    run(model, "kept (default)", calls);
    unmask_model_keep_tokenizer(model, 0);
    run(model, "keep_tokenizer(0)", calls);
#else
    run(model, "library default", calls);
#endif
    unmask_model_free(model);
    return 0;
}
