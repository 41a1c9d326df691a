# SPDX-License-Identifier: Apache-2.0
# CPU reference: routing, layer weights, MoE experts.
epm_add_test(test_routing SOURCES unit/test_routing.c LABELS cpu LIBS epm_testutil)
epm_add_test(test_moe_ref SOURCES unit/test_moe_ref.c LABELS cpu LIBS epm_testutil)
# DeepSeek-R1 dims, 8 local experts, 256 tokens (several seconds on 2 cores).
epm_add_test(test_moe_ref_large SOURCES unit/test_moe_ref_large.c LABELS large TIMEOUT 600 LIBS epm_testutil)
# epmoectl ref end to end (usage errors, checksum vs threads and seed).
add_test(NAME ctl_ref COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/unit/ctl_ref_test.sh $<TARGET_FILE:epmoectl>)
set_tests_properties(ctl_ref PROPERTIES LABELS cpu TIMEOUT 120)
