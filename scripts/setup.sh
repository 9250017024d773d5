#!/usr/bin/env bash
# Checks, and installs where it can, the system packages that building (and with --test,
# testing) unmask needs on Debian or Ubuntu. Rust itself is not installed here (see rustup.rs).
#
#   scripts/setup.sh            # build: cmake, libclang-dev, a C/C++ compiler
#   scripts/setup.sh --test     # also what `cargo test --workspace --release` runs:
#                               # python3 with venv (the reference checks), pkg-config
#   scripts/setup.sh --check    # report what is missing and exit 1; install nothing
#
# Idempotent: when everything is present it prints nothing and returns in milliseconds.
# Installs with apt-get as root, or through sudo; otherwise, or when apt-get fails, it names
# the missing packages and the command that installs them, and exits 1.
#
# Why each package:
#   cmake          llama-cpp-sys-2 compiles the vendored ggml with cmake
#   libclang-dev   bindgen reads ggml's headers through libclang to generate the Rust bindings
#   build-essential  gcc/g++/make: ggml is C and C++
#   python3-venv   (--test) the independent reference checks run in a Python virtual environment
#   pkg-config     (--test) the C API test links an example through unmask.pc
#   qemu-user      (--test, x86-64) the processor-check test runs the programs on an emulated
#                  processor without AVX2
set -euo pipefail

want_test=0
check_only=0
for arg in "$@"; do
    case "$arg" in
    --test) want_test=1 ;;
    --check) check_only=1 ;;
    -h | --help)
        sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "setup: unknown option '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

have() { command -v "$1" >/dev/null 2>&1; }

# True when dpkg knows the package as installed (false, not an error, without dpkg).
dpkg_installed() {
    have dpkg-query && [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

# libclang: the Debian package, or a libclang the user points bindgen at.
have_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    dpkg_installed libclang-dev && return 0
    # Without dpkg: any LLVM installation with libclang and clang's own headers.
    ! have dpkg-query && compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null
}

missing=()
have cmake || missing+=(cmake)
have_libclang || missing+=(libclang-dev)
{ have cc && have c++ && have make; } || missing+=(build-essential)
if [ "$want_test" = 1 ]; then
    # Debian splits venv/ensurepip out of python3; importing ensurepip shows it is there.
    have python3 || missing+=(python3)
    { have python3 && python3 -c 'import ensurepip, venv' >/dev/null 2>&1; } || missing+=(python3-venv)
    have pkg-config || missing+=(pkg-config)
    if [ "$(uname -m)" = x86_64 ]; then have qemu-x86_64 || missing+=(qemu-user); fi
fi

[ ${#missing[@]} -eq 0 ] && exit 0

install_cmd="apt-get install -y --no-install-recommends ${missing[*]}"
explain() {
    echo "setup: $1" >&2
    echo "setup: missing: ${missing[*]}" >&2
    if have apt-get; then
        echo "setup: install them with:  sudo apt-get update && sudo $install_cmd" >&2
    else
        echo "setup: this is not a Debian/Ubuntu system; install the equivalents with your package" >&2
        echo "setup: manager: cmake, the clang/libclang development files, gcc/g++ and make" >&2
        if [ "$want_test" = 1 ]; then echo "setup: and for the tests python3 with its venv module, pkg-config, qemu-user" >&2; fi
    fi
    exit 1
}

[ "$check_only" = 1 ] && explain "some packages are missing"
have apt-get || explain "cannot install: no apt-get"

if [ "$(id -u)" = 0 ]; then
    sudo=()
elif have sudo; then
    sudo=(sudo)
else
    explain "cannot install: not root and no sudo"
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq || explain "apt-get update failed (network or sources?)"
# shellcheck disable=SC2086 # the package list is meant to split
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive $install_cmd -qq >/dev/null ||
    explain "apt-get install failed"
echo "setup: done"
