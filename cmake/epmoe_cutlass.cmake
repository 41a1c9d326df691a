# SPDX-License-Identifier: Apache-2.0
# The optional sm_100a path of the fast expert kernels: one CUTLASS 4.2
# translation unit (kernels/moe2_sm100_cutlass.cu). OFF by default: that TU
# alone takes about 70 s and 5 GB of compiler memory.
#
# EPMOE_CUTLASS=ON fetches the pinned nvidia-cutlass wheel (BSD-3-Clause; only
# its headers and licence are used) with pip into the build directory at
# configure time, checks its SHA-256 and unpacks the headers there; nothing is
# committed. EPMOE_CUTLASS_INCLUDE names an unpacked CUTLASS include directory
# instead (offline machines; add tools/util/include as a second entry).
# `cmake --build BUILD --target epmoe_cutlass_objs` compiles just that TU.
option(EPMOE_CUTLASS "build the sm_100a CUTLASS grouped NVFP4 GEMM (needs CUDA, pip or EPMOE_CUTLASS_INCLUDE)" OFF)
set(EPMOE_CUTLASS_INCLUDE "" CACHE STRING "CUTLASS include directories; empty: fetch the pinned wheel")
set(EPMOE_CUTLASS_VERSION 4.2.0.0)
set(EPMOE_CUTLASS_SHA256 f9599ada45c7bcb6bf53f7d3f0a7d154183e53451c01bfa59eecd37dd4a693f6)

function(epm_cutlass_headers out)
  if(EPMOE_CUTLASS_INCLUDE)
    set(${out} ${EPMOE_CUTLASS_INCLUDE} PARENT_SCOPE)
    return()
  endif()
  set(_dir ${CMAKE_BINARY_DIR}/_deps/cutlass)
  set(_whl ${_dir}/nvidia_cutlass-${EPMOE_CUTLASS_VERSION}-py3-none-any.whl)
  file(GLOB _have ${_whl})
  if(NOT _have)
    find_package(Python3 COMPONENTS Interpreter REQUIRED)
    message(STATUS "epmoe: fetching nvidia-cutlass==${EPMOE_CUTLASS_VERSION} with pip into ${_dir}")
    execute_process(COMMAND ${Python3_EXECUTABLE} -m pip download nvidia-cutlass==${EPMOE_CUTLASS_VERSION}
                            --no-deps --only-binary=:all: -d ${_dir}
                    RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_VARIABLE _err)
    if(NOT _rc EQUAL 0)
      message(FATAL_ERROR "EPMOE_CUTLASS=ON: pip could not fetch nvidia-cutlass==${EPMOE_CUTLASS_VERSION} "
                          "(${_err}); set EPMOE_CUTLASS_INCLUDE to an unpacked CUTLASS include directory")
    endif()
  endif()
  file(SHA256 ${_whl} _sha)
  if(NOT _sha STREQUAL EPMOE_CUTLASS_SHA256)
    message(FATAL_ERROR "EPMOE_CUTLASS=ON: ${_whl} has SHA-256 ${_sha}, expected ${EPMOE_CUTLASS_SHA256}")
  endif()
  file(GLOB _unpacked ${_dir}/cutlass_library/source/include/cutlass/cutlass.h)
  if(NOT _unpacked)
    file(ARCHIVE_EXTRACT INPUT ${_whl} DESTINATION ${_dir}
         PATTERNS "cutlass_library/source/include/*" "cutlass_library/source/tools/util/include/*" "*LICENSE*")
  endif()
  set(${out} ${_dir}/cutlass_library/source/include ${_dir}/cutlass_library/source/tools/util/include PARENT_SCOPE)
endfunction()
