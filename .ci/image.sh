#!/usr/bin/env bash
# `make image`: build localhost/credfresh:dev from wheels made on this machine.
#
#   .ci/image.sh build            the tools (podman, runc, mmdebstrap) if missing, the Debian
#                                 base once, the wheels, the image; then its size
#   .ci/image.sh context DIR      only the build context (DIR/wheels), e.g. for `docker build`
#
# Variables: PYTHON (a python with pip; default .venv/bin/python), IMAGE (the tag), BASE (a
# base image to use instead of the local Debian one, e.g. python:3.11-slim), ENGINE (podman,
# or docker: then no tool is installed and no Debian base is built; BASE defaults to slim).
# The build itself runs with --network none: everything it installs comes from the wheels.
set -euo pipefail
# A relative DIR is the caller's, not the repository's.
[[ ${1:-} != context || -z ${2:-} ]] || set -- context "$(realpath -m "$2")"
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
IMAGE=${IMAGE:-localhost/credfresh:dev}
ENGINE=${ENGINE:-podman}
BASE=${BASE:-}
# The image's Python, whatever the host runs: both bases (python:3.11-slim and Debian 12)
# have CPython 3.11 on glibc.
PY_TARGET=(--python-version 3.11 --implementation cp --abi cp311
    --platform "manylinux2014_$(uname -m)")
# Raising rlimits is refused in this machine's sandbox: ask for what it already allows.
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
DEBIAN=(--variant=apt --include=python3,python3-venv,ca-certificates bookworm)

log() { printf 'image: %s\n' "$*" >&2; }

mb() { awk -v bytes="$1" 'BEGIN { printf "%.1f MB", bytes / 1e6 }'; }

podman_() { podman --runtime runc "$@"; }

ensure_tools() {
    local missing=() tool
    for tool in podman runc mmdebstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# The Debian base, built once: its tag is a hash of the mmdebstrap recipe.
debian_base() {
    local tag
    tag="localhost/credfresh-base:bookworm-$(printf '%s\n' "${DEBIAN[@]}" | sha256sum | cut -c1-12)"
    if podman_ image exists "$tag"; then
        log "base $tag exists"
    else
        log "building base $tag (mmdebstrap ${DEBIAN[*]})"
        local dir
        dir=$(mktemp -d)
        mmdebstrap --quiet "${DEBIAN[@]}" "$dir/base.tar"
        podman_ import --quiet "$dir/base.tar" "$tag" >/dev/null
        rm -rf "$dir"
    fi
    printf '%s\n' "$tag"
}

# DIR/wheels: credfresh's wheel (built from a copy of the sources, so the worktree gets no
# build/ or egg-info) and every dependency as a binary wheel for the image's Python.
make_context() {
    local ctx=$1
    mkdir -p "$ctx/src" "$ctx/wheels"
    cp -r pyproject.toml README.md daemon "$ctx/src/"
    # A fixed timestamp: the same sources make the same wheel, so an unchanged tree reuses
    # every cached layer.
    SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel --quiet --no-deps \
        --wheel-dir "$ctx/wheels" "$ctx/src"
    rm -rf "$ctx/src"
    "$PYTHON" -m pip download --quiet --only-binary=:all: "${PY_TARGET[@]}" \
        --dest "$ctx/wheels" "$ctx"/wheels/credfresh-*.whl
    log "context: $(find "$ctx/wheels" -name '*.whl' | wc -l) wheels"
}

report_size() {
    local base=$1 total base_size
    total=$(podman_ image inspect --format '{{.Size}}' "$IMAGE")
    base_size=$(podman_ image inspect --format '{{.Size}}' "$base")
    log "$IMAGE: $(mb "$total"); base $base: $(mb "$base_size");" \
        "credfresh's layers: $(mb $((total - base_size)))"
    if podman_ image exists docker.io/library/python:3.11-slim; then
        local slim
        slim=$(podman_ image inspect --format '{{.Size}}' docker.io/library/python:3.11-slim)
        log "on python:3.11-slim it would be about $(mb $((slim + total - base_size)))"
    else
        log "python:3.11-slim is not here (no registry): its size is not measured"
    fi
}

CTX=
cleanup() { [[ -z $CTX ]] || rm -rf "$CTX"; }
trap cleanup EXIT

build() {
    CTX=$(mktemp -d)
    local ctx=$CTX
    if [[ $ENGINE == docker ]]; then
        make_context "$ctx"
        docker build --network none --build-arg "BASE=${BASE:-python:3.11-slim}" \
            -t "$IMAGE" -f Containerfile "$ctx"
        return
    fi
    ensure_tools
    local base=${BASE:-$(debian_base)}
    make_context "$ctx"
    log "building $IMAGE on $base"
    local old new
    old=$(podman_ image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    new=$(podman_ build --quiet --format docker --network none "${LIMITS[@]}" \
        --build-arg "BASE=$base" -t "$IMAGE" -f Containerfile "$ctx")
    # The image this one replaced, unless a container still uses it.
    if [[ -n $old && $new != "$old"* ]]; then
        podman_ rmi "$old" >/dev/null 2>&1 || true
    fi
    report_size "$base"
}

case ${1:-build} in
build) build ;;
context) make_context "${2:?usage: $0 context DIR}" ;;
*)
    echo "usage: $0 [build | context DIR]" >&2
    exit 2
    ;;
esac
