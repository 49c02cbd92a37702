#!/usr/bin/env bash
# Prints the path of a Python that has Helm's engine (PyPI's helm-python-sdk:
# Helm v4's Go SDK behind a C ABI; no helm binary needed). The virtualenv is
# made once and cached outside the repository.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
VENV="$CACHE/helm-venv"
VERSION="0.2.2"
log() { echo "helm-venv: $*" >&2; }

if ! "$VENV/bin/python" -c "import helm_python, sys; sys.exit(helm_python.__version__ != '$VERSION')" 2>/dev/null; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    log "installing python3-venv"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  fi
  log "installing helm-python-sdk $VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q "helm-python-sdk==$VERSION" >&2
fi
echo "$VENV/bin/python"
