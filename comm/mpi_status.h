/* SPDX-License-Identifier: Apache-2.0 */
/* mpi_status.h — private to comm/: the one MPI return code -> epm_status_t
 * translation, for every file of comm/ that calls MPI (bootstrap, the MPI
 * and NCCL backends). Communicators here use MPI_ERRORS_RETURN, so every
 * MPI call's code must be looked at and turned into a status. */
#ifndef EPMOE_COMM_MPI_STATUS_H
#define EPMOE_COMM_MPI_STATUS_H

#include "epmoe/status.h"

/* EPM_OK for MPI_SUCCESS. Otherwise EPM_ERR_MPI with the message
 *   "<what>: <MPI_Error_string(rc)> (MPI error code <rc>)"
 * where `what` names the call and its context ("barrier: MPI_Barrier"). */
epm_status_t epm__mpi_status(int rc, const char *what);

/* Return the translated status from the enclosing function when `call`
 * (an MPI call returning int) fails. */
#define EPM__MPI_TRY(call, what)                                            \
  do {                                                                      \
    int epm__mrc = (call);                                                  \
    if (epm__mrc != MPI_SUCCESS) return epm__mpi_status(epm__mrc, (what));  \
  } while (0)

#endif /* EPMOE_COMM_MPI_STATUS_H */
