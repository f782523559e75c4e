#!/usr/bin/env bash
# Make an air-gapped Python base image from Debian packages, with no container registry.
#
# debootstrap --variant=minbase builds a Debian root file system from the apt mirror this
# machine already uses (python3 3.11 + venv + pip + ca-certificates on bookworm), optional
# extra CA certificates are copied in and trusted, and the tree is imported as an image.
# The Bento's Python version must match the base's python3 (3.11 on bookworm), or uv inside
# the image build tries to download a Python.
#
# Usage: scripts/make-base-image.sh [--tag REF] [--suite SUITE] [--mirror URL]
#                                   [--extra-ca FILE_OR_DIR]... [--engine ENGINE] [--force]
#   --tag       image reference to create           [localhost/python-base:3.11]
#   --suite     Debian suite                         [bookworm]
#   --mirror    Debian mirror URL                    [the first one in this machine's apt sources]
#   --extra-ca  PEM certificate file, or folder of *.crt/*.pem, to trust inside the image
#               (repeatable; e.g. a corporate proxy CA: /usr/local/share/ca-certificates)
#   --engine    docker | podman | buildah            [docker if an engine answers, else podman,
#                                                     else buildah]
#   --force     rebuild even when --tag already exists (otherwise it is a no-op: cached)
# Environment: CONTAINERS_CONF defaults to deploy/containers/containers.conf of this repository.
# Needs root (debootstrap and chroot). Prints the image reference on stdout as its last line.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="localhost/python-base:3.11"
SUITE="bookworm"
MIRROR=""
ENGINE=""
FORCE=0
EXTRA_CA=()

die() { echo "make-base-image: error: $*" >&2; exit 2; }
say() { echo "make-base-image: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG="${2:?--tag needs a value}"; shift 2 ;;
    --suite) SUITE="${2:?--suite needs a value}"; shift 2 ;;
    --mirror) MIRROR="${2:?--mirror needs a value}"; shift 2 ;;
    --extra-ca) EXTRA_CA+=("${2:?--extra-ca needs a value}"); shift 2 ;;
    --engine) ENGINE="${2:?--engine needs a value}"; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO_ROOT/deploy/containers/containers.conf}"

if [ -z "$ENGINE" ]; then
  if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null; then
    ENGINE=podman
  elif command -v buildah >/dev/null; then
    ENGINE=buildah
  else
    die "no container engine: install podman or buildah (scripts/install-system-deps.sh)"
  fi
fi
case "$ENGINE" in docker|podman|buildah) ;; *) die "unknown engine '$ENGINE'" ;; esac
command -v "$ENGINE" >/dev/null || die "'$ENGINE' is not installed"

image_exists() {
  case "$ENGINE" in
    docker) docker image inspect "$TAG" >/dev/null 2>&1 ;;
    podman) podman image exists "$TAG" ;;
    buildah) buildah inspect --type image "$TAG" >/dev/null 2>&1 ;;
  esac
}

if [ "$FORCE" -eq 0 ] && image_exists; then
  say "$TAG already exists ($ENGINE); nothing to do (--force rebuilds)"
  echo "$TAG"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/install-system-deps.sh)"

# The first mirror of the configured apt sources that serves a suite (shared lookup).
# shellcheck source=scripts/lib/apt-mirror.sh
source "$REPO_ROOT/scripts/lib/apt-mirror.sh"

if [ -z "$MIRROR" ]; then
  MIRROR="$(apt_mirror "$SUITE" | head -n 1)"
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi
say "suite $SUITE from $MIRROR, engine $ENGINE, tag $TAG"

WORKDIR="$(mktemp -d /var/tmp/make-base-image.XXXXXX)"
trap 'rm -rf "$WORKDIR"' EXIT
ROOTFS="$WORKDIR/rootfs"

started=$SECONDS
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$WORKDIR/debootstrap.log" 2>&1 || {
  tail -n 30 "$WORKDIR/debootstrap.log" >&2
  die "debootstrap failed (log above)"
}
say "debootstrap done in $((SECONDS - started)) s"

ca_count=0
for source in "${EXTRA_CA[@]}"; do
  if [ -d "$source" ]; then
    candidates=("$source"/*.crt "$source"/*.pem)
  elif [ -f "$source" ]; then
    candidates=("$source")
  else
    die "--extra-ca '$source' is neither a file nor a folder"
  fi
  for cert in "${candidates[@]}"; do
    [ -f "$cert" ] || continue
    grep -q "BEGIN CERTIFICATE" "$cert" || die "$cert is not a PEM certificate"
    name="$(basename "$cert")"
    # update-ca-certificates only reads *.crt from this folder.
    cp "$cert" "$ROOTFS/usr/local/share/ca-certificates/extra-${name%.*}.crt"
    ca_count=$((ca_count + 1))
  done
done
if [ "$ca_count" -gt 0 ]; then
  chroot "$ROOTFS" update-ca-certificates >/dev/null
  say "trusted $ca_count extra CA certificate(s)"
fi

# Smaller image, and nothing that pins the build machine's state.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/tmp/*
python_version="$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

BUNDLE=/etc/ssl/certs/ca-certificates.crt
CHANGES=(
  "ENV PIP_BREAK_SYSTEM_PACKAGES=1"
  "ENV SSL_CERT_FILE=$BUNDLE"
  "ENV REQUESTS_CA_BUNDLE=$BUNDLE"
  "ENV PIP_CERT=$BUNDLE"
  "ENV LANG=C.UTF-8"
  "LABEL org.opencontainers.image.description=debootstrap-$SUITE-minbase-python$python_version"
  "LABEL io.mlops.base.suite=$SUITE"
  "LABEL io.mlops.base.python=$python_version"
  "LABEL io.mlops.base.extra-ca-certificates=$ca_count"
  'CMD ["/bin/bash"]'
)

case "$ENGINE" in
  docker|podman)
    args=()
    for change in "${CHANGES[@]}"; do args+=(--change "$change"); done
    tar -C "$ROOTFS" -c . | "$ENGINE" import "${args[@]}" - "$TAG" >/dev/null
    ;;
  buildah)
    tar -C "$ROOTFS" -cf "$WORKDIR/rootfs.tar" .
    container="$(buildah from scratch)"
    buildah add "$container" "$WORKDIR/rootfs.tar" / >/dev/null
    for change in "${CHANGES[@]}"; do
      key="${change%% *}"
      value="${change#* }"
      case "$key" in
        ENV) buildah config --env "$value" "$container" ;;
        LABEL) buildah config --label "$value" "$container" ;;
        CMD) buildah config --cmd "$value" "$container" ;;
      esac
    done
    buildah commit --rm "$container" "$TAG" >/dev/null
    ;;
esac
say "built $TAG (python $python_version) in $((SECONDS - started)) s"
echo "$TAG"
