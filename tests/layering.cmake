# SPDX-License-Identifier: Apache-2.0
# The parts and their allowed edges (docs/ARCHITECTURE.md "Parts"), checked on
# the built archives' symbols, with a self-check that a forbidden edge fails.
find_package(Python3 REQUIRED COMPONENTS Interpreter)
add_library(layering_probe STATIC layering/probe_forbidden.c)
target_link_libraries(layering_probe PRIVATE epmoe_base)
target_include_directories(layering_probe PRIVATE ${PROJECT_SOURCE_DIR}/include)
add_test(NAME layering
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/layering/run_layering.sh
                 ${CMAKE_CURRENT_SOURCE_DIR}/layering/check_layering.py $<TARGET_FILE:layering_probe>
                 base=$<TARGET_FILE:epmoe_base> kernels=$<TARGET_FILE:epmoe_kernels>
                 comm=$<TARGET_FILE:epmoe_comm> runtime=$<TARGET_FILE:epmoe_runtime>
                 client=$<TARGET_FILE:epmoe_client_static>
                 daemon=$<TARGET_FILE:epmoe_srv> daemon=$<TARGET_FILE:epmoe_ctl>
                 daemon=$<TARGET_FILE:epmoe_cli>)
set_tests_properties(layering PROPERTIES LABELS cpu TIMEOUT 60)

# No weak symbols, no CMake existence guards, no tracker letters (tests/hygiene.sh).
add_test(NAME hygiene COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/hygiene.sh ${PROJECT_SOURCE_DIR})
set_tests_properties(hygiene PROPERTIES LABELS cpu TIMEOUT 60)
