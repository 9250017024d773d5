#!/usr/bin/env python3
"""Generate with libunmask from Python through ctypes (standard library only).

    python3 generate.py MODEL PROMPT [--lib PATH/libunmask.so] [--max-new-tokens N] [--steps N]
        [--alg entropy] [--temperature F] [--top-p F] [--top-k N] [--alg-temp F] [--eps F]
        [--block-length N] [--seed N] [--threads N] [--no-chat] [--cancel-at K] [--json]

The library is found with --lib, else $UNMASK_LIB, else ctypes.util.find_library("unmask").
The structs below mirror include/unmask.h field for field.
"""
import argparse
import ctypes
import ctypes.util
import json
import os
import sys

ALGS = {"origin": 0, "maskgit_plus": 1, "topk_margin": 2, "entropy": 3}
CACHES = {"none": 0, "prefix": 1, "dual": 2}
# The UNMASK_ABI_VERSION of the unmask.h these structures transcribe.
ABI_VERSION = 2
UNMASK_OK, UNMASK_CANCELLED, UNMASK_SIZE_ERROR = 0, 1, -(2**31)


class ContextParams(ctypes.Structure):
    _fields_ = [("n_threads", ctypes.c_int32)]


class GenerateParams(ctypes.Structure):
    _fields_ = [
        ("seed", ctypes.c_uint64),
        ("max_new_tokens", ctypes.c_int32),
        ("steps", ctypes.c_int32),
        ("alg", ctypes.c_int32),
        ("temperature", ctypes.c_float),
        ("top_p", ctypes.c_float),
        ("top_k", ctypes.c_int32),
        ("alg_temp", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("block_length", ctypes.c_int32),
        ("chat", ctypes.c_int32),
        ("n_threads", ctypes.c_int32),
        ("cache", ctypes.c_int32),
        ("threshold", ctypes.c_float),
    ]


class Step(ctypes.Structure):
    _fields_ = [
        ("positions", ctypes.POINTER(ctypes.c_int32)),
        ("tokens", ctypes.POINTER(ctypes.c_int32)),
        ("canvas", ctypes.POINTER(ctypes.c_int32)),
        ("step", ctypes.c_int32),
        ("n_steps", ctypes.c_int32),
        ("n_committed", ctypes.c_int32),
        ("n_canvas", ctypes.c_int32),
        ("n_prompt", ctypes.c_int32),
        ("n_masked", ctypes.c_int32),
        ("seconds", ctypes.c_double),
    ]


class Result(ctypes.Structure):
    _fields_ = [
        ("tokens", ctypes.POINTER(ctypes.c_int32)),
        ("canvas", ctypes.POINTER(ctypes.c_int32)),
        ("text", ctypes.c_void_p),
        ("n_tokens", ctypes.c_int32),
        ("n_answer_tokens", ctypes.c_int32),
        ("n_canvas", ctypes.c_int32),
        ("n_prompt", ctypes.c_int32),
        ("text_len", ctypes.c_int32),
        ("steps", ctypes.c_int32),
        ("forward_passes", ctypes.c_int32),
        ("cancelled", ctypes.c_int32),
        ("seconds", ctypes.c_double),
    ]


StepCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.POINTER(Step), ctypes.c_void_p)


