#!/usr/bin/env bash
# Containers and the chart (tests/test_containers.py, tests/test_helm.py):
# checkov in a separate environment, Debian's docker.io (a private dockerd the
# tests start), docker-compose (1.29, for the compose file) and debootstrap,
# every Python wheel the images install (downloaded here, so that the tests
# build the images with no index), and a local Debian base image made once per
# machine, because Docker Hub is not reachable here. The base is a
# root-filesystem tarball cached under ~/.cache/switchyard/images/; the tests
# `docker import` it into their dockerd.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/images"
BASE_TAR="$CACHE/debian-py-bookworm.tar"

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
scripts/apt-install.sh "${missing[@]}"

# The images' wheels: pip downloads what is missing (seconds when nothing is).
"${PYTHON:-python3}" scripts/image_wheels.py download

# checkov in its own environment: its pins (packaging, ...) clash with ours.
CHECKOV_VENV=.venv-checkov
checkov_hash="$(sha256sum requirements/checkov.txt | cut -d' ' -f1)"
if [[ "$(cat "$CHECKOV_VENV/.stamp" 2>/dev/null)" != "$checkov_hash" ]]; then
  echo "setup: installing checkov into $CHECKOV_VENV"
  "${PYTHON:-python3}" -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/python" -m pip --disable-pip-version-check -q install \
    -r requirements/checkov.txt
  echo "$checkov_hash" > "$CHECKOV_VENV/.stamp"
fi

if [[ -s "$BASE_TAR" ]]; then
  echo "setup: base image cached at $BASE_TAR"
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "setup: debootstrap needs root; the container tests will skip without $BASE_TAR" >&2
  exit 0
fi
# python3 + venv run the services; libgomp1 is llama.cpp's OpenMP runtime (the
# Dockerfiles install it themselves on bases that lack it).
echo "setup: debootstrap a Debian bookworm base image (about 2 minutes, once per machine)"
mkdir -p "$CACHE"
rootfs="$(mktemp -d "$CACHE/.rootfs.XXXXXX")"
trap 'rm -rf "$rootfs" "$BASE_TAR.partial"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
  bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -cf "$BASE_TAR.partial" .
mv "$BASE_TAR.partial" "$BASE_TAR"
echo "setup: base image at $BASE_TAR"
