# SPDX-License-Identifier: Apache-2.0
# GPU tests: label gpu, exit 77 (skipped) without a CUDA device;
# `large` ones need the seed's sizes (~55 GB of GPU memory).
if(EPMOE_HAVE_CUDA)
  add_library(epm_gputest STATIC gpu/gpu_util.cu)
  target_include_directories(epm_gputest PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/gpu ${PROJECT_SOURCE_DIR}/kernels)
  target_link_libraries(epm_gputest PUBLIC epmoe epm_testutil)
  target_compile_options(epm_gputest PRIVATE "$<$<COMPILE_LANGUAGE:CUDA>:${EPMOE_CUDA_ARCH_FLAGS}>")

  epm_add_test(test_gpu_quantize SOURCES gpu/test_gpu_quantize.c LABELS gpu LIBS epm_gputest GPU NO_CMOCKA TIMEOUT 600)
  epm_add_test(test_gpu_elementwise SOURCES gpu/test_gpu_elementwise.c LABELS gpu LIBS epm_gputest GPU NO_CMOCKA
               TIMEOUT 300)
  epm_add_test(test_gpu_quantize_4g SOURCES gpu/test_gpu_quantize_4g.c LABELS gpu large LIBS epm_gputest GPU
               NO_CMOCKA TIMEOUT 1200)
  # These compare with the CPU reference.
  epm_add_test(test_gpu_routing SOURCES gpu/test_gpu_routing.c LABELS gpu LIBS epm_gputest GPU NO_CMOCKA TIMEOUT 600)
  epm_add_test(test_gpu_moe SOURCES gpu/test_gpu_moe.c LABELS gpu LIBS epm_gputest GPU NO_CMOCKA TIMEOUT 600)
  # The fast (v2) kernels against the CPU reference, v1 and their own CPU
  # emulation; 77 as well on a GPU without v2 kernels in this build.
  epm_add_test(test_gpu_moe2 SOURCES gpu/test_gpu_moe2.c LABELS gpu LIBS epm_gputest GPU NO_CMOCKA TIMEOUT 900)
  epm_add_test(test_gpu_routing_warp SOURCES gpu/test_gpu_routing_warp.c LABELS gpu LIBS epm_gputest GPU NO_CMOCKA
               TIMEOUT 600)
  epm_add_test(test_gpu_seed SOURCES gpu/test_gpu_seed.c LABELS gpu large LIBS epm_gputest GPU NO_CMOCKA
               TIMEOUT 1200)
  # The whole pipeline past M*H = 2^32 (600,000 x 7168), one of two experts
  # local, top-1, a small intermediate to keep the GEMMs cheap.
  add_test(NAME test_gpu_pipeline_4g COMMAND test_gpu_seed --tokens 600000 --experts 2 --local 1 --top-k 1
           --inter 128 --routing renormalize)
  set_tests_properties(test_gpu_pipeline_4g PROPERTIES LABELS "gpu;large" TIMEOUT 1200 SKIP_RETURN_CODE 77
                       RESOURCE_LOCK gpu ENVIRONMENT "EPMOE_TEST_DATA=${EPMOE_TEST_DATA}")
  # The fixed-capacity step as one CUDA graph (NCCL inside) against the
  # variable-size cuda step; every rank exits 77 without a GPU.
  add_executable(test_gpu_graph_step gpu/test_gpu_graph_step.c)
  target_link_libraries(test_gpu_graph_step PRIVATE epmoe)
  foreach(np 1 2)
    epm_add_mpi_test(gpu_graph_step_np${np} NP ${np} COMMAND test_gpu_graph_step LABELS gpu mpi TIMEOUT 300 GPU)
  endforeach()
  # The bundle's GPU tests on a derived bundle (see bundle.cmake); 77 without a GPU.
  add_test(NAME bundle_derived_gpu
           COMMAND ${EPMOE_BUNDLE_CHECK} ${CMAKE_CURRENT_BINARY_DIR}/bundle_derived_gpu
                   $<TARGET_FILE:test_gpu_quantize> $<TARGET_FILE:test_gpu_routing> $<TARGET_FILE:test_gpu_moe>)
  set_tests_properties(bundle_derived_gpu PROPERTIES LABELS gpu TIMEOUT 1200 SKIP_RETURN_CODE 77 RESOURCE_LOCK gpu)
  # Once under compute-sanitizer (memcheck) at the small sizes of test_gpu_moe.
  find_program(EPMOE_COMPUTE_SANITIZER compute-sanitizer HINTS ${CUDAToolkit_BIN_DIR})
  if(EPMOE_COMPUTE_SANITIZER)
    add_test(NAME test_gpu_moe_memcheck
             COMMAND ${EPMOE_COMPUTE_SANITIZER} --tool memcheck --error-exitcode 1 $<TARGET_FILE:test_gpu_moe>)
    set_tests_properties(test_gpu_moe_memcheck PROPERTIES LABELS gpu TIMEOUT 1200 SKIP_RETURN_CODE 77
                         RESOURCE_LOCK gpu ENVIRONMENT "EPMOE_TEST_DATA=${EPMOE_TEST_DATA}")
    add_test(NAME test_gpu_moe2_memcheck
             COMMAND ${EPMOE_COMPUTE_SANITIZER} --tool memcheck --error-exitcode 1 $<TARGET_FILE:test_gpu_moe2>)
    set_tests_properties(test_gpu_moe2_memcheck PROPERTIES LABELS gpu TIMEOUT 1800 SKIP_RETURN_CODE 77
                         RESOURCE_LOCK gpu ENVIRONMENT "EPMOE_TEST_DATA=${EPMOE_TEST_DATA}")
  endif()
endif()

# Kernel benchmark (not a test): per-stage times and a cuBLAS bf16 baseline
# measured in the same run. See BENCHMARKS.md.
if(EPMOE_HAVE_CUDA AND TARGET CUDA::cublas)
  add_executable(bench_moe bench/bench_moe.c)
  target_link_libraries(bench_moe PRIVATE epm_gputest CUDA::cublas)
endif()
