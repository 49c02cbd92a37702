# Sourced by the hack/ scripts: where their caches live (outside the
# repository, so a fresh checkout reuses them), and running as root.
CACHE="${DBQO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/db-query-operator}"
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}
# buildah without a daemon: vfs storage under the cache (images survive
# checkouts), chroot isolation where a container runs.
BUILDAH=(as_root buildah --storage-driver vfs --root "$CACHE/containers/storage"
         --runroot "${TMPDIR:-/tmp}/dbqo-buildah-run")
