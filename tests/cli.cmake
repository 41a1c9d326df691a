# SPDX-License-Identifier: Apache-2.0
# The one command-line parser (daemon/cli_opt.c) and the command lines of
# epmoectl and epmoed built on it.
#   test_cli_opt   the parser on a table of every kind (cpu)
#   cli_binaries   the real binaries: --help, --x=v vs --x v, exit 64 (cpu; `epmoectl
#                  step` runs as a one-rank singleton MPI job, hence the MPI env)
epm_add_test(test_cli_opt SOURCES unit/test_cli_opt.c LABELS cpu LIBS epmoe_cli TIMEOUT 30)
add_test(NAME cli_binaries
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/unit/cli_test.sh $<TARGET_FILE:epmoectl> $<TARGET_FILE:epmoed>)
set_tests_properties(cli_binaries PROPERTIES LABELS cpu TIMEOUT 120 ENVIRONMENT "${EPMOE_MPI_ENV}")

# Every epmoectl error path that needs no daemon group ends with an exit code
# and a message; in a sanitizer build also without a leak or memory error.
add_test(NAME ctl_error_paths COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/unit/ctl_error_paths.sh $<TARGET_FILE:epmoectl>
                                      $<TARGET_FILE:daemon_probe>)
set_tests_properties(ctl_error_paths PROPERTIES LABELS cpu TIMEOUT 180
                     ENVIRONMENT "${EPMOE_MPI_ENV};EPM_SAN=${EPMOE_SANITIZE}")
