#!/usr/bin/env bash
# A local sandbox on a fresh machine: provisions and starts a real control
# plane and PostgreSQL, loads a sample table, installs the CRD and a sample
# DBQR, and shows the objects its rows become.
#
#   hack/sandbox.sh          the walk-through, then everything stops
#   hack/sandbox.sh --keep   the walk-through without the final deletion; the
#                            control plane, PostgreSQL and the operator stay up
#                            for your own DBQRs (it prints KUBECONFIG, the
#                            database URL and how to stop) until stopped
set -euo pipefail
case "${1:-}" in
  --keep) export SANDBOX_KEEP=1 ;;
  "") ;;
  *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/db-query-operator/target}"
KUBEBUILDER_ASSETS="$(bash hack/provision.sh | tail -n 1)"
export KUBEBUILDER_ASSETS
cargo build --workspace --bins --locked
exec "$CARGO_TARGET_DIR/debug/testenv" run -- bash hack/sandbox-steps.sh
