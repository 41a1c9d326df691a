# SPDX-License-Identifier: Apache-2.0
# Deployment: systemd readiness, the recipes in deploy/, and the scripts.
#   test_srv_notify   sd_notify over a datagram socket (cpu)
epm_add_test(test_srv_notify SOURCES unit/test_srv_notify.c LABELS cpu LIBS epmoe_srv TIMEOUT 30)

# notify_it (mpi): 2 daemons against a stand-in systemd notification socket:
# STATUS while loading, one READY=1 after health is ok, WATCHDOG=1 pings,
# STOPPING=1 on drain, all from rank 0, exit 0.
find_package(Python3 REQUIRED COMPONENTS Interpreter)
add_test(NAME notify_it COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/deploy/notify_it.sh ${MPIEXEC_EXECUTABLE}
                                $<TARGET_FILE_DIR:epmoed> ${CMAKE_CURRENT_SOURCE_DIR}/deploy/notify_recv.py)
set_tests_properties(notify_it PROPERTIES LABELS mpi TIMEOUT 120 PROCESSORS 2 ENVIRONMENT "${EPMOE_MPI_ENV}")

# systemd_unit (cpu): `systemd-analyze verify` clean, `systemd-analyze security`
# exposure below 5, sysusers/tmpfiles snippets applied to an empty root
# (exit 77 without systemd-analyze).
add_test(NAME systemd_unit COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/deploy/systemd_check.sh
                                   ${PROJECT_SOURCE_DIR}/deploy/systemd)
set_tests_properties(systemd_unit PROPERTIES LABELS cpu TIMEOUT 60 SKIP_RETURN_CODE 77)

# k8s_manifests (cpu): every MPIJob in deploy/k8s against our v2beta1 schema
# and the rules that make the group start (with a self-test of known-bad
# edits), and the Containerfile against the manifests and the unit (exit 77
# without PyYAML/jsonschema).
add_test(NAME k8s_manifests COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/k8s/run_check.sh ${Python3_EXECUTABLE}
                                    ${PROJECT_SOURCE_DIR})
set_tests_properties(k8s_manifests PROPERTIES LABELS cpu TIMEOUT 60 SKIP_RETURN_CODE 77)

# k8s_launch_it (mpi): the MPIJob launcher's script run for real on this host
# as one worker with 2 slots: ready file after health, checked FORWARD,
# SIGTERM drains to exit 0, missing model fails fast.
add_test(NAME k8s_launch_it COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/deploy/k8s_launch_it.sh ${PROJECT_SOURCE_DIR}
                                    $<TARGET_FILE_DIR:epmoed>)
set_tests_properties(k8s_launch_it PROPERTIES LABELS mpi TIMEOUT 180 PROCESSORS 2 ENVIRONMENT "${EPMOE_MPI_ENV}")

# slurm_recipe (slurm): deploy/slurm/epmoed.sbatch on a real single-node Slurm
# (private munged + slurmctld + slurmd, as root; apt-get installs them when
# missing): ready, forward --check, scancel drains every rank, fail-fast
# cases. Exit 77 only when Slurm cannot be installed.
add_test(NAME slurm_recipe COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm/slurm_it.sh ${PROJECT_SOURCE_DIR}
                                   $<TARGET_FILE_DIR:epmoed>)
set_tests_properties(slurm_recipe PROPERTIES LABELS slurm TIMEOUT 170 PROCESSORS 2 SKIP_RETURN_CODE 77
                     RESOURCE_LOCK slurm)

# shellcheck (cpu): every shell script in the repository (exit 77 without shellcheck).
add_test(NAME shellcheck COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/deploy/lint_shell.sh ${PROJECT_SOURCE_DIR})
set_tests_properties(shellcheck PROPERTIES LABELS cpu TIMEOUT 120 SKIP_RETURN_CODE 77)
