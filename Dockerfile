# Multi-stage build: compile in the Rust image, run on a slim Debian with
# only the OpenSSL runtime (shared by the Kubernetes client and postgres-native-tls).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY actors actors
COPY testenv testenv
COPY src src
RUN cargo build --release --locked --bin db-query-operator \
 && strip target/release/db-query-operator

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/db-query-operator /usr/local/bin/db-query-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/db-query-operator"]
