#!/usr/bin/env bash
# Installs the system packages graphgate needs on Debian/Ubuntu, only when missing.
#   scripts/system-deps.sh          what `make run` needs (python3-venv)
#   scripts/system-deps.sh --test   plus the real servers the test suite starts
#                                   (PostgreSQL, Redis, nginx, Prometheus's promtool)
#   scripts/system-deps.sh --image  the image build's tools (buildah, debootstrap),
#                                   for `make image` and `make test-image`
#   scripts/system-deps.sh --bench  the servers plus wrk, for `make bench`
# Uses apt-get as root, or through sudo when available; otherwise says what is missing.
set -euo pipefail

want=()
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  want+=(python3-venv)
fi
if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" ]]; then
  if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
    want+=(postgresql)
  fi
  if ! command -v redis-server >/dev/null; then
    want+=(redis-server)
  fi
  if [[ ! -x /usr/sbin/nginx ]] && ! command -v nginx >/dev/null; then
    want+=(nginx)
  fi
  if ! command -v promtool >/dev/null; then
    want+=(prometheus)
  fi
fi
if [[ "${1:-}" == "--bench" ]] && ! command -v wrk >/dev/null; then
  want+=(wrk)  # the GET rows' load generator (a slower Python client runs without it)
fi
if [[ "${1:-}" == "--image" ]]; then
  # scripts/build-image.sh and tests/deploy/test_dockerfile_build.py.
  if ! command -v buildah >/dev/null; then
    want+=(buildah)
  fi
  if [[ ! -x /usr/sbin/debootstrap ]] && ! command -v debootstrap >/dev/null; then
    want+=(debootstrap)
  fi
  if [[ ! -x /usr/sbin/ip ]] && ! command -v ip >/dev/null; then
    want+=(iproute2)  # brings loopback up in the image test's network namespace
  fi
fi
[[ ${#want[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "graphgate: missing system packages: ${want[*]} (install them with apt-get, as root)" >&2
  exit 0  # the tests that need them skip locally, and fail in CI
fi
if ! command -v apt-get >/dev/null; then
  echo "graphgate: missing system packages: ${want[*]} (no apt-get here; install them yourself)" >&2
  exit 0
fi
echo "graphgate: installing ${want[*]}" >&2
# A policy-rc.d that refuses lets packages install without starting their services:
# the tests start private instances on free ports and leave the system ones alone.
# (redis-server, nginx and prometheus would otherwise take ports 6379, 80 and 9090.)
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
  trap '"${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
fi
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}"