def load_library(path):
    path = path or os.environ.get("UNMASK_LIB") or ctypes.util.find_library("unmask")
    if not path:
        sys.exit("libunmask not found: pass --lib PATH or set UNMASK_LIB")
    lib = ctypes.CDLL(path)
    p, i32, status = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32
    signatures = {
        "unmask_abi_version": (ctypes.c_uint32, []),
        "unmask_version": (ctypes.c_char_p, []),
        "unmask_status_string": (ctypes.c_char_p, [status]),
        "unmask_last_error": (ctypes.c_char_p, [p]),
        "unmask_model_load": (status, [ctypes.c_char_p, ctypes.POINTER(p)]),
        "unmask_model_free": (None, [p]),
        "unmask_model_mask_id": (i32, [p]),
        "unmask_model_has_chat": (i32, [p]),
        "unmask_apply_chat": (i32, [p, ctypes.c_char_p, i32, ctypes.c_char_p, i32]),
        "unmask_tokenize": (i32, [p, ctypes.c_char_p, i32, ctypes.POINTER(i32), i32]),
        "unmask_context_default_params": (ContextParams, []),
        "unmask_context_new": (status, [p, ContextParams, ctypes.POINTER(p)]),
        "unmask_context_free": (None, [p]),
        "unmask_generate_default_params": (GenerateParams, []),
        "unmask_model_default_params": (status, [p, ctypes.POINTER(GenerateParams)]),
        "unmask_generate_text": (
            status,
            [p, ctypes.c_char_p, i32, GenerateParams, StepCallback, p, ctypes.POINTER(ctypes.POINTER(Result))],
        ),
        "unmask_result_free": (None, [ctypes.POINTER(Result)]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    if lib.unmask_abi_version() != ABI_VERSION:
        sys.exit("libunmask ABI %d, this script speaks %d" % (lib.unmask_abi_version(), ABI_VERSION))
    return lib


def check(lib, status, what, ctx=None):
    if status not in (UNMASK_OK, UNMASK_CANCELLED):
        message = lib.unmask_last_error(ctx).decode("utf-8", "replace")
        sys.exit("%s: %s (%d): %s" % (what, lib.unmask_status_string(status).decode(), status, message))


def prompt_length(lib, model, text, chat):
    """Tokens of the prompt as unmask_generate_text builds it (template, then tokenize)."""
    data = text.encode("utf-8")
    if chat and lib.unmask_model_has_chat(model) == 1:
        need = -lib.unmask_apply_chat(model, data, len(data), None, 0)
        buf = ctypes.create_string_buffer(need)
        n = lib.unmask_apply_chat(model, data, len(data), buf, need)
        data = buf.raw[:n]
    need = lib.unmask_tokenize(model, data, len(data), None, 0)
    if need == UNMASK_SIZE_ERROR:
        check(lib, -1, "tokenize")
    return -need if need < 0 else need


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("prompt")
    ap.add_argument("--lib")
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--alg", choices=sorted(ALGS))
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--alg-temp", type=float)
    ap.add_argument("--eps", type=float)
    ap.add_argument("--block-length", type=int)
    ap.add_argument("--cache", choices=sorted(CACHES))
    ap.add_argument("--threshold", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-chat", action="store_true")
    ap.add_argument("--cancel-at", type=int, default=-1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    lib = load_library(args.lib)
    model = ctypes.c_void_p()
    check(lib, lib.unmask_model_load(args.model.encode(), ctypes.byref(model)), "load")
    # The settings `unmask generate` uses on this file without flags (built-in < model file); the
    # options given replace them.
    params = GenerateParams()
    check(lib, lib.unmask_model_default_params(model, ctypes.byref(params)), "default params")
    for field in ("max_new_tokens", "steps", "temperature", "top_p", "top_k", "alg_temp", "eps", "block_length", "seed", "threshold"):
        value = getattr(args, field)
        if value is not None:
            setattr(params, field, value)
    if args.alg is not None:
        params.alg = ALGS[args.alg]
    if args.cache is not None:
        params.cache = CACHES[args.cache]
    params.chat = 0 if args.no_chat else -1

    cparams = lib.unmask_context_default_params()
    cparams.n_threads = args.threads
    ctx = ctypes.c_void_p()
    check(lib, lib.unmask_context_new(model, cparams, ctypes.byref(ctx)), "context")

    commits = []

    def on_step(step_ptr, _user_data):
        step = step_ptr.contents
        commits.append([step.positions[i] for i in range(step.n_committed)])
        if not args.json:
            new_tokens = step.n_canvas - step.n_prompt
            done = new_tokens - step.n_masked
            rate = done / step.seconds if step.seconds > 0 else 0.0
            left = step.seconds / (step.step + 1) * (step.n_steps - step.step - 1)
            print("step %d/%d: %d committed, %d of %d filled, %.1f tokens/s, %.1f s left" % (
                step.step + 1, step.n_steps, step.n_committed, done, new_tokens, rate, left))
        return step.step != args.cancel_at

    callback = StepCallback(on_step)  # keep a reference while the library may call it
    text = args.prompt.encode("utf-8")
    result = ctypes.POINTER(Result)()
    status = lib.unmask_generate_text(ctx, text, len(text), params, callback, None, ctypes.byref(result))
    check(lib, status, "generate", ctx)
    r = result.contents
    out = {
        "status": status,
        "prompt_tokens": prompt_length(lib, model, args.prompt, not args.no_chat),
        "tokens": [r.tokens[i] for i in range(r.n_tokens)],
        "text": ctypes.string_at(r.text, r.text_len).decode("utf-8"),
        "steps": r.steps,
        "cancelled": bool(r.cancelled),
        "commits": commits,
    }
    lib.unmask_result_free(result)
    lib.unmask_context_free(ctx)
    lib.unmask_model_free(model)
    if args.json:
        print(json.dumps(out))
    else:
        print(out["text"])
        print("%d tokens, %d steps (libunmask %s)" % (len(out["tokens"]), out["steps"], lib.unmask_version().decode()),
              file=sys.stderr)


if __name__ == "__main__":
    main()
