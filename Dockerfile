# One image with every tandem binary (user-svc, order-svc, sync-worker, edge); compose.yaml
# runs each service from it with a different command.
#
# The base images are build arguments so a machine without Docker Hub can pass local
# stand-ins (scripts/compose-test does); on EC2 the defaults are used as they are.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# Build stage: BuildKit cache mounts (built into the engine's own frontend, so no
# `# syntax=` line and no frontend image to pull) keep the crates.io downloads and the
# compiled dependencies between builds, so a code change rebuilds only tandem's crates.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The release profile keeps line tables, for profiling on a developer's machine; the image
# keeps only the symbols (function names in a backtrace): strip --strip-debug.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p user-svc -p order-svc -p sync-worker -p edge --features edge/cluster \
 && mkdir -p /out \
 && cp target/release/user-svc target/release/order-svc target/release/sync-worker target/release/edge /out/ \
 && strip --strip-debug /out/*

# Runtime stage: Debian slim (glibc, CA certificates for TLS to managed MongoDB or
# RabbitMQ), no compiler, no shell tools beyond bash, and an unprivileged user.
FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/tandem --create-home tandem \
 && mkdir -p /etc/tandem/routing \
 && chown tandem:tandem /etc/tandem/routing
COPY --from=build /out/ /usr/local/bin/
COPY scripts/healthcheck /usr/local/bin/tandem-healthcheck
USER tandem
WORKDIR /var/lib/tandem
ENV LOG_FORMAT=json
# Each service in compose.yaml sets its own command, e.g. ["user-svc", "--flavor", "v2"].
CMD ["edge"]
