#!/bin/sh
# Build TFLite Micro + CMSIS-NN for one Cortex-M core, once, into a cache outside the project tree.
#
# Usage: tflm_library.sh TFLM_TREE TARGET_ARCH
#   TFLM_TREE    a TFLM checkout whose tensorflow/lite/micro/tools/make/downloads/ already holds CMSIS,
#                CMSIS-NN, flatbuffers, gemmlowp, ruy and kissfft (TFLM's Makefile downloads them otherwise)
#   TARGET_ARCH  as TFLM's cortex_m_generic target spells it: cortex-m3, cortex-m4, cortex-m7, cortex-m33, cortex-m55
#
# Prints the path of libtensorflow-microlite.a. The cache folder is keyed by a hash of the tree's files, the
# core, the make arguments and the compiler's version, so a changed tree, flag or compiler builds anew and an
# unchanged one is reused. Cache root: $TINYKD_CACHE_DIR, else $XDG_CACHE_HOME/tinykd, else ~/.cache/tinykd.
# The build log is kept beside the library (build.log); TFLM's Makefile imports PIL while it parses, so the
# python3 first on PATH needs Pillow.
set -eu

tree=$(cd "$1" && pwd)
arch=$2
toolchain_root=${TOOLCHAIN_ROOT:-$(dirname "$(command -v arm-none-eabi-gcc)")/}
make_args="TARGET=cortex_m_generic TARGET_ARCH=$arch OPTIMIZED_KERNEL_DIR=cmsis_nn TARGET_TOOLCHAIN_ROOT=$toolchain_root"
cache_root=${TINYKD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tinykd}

# The tree's content, not its path or timestamps, names the build: every file but a previous build's gen/.
tree_hash=$(cd "$tree" && find . -path ./gen -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-64)
compiler=$("${toolchain_root}arm-none-eabi-gcc" --version | head -n 1)
key=$(printf '%s\n' "$tree_hash" "$arch" "$make_args" "$compiler" | sha256sum | cut -c1-16)
out="$cache_root/tflm/$arch-$key"
lib="$out/libtensorflow-microlite.a"

if [ ! -f "$lib" ]; then
    mkdir -p "$cache_root/tflm"
    work=$(mktemp -d "$cache_root/tflm/.build-$arch-XXXXXX")
    trap 'rm -rf "$work"' EXIT
    # TFLM's Makefile writes gen/ inside the tree: build in a private copy so the tree can stay read-only.
    cp -r "$tree" "$work/tflm"
    rm -rf "$work/tflm/gen"
    jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
    start=$(date +%s)
    if ! (cd "$work/tflm" && make -f tensorflow/lite/micro/tools/make/Makefile $make_args microlite -j"$jobs") \
            > "$work/build.log" 2>&1; then
        tail -n 30 "$work/build.log" >&2
        echo "tflm_library.sh: building TFLM for $arch failed (log above)" >&2
        exit 1
    fi
    built=$(find "$work/tflm/gen" -name libtensorflow-microlite.a | head -n 1)
    mkdir -p "$work/out"
    cp "$built" "$work/out/libtensorflow-microlite.a"
    mv "$work/build.log" "$work/out/build.log"
    printf 'tree %s\ntree_sha256 %s\ntarget_arch %s\nmake %s\ncompiler %s\nbuild_seconds %s\n' \
        "$tree" "$tree_hash" "$arch" "$make_args" "$compiler" "$(( $(date +%s) - start ))" > "$work/out/key.txt"
    # Publish atomically: a concurrent or interrupted build never leaves a half-written library in the cache.
    mv "$work/out" "$out.tmp.$$" && mv -T "$out.tmp.$$" "$out" 2>/dev/null || rm -rf "$out.tmp.$$"
fi
echo "$lib"
