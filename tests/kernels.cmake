# GPU kernels: pure-C plans and the host-compiled kernel cores run
# everywhere; the GPU tests are in tests/gpu.cmake.
epm_add_test(test_kernel_plan SOURCES unit/test_kernel_plan.c LABELS cpu TIMEOUT 30)
epm_add_test(test_kernel_cores SOURCES unit/test_kernel_cores.c LABELS cpu LIBS epm_testutil TIMEOUT 60)
