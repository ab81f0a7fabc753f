# CMake toolchain for the horovod image's cross stage: x86-64 clang and lld build for
# aarch64 against the target image's own files, mounted at /sysroot (its glibc, libstdc++
# headers and crt files from its g++, Python headers, torch, Open MPI). Linking against
# the target's libraries, not the build machine's, keeps every symbol version within what
# the board's image has (glibc 2.27 and GCC 7's libstdc++ on JetPack 4).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_SYSROOT /sysroot)
# The wrappers are clang for aarch64 with the sysroot (cross/clang-wrapper): nvcc, given
# the C++ compiler as its host compiler, passes no target of its own.
set(CMAKE_C_COMPILER /opt/cross/bin/aarch64-linux-gnu-clang)
set(CMAKE_CXX_COMPILER /opt/cross/bin/aarch64-linux-gnu-clang++)
set(CMAKE_C_COMPILER_TARGET aarch64-linux-gnu)
set(CMAKE_CXX_COMPILER_TARGET aarch64-linux-gnu)
# Executables are only CMake's probes (the MPI test program). lld, unlike GNU ld, does not
# load a library's own dependencies, so Open MPI 4.1's libmpi_cxx.so (which calls libopen-pal
# directly) fails its "undefined in a shared library" check: allowed for them.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-fuse-ld=lld -Wl,--allow-shlib-undefined")
set(CMAKE_SHARED_LINKER_FLAGS_INIT -fuse-ld=lld)
set(CMAKE_MODULE_LINKER_FLAGS_INIT -fuse-ld=lld)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# FindMPI asks the MPI compiler wrappers for flags: the target's own, through mpi-wrapper.
set(MPI_C_COMPILER /opt/cross/bin/mpicc)
set(MPI_CXX_COMPILER /opt/cross/bin/mpicxx)
