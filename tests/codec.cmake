# SPDX-License-Identifier: Apache-2.0
# NVFP4 codec tests (runtime/nvfp4*.c).

# Against NVIDIA's host conversion routines: needs only the toolkit headers.
if(EPMOE_CUDA_INCLUDE_DIR)
  epm_add_test(test_nvfp4_nvidia SOURCES unit/test_nvfp4_nvidia.c LABELS cpu)
  target_include_directories(test_nvfp4_nvidia SYSTEM PRIVATE ${EPMOE_CUDA_INCLUDE_DIR})
  # Same binary, every 2^32 float; OpenMP comes with libepmoe when found.
  add_test(NAME test_nvfp4_nvidia_large COMMAND test_nvfp4_nvidia --all32)
  set_tests_properties(test_nvfp4_nvidia_large PROPERTIES LABELS large TIMEOUT 900)
else()
  message(STATUS "epmoe: cuda_fp4.h not found; skipping the NVIDIA codec comparison tests")
endif()

# FlashInfer reference vectors (tests/data): quantize, dequantize, layouts.
epm_add_test(test_nvfp4_flashinfer SOURCES unit/test_nvfp4_flashinfer.c LABELS cpu LIBS epm_testutil)
epm_add_test(test_nvfp4_quant SOURCES unit/test_nvfp4_quant.c LABELS cpu LIBS epm_testutil)
epm_add_test(test_nvfp4_layout SOURCES unit/test_nvfp4_layout.c LABELS cpu LIBS epm_testutil)
epm_add_test(test_nvfp4_scalar SOURCES unit/test_nvfp4_scalar.c LABELS cpu)
