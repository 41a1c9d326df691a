# SPDX-License-Identifier: Apache-2.0
# Model presets and shape planning.
epm_add_test(test_model SOURCES unit/test_model.c LABELS cpu TIMEOUT 30)
epm_add_test(test_plan SOURCES unit/test_plan.c LABELS cpu TIMEOUT 60)
# Runs the real binary: `epmoectl plan ... --json` checked with jansson.
epm_add_test(test_plan_cli SOURCES unit/test_plan_cli.c LABELS cpu TIMEOUT 60
             ARGS $<TARGET_FILE:epmoectl>)
