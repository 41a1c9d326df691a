# SPDX-License-Identifier: Apache-2.0
# Daemon, protocol and client tests.
#   test_protocol   codec round-trips and malformed input for every message of
#                   the table, golden frames, and docs/PROTOCOL.md's list (cpu)
epm_add_test(test_protocol SOURCES unit/test_protocol.c LABELS cpu LIBS epmoe_client_static TIMEOUT 60
             ARGS ${PROJECT_SOURCE_DIR}/docs/PROTOCOL.md)
#   test_srv_stats  the daemon's STATS (Prometheus, JSON, INFO) from hand-set
#                   counters and measured process values (cpu)
epm_add_test(test_srv_stats SOURCES unit/test_srv_stats.c LABELS cpu LIBS epmoe_srv TIMEOUT 60)
#   test_sockdir    the socket-directory policy as any user (cpu; the cases
#                   with a second user are tests/daemon/sockdir_perm.sh)
epm_add_test(test_sockdir SOURCES unit/test_sockdir.c LABELS cpu LIBS epmoe_srv TIMEOUT 60)
# The frame decoder's fuzz target (tests/fuzz/fuzz_frame.c) is built and run
# with the other fuzz targets: tests/fuzz.cmake.

# Integration (label mpi): NP daemons on the CPU under mpirun, driven by
# epmoectl from a bash script (tests/daemon/daemon_it.sh), all on the step
# engine's tiny preset (--check vs the EP=1 CPU reference): the full run on 2
# and 4 ranks, and the fault rows (a rank hung or killed mid-step) on 2.
add_executable(daemon_probe daemon/daemon_probe.c)
target_link_libraries(daemon_probe PRIVATE epmoe_client_static)
if(TRUE)
  foreach(cfg "2;tiny" "4;tiny" "2;faults")
    list(GET cfg 0 np)
    list(GET cfg 1 mode)
    add_test(NAME daemon_it_np${np}_${mode}
             COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/daemon/daemon_it.sh ${MPIEXEC_EXECUTABLE} ${np}
                     $<TARGET_FILE_DIR:epmoed> ${mode} $<TARGET_FILE:daemon_probe>)
    set_tests_properties(daemon_it_np${np}_${mode} PROPERTIES LABELS mpi TIMEOUT 240 PROCESSORS 2
                         ENVIRONMENT "${EPMOE_MPI_ENV}")
  endforeach()
endif()

# ops_it (mpi): the operator's conventions on 2 CPU daemons serving a
# checkpoint: every layer by default, JSON logs with syslog priorities and
# load progress, probes quiet at info, one --json shape for status/stats/
# health/shutdown, the /metrics series (tests/daemon/ops_it.sh).
add_test(NAME ops_it COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/daemon/ops_it.sh ${MPIEXEC_EXECUTABLE}
                             $<TARGET_FILE_DIR:epmoed>)
set_tests_properties(ops_it PROPERTIES LABELS mpi TIMEOUT 180 PROCESSORS 2 ENVIRONMENT "${EPMOE_MPI_ENV}")
# Fault suite (label fault), one case at a time (RUN_SERIAL: timings are
# asserted): the rank-death matrix (SIGKILL, SIGSTOP, exit, abort x idle,
# rendezvous, dispatch, experts, combine) on 2 ranks at the default
# liveness (every client and survivor ends in error within 10 s); the
# listener limits (metrics flood, descriptor exhaustion); the
# socket-directory policy and the client's server check as root with two
# users the script creates (exit 77 otherwise).
add_test(NAME fault_matrix_np2 COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/daemon/fault_matrix.sh ${MPIEXEC_EXECUTABLE} 2
                                       $<TARGET_FILE_DIR:epmoed>)
set_tests_properties(fault_matrix_np2 PROPERTIES LABELS fault TIMEOUT 420 RUN_SERIAL TRUE
                     ENVIRONMENT "${EPMOE_MPI_ENV}")
# The soak (label large): 10 minutes of random checked steps, RSS and
# descriptors asserted flat (tests/daemon/soak.sh; its last argument is the
# duration in seconds).
add_test(NAME daemon_soak COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/daemon/soak.sh ${MPIEXEC_EXECUTABLE} 2
                                  $<TARGET_FILE_DIR:epmoed> 600)
