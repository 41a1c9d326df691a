# SPDX-License-Identifier: Apache-2.0
# The reference bundle (tests/data, read through tests/bundle.c): the tests that
# read it, run a second time on another bundle of the same format that
# tests/py/bundle_check.py cuts from tests/data (other shapes, offsets, files,
# routing case order), checking that they pass and print the new shapes; plus a
# manifest with a wrong nbytes and one with a missing key, which must fail
# naming the array and both sizes, or the key. The GPU tests get the same in
# gpu.cmake. Target files resolve at generate time, so this fragment may be
# included before the ones that define the tests.
# (No ';' in the sh line: it would split the list.)
set(EPMOE_BUNDLE_CHECK sh -c "command -v python3 >/dev/null && exec python3 \"$@\" || (echo 'SKIP: no python3' && exit 77)" sh
    ${CMAKE_CURRENT_SOURCE_DIR}/py/bundle_check.py ${EPMOE_TEST_DATA})
add_test(NAME bundle_derived
         COMMAND ${EPMOE_BUNDLE_CHECK} ${CMAKE_CURRENT_BINARY_DIR}/bundle_derived $<TARGET_FILE:test_routing>
                 $<TARGET_FILE:test_moe_ref> $<TARGET_FILE:test_nvfp4_flashinfer> $<TARGET_FILE:test_kernel_cores>)
set_tests_properties(bundle_derived PROPERTIES LABELS cpu TIMEOUT 300 SKIP_RETURN_CODE 77)
