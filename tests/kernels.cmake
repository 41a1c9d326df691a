# SPDX-License-Identifier: Apache-2.0
# GPU kernels: pure-C plans and the host-compiled kernel cores run
# everywhere; the GPU tests are in tests/gpu.cmake.
epm_add_test(test_kernel_plan SOURCES unit/test_kernel_plan.c LABELS cpu TIMEOUT 30)
epm_add_test(test_kernel_cores SOURCES unit/test_kernel_cores.c LABELS cpu LIBS epm_testutil TIMEOUT 60)
# The fast (v2) kernels: dequant bit placement vs the codec, layouts, schedule,
# plan; the warp routing's CPU emulation vs the reference.
epm_add_test(test_moe2_core SOURCES unit/test_moe2_core.c LABELS cpu LIBS epm_testutil TIMEOUT 120)
epm_add_test(test_routing_warp SOURCES unit/test_routing_warp.c LABELS cpu LIBS epm_testutil TIMEOUT 120)
epm_add_test(test_moe2_model SOURCES unit/test_moe2_model.c LABELS cpu LIBS epm_testutil TIMEOUT 300)
