# SPDX-License-Identifier: Apache-2.0
# Step engine: `epmoectl step` under mpirun against the EP=1 reference
# (--check, tolerance 2^-6 = max|y-ref|/max|ref|, see docs/ARCHITECTURE.md
# "Engine"), bit-identical repeats (--repeat inside a job; step_runs.sh across
# jobs and across splits of one token set), unequal / zero / all-zero token
# counts, usage errors. tiny: H 256, I 128, E 16, top-4, deepseek-v3 groups,
# shared expert. (E not divisible by P: tests/placement.cmake.)
add_executable(test_engine_mpi mpi/test_engine_mpi.c)
target_link_libraries(test_engine_mpi PRIVATE epmoe)
foreach(np 1 2 4 8)
  epm_add_mpi_test(engine_mpi_np${np} NP ${np} COMMAND test_engine_mpi LABELS mpi TIMEOUT 240)
endforeach()

# Variants that must keep every bit of the plain step: the expert stage in
# chunks under a workspace budget (1, 2, many chunks; both dispatch modes).
add_executable(test_engine_modes_mpi mpi/test_engine_modes_mpi.c)
target_link_libraries(test_engine_modes_mpi PRIVATE epmoe)
foreach(np 1 2 4)
  epm_add_mpi_test(engine_modes_mpi_np${np} NP ${np} COMMAND test_engine_modes_mpi LABELS mpi TIMEOUT 240)
endforeach()

set(_step epmoectl step --preset tiny --seed 7 --check)
# --workspace-mb 1 at tiny dims: one gathered row per expert call.
epm_add_mpi_test(step_workspace_np1 NP 1 COMMAND ${_step} --tokens-per-rank 9 --workspace-mb 1 --tolerance 0
                 LABELS mpi TIMEOUT 120)
# --graph: the fixed-capacity step (on cpu: the same packed records and
# equal-size allgather a CUDA graph holds), against the EP=1 reference.
epm_add_mpi_test(step_graph_np1 NP 1 COMMAND ${_step} --tokens-per-rank 9 --graph --tolerance 0 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_graph_np4 NP 4 COMMAND ${_step} --tokens-per-rank 3,5,0,8 --graph --repeat 2 --workspace-mb 1
                 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_workspace_a2a_np2 NP 2 COMMAND ${_step} --tokens-per-rank 5,3 --workspace-mb 1
                 --dispatch alltoall --repeat 2 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_np1 NP 1 COMMAND ${_step} --tokens-per-rank 9 --repeat 2 --tolerance 0 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_np2 NP 2 COMMAND ${_step} --tokens-per-rank 5,3 --repeat 2 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_np3 NP 3 COMMAND ${_step} --experts 24 --tokens-per-rank 4,0,6 --repeat 2 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_np4 NP 4 COMMAND ${_step} --tokens-per-rank 3,5,0,8 --repeat 2 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_np8 NP 8 COMMAND ${_step} --tokens-per-rank 2,0,1,5,0,3,0,4 --repeat 2 LABELS mpi TIMEOUT 180)
epm_add_mpi_test(step_all_zero NP 4 COMMAND ${_step} --tokens-per-rank 0,0,0,0 --repeat 2 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_one_rank_all NP 4 COMMAND ${_step} --tokens-per-rank 0,0,13,0 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_dynamic_np4 NP 4 COMMAND ${_step} --tokens-per-rank 2,6,1,3 --scale dynamic LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_bf16_np2 NP 2 COMMAND ${_step} --tokens-per-rank 6,2 --partial bf16 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_no_shared_np2 NP 2 COMMAND ${_step} --tokens-per-rank 1,7 --no-shared LABELS mpi TIMEOUT 120)
# DeepSeek-R1 dims (H 7168, I 2048, top-8, groups 8/4, shared expert) at EP 4
# with 32 experts, i.e. 8 per rank as in EP 32: the full 256 would make rank 0
# hold 6.3 GB of weights for the check.
epm_add_mpi_test(step_deepseek_ep4 NP 4
                 COMMAND epmoectl step --preset deepseek-r1 --experts 16 --seed 3 --tokens-per-rank 4,2,0,3 --check
                 LABELS mpi large TIMEOUT 900)

