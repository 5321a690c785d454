# sluice container image.
#
#   docker build -t sluice .
#   docker run --rm -p 6432:6432 -p 8080:8080 \
#       -e DATABASE_URL='postgres://app:secret@db.example.com:5432/app?sslmode=require' sluice
#   psql 'postgres://app:secret@localhost:6432/app'      # same user and password as upstream
#
# Configuration (see scripts/docker-entrypoint): DATABASE_URL or DATABASE_URL_FILE (a secret
# file holding it), SLUICE_<KEY> for any config key, or a config file mounted at
# /etc/sluice/sluice.ini (or named by SLUICE_CONFIG). An annotated example of every key is in
# /usr/share/doc/sluice/sluice.ini.example; Prometheus alert rules and a Grafana dashboard for
# /metrics beside it (prometheus-alerts.yml, grafana-dashboard.json).
#
# Stopping: `docker stop` sends SIGINT, sluice's graceful shutdown: idle clients are closed at
# once, open transactions finish for up to shutdown_timeout (default 8 s, inside Docker's 10 s
# grace period before SIGKILL), and sluice exits as soon as none is left. Raising
# SLUICE_SHUTDOWN_TIMEOUT needs a longer grace period too (`docker stop -t`, compose
# `stop_grace_period`, Kubernetes `terminationGracePeriodSeconds`).

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---- build stage: compiler, meson and the -dev packages ----
FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        meson ninja-build pkg-config gcc libc6-dev \
        libuv1-dev libpq-dev libinih-dev libssl-dev libidn-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole tree (.dockerignore keeps build directories out): meson.build reads tests/ too.
COPY . .
RUN meson setup /build --buildtype=release --prefix=/usr/local \
 && ninja -C /build sluice \
 && install -D -m 0755 -s /build/sluice /out/usr/local/bin/sluice \
 && install -D -m 0755 scripts/docker-entrypoint /out/usr/local/bin/docker-entrypoint \
 && install -D -m 0644 conf/sluice.ini /out/usr/share/doc/sluice/sluice.ini.example \
 && install -m 0644 conf/prometheus-alerts.yml conf/grafana-dashboard.json /out/usr/share/doc/sluice/ \
 && /out/usr/local/bin/sluice --version

# ---- runtime stage: only the shared libraries sluice links against ----
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libuv1 libpq5 libinih1 libssl3 libidn12 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 sluice \
 && useradd --uid 10001 --gid sluice --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin sluice \
 && mkdir -p /etc/sluice
COPY --from=build /out/ /

LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="PostgreSQL connection pooler" \
      org.opencontainers.image.licenses="MIT"

# Listen on every interface inside the container; /health, /livez and /metrics on 8080.
ENV SLUICE_LISTEN_ADDR=0.0.0.0 \
    SLUICE_HTTP_LISTEN_ADDR=0.0.0.0 \
    SLUICE_HTTP_LISTEN_PORT=8080
EXPOSE 6432 8080

# A numeric user, so Kubernetes' runAsNonRoot can verify it (uid 10001 is `sluice`). sluice
# writes no files unless logfile/pidfile/unix_socket_dir are set: a read-only root works.
USER 10001:10001

# Liveness: GET /livez over bash's /dev/tcp (no curl in the image; `docker-entrypoint
# healthcheck`). Not /health: that is readiness, 503 while a database is down, and restarting
# the pooler would not bring the database back. Point load balancers / Kubernetes
# readinessProbe at /health, livenessProbe at /livez.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/docker-entrypoint", "healthcheck"]

STOPSIGNAL SIGINT
# The entrypoint execs sluice, so sluice is PID 1 and gets the stop signal itself.
ENTRYPOINT ["/usr/local/bin/docker-entrypoint"]
