#!/usr/bin/env bash
# Installs libunmask for C and C++ programs:
#
#   ffi/install.sh --prefix DIR [--no-build] [--from DIR] [--no-strip] [--debug-files]
#
# builds `cargo build --release -p unmask-ffi` (unless --no-build) and installs, stripped of debug
# information (--no-strip keeps it; --debug-files keeps it in DIR/lib/debug/, linked by
# .gnu_debuglink so that gdb finds it),
#   DIR/include/unmask.h
#   DIR/lib/libunmask.so.X.Y.Z, libunmask.so.<ABI-1> -> it, libunmask.so -> that   (shared)
#   DIR/lib/libunmask.a                                                              (static)
#   DIR/lib/pkgconfig/unmask.pc
#   DIR/lib/cmake/unmask/unmaskConfig.cmake, unmaskConfigVersion.cmake (unmask::unmask, unmask::unmask_static)
# --from DIR takes the built libraries from DIR (default: $CARGO_TARGET_DIR/release or target/release,
# or its deps/ when that holds a newer build, as `cargo test` leaves it).
# Outside /usr and /usr/local, unmask.pc's Libs carry -Wl,-rpath so that programs find the
# shared library at run time; the last lines say how to make pkg-config find unmask.pc.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
prefix=""
build=1
from=""
strip_libs=1
debug_files=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        --no-build) build=0; shift ;;
        --from) from="${2:?--from needs a directory}"; shift 2 ;;
        --from=*) from="${1#--from=}"; shift ;;
        --no-strip) strip_libs=0; shift ;;
        --debug-files) debug_files=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$prefix" ] || { echo "install.sh: give --prefix DIR" >&2; exit 2; }

if [ "$build" = 1 ]; then
    (cd "$root" && cargo build --release -p unmask-ffi)
fi
if [ -z "$from" ]; then
    target="${CARGO_TARGET_DIR:-$root/target}"
    case "$target" in /*) ;; *) target="$root/$target" ;; esac
    from="$target/release"
    # `cargo test` leaves its fresh build in release/deps without copying it up to release/.
    if [ -f "$from/deps/libunmask.so" ] && [ "$from/deps/libunmask.so" -nt "$from/libunmask.so" ]; then
        from="$from/deps"
    fi
fi

header="$here/include/unmask.h"
macro() { sed -n "s/^#define $1 \([0-9]*\)$/\1/p" "$header"; }
abi=$(macro UNMASK_ABI_VERSION)
version="$(macro UNMASK_VERSION_MAJOR).$(macro UNMASK_VERSION_MINOR).$(macro UNMASK_VERSION_PATCH)"
soabi=$((abi - 1))

mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
lib="$prefix/lib"
mkdir -p "$prefix/include" "$lib/pkgconfig" "$lib/cmake/unmask"
install -m 644 "$header" "$prefix/include/unmask.h"

if [ -f "$from/libunmask.so" ]; then
    install -m 755 "$from/libunmask.so" "$lib/libunmask.so.$version"
    ln -sf "libunmask.so.$version" "$lib/libunmask.so.$soabi"
    ln -sf "libunmask.so.$soabi" "$lib/libunmask.so"
elif [ -f "$from/libunmask.dylib" ]; then
    install -m 755 "$from/libunmask.dylib" "$lib/libunmask.dylib"
else
    echo "install.sh: no libunmask.so in $from (build with cargo build --release -p unmask-ffi)" >&2
    exit 1
fi
[ -f "$from/libunmask.a" ] || { echo "install.sh: no libunmask.a in $from" >&2; exit 1; }
install -m 644 "$from/libunmask.a" "$lib/libunmask.a"

# Release builds carry debug information (line tables): most of the file, none of the code.
# The shared library loses its symbol table too (--strip-unneeded keeps what the dynamic linker
# needs); the static one keeps its symbols, which linking needs.
if [ "$strip_libs" = 1 ]; then
    if command -v strip >/dev/null 2>&1; then
        shared="$lib/libunmask.so.$version"
        [ -f "$shared" ] || shared="$lib/libunmask.dylib"
        if [ "$debug_files" = 1 ] && command -v objcopy >/dev/null 2>&1; then
            mkdir -p "$lib/debug"
            debug="$lib/debug/$(basename "$shared").debug"
            objcopy --only-keep-debug "$shared" "$debug"
            chmod 644 "$debug"
        fi
        strip --strip-unneeded "$shared"
        strip --strip-debug "$lib/libunmask.a"
        if [ "$debug_files" = 1 ] && [ -n "${debug:-}" ]; then
            (cd "$lib/debug" && objcopy --add-gnu-debuglink="$(basename "$debug")" "$shared")
        fi
    else
        echo "install.sh: no \`strip\`: installed with debug information (about 20x larger)" >&2
    fi
fi

# System libraries the static library needs (ggml is C++; Rust's std needs unwinding and libc).
private="-lstdc++ -lpthread -lm -ldl"
[ "$(uname -s)" = Linux ] && private="$private -lgcc_s -lutil -lrt"
# Programs linked from a prefix the dynamic linker does not search need an rpath to start.
rpath=""
case "$prefix" in
    /usr|/usr/local) ;;
    *) rpath=" -Wl,-rpath,\${libdir}" ;;
esac
cat > "$lib/pkgconfig/unmask.pc" <<PC
prefix=$prefix
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include

Name: unmask
Description: Runtime for masked-diffusion code models (DiffuCoder, Dream) on GGML
Version: $version
Libs: -L\${libdir}$rpath -lunmask
Libs.private: $private
Cflags: -I\${includedir}
PC

install -m 644 "$here/cmake/unmaskConfig.cmake" "$lib/cmake/unmask/unmaskConfig.cmake"
cat > "$lib/cmake/unmask/unmaskConfigVersion.cmake" <<CM
# Compatible when the major version matches (for 0.x, the minor too) and is not older.
set(PACKAGE_VERSION "$version")
if(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
    set(PACKAGE_VERSION_COMPATIBLE FALSE)
elseif("$version" MATCHES "^0\\\\." AND NOT PACKAGE_FIND_VERSION_MINOR EQUAL $(macro UNMASK_VERSION_MINOR))
    set(PACKAGE_VERSION_COMPATIBLE FALSE)
elseif(NOT "$version" MATCHES "^0\\\\." AND NOT PACKAGE_FIND_VERSION_MAJOR EQUAL $(macro UNMASK_VERSION_MAJOR))
    set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
    set(PACKAGE_VERSION_COMPATIBLE TRUE)
    if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
        set(PACKAGE_VERSION_EXACT TRUE)
    endif()
endif()
CM

echo "installed libunmask $version (ABI $abi) into $prefix"
# pkg-config finds unmask.pc only in its search path; say so when this prefix is not on it.
pc_dirs="${PKG_CONFIG_PATH:-}:$(pkg-config --variable pc_path pkg-config 2>/dev/null || true)"
case ":$pc_dirs:" in
    *":$lib/pkgconfig:"*) ;;
    *)
        echo "pkg-config does not search $lib/pkgconfig; for \`pkg-config --cflags --libs unmask\`:"
        echo "  export PKG_CONFIG_PATH=$lib/pkgconfig\${PKG_CONFIG_PATH:+:\$PKG_CONFIG_PATH}"
        ;;
esac
if [ -n "$rpath" ]; then
    echo "programs linked with pkg-config's flags find libunmask.so at run time through their rpath"
    echo "($lib); without them, link with -Wl,-rpath,$lib or set LD_LIBRARY_PATH=$lib"
fi
