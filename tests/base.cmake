# SPDX-License-Identifier: Apache-2.0
# The one-of-each primitives: bf16 (epmoe/bf16.h), clock, dtype, the CUDA
# error translation (epmoe/cuda_status.h) and comm/'s MPI translation.

epm_add_test(test_base SOURCES unit/test_base.c LABELS cpu)

# bf16.h against NVIDIA's host conversions: needs only the toolkit headers.
# C++ because cuda_bf16.h is C++-only.
if(EPMOE_CUDA_INCLUDE_DIR)
  epm_add_test(test_bf16_nvidia SOURCES unit/test_bf16_nvidia.cpp LABELS cpu)
  target_include_directories(test_bf16_nvidia SYSTEM PRIVATE ${EPMOE_CUDA_INCLUDE_DIR})
  if(EPMOE_SANITIZE)
    set_tests_properties(test_bf16_nvidia PROPERTIES ENVIRONMENT "EPMOE_BF16_STRIDE=997")
  endif()
  add_test(NAME test_bf16_nvidia_large COMMAND test_bf16_nvidia --all32)
  set_tests_properties(test_bf16_nvidia_large PROPERTIES LABELS large TIMEOUT 600)
endif()

# cudart (no driver needed for error names and strings), also in CPU builds.
if(NOT TARGET CUDA::cudart)
  find_package(CUDAToolkit QUIET)
endif()
if(TARGET CUDA::cudart)
  epm_add_test(test_cuda_status SOURCES unit/test_cuda_status.c LABELS cpu LIBS CUDA::cudart)
else()
  message(STATUS "epmoe: cudart not found; skipping test_cuda_status")
endif()

add_executable(test_mpi_status mpi/test_mpi_status.c)
target_include_directories(test_mpi_status PRIVATE ${PROJECT_SOURCE_DIR}/comm)
target_link_libraries(test_mpi_status PRIVATE epmoe)
epm_add_mpi_test(mpi_status_np1 NP 1 COMMAND test_mpi_status LABELS mpi TIMEOUT 60)

# The logger (runtime/base/log.c): JSON lines a strict parser accepts, text
# lines, the journal's "<N>" priorities, the level filter, whole lines from
# threads (stderr redirected to a file).
epm_add_test(test_log SOURCES unit/test_log.c LABELS cpu LIBS epm_testutil TIMEOUT 60)
