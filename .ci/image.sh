#!/usr/bin/env bash
# Build the Docker image for real where no Docker engine runs and no image registry is reachable
# (../shared/CONTAINERS.md): Debian's podman with runc, a base image made from Debian's packages
# with debootstrap, the Dockerfile built on it. Idempotent: each step is skipped when done, and
# podman's layer cache rebuilds only what the checkout changed. Needs root (apt-get, debootstrap).
#
#   bash .ci/image.sh                  # -> localhost/clinie:test; prints the podman command prefix
#   $(bash .ci/image.sh --podman) run --rm --network host localhost/clinie:test ...
#   source .ci/image.sh --podman       # or: defines the shell function clinie_podman
#
# Progress goes to stderr; stdout is only the podman command prefix (its last line), which
# tests/e2e/test_image.py reuses. CLINIE_IMAGE_CACHE (default ~/.cache/clinie/image) holds
# containers.conf, the build's pip cache and a lock; CLINIE_IMAGE (default localhost/clinie:test)
# names the image.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CLINIE_IMAGE_CACHE:-$HOME/.cache/clinie/image}"
IMAGE="${CLINIE_IMAGE:-localhost/clinie:test}"
BASE="localhost/debian-python:bookworm"
RUNC=/usr/sbin/runc
PODMAN=(env "CONTAINERS_CONF=$CACHE/containers.conf" podman --runtime "$RUNC")

clinie_podman() { "${PODMAN[@]}" "$@"; }

# (b) podman's default ulimits are refused here (setrlimit RLIMIT_NOFILE: Operation not permitted)
mkdir -p "$CACHE"
if [[ ! -s "$CACHE/containers.conf" ]]; then
    printf '[containers]\ndefault_ulimits = []\n' > "$CACHE/containers.conf"
fi

if [[ "${1:-}" == "--podman" ]]; then
    if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then printf '%q ' "${PODMAN[@]}"; echo; exit 0; fi
    return 0
fi

set -euo pipefail
log() { echo "image.sh: $*" >&2; }
started=$SECONDS
exec 9> "$CACHE/lock"  # one build at a time (a test and a person may both run it)
flock 9

# (a) the engine, its runtime (crun fails here: "cgroups in hybrid mode not supported") and debootstrap
missing=()
command -v podman > /dev/null || missing+=(podman)
[[ -x "$RUNC" ]] || missing+=(runc)
command -v debootstrap > /dev/null || missing+=(debootstrap)
if (( ${#missing[@]} )); then
    [[ $(id -u) -eq 0 ]] || { log "installing ${missing[*]} needs root"; exit 1; }
    log "installing ${missing[*]} from Debian's packages"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi

# (c) the base: Debian bookworm's python3 (3.11) and venv, from the mirror apt uses here
if ! clinie_podman image exists "$BASE"; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror="${mirror:-http://deb.debian.org/debian}"
    log "building $BASE with debootstrap from $mirror (about 2 minutes)"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "$mirror" >&2
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | clinie_podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE" >&2
    rm -rf "$rootfs"
    trap - EXIT
fi

# (d) the image. The build reaches the package registries on the host's network, with the host's
# CA bundle; pip inside reads a pip.conf of our own (the CA bundle, /opt/wheels for the CPU wheel
# of torch, when this machine has it) and keeps its downloads in the cache between builds.
# llama-cpp-python's wheel (.ci/llama-wheel.sh: portable flags, py3-none) is built on the host
# once and lent to the build read-only, where the install script finds it instead of compiling it
# again (8 minutes on 2 cores); CLINIE_IMAGE_BUILD_LLAMA=1 compiles it inside instead.
mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
{
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    if [[ -d /opt/wheels ]]; then echo "find-links = /opt/wheels"; fi
} > "$CACHE/pip.conf"
mounts+=(-v "$CACHE/pip.conf:/etc/pip.conf:ro")
if [[ -d /opt/wheels ]]; then mounts+=(-v /opt/wheels:/opt/wheels:ro); fi
mkdir -p "$CACHE/pip-cache"
mounts+=(-v "$CACHE/pip-cache:/root/.cache/pip")
if [[ "${CLINIE_IMAGE_BUILD_LLAMA:-}" != 1 ]]; then
    wheels=$(bash "$ROOT/.ci/llama-wheel.sh")
    mounts+=(-v "$wheels:/root/.cache/clinie/wheels:ro")
fi
# The build stage is tagged too ($IMAGE-build), so that the versions each build replaces can be
# removed (about 3 GB each) while the current ones stay podman's layer cache.
# --format docker: an OCI image has no HEALTHCHECK (podman drops it, with a warning).
old=$(clinie_podman image inspect --format '{{.Id}}' "$IMAGE" "$IMAGE-build" 2>/dev/null || true)
build=(clinie_podman build --format docker --network host "${mounts[@]}" --build-arg "BASE_IMAGE=$BASE"
       -f "$ROOT/Dockerfile")
# .dockerignore keeps the bytecode a test run leaves in clinie/__pycache__ out: it would change
# the COPY layers, and reinstall everything, at each build.
log "building $IMAGE from $ROOT/Dockerfile on $BASE"
"${build[@]}" --target build -t "$IMAGE-build" "$ROOT" >&2
"${build[@]}" -t "$IMAGE" "$ROOT" >&2
new=$(clinie_podman image inspect --format '{{.Id}}' "$IMAGE" "$IMAGE-build")
for id in $old; do
    if ! grep -q "$id" <<< "$new"; then clinie_podman rmi "$id" > /dev/null 2>&1 || true; fi
done
log "$IMAGE built in $((SECONDS - started)) s"
printf '%q ' "${PODMAN[@]}"; echo
