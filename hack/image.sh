#!/usr/bin/env bash
# Builds the operator's image without a container daemon and prints its name:
# the release binary (cargo), a local Debian base (debootstrap --variant=minbase
# with the CA bundle and libssl3, made once and cached, since no registry can
# be reached here), and `buildah bud` with chroot isolation on vfs storage.
#
#   hack/image.sh              build (if needed); print the image name
#   hack/image.sh inspect      ... and print the image's configuration (JSON)
#   hack/image.sh run CMD...   ... and run CMD in a container of it
#   hack/image.sh archive FILE ... and write it to FILE as a docker-archive
#                              (what `ctr images import` loads onto a node)
#   hack/image.sh backup ...   the same for the backup image: the same binary
#                              on a base that also has the engines' client
#                              tools (pg_dump, pg_restore, mariadb-dump, mariadb)
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
log() { echo "image: $*" >&2; }

missing=()
for tool in buildah:buildah debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

B=("${BUILDAH[@]}")
FLAVOUR=operator
BASE=localhost/dbqo-base:bookworm
PACKAGES=ca-certificates,libssl3
NAME=db-query-operator
if [[ "${1:-}" == backup ]]; then
  shift
  FLAVOUR=backup
  BASE=localhost/dbqo-tools-base:bookworm
  PACKAGES=ca-certificates,libssl3,postgresql-client-15,mariadb-client
  NAME=db-query-operator-backup
fi
if ! "${B[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  log "making the base image $BASE with debootstrap"
  rootfs="$CACHE/base-rootfs-$FLAVOUR"
  as_root rm -rf "$rootfs"
  as_root debootstrap --variant=minbase --include="$PACKAGES" \
    bookworm "$rootfs" http://deb.debian.org/debian >&2
  ctr=$("${B[@]}" from scratch)
  mnt=$("${B[@]}" mount "$ctr")
  as_root cp -a "$rootfs/." "$mnt/"
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" commit -q "$ctr" "$BASE" >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null
  as_root rm -rf "$rootfs"
fi

log "building the release binary"
cargo build --release --locked -p db-query-operator --bin db-query-operator >&2
VERSION=$(cargo metadata --no-deps --format-version 1 |
  jq -r '.packages[] | select(.name == "db-query-operator") | .version')
IMAGE="localhost/$NAME:$VERSION"

# vfs copies whole layers: build only when the binary or the Dockerfile changed.
key=$( (cat "$CARGO_TARGET_DIR/release/db-query-operator" Dockerfile; echo "$BASE") | sha256sum | cut -c1-32)
have=$("${B[@]}" inspect --type image --format '{{index .ImageAnnotations "dbqo.build"}}' "$IMAGE" 2>/dev/null || true)
if [[ "$have" != "$key" ]]; then
  context=$(mktemp -d)
  trap 'rm -rf "$context"' EXIT
  mkdir -p "$context/target/release"
  cp "$CARGO_TARGET_DIR/release/db-query-operator" "$context/target/release/"
  cp Dockerfile "$context/"
  log "building $IMAGE"
  "${B[@]}" bud --isolation chroot --pull=never --quiet --annotation "dbqo.build=$key" \
    --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" -f "$context/Dockerfile" "$context" >&2
  "${B[@]}" rmi --prune >/dev/null 2>&1 || true
fi

case "${1:-}" in
  inspect)
    "${B[@]}" inspect --type image "$IMAGE"
    ;;
  run)
    shift
    ctr=$("${B[@]}" from --pull=never "$IMAGE")
    status=0
    "${B[@]}" run --isolation chroot "$ctr" -- "$@" || status=$?
    "${B[@]}" rm "$ctr" >/dev/null
    exit "$status"
    ;;
  archive)
    rm -f "$2"
    "${B[@]}" push -q "$IMAGE" "docker-archive:$2:$IMAGE" >&2
    echo "$IMAGE"
    ;;
  *)
    echo "$IMAGE"
    ;;
esac
