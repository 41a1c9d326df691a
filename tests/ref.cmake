# CPU reference: routing, layer weights, MoE experts (issue B).
epm_add_test(test_routing SOURCES unit/test_routing.c LABELS cpu LIBS epm_testutil)
epm_add_test(test_moe_ref SOURCES unit/test_moe_ref.c LABELS cpu LIBS epm_testutil)
