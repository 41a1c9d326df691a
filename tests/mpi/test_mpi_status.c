/* SPDX-License-Identifier: Apache-2.0 */
/* test_mpi_status.c — the one MPI return code translation of comm/
 * (mpi_status.h), on real MPI return codes. Under mpirun: MPI_Error_string
 * may not be called before MPI_Init. */
#include "comm_check.h"
#include "mpi_status.h"

static epm_status_t send_negative(MPI_Comm comm, int *reached) {
  int x = 0;
  EPM__MPI_TRY(MPI_Send(&x, 0, MPI_INT, MPI_PROC_NULL, 0, comm), "send nothing"); /* succeeds */
  EPM__MPI_TRY(MPI_Send(&x, -1, MPI_INT, 0, 0, comm), "probe: MPI_Send(count -1)");
  *reached = 1;
  return EPM_OK;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;

  /* Success: EPM_OK, and the thread's message is left alone. */
  epm_error(EPM_ERR_IO, "marker");
  CHECK(epm__mpi_status(MPI_SUCCESS, "MPI_Barrier") == EPM_OK, "MPI_SUCCESS not EPM_OK");
  CHECK(strcmp(epm_last_error(), "marker") == 0, "message changed to '%s'", epm_last_error());

  /* A code MPI really returns: a negative count, on a communicator that
   * returns errors instead of aborting (as comm/ sets its own). */
  MPI_Comm comm;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int x = 0;
  const int rc = MPI_Send(&x, -1, MPI_INT, 0, 0, comm);
  int cls = MPI_SUCCESS;
  MPI_Error_class(rc, &cls);
  CHECK(rc != MPI_SUCCESS && cls == MPI_ERR_COUNT, "MPI_Send(count -1) gave %d (class %d)", rc, cls);

  CHECK(epm__mpi_status(rc, "allgatherv: MPI_Bcast") == EPM_ERR_MPI, "not EPM_ERR_MPI");
  MPI_Error_string(rc, text, &len);
  char want[MPI_MAX_ERROR_STRING + 128];
  snprintf(want, sizeof want, "allgatherv: MPI_Bcast: %s (MPI error code %d)", text, rc);
  CHECK(strcmp(epm_last_error(), want) == 0, "message '%s', want '%s'", epm_last_error(), want);
  CHECK(strstr(epm_last_error(), "MPI_ERR_COUNT") != NULL, "no MPI_ERR_COUNT in '%s'", epm_last_error());

  /* Every error class maps to EPM_ERR_MPI, named by MPI's own text. */
  const int classes[] = {MPI_ERR_BUFFER, MPI_ERR_TRUNCATE, MPI_ERR_COMM, MPI_ERR_RANK, MPI_ERR_NO_MEM,
                         MPI_ERR_OTHER, MPI_ERR_INTERN};
  for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++) {
    CHECK(epm__mpi_status(classes[i], "call") == EPM_ERR_MPI, "class %d", classes[i]);
    MPI_Error_string(classes[i], text, &len);
    CHECK(strstr(epm_last_error(), text) != NULL, "class %d: '%s' lacks '%s'", classes[i], epm_last_error(), text);
  }

  /* The macro returns on the failing call only. */
  int reached = 0;
  CHECK(send_negative(comm, &reached) == EPM_ERR_MPI && !reached, "EPM__MPI_TRY did not return");
  CHECK(strncmp(epm_last_error(), "probe: MPI_Send(count -1): ", 27) == 0, "message '%s'", epm_last_error());

  MPI_Comm_free(&comm);
  printf("test_mpi_status: ok (%s)\n", epm_last_error());
  MPI_Finalize();
  return 0;
}
