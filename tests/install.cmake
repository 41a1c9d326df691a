# SPDX-License-Identifier: Apache-2.0
# install (cpu): `cmake --install` into a temporary prefix, then a tiny client
# and a one-rank step program built against it with pkg-config and with
# find_package(epmoe), and run (tests/install/install_test.sh). Sanitizer
# builds pass their flags on: the installed archives are instrumented.
string(JOIN " " _epm_consumer_flags ${EPMOE_SAN_FLAGS})
add_test(NAME install
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/install/install_test.sh ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}
                 ${PROJECT_VERSION} "${_epm_consumer_flags}")
set_tests_properties(install PROPERTIES LABELS cpu TIMEOUT 300 RESOURCE_LOCK epmoe_install
                     ENVIRONMENT "${EPMOE_MPI_ENV}")
