# syntax=docker/dockerfile:1
# Sharedcare: one image, every service. `sharedcare serve <service>` runs one service per pod
# (identity, records, consent, audit, passport, portal, connectors); `sharedcare operator run`
# the operator; `sharedcare up` the whole platform on embedded storage; `sharedcare migrate` the
# database migrations (the chart's pre-install Job).
#
# No Docker daemon runs here: `infra/image.sh build` builds it with podman (runc) on base images
# made locally, and the test command runs the result read-only as user 10001.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm
# The base images. The defaults are the public ones; `infra/image.sh build` makes both locally
# (mmdebstrap from Debian's archive, the host's Rust toolchain) and passes them here instead.
ARG BUILD_IMAGE=rust:${RUST_VERSION}-${DEBIAN_RELEASE}
ARG RUNTIME_IMAGE=debian:${DEBIAN_RELEASE}-slim

# ---- build: a release build of the one binary ------------------------------------------------
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# The workspace: its manifests, the protobuf contract and the sources. tests/ is a member, so
# its manifest and library come too, but not its end-to-end tests (cargo does not need them to
# build the binary, and a change to a test then rebuilds nothing).
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY proto proto
COPY services services
COPY tests/Cargo.toml tests/Cargo.toml
COPY tests/lib.rs tests/lib.rs
# The cached target directory outlives the sources: COPY keeps the checkout's modification
# times, which can be older than the cached build of an earlier copy, and cargo would then
# keep a stale binary. Touching the workspace's own sources rebuilds its crates (not the
# dependencies) whenever this step runs at all, i.e. whenever a copied file changed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    find proto services tests -type f -exec touch {} + \
 && cargo build --release --locked -p sharedcare \
 && mkdir -p /out \
 && strip --strip-debug -o /out/sharedcare target/release/sharedcare

# ---- runtime: Debian slim, a non-root user, nothing else -------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
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
