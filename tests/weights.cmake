# SPDX-License-Identifier: Apache-2.0
# Weights: safetensors reader/writer, checkpoint directories,
# ModelOpt NVFP4 loading with EP sharding, and interop with the reference
# Python implementation.
epm_add_test(test_safetensors SOURCES unit/test_safetensors.c LABELS cpu)
epm_add_test(test_weights SOURCES unit/test_weights.c LABELS cpu)
# Progress lines of long loads and `ckpt make` when stderr is not a terminal.
epm_add_test(test_load_progress SOURCES unit/test_load_progress.c LABELS cpu LIBS epm_testutil TIMEOUT 30)

# Interop with the reference implementation: skipped (77) without python3 +
# safetensors + numpy, never silently passed.
add_executable(st_dump unit/st_dump.c)
target_link_libraries(st_dump PRIVATE epmoe)
add_test(NAME weights_interop
         COMMAND sh -c "command -v python3 >/dev/null || { echo 'SKIP: no python3'; exit 77; }; exec python3 \"$0\" \"$1\" \"$2\""
                 ${CMAKE_CURRENT_SOURCE_DIR}/py/st_interop.py $<TARGET_FILE:epmoectl> $<TARGET_FILE:st_dump>)
set_tests_properties(weights_interop PROPERTIES LABELS cpu TIMEOUT 120 SKIP_RETURN_CODE 77)

add_test(NAME weights_ckpt_ctl COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/unit/ckpt_ctl.sh $<TARGET_FILE:epmoectl>)
set_tests_properties(weights_ckpt_ctl PROPERTIES LABELS cpu TIMEOUT 120)
