/* resolver: the host names of a libpq connection (host=, maybe a comma list) resolved off the
 * event loop with uv_getaddrinfo, so that libpq is handed addresses (hostaddr=) and never
 * resolves on the loop, where a slow DNS answer would stall every pool. host= stays as given:
 * libpq still verifies TLS certificates (verify-full) and sends SNI against the name. Used by
 * every backend connection sluice opens: pools' servers (server.c, libpq or server_login.c) and
 * auth_query's (secret.c). */
#ifndef SLUICE_RESOLVER_H
#define SLUICE_RESOLVER_H

#include <stddef.h>
#include <uv.h>

struct resolver;
/* The lookup is over: resolver_error(r) NULL and resolver_apply ready, or why not. The owner
 * frees r with resolver_free. */
typedef void (*resolver_cb)(struct resolver *r, void *owner);

/* Does the connection of these libpq keywords (NULL-ended) need names resolved? 1: no (no host
 * name, or hostaddr= given): connect now. 0: started; cb comes later. <0: could not start; why
 * says so. */
int resolver_start(uv_loop_t *loop, const char *const *kw, const char *const *val, resolver_cb cb,
                   void *owner, struct resolver **out, char *why, size_t whylen)
    __attribute__((warn_unused_result));
/* NULL, or why a name could not be resolved ("could not translate host name ..."). */
const char *resolver_error(const struct resolver *r);
/* Set host, hostaddr (and port, for a list of ports) in the keyword arrays of *n entries (room
 * for 3 more and the NULL end): each name becomes one entry per address it resolved to. The
 * values live as long as r. */
void resolver_apply(const struct resolver *r, const char **kw, const char **val, int *n);
/* Free r after its callback. */
void resolver_free(struct resolver *r);
/* The owner is gone before the callback: the callback never comes, r is freed (now, or when the
 * thread pool gives the request back). */
void resolver_cancel(struct resolver *r);

#endif
