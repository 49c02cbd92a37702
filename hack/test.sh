#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one:
#   provisions PostgreSQL, etcd, kube-apiserver and kube-controller-manager,
#   and a node's kubelet, containerd and CNI plugins (cached outside the repo),
#   checks formatting and lints, builds, then runs every test against one real
#   control plane + PostgreSQL started for the run (and the chart and the image
#   through Helm's engine and buildah, and the in-cluster test on its own node).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/db-query-operator/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A failing test's output ends with its panic message, not a backtrace: CI
# keeps only the end of the output.
export RUST_BACKTRACE=0

# `node`: also kubelet, kube-scheduler, containerd, runc and the CNI plugins
# for the in-cluster test (tests/in_cluster.rs, through hack/node.sh).
KUBEBUILDER_ASSETS="$(bash hack/provision.sh node | tail -n 1)"
export KUBEBUILDER_ASSETS

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --all-targets --locked
# What the chart and image tests use, made before the tests run so that the
# first run on a fresh machine does not compile and debootstrap beside
# timing-sensitive tests (the tests call the same idempotent scripts).
echo "== Helm engine, S3 server and images"
bash hack/helm-venv.sh >/dev/null
bash hack/s3-venv.sh >/dev/null
bash hack/image.sh >/dev/null
bash hack/image.sh backup >/dev/null

runner=(cargo test --workspace --locked --no-fail-fast)
if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --workspace --locked --no-fail-fast --failure-output final)
fi
# The reliability trials record what they did here; after a run that passed,
# RELIABILITY.md is made from it (tests/reliability.rs keeps its table and
# the trials in step).
export DBQO_RELIABILITY_DIR="$CARGO_TARGET_DIR/reliability"
rm -rf "$DBQO_RELIABILITY_DIR"
echo "== tests (${runner[*]})"
"$CARGO_TARGET_DIR/debug/testenv" run -- "${runner[@]}"
"$CARGO_TARGET_DIR/debug/testenv" report "$DBQO_RELIABILITY_DIR" RELIABILITY.md
