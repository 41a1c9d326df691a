# SPDX-License-Identifier: Apache-2.0
# Expert placement (epmoe/placement.h): any expert count on any EP size,
# redundant experts, per-expert load and the balanced map.
#   test_placement    the map, its JSON files, the replica rule, the balancer
#                     (incl. a skewed synthetic routing), placed layers (cpu)
#   placement_mpi     groups on placed maps vs the EP=1 reference, bit for bit,
#                     and the per-expert load against the routing (mpi)
#   step_place_*      `epmoectl step --check --tolerance 0` (bit-identical to
#                     EP=1) for E not divisible by P and with redundant experts
#   placement_runs_*  tests/mpi/placement_runs.sh: `epmoectl placement` and
#                     `plan` on files, `step --placement`, refusals
#   daemon_placement  the daemons on 3 and 5 ranks of the 16-expert tiny
#                     preset: forward --check, load in STATS and Prometheus,
#                     a balanced map from the live daemons, a restart with it
epm_add_test(test_placement SOURCES unit/test_placement.c LABELS cpu TIMEOUT 120)

add_executable(test_placement_mpi mpi/test_placement_mpi.c)
target_link_libraries(test_placement_mpi PRIVATE epmoe)
foreach(np 3 5)
  epm_add_mpi_test(placement_mpi_np${np} NP ${np} COMMAND test_placement_mpi LABELS mpi TIMEOUT 240)
endforeach()

set(_place_step epmoectl step --preset tiny --seed 7 --check --tolerance 0 --repeat 2)
epm_add_mpi_test(step_place_np3 NP 3 COMMAND ${_place_step} --tokens-per-rank 4,0,6 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_place_np5 NP 5 COMMAND ${_place_step} --tokens-per-rank 9,3,0,12,5 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_place_np6 NP 6 COMMAND ${_place_step} --tokens-per-rank 2,7,1,0,8,4 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_place_np7 NP 7 COMMAND ${_place_step} --tokens-per-rank 5,1,9,0,3,6,2 LABELS mpi TIMEOUT 150)
epm_add_mpi_test(step_place_redundant_np3 NP 3 COMMAND ${_place_step} --redundant-experts 2
                 --tokens-per-rank 17,0,23 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_place_redundant_np5 NP 5 COMMAND ${_place_step} --redundant-experts 9
                 --tokens-per-rank 6,11,0,4,7 LABELS mpi TIMEOUT 120)
# DeepSeek-R1's 256 experts on 12 ranks (tiny dims, top-8), with and without
# redundant slots.
set(_place_256 epmoectl step --preset tiny --experts 256 --top-k 8 --seed 5 --check --tolerance 0
    --tokens-per-rank 30,0,17,25,9,40,3,22,11,0,35,28)
epm_add_mpi_test(step_place_e256_np12 NP 12 COMMAND ${_place_256} LABELS mpi TIMEOUT 240)
epm_add_mpi_test(step_place_e256_redundant_np12 NP 12 COMMAND ${_place_256} --redundant-experts 12
                 LABELS mpi TIMEOUT 240)

foreach(c tools step refuse)
  add_test(NAME placement_runs_${c}
           COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/mpi/placement_runs.sh ${c} ${MPIEXEC_EXECUTABLE}
                   $<TARGET_FILE:epmoectl>)
  set_tests_properties(placement_runs_${c} PROPERTIES LABELS mpi TIMEOUT 240 PROCESSORS 2
                       ENVIRONMENT "${EPMOE_MPI_ENV}")
endforeach()

foreach(np 3 5)
  add_test(NAME daemon_placement_np${np}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/daemon/daemon_placement.sh ${MPIEXEC_EXECUTABLE} ${np}
                   $<TARGET_FILE_DIR:epmoed>)
  set_tests_properties(daemon_placement_np${np} PROPERTIES LABELS mpi TIMEOUT 300 PROCESSORS 2
                       ENVIRONMENT "${EPMOE_MPI_ENV}")
endforeach()
