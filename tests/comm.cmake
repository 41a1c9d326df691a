# SPDX-License-Identifier: Apache-2.0
# Comm layer: bootstrap launch checks (cpu), MPI backend (mpi, NP 1..8),
# NCCL vs MPI (gpu; exits 77 on every rank without GPUs).
epm_add_test(test_bootstrap SOURCES unit/test_bootstrap.c LABELS cpu)

add_executable(test_comm_mpi mpi/test_comm_mpi.c)
target_link_libraries(test_comm_mpi PRIVATE epmoe)
foreach(np 1 2 3 4 8)
  epm_add_mpi_test(comm_mpi_np${np} NP ${np} COMMAND test_comm_mpi LABELS mpi TIMEOUT 240)
endforeach()

add_executable(test_bootstrap_mpi mpi/test_bootstrap_mpi.c)
target_link_libraries(test_bootstrap_mpi PRIVATE epmoe)
foreach(np 1 2)
  epm_add_mpi_test(bootstrap_mpi_np${np} NP ${np} COMMAND test_bootstrap_mpi LABELS mpi TIMEOUT 120)
endforeach()

# NCCL vs MPI on one GPU per rank (gpu label; every rank exits 77 without GPUs).
if(EPMOE_HAVE_CUDA)
  add_executable(test_comm_nccl gpu/test_comm_nccl.c)
  target_link_libraries(test_comm_nccl PRIVATE epmoe)
  epm_add_mpi_test(comm_nccl_np2 NP 2 COMMAND test_comm_nccl LABELS gpu mpi TIMEOUT 300 GPU)
  # A peer that never joins: timeout + abort instead of a hang; requested abort.
  add_executable(test_comm_nccl_abort gpu/test_comm_nccl_abort.c)
  target_link_libraries(test_comm_nccl_abort PRIVATE epmoe)
  epm_add_mpi_test(comm_nccl_abort_np2 NP 2 COMMAND test_comm_nccl_abort LABELS gpu mpi TIMEOUT 120 GPU)
endif()

# A real allgather-v past INT_MAX bytes (no chunk hook): ~6.5 GB in all.
add_executable(test_comm_large mpi/test_comm_large.c)
target_link_libraries(test_comm_large PRIVATE epmoe)
epm_add_mpi_test(comm_large_np2 NP 2 COMMAND test_comm_large LABELS mpi large TIMEOUT 600)

# Collective timings (MPI backend); the registered run is a tiny smoke test.
add_executable(bench_comm mpi/bench_comm.c)
target_link_libraries(bench_comm PRIVATE epmoe)
epm_add_mpi_test(bench_comm_np3 NP 3 COMMAND bench_comm 5 64 4 2 LABELS mpi TIMEOUT 60)

# The rendezvous (control plane): the coordinator state machine driven input
# by input (cpu), and the MPI driver on 2 and 3 ranks (mpi).
epm_add_test(test_rendezvous_coord SOURCES unit/test_rendezvous_coord.c LABELS cpu)
add_executable(test_rendezvous_mpi mpi/test_rendezvous_mpi.c)
target_link_libraries(test_rendezvous_mpi PRIVATE epmoe)
foreach(np 2 3)
  epm_add_mpi_test(rendezvous_mpi_np${np} NP ${np} COMMAND test_rendezvous_mpi LABELS mpi TIMEOUT 120)
endforeach()
