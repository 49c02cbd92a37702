#!/usr/bin/env bash
# Prints the path of a Python that has moto's S3 server (PyPI's
# `moto[server]`: an S3-compatible HTTP server, buckets in memory, any
# credentials accepted) and boto3, for the backup tests' object storage. The
# virtualenv is made once and cached outside the repository.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
VENV="$CACHE/s3-venv"
VERSION="5.2.5"
log() { echo "s3-venv: $*" >&2; }

if ! "$VENV/bin/python" -c "import moto, boto3, sys; sys.exit(moto.__version__ != '$VERSION')" 2>/dev/null; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    log "installing python3-venv"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  fi
  log "installing moto[server] $VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q "moto[server]==$VERSION" >&2
fi
echo "$VENV/bin/python"
