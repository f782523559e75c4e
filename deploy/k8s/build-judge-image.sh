#!/usr/bin/env bash
# Build the judge image (deploy/k8s/judge.Containerfile): the mlops CLI from uv.lock.
#
# The build context is a `git archive` of one commit (default HEAD), never the work tree, so
# the image is exactly that commit (no .venv, no .mlops/, nothing uncommitted) and is labelled
# with it. Podman and Buildah build without a Docker engine (deploy/containers/containers.conf),
# Docker is used when its engine answers, as `mlops image` chooses.
#
# Usage: deploy/k8s/build-judge-image.sh [--tag REF] [--commit REV] [--base REF] [--engine ENGINE]
#   --tag     image reference to create   [what `mlops k8s render` defaults --judge-image to:
#                                          localhost/mlops-judge:<project version>]
#   --commit  git revision to build       [HEAD]
#   --base    base image (a python3 3.11 with pip, CA certificates)
#                                         [localhost/python-base:3.11: `make base-image`]
#   --engine  docker | podman | buildah   [docker if an engine answers, else podman, else buildah]
#   --print-tag  print the tag it would build and stop
# Environment: CONTAINERS_CONF defaults to deploy/containers/containers.conf of this repository;
# PYTHON (default .venv/bin/python) reads the default tag from the renderer.
# Prints the image reference on stdout as its last line. Exit 2: bad input or no engine.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONTAINERFILE="deploy/k8s/judge.Containerfile"
TAG=""
COMMIT="HEAD"
BASE="localhost/python-base:3.11"
ENGINE=""
PRINT_TAG=0

die() { echo "build-judge-image: error: $*" >&2; exit 2; }
say() { echo "build-judge-image: $*" >&2; }

while [ $# -gt 0 ]; do
  option="$1"
  shift
  case "$option" in
    --print-tag) PRINT_TAG=1; continue ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --tag|--commit|--base|--engine) [ $# -gt 0 ] || die "$option needs a value" ;;
    *) die "unknown argument '$option' (see --help)" ;;
  esac
  value="$1"
  shift
  case "$option" in
    --tag) TAG="$value" ;;
    --commit) COMMIT="$value" ;;
    --base) BASE="$value" ;;
    --engine) ENGINE="$value" ;;
  esac
done

export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO_ROOT/deploy/containers/containers.conf}"

if [ -z "$TAG" ]; then
  python="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
  [ -x "$python" ] || die "no $python to read the default tag from: run 'make venv' or pass --tag"
  TAG="$(cd "$REPO_ROOT" && "$python" -c \
    'from pipelines.environments.k8s.argo_rollouts import default_judge_image; print(default_judge_image())')"
fi
if [ "$PRINT_TAG" -eq 1 ]; then
  echo "$TAG"
  exit 0
fi

# The input first (the commit to build), then the tools.
revision="$(git -C "$REPO_ROOT" rev-parse --verify --quiet "$COMMIT^{commit}")" \
  || die "--commit: '$COMMIT' is not a commit of $REPO_ROOT"
git -C "$REPO_ROOT" cat-file -e "$revision:$CONTAINERFILE" 2>/dev/null \
  || die "--commit: $revision has no $CONTAINERFILE"

if [ -z "$ENGINE" ]; then
  for candidate in docker podman buildah; do
    command -v "$candidate" >/dev/null || continue
    # Docker may be a client alone (no engine behind it): only an answering one counts.
    [ "$candidate" != docker ] || timeout 10 docker info >/dev/null 2>&1 || continue
    ENGINE="$candidate"
    break
  done
  [ -n "$ENGINE" ] || die "no container engine: install podman or buildah (scripts/install-system-deps.sh)"
fi
case "$ENGINE" in
  docker|podman|buildah) ;;
  *) die "--engine: expected docker, podman or buildah (got '$ENGINE')" ;;
esac
command -v "$ENGINE" >/dev/null || die "'$ENGINE' is not installed"

CONTEXT="$(mktemp -d /var/tmp/judge-image.XXXXXX)"
trap 'rm -rf "$CONTEXT"' EXIT
git -C "$REPO_ROOT" archive "$revision" | tar -x -C "$CONTEXT"

say "building $TAG from commit $revision on $BASE with $ENGINE"
started=$SECONDS
args=(
  -f "$CONTEXT/$CONTAINERFILE"
  -t "$TAG"
  --build-arg "BASE_IMAGE=$BASE"
  --build-arg "GIT_COMMIT=$revision"
)
case "$ENGINE" in
  # Host network: the RUN steps reach the package index the way this machine does, with no
  # CNI set up (as `mlops image` builds, configs/image.yaml build_network).
  podman|buildah) "$ENGINE" build --network host "${args[@]}" "$CONTEXT" >&2 ;;
  docker) docker build "${args[@]}" "$CONTEXT" >&2 ;;
esac
say "built $TAG in $((SECONDS - started)) s"
echo "$TAG"