# The alltoall dispatch (each token only to the ranks owning its experts)
# and auto against the same EP=1 reference: P = 1 (bit-identical) to 32
# (tiny, --experts 32: one expert per rank; 32 ranks on 2 cores take ~5 s),
# odd splits with zeros, all-zero, one rank holding every token, bf16
# partials, dynamic scale, llama4 top-1.
set(_a2a ${_step} --dispatch alltoall)
epm_add_mpi_test(step_a2a_np1 NP 1 COMMAND ${_a2a} --tokens-per-rank 9 --repeat 2 --tolerance 0 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_a2a_np2 NP 2 COMMAND ${_a2a} --tokens-per-rank 5,3 --repeat 2 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_a2a_np3 NP 3 COMMAND ${_a2a} --experts 24 --tokens-per-rank 4,0,6 --repeat 2 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_a2a_np5 NP 5 COMMAND ${_a2a} --experts 20 --tokens-per-rank 1,0,7,2,3 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_a2a_np8 NP 8 COMMAND ${_a2a} --tokens-per-rank 2,0,1,5,0,3,0,4 --repeat 2 LABELS mpi TIMEOUT 180)
epm_add_mpi_test(step_a2a_all_zero NP 4 COMMAND ${_a2a} --tokens-per-rank 0,0,0,0 --repeat 2 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_a2a_one_rank_all NP 4 COMMAND ${_a2a} --tokens-per-rank 0,0,13,0 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_a2a_bf16_np3 NP 3 COMMAND ${_a2a} --experts 24 --tokens-per-rank 6,1,0 --partial bf16 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_a2a_dynamic_np4 NP 4 COMMAND ${_a2a} --tokens-per-rank 2,6,1,3 --scale dynamic LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_a2a_llama4_np4 NP 4 COMMAND ${_a2a} --routing llama4 --tokens-per-rank 3,0,5,2 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_a2a_np16 NP 16 COMMAND ${_a2a} --experts 32 --tokens-per-rank 3,0,5,1,0,0,7,2,1,1,4,0,9,3,2,0
                 LABELS mpi TIMEOUT 180)
epm_add_mpi_test(step_a2a_np32 NP 32 COMMAND ${_a2a} --experts 32 --repeat 2
                 --tokens-per-rank 3,0,5,1,0,0,7,2,1,1,4,0,9,3,2,0,1,6,0,2,5,0,0,1,3,8,0,2,1,0,4,1 LABELS mpi TIMEOUT 240)
epm_add_mpi_test(step_auto_np32 NP 32 COMMAND ${_step} --dispatch auto --experts 32
                 --tokens-per-rank 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,40 LABELS mpi TIMEOUT 240)

foreach(c repeat split badlen badexp json modes calibrate overflow a2a_placed)
  add_test(NAME step_runs_${c}
           COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/mpi/step_runs.sh ${c} ${MPIEXEC_EXECUTABLE} $<TARGET_FILE:epmoectl>)
  set_tests_properties(step_runs_${c} PROPERTIES LABELS mpi TIMEOUT 240 PROCESSORS 2
                       ENVIRONMENT "${EPMOE_MPI_ENV}")
endforeach()
# Other routing methods at tiny dims (--routing drops the groups; llama4 is
# top-1 with the router weight applied to the input, as the reference does).
epm_add_mpi_test(step_llama4_np4 NP 4 COMMAND ${_step} --routing llama4 --tokens-per-rank 3,0,5,2 --repeat 2 LABELS mpi TIMEOUT 120)
epm_add_mpi_test(step_renormalize_np2 NP 2 COMMAND ${_step} --routing renormalize --top-k 2 --tokens-per-rank 4,5 LABELS mpi TIMEOUT 120)

# The cuda backend + NCCL comm vs the EP=1 CPU reference (GPU machines only).
add_test(NAME step_runs_cuda
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/mpi/step_runs.sh cuda ${MPIEXEC_EXECUTABLE} $<TARGET_FILE:epmoectl>)
set_tests_properties(step_runs_cuda PROPERTIES LABELS gpu TIMEOUT 600 SKIP_RETURN_CODE 77 RESOURCE_LOCK gpu
                     ENVIRONMENT "${EPMOE_MPI_ENV}")

# The composition root (epmoe/group.h): layers, info, local refusals and the
# set-up agreement, against the EP=1 reference.
add_executable(test_group_mpi mpi/test_group_mpi.c)
target_link_libraries(test_group_mpi PRIVATE epmoe)
foreach(np 1 2 4)
  epm_add_mpi_test(group_mpi_np${np} NP ${np} COMMAND test_group_mpi LABELS mpi TIMEOUT 180)
endforeach()

# epmoe-bench: --help, a CPU smoke run (the GPU rows are skipped with a line
# saying so where there is no GPU; exit 0), a usage error (exit 64).
add_test(NAME bench_help COMMAND epmoe-bench --help)
set_tests_properties(bench_help PROPERTIES LABELS cpu TIMEOUT 30 PASS_REGULAR_EXPRESSION "usage: epmoe-bench.*--tokens")
add_test(NAME bench_cpu_smoke COMMAND epmoe-bench --preset tiny --ep 4 --tokens 3 -n 2 -w 0 --json)
set_tests_properties(bench_cpu_smoke PROPERTIES LABELS cpu TIMEOUT 120
                     PASS_REGULAR_EXPRESSION "\"name\": *\"moe_layer\", *\"device\": *\"cpu\".*\"gpu\": *\"")
add_test(NAME bench_cpu_text COMMAND epmoe-bench --preset tiny --ep 8 --tokens 2 -n 1 -w 0)
set_tests_properties(bench_cpu_text PROPERTIES LABELS cpu TIMEOUT 120
                     PASS_REGULAR_EXPRESSION "moe_layer +cpu.*# gpu: (skipped: [^\n]+|.*sm_)")
add_test(NAME bench_usage COMMAND sh -c "$<TARGET_FILE:epmoe-bench> --preset tiny --ep 3 >/dev/null 2>&1; test $? -eq 64")
set_tests_properties(bench_usage PROPERTIES LABELS cpu TIMEOUT 30)
