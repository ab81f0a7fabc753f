#!/usr/bin/env python3
"""Compile Horovod's CUDA kernels as its CMake does: compile-kernels CC_LIST OUTDIR

The nvcc flags are Horovod's own (cmake/build_utils.get_nvcc_flags, which reads
HOROVOD_BUILD_CUDA_CC_LIST); the standard and ABI flags are those
horovod/common/ops/cuda/CMakeLists.txt adds. Intermediate files are kept in OUTDIR, so the
caller can read the cubins nvcc made."""

import os
import shlex
import subprocess
import sys

cc_list, out = sys.argv[1], sys.argv[2]
os.environ["HOROVOD_BUILD_CUDA_CC_LIST"] = cc_list
os.environ["PATH"] = "/usr/local/cuda/bin:" + os.environ["PATH"]
os.chdir("/src")
sys.path.insert(0, "cmake")
import build_utils  # noqa: E402  (Horovod's own, from its sdist)

flags = shlex.split(" ".join(build_utils.get_nvcc_flags()))
os.makedirs(out, exist_ok=True)
argv = ["nvcc", *flags, "-std=c++11", "-D_GLIBCXX_USE_CXX11_ABI=1", "--keep", "--keep-dir",
        out, "-c", "horovod/common/ops/cuda/cuda_kernels.cu", "-o",
        os.path.join(out, "cuda_kernels.o")]
print(shlex.join(argv), flush=True)
sys.exit(subprocess.run(argv).returncode)
