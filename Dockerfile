# syntax=docker/dockerfile:1
#
# Stockyard container image: a static-ish Rust binary on debian:bookworm-slim, running as an
# unprivileged user, serving on 0.0.0.0:4200, keeping its trace database in the /data volume.
#
#   docker build -t stockyard .
#   docker run -d --name stockyard -p 4200:4200 --stop-timeout 35 \
#     -e STOCKYARD_API_KEY=change-me -e OPENAI_API_KEY \
#     -v stockyard-data:/data \
#     -v "$PWD/stockyard.yaml:/etc/stockyard/stockyard.yaml:ro" \
#     stockyard
#
# Reload the mounted config without a restart: `docker kill --signal HUP stockyard`.

# ---- build --------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# Only what the build needs (see .dockerignore); the lock file pins every dependency.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
# Symbols stripped and no debug info: a smaller image. The cache mounts keep the registry and
# the target directory between builds (BuildKit).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin stockyard \
 && install -m 0755 target/release/stockyard /usr/local/bin/stockyard

# ---- runtime ------------------------------------------------------------------------------
FROM debian:bookworm-slim
# CA certificates for HTTPS to cloud providers; nothing else (no shell tools are needed, the
# health check is the binary itself).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged uid/gid, so volume permissions are predictable.
RUN groupadd --system --gid 10001 stockyard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin stockyard \
 && mkdir -p /data /etc/stockyard \
 && chown 10001:10001 /data
COPY --from=builder /usr/local/bin/stockyard /usr/local/bin/stockyard
COPY examples/docker/stockyard.yaml /etc/stockyard/stockyard.yaml

# STOCKYARD_CONFIG: the file to load (mount yours here). STOCKYARD_DATA_DIR: the SQLite trace
# database goes to /data/stockyard.db.
# STOCKYARD_LISTEN: listen on every interface, or `-p 4200:4200` could not reach the proxy. This
# does NOT bypass the rule that a non-loopback listener needs proxy keys: with STOCKYARD_LISTEN
# set, `stockyard` still refuses to start unless the config has `api_keys` (the default file
# reads them from STOCKYARD_API_KEY) or `allow_unauthenticated: true` (the default file reads it
# from STOCKYARD_ALLOW_UNAUTHENTICATED). So an image started without either exits with the
# reason instead of serving an open proxy that spends your provider keys.
ENV STOCKYARD_CONFIG=/etc/stockyard/stockyard.yaml \
    STOCKYARD_DATA_DIR=/data \
    STOCKYARD_LISTEN=0.0.0.0:4200
VOLUME /data
EXPOSE 4200
USER 10001:10001
WORKDIR /data
# `stockyard health` GETs /health on the configured listen address (0.0.0.0 means 127.0.0.1)
# and exits 0 or 1: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["stockyard", "health"]
# SIGTERM drains in-flight requests for up to shutdown_grace (30s by default): give
# `docker stop` more than that with `--stop-timeout 35` (or `-t 35`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["stockyard"]
CMD ["serve"]
