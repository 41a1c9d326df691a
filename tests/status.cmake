# SPDX-License-Identifier: Apache-2.0
epm_add_test(test_status SOURCES unit/test_status.c LABELS cpu)
