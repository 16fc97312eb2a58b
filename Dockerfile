# syntax=docker/dockerfile:1.7
# One image with every tandem binary (user-svc, order-svc, sync-worker, edge); compose.yaml
# runs each service from it with a different command.
#
# Build stage: BuildKit cache mounts keep the crates.io downloads and the compiled
# dependencies between builds, so a code change rebuilds only tandem's own crates.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p user-svc -p order-svc -p sync-worker -p edge --features edge/cluster \
 && mkdir -p /out \
 && cp target/release/user-svc target/release/order-svc target/release/sync-worker target/release/edge /out/

# Runtime stage: Debian slim (glibc, CA certificates for TLS to managed MongoDB or
# RabbitMQ), no compiler, no shell tools beyond bash, and an unprivileged user.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
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
