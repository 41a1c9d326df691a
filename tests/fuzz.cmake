# SPDX-License-Identifier: Apache-2.0
# Fuzz targets (tests/fuzz/README.md): the frame decoder, the safetensors
# reader, the checkpoint directory parser (config.json, quant config, index,
# files).
#  - Normal builds: each target is a replayer (EPM_FUZZ_MAIN: runs the files it
#    is given once) and `fuzz_corpus` (cpu) replays the committed corpus
#    tests/fuzz/corpus/<target>/ and a freshly generated one (make_corpus).
#  - libFuzzer builds (EPMOE_SANITIZE containing "fuzzer", as
#    tests/fuzz/run_fuzz.sh configures build-fuzz/ with clang): the targets
#    link libFuzzer's main instead.
#  - `fuzz` (label fuzz, when clang is installed): tests/fuzz/run_fuzz.sh
#    builds build-fuzz/ and runs each target for EPMOE_FUZZ_SECONDS (30) s.
set(_epm_fuzz_libfuzzer OFF)
if(EPMOE_SANITIZE MATCHES "fuzzer")
  set(_epm_fuzz_libfuzzer ON)
endif()
set(_epm_fuzz_bins)
foreach(t frame safetensors model_config)
  if(_epm_fuzz_libfuzzer)
    set(_bin fuzz_${t})
  else()
    set(_bin fuzz_${t}_replay)
  endif()
  add_executable(${_bin} fuzz/fuzz_${t}.c)
  if(_epm_fuzz_libfuzzer)
    target_link_options(${_bin} PRIVATE -fsanitize=fuzzer)
  else()
    target_compile_definitions(${_bin} PRIVATE EPM_FUZZ_MAIN=1)
  endif()
  if(t STREQUAL "frame")
    target_link_libraries(${_bin} PRIVATE epmoe_client_static)
  else()
    target_link_libraries(${_bin} PRIVATE epmoe)
  endif()
  list(APPEND _epm_fuzz_bins ${t}=$<TARGET_FILE:${_bin}>)
endforeach()

# The frame replayer also walks every message of the protocol table, each
# truncation and bit flip (fuzz_frame.c --table).
if(NOT _epm_fuzz_libfuzzer)
  add_test(NAME fuzz_frame_replay COMMAND fuzz_frame_replay --table)
  set_tests_properties(fuzz_frame_replay PROPERTIES LABELS cpu TIMEOUT 120)
endif()

add_executable(fuzz_make_corpus fuzz/make_corpus.c)
target_link_libraries(fuzz_make_corpus PRIVATE epmoe epmoe_client_static)
add_test(NAME fuzz_corpus
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/replay.sh ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus
                 $<TARGET_FILE:fuzz_make_corpus> ${_epm_fuzz_bins})
set_tests_properties(fuzz_corpus PROPERTIES LABELS cpu TIMEOUT 120)

find_program(EPMOE_CLANG clang)
if(EPMOE_CLANG AND NOT _epm_fuzz_libfuzzer)
  add_test(NAME fuzz COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/run_fuzz.sh)
  # Builds the project again with clang, then fuzzes 3 x EPMOE_FUZZ_SECONDS.
  set_tests_properties(fuzz PROPERTIES LABELS fuzz TIMEOUT 1800 RUN_SERIAL TRUE SKIP_RETURN_CODE 77)
endif()
