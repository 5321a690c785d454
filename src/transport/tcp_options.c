/* tcp_options: see tcp_options.h. */
#include "tcp_options.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

struct tcp_option {
    int level;
    int name;
    int value; /* 0: the OS's default, left alone */
};

/* The options the config asks for, in the order they are set; the count. */
static int wanted(const struct config *cfg, struct tcp_option out[6])
{
    int n = 0;
    out[n++] = (struct tcp_option){IPPROTO_TCP, TCP_NODELAY, 1};
    if (cfg->tcp_keepalive) {
        out[n++] = (struct tcp_option){SOL_SOCKET, SO_KEEPALIVE, 1};
        out[n++] = (struct tcp_option){IPPROTO_TCP, TCP_KEEPIDLE, (int)cfg->tcp_keepidle};
        out[n++] = (struct tcp_option){IPPROTO_TCP, TCP_KEEPINTVL, (int)cfg->tcp_keepintvl};
        out[n++] = (struct tcp_option){IPPROTO_TCP, TCP_KEEPCNT, (int)cfg->tcp_keepcnt};
    }
    out[n++] = (struct tcp_option){IPPROTO_TCP, TCP_USER_TIMEOUT, (int)cfg->tcp_user_timeout};
    return n;
}

int tcp_options_apply(int fd, const struct config *cfg)
{
    struct tcp_option opts[6];
    int n = wanted(cfg, opts);
    for (int i = 0; i < n; i++) {
        if (opts[i].value != 0 &&
            setsockopt(fd, opts[i].level, opts[i].name, &opts[i].value, sizeof(int)) < 0)
            return -errno;
    }
    return 0;
}

bool tcp_options_present(int fd, const struct config *cfg)
{
    struct tcp_option opts[6];
    int n = wanted(cfg, opts);
    for (int i = 0; i < n; i++) {
        int got = 0;
        socklen_t len = sizeof(got);
        if (opts[i].value == 0)
            continue;
        if (getsockopt(fd, opts[i].level, opts[i].name, &got, &len) < 0)
            return false;
        /* SO_KEEPALIVE and TCP_NODELAY read back as any non-zero value */
        if (opts[i].name == SO_KEEPALIVE || opts[i].name == TCP_NODELAY ? !got
                                                                        : got != opts[i].value)
            return false;
    }
    return true;
}
