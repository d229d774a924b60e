# syntax=docker/dockerfile:1
# Sharedcare: one image, every service. `sharedcare serve <service>` runs one service per pod
# (identity, records, consent, audit, passport); `sharedcare up` the whole platform on embedded
# storage; `sharedcare migrate` the database migrations (the chart's pre-install Job).
#
# No Docker daemon builds this in CI: `infra/image.sh check` lints it and runs its build
# stage's commands on the host, so a change that would break the image breaks the test command.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

# ---- build: a release build of the one binary ------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
# The workspace: its manifests, the protobuf contract and the sources (tests/ is a member).
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY proto proto
COPY services services
COPY tests/Cargo.toml tests/Cargo.toml
COPY tests/lib.rs tests/lib.rs
COPY tests/e2e tests/e2e
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sharedcare \
 && mkdir -p /out \
 && strip --strip-debug -o /out/sharedcare target/release/sharedcare

# ---- runtime: Debian slim, a non-root user, nothing else -------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sharedcare" \
      org.opencontainers.image.description="Sharedcare: identity, shared care record, consent, passport and audit for an Integrated Care System" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/sharedcare/sharedcare"
# zlib and OpenSSL (librdkafka links them: TLS and SCRAM to Kafka) and CA certificates (TLS
# to identity, Kafka, Postgres).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=* libssl3=* zlib1g=* \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sharedcare \
 && useradd --system --uid 10001 --gid sharedcare --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sharedcare
COPY --from=build /out/sharedcare /usr/local/bin/sharedcare
# Run read-only: anything written goes to a mounted volume (e.g. /data for `up`, /exports).
USER 10001:10001
EXPOSE 8080 50051
ENTRYPOINT ["/usr/local/bin/sharedcare"]
CMD ["up", "--http", "0.0.0.0:8080", "--grpc", "0.0.0.0:50051", "--data", "/data"]
