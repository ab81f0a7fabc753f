#!/bin/sh
# Build Horovod's wheel from its sdist: build-wheel.sh PYTHON SDIST OUTDIR
#
# The cross stage runs it natively with PYTHON the target's own python3 under QEMU
# (QEMU_LD_PREFIX=/sysroot): setup.py, the torch and sysconfig queries and the wheel's tags
# are the target's, while CMake, clang and lld run at native speed. The fallback in the
# final stage runs it with python3 inside the target (everything under QEMU).
set -eu
py=$1
sdist=$2
out=$3
work=/build/horovod
rm -rf "$work" && mkdir -p "$work" "$out"
tar -xzf "$sdist" -C "$work" --strip-components=1
cd "$work"
# Horovod 0.28.1, the last release, compiles as C++14, but torch >= 2.1 headers need C++17
# (horovod/horovod#3996; master moved on after the release). With such a torch the sdist is
# built as C++17 throughout, Gloo included: a C++17 extension linked with a C++14 Gloo fails
# on Store::kDefaultTimeout, defined in both. The l4t-pytorch bases (torch 1.10 to 2.0)
# build exactly what PyPI ships. The greps fail the build if a future sdist lacks the lines.
if "$py" -c 'import sys, torch; sys.exit([int(x) for x in torch.__version__.split(".")[:2]] < [2, 1])'; then
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
        CMakeLists.txt horovod/torch/CMakeLists.txt
    grep -q 'set(CMAKE_CXX_STANDARD 17)' CMakeLists.txt
    grep -q 'set(CMAKE_CXX_STANDARD 17)' horovod/torch/CMakeLists.txt
fi
# Everything setup.py needs is installed in the target already: nothing is fetched here.
HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
    "$py" -m pip wheel --no-deps --no-build-isolation --no-index --no-cache-dir . -w "$out"
cd /
rm -rf "$work"