set_tests_properties(daemon_soak PROPERTIES LABELS large TIMEOUT 900 PROCESSORS 2 ENVIRONMENT "${EPMOE_MPI_ENV}")
add_test(NAME listener_limits COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/daemon/limits.sh ${MPIEXEC_EXECUTABLE}
                                      $<TARGET_FILE_DIR:epmoed> $<TARGET_FILE:daemon_probe>)
set_tests_properties(listener_limits PROPERTIES LABELS fault TIMEOUT 180 RUN_SERIAL TRUE
                     ENVIRONMENT "${EPMOE_MPI_ENV}")
add_test(NAME sockdir_perm COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/daemon/sockdir_perm.sh ${MPIEXEC_EXECUTABLE}
                                   $<TARGET_FILE_DIR:epmoed> $<TARGET_FILE:daemon_probe>)
set_tests_properties(sockdir_perm PROPERTIES LABELS fault TIMEOUT 240 SKIP_RETURN_CODE 77 RUN_SERIAL TRUE
                     ENVIRONMENT "${EPMOE_MPI_ENV}")

# GPU (label gpu, exit 77 without one): the cuda backend and the CUDA
# device-memory data path (cuMemCreate + POSIX fd over SCM_RIGHTS).
if(EPMOE_HAVE_CUDA)
  add_test(NAME daemon_gpu COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/daemon/daemon_gpu.sh ${MPIEXEC_EXECUTABLE}
                                   $<TARGET_FILE_DIR:epmoed>)
  set_tests_properties(daemon_gpu PROPERTIES LABELS gpu TIMEOUT 300 SKIP_RETURN_CODE 77 RESOURCE_LOCK gpu
                       ENVIRONMENT "${EPMOE_MPI_ENV}")
  # The device-mode doorbell: ring / wait as stream operations inside a
  # captured CUDA graph, replayed with new tokens (tests/gpu/doorbell_gpu.c).
  add_executable(doorbell_gpu gpu/doorbell_gpu.c)
  target_link_libraries(doorbell_gpu PRIVATE epmoe_client_static epmoe CUDA::cudart)
  add_test(NAME daemon_doorbell_gpu COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/gpu/doorbell_gpu.sh ${MPIEXEC_EXECUTABLE}
                                            $<TARGET_FILE_DIR:epmoed> $<TARGET_FILE:doorbell_gpu>)
  set_tests_properties(daemon_doorbell_gpu PROPERTIES LABELS gpu TIMEOUT 300 SKIP_RETURN_CODE 77 RESOURCE_LOCK gpu
                       ENVIRONMENT "${EPMOE_MPI_ENV}")
  # Fault rows on GPUs: a rank hung (SIGSTOP) or killed (SIGKILL) mid-step
  # while the others sit in NCCL (needs 2+ GPUs; see tests/gpu/fault_gpu.sh).
  add_test(NAME daemon_gpu_fault COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/gpu/fault_gpu.sh ${MPIEXEC_EXECUTABLE}
                                         $<TARGET_FILE_DIR:epmoed>)
  set_tests_properties(daemon_gpu_fault PROPERTIES LABELS gpu TIMEOUT 300 SKIP_RETURN_CODE 77 RESOURCE_LOCK gpu
                       ENVIRONMENT "${EPMOE_MPI_ENV}")
endif()

# The client shared library: SONAME, no MPI/jansson/OpenMP/libuv, usable alone.
add_executable(client_so_probe unit/client_so_probe.c)
target_link_libraries(client_so_probe PRIVATE epmoe_client)
add_test(NAME client_so COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/unit/client_so.sh $<TARGET_FILE:epmoe_client>
                                $<TARGET_FILE:client_so_probe>)
set_tests_properties(client_so PROPERTIES LABELS cpu TIMEOUT 60)

# The doorbell data plane on the host (label mpi): doorbell steps against the
# CPU reference, sequence errors, bench --doorbell, clients dying mid-step
# (tests/daemon/doorbell_it.sh with tests/daemon/doorbell_check.c).
add_executable(doorbell_check daemon/doorbell_check.c)
target_link_libraries(doorbell_check PRIVATE epmoe_client_static epmoe)
add_test(NAME daemon_doorbell_np2
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/daemon/doorbell_it.sh ${MPIEXEC_EXECUTABLE}
                 $<TARGET_FILE_DIR:epmoed> $<TARGET_FILE:doorbell_check>)
set_tests_properties(daemon_doorbell_np2 PROPERTIES LABELS mpi TIMEOUT 300 PROCESSORS 2
                     ENVIRONMENT "${EPMOE_MPI_ENV}")
