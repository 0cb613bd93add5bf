#!/usr/bin/env bash
# Builds the graphgate container image with buildah, with no network access during the
# build itself (tests/deploy/test_dockerfile_build.py runs this script).
#
#   scripts/build-image.sh [--tag IMAGE] [--base IMAGE] [--root DIR] [--push DEST]
#
#   --tag   name for the result (default localhost/graphgate:<version from pyproject>)
#   --base  base image already in buildah's storage or pullable (default: a local
#           Debian bookworm + python3 made with debootstrap, cached in $IMAGE_CACHE)
#   --root  buildah storage directory (default: buildah's own); delete it afterwards
#           if it was only for this build. The storage driver is overlay on ext4, xfs and
#           btrfs, else vfs, which works anywhere (inside another container too) but
#           keeps a full copy of every layer (about 700 MB here, against 350 MB);
#           STORAGE_DRIVER=vfs|overlay overrides the choice
#   --push  also copy the image there, e.g. docker-archive:/tmp/graphgate.tar:graphgate:0.1.0
#           (for `kind load image-archive`) or docker://registry.example.com/graphgate:0.1.0
#
# Why not a plain `buildah bud`/`docker build`: inside a build, pip cannot verify the
# package index's certificate on machines that trust it only through pip's own `cert=`
# setting (the host's CA bundle), and some build hosts have no network at all. So the
# wheels are downloaded first, by the base's own Python with the host's CA bundle, into
# the context's wheelhouse/, and the build runs under `unshare -n` with PIP_NO_INDEX=1:
# nothing is downloaded during the build itself.
#
# Needs root (debootstrap and buildah's chroot isolation), buildah, unshare (util-linux),
# debootstrap unless --base is given, and python3 (3.11+) to read pyproject.toml.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
IMAGE_CACHE=${IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graphgate-image}
version=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
tag="localhost/graphgate:$version"
base=""
storage=()
root_dir=/var/lib
push=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --root) storage=(--root "$2/storage" --runroot "$2/run"); root_dir=$2; shift 2 ;;
    --push) push=$2; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done

for tool in buildah unshare; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool is not installed" >&2; exit 1; }
done
driver=${STORAGE_DRIVER:-}
if [[ -z "$driver" ]]; then
  mkdir -p "$root_dir"
  case $(findmnt -no FSTYPE --target "$root_dir" 2>/dev/null) in
    ext4|xfs|btrfs) driver=overlay ;;
    *) driver=vfs ;;
  esac
fi
buildah=(buildah "${storage[@]}" --storage-driver "$driver")

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

# The context holds what .dockerignore lets in, plus the wheelhouse.
cp "$ROOT/Dockerfile" "$ROOT/.dockerignore" "$ROOT/pyproject.toml" "$ROOT/README.md" "$context/"
cp -r "$ROOT/service" "$context/service"
find "$context/service" -name __pycache__ -prune -exec rm -rf {} +
if [[ -z "$base" ]]; then
  base=localhost/graphgate-base:bookworm-py
  if ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
    rootfs="$IMAGE_CACHE/bookworm-py"
    if [[ ! -x "$rootfs/usr/bin/python3" ]]; then
      command -v debootstrap >/dev/null || { echo "build-image: debootstrap is not installed" >&2; exit 1; }
      mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
      echo "build-image: debootstrap bookworm into $rootfs (about a minute; cached)" >&2
      rm -rf "$rootfs.tmp" && mkdir -p "$IMAGE_CACHE"
      debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs.tmp" \
        "${mirror:-http://deb.debian.org/debian}" >"$IMAGE_CACHE/debootstrap.log"
      rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/*
      mv "$rootfs.tmp" "$rootfs"
    fi
    echo "build-image: importing the base as $base" >&2
    container=$("${buildah[@]}" from scratch)
    mount=$("${buildah[@]}" mount "$container")
    cp -a "$rootfs/." "$mount/"
    "${buildah[@]}" umount "$container" >/dev/null
    "${buildah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --cmd /bin/bash "$container"
    "${buildah[@]}" commit --quiet --rm "$container" "$base" >/dev/null
  fi
fi

echo "build-image: wheels for graphgate $version's dependencies, resolved in $base" >&2
# Resolved by the base's own Python, not the host's: environment markers depend on the
# exact interpreter (redis needs async-timeout below 3.11.3; bookworm has 3.11.2, and
# pip evaluates markers only against the Python it runs on). This step has network
# access; pip verifies the index with the host's CA bundle, which the base may lack.
# Binary wheels only (no compilers in the build), plus the build backend: building
# graphgate's own wheel in the image needs it offline too.
"$PYTHON" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
  "$ROOT/pyproject.toml" >"$context/requirements.txt"
cafile=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
resolver=$("${buildah[@]}" from "$base")
"${buildah[@]}" run --isolation chroot --user 0:0 -v "$context:/ctx" -v "$cafile:/run/build-ca.pem:ro" \
  --env PIP_CERT=/run/build-ca.pem --env PIP_DISABLE_PIP_VERSION_CHECK=1 \
  ${PIP_INDEX_URL:+--env "PIP_INDEX_URL=$PIP_INDEX_URL"} "$resolver" -- sh -c \
  'python3 -m venv /tmp/resolver && /tmp/resolver/bin/pip download --quiet --dest /ctx/wheelhouse \
     --only-binary=:all: -r /ctx/requirements.txt "setuptools>=77" wheel'
"${buildah[@]}" rm "$resolver" >/dev/null

echo "build-image: building $tag from $base, with no network" >&2
# --isolation chroot: no runc/crun needed, and the RUN steps see only the network
# namespace unshare gave them (loopback, down).
unshare -n "${buildah[@]}" bud --quiet --isolation chroot --layers=false --format docker \
  --build-arg "BASE=$base" --build-arg PIP_NO_INDEX=1 \
  --build-arg "VERSION=$version" \
  --build-arg "REVISION=${REVISION:-$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)}" \
  --tag "$tag" --file "$context/Dockerfile" "$context"

if [[ -n "$push" ]]; then
  "${buildah[@]}" push --quiet "$tag" "$push"
fi
echo "$tag"
