/* SPDX-License-Identifier: Apache-2.0 */
/* probe_forbidden.c — a deliberate layering violation for the `layering`
 * test's self-check: handed to the checker as part of comm/, it calls into
 * runtime/ (the engine), an edge the rules forbid. Never linked into a program. */
#include "epmoe/engine.h"

void epm__layering_probe(void);
void epm__layering_probe(void) { epm_engine_destroy(NULL); }
