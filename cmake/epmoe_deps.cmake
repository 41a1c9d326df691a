# SPDX-License-Identifier: Apache-2.0
# Dependencies: MPI, libuv, jansson, cmocka (pkg-config), OpenMP (optional),
# CUDA toolkit + NCCL (optional, EPMOE_CUDA).
find_package(Threads REQUIRED)
find_package(MPI REQUIRED COMPONENTS C)
find_package(PkgConfig REQUIRED)
pkg_check_modules(LIBUV REQUIRED IMPORTED_TARGET libuv)
pkg_check_modules(JANSSON REQUIRED IMPORTED_TARGET jansson)
pkg_check_modules(CMOCKA IMPORTED_TARGET cmocka)
find_package(OpenMP COMPONENTS C)
find_library(EPMOE_LIBM m)

# The CUDA toolkit's headers are needed even without a GPU build: the codec
# tests compare against NVIDIA's host conversion routines in cuda_fp8.h/cuda_fp4.h.
set(_cuda_hint_dirs $ENV{CUDA_HOME} $ENV{CUDA_PATH} /usr/local/cuda)
find_path(EPMOE_CUDA_INCLUDE_DIR cuda_fp4.h HINTS ${_cuda_hint_dirs} PATH_SUFFIXES include)

set(EPMOE_HAVE_CUDA OFF)
if(NOT EPMOE_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(EPMOE_HAVE_CUDA ON)
  elseif(EPMOE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "EPMOE_CUDA=ON but no CUDA compiler was found")
  endif()
endif()

if(EPMOE_HAVE_CUDA)
  # NCCL: the CUDA toolkit folder on CI, /usr/lib/x86_64-linux-gnu on the GPU nodes.
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/include $ENV{NCCL_HOME}/include)
  find_library(NCCL_LIBRARY NAMES nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/lib/x86_64-linux-gnu $ENV{NCCL_HOME}/lib)
  if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
    message(FATAL_ERROR "CUDA found but NCCL is missing (looked in ${CUDAToolkit_LIBRARY_DIR} and /usr)")
  endif()
  set(CMAKE_CUDA_STANDARD 17)
  # Hopper runs the kernels; Blackwell is compiled so breakage shows in CI.
  set(EPMOE_CUDA_ARCH_FLAGS
      -gencode=arch=compute_90a,code=sm_90a
      -gencode=arch=compute_100a,code=sm_100a)
  set(CMAKE_CUDA_ARCHITECTURES OFF)
  message(STATUS "epmoe: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, NCCL ${NCCL_LIBRARY}")
else()
  message(STATUS "epmoe: building without CUDA (cpu backend and mpi comm only)")
endif()
