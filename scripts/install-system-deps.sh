#!/usr/bin/env bash
# Install the Debian packages the container image build and its e2e test need:
# podman, buildah and runc (rootful, no Docker engine), debootstrap for the air-gapped base
# image, uidmap/fuse-overlayfs/slirp4netns for podman's storage and networking, wrk for load,
# postgresql for the tracking-server tests (a throwaway cluster behind a real `mlflow server`),
# prometheus for the judge's Prometheus source tests (started by the fixtures on a temp dir;
# the package's own systemd service is not used).
#
# Idempotent: packages already installed are not fetched again, and `apt-get update` runs only
# when something is missing. Needs root (or sudo). Safe to call from .ci/run on every run.
set -euo pipefail

PACKAGES=(
  podman
  buildah
  runc
  debootstrap
  uidmap
  fuse-overlayfs
  slirp4netns
  wrk
  postgresql
  prometheus
  ca-certificates
  debian-archive-keyring
)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-system-deps: all present (${PACKAGES[*]})"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo)
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
