/* autodb: the "*" entry's databases are freed after autodb_idle_timeout unused (autodb.c). */
#ifndef SLUICE_AUTODB_H
#define SLUICE_AUTODB_H

#include <stdint.h>

struct worker;

/* On worker's own thread, each tick: free its pools of "*" databases that no worker has used
 * for autodb_idle_timeout (now: sluice_now). */
void autodb_sweep(struct worker *worker, uint64_t now);

#endif
