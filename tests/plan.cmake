# Model presets and shape planning (issue A items 5-6).
epm_add_test(test_model SOURCES unit/test_model.c LABELS cpu TIMEOUT 30)
