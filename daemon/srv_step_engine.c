/* srv_step_engine.c — glue from the worker to the step engine. Until the
 * engine is part of the tree this reports "not built", and the daemon runs
 * only the "mix" stand-in (--preset mix). */
#include "srv_backend.h"

const srv_backend_ops_t *srv_backend_engine(void) { return NULL; }
