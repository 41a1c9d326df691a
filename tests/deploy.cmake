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
