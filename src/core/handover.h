/* handover: idle servers between workers (docs/architecture.md 5.4). With workers > 1 a pool's
 * servers are split over the workers' pools of its key, and the caps (pool_size, max_db/user/
 * server_connections) count them all: a worker can have clients queued under a full cap while
 * another holds idle servers. The waiting worker registers its need in the ledger's wait list
 * (pool.c's note_slot_wait) and, when the entry is new, tells the others (worker_post_need); a
 * worker holding an idle server then asks the ledger whom it serves (ledger_claim_idle): a
 * server of the waiter's own key moves to it with its slot, socket, TLS session, parameters and
 * prepared statements; one of another key in a shared cap closes, the slot going to the waiter.
 * Local clients go first: only a server no local waiter took is offered, unless another
 * worker's waiter of its key has waited longer by more than a slack (handover_offer_older,
 * 5.3's fairness of the longest waiter). With one worker
 * nothing here runs. */
#ifndef SLUICE_HANDOVER_H
#define SLUICE_HANDOVER_H

#include <stdbool.h>
#include <stdint.h>

struct server;
struct worker;
struct pool;
struct ledger_key;

/* s just went idle on its worker (pool_server_ready) or sits idle: if another worker's waiter
 * can use it, move it there or close it to free the slot. true when s left this pool. */
bool handover_offer(struct server *s);
/* s just went idle (pool_server_ready) and would serve a local waiter; since_ms (ledger_now_ms's
 * clock): the arrival of this pool's oldest waiter. When another worker's waiter of its key has
 * waited longer by more than HANDOVER_FAIRNESS_SLACK_MS, s moves there instead (5.3's fairness
 * of the longest waiter), or, in session mode when that waiter wants other startup parameters,
 * closes to free its slot for it. true when s left this pool. Lock-free while no worker waits
 * for a slot. next_since_ms: the arrival of the local waiter after the one served (0: none, or
 * the oldest is not the one served), what this worker's entry in the ledger's wait list says
 * once that one is served (ledger_claim_older). */
bool handover_offer_older(struct server *s, uint64_t since_ms, uint64_t next_since_ms);
/* Offer every idle server of p (a need was announced, or the pool's tick found one). */
void handover_offer_pool(struct pool *p);
/* Another worker announced a need: offer every pool's idle servers. */
void handover_scan(struct worker *worker);
/* On the receiving worker's thread: s (MOVING, of ledger key) arrives; it joins this worker's
 * pool of that key and serves its oldest waiter, or stays idle. It is closed instead when it
 * missed, between the two workers, a console command that closes its database's servers or a
 * reload that changed its connection settings; and when delivered is false (the mailbox
 * closed with it queued). */
void handover_receive(struct worker *worker, struct server *s, struct ledger_key *key,
                      bool delivered);

#endif
