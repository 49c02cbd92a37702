# The runtime image, modelled on controller-rs: the release binary is built
# once per architecture outside (cargo build --release), and copied onto a
# small base that has glibc, libssl3 (the Kubernetes client and
# postgres-native-tls use OpenSSL) and the CA bundle, and nothing else.
#
#   cargo build --release --locked --bin db-query-operator
#   docker build -t db-query-operator .        # or: buildah bud ...
#
# The base image is a build argument: distroless/cc (glibc, libssl3,
# ca-certificates, a nonroot user) by default; the test suite builds on a
# local debootstrapped Debian (hack/image.sh), since no registry is reachable.
ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot
FROM ${BASE_IMAGE}
ARG BINARY=target/release/db-query-operator
COPY ${BINARY} /usr/local/bin/db-query-operator
# Non-root, and nothing is written to the root filesystem (it may be read-only).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/db-query-operator"]
CMD ["run"]
