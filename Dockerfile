# Multi-stage build: a full Rust toolchain builds a release binary (librdkafka is
# built from the bundled sources against OpenSSL for TLS and SASL/SCRAM: gcc, g++,
# make, zlib and libssl-dev come with the builder image), and a small Debian
# runtime (with libssl3) runs it as a non-root user.
#
#   docker build -t tributary .
#   docker run --rm -v $PWD/tributary.toml:/etc/tributary/tributary.toml tributary
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY schemas ./schemas
COPY examples ./examples
COPY benches ./benches
RUN cargo build --release --locked --bin tributary \
 && strip target/release/tributary

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tributary
COPY --from=build /src/target/release/tributary /usr/local/bin/tributary
COPY schemas /etc/tributary/schemas
USER 10001:10001
# /metrics, /healthz, /readyz (observability.listen in the config)
EXPOSE 9898
# SIGTERM: commit what is buffered, leave the consumer group, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tributary"]
CMD ["ingest", "--config", "/etc/tributary/tributary.toml"]
