/* SPDX-License-Identifier: Apache-2.0 */
/* mpi_status.c — MPI return code -> epm_status_t (mpi_status.h). */
#include "mpi_status.h"

#include <mpi.h>
#include <stdio.h>

epm_status_t epm__mpi_status(int rc, const char *what) {
  if (rc == MPI_SUCCESS) return EPM_OK;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  /* A code MPI does not know (or a broken library) still gets a message. */
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS || len <= 0) snprintf(msg, sizeof msg, "unknown MPI error");
  return epm_error(EPM_ERR_MPI, "%s: %s (MPI error code %d)", what ? what : "MPI call", msg, rc);
}
