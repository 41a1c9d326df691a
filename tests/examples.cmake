# SPDX-License-Identifier: Apache-2.0
# The example programs under examples/ (label mpi): the in-process mode on 2
# ranks of the CPU, checked against the CPU reference by the program itself.
epm_add_mpi_test(example_inproc_step_np2 NP 2 COMMAND inproc_step --preset tiny --layers 2 --tokens 6 LABELS mpi
                 TIMEOUT 120)
