#!/usr/bin/env bash
# Run the GitHub Actions workflows locally with act, offline, on this host.
#
# The workflows push state changes (promotions, rollbacks) back to their remote, so they run
# in a scratch clone of HEAD under .mlops/act/ whose `origin` is a bare repository there too:
# your own remote is never touched. Remote actions are replaced by .github/act-actions through
# .actrc. Usage: scripts/run-workflows.sh [pull_request|push|all]
set -euo pipefail
cd "$(dirname "$0")/.."
which_event="${1:-all}"
root="$PWD"
act="$root/.venv/bin/act"
work="$root/.mlops/act"
rm -rf "$work"
mkdir -p "$work"
git init -q --bare "$work/remote.git"
git clone -q "$root" "$work/repo"
cd "$work/repo"
git remote set-url origin "$work/remote.git"
git push -q origin HEAD:main
git checkout -q -B main
export MLOPS_ACT_ARTIFACTS="$work/artifacts"

if [ "$which_event" = "pull_request" ] || [ "$which_event" = "all" ]; then
  "$act" pull_request -e .github/act-events/pull_request.json --env-file /dev/null \
    --var MLOPS_PR_TEST_MARKERS=unit -s GITHUB_TOKEN=local-run \
    --env MLOPS_ACT_ARTIFACTS="$MLOPS_ACT_ARTIFACTS" --env GITHUB_REPOSITORY=local/mlops-promotion
fi
if [ "$which_event" = "push" ] || [ "$which_event" = "all" ]; then
  "$act" push -e .github/act-events/push.json -W .github/workflows/main.yml --env-file /dev/null \
    --var MLOPS_BUILD_IMAGE=false --var MLOPS_AUTO_PRODUCTION=false --var MLOPS_STATE_DIR="$work/state" \
    --env MLOPS_ACT_ARTIFACTS="$MLOPS_ACT_ARTIFACTS"
  echo "The merge run's commits are in $work/remote.git:"
  git -C "$work/remote.git" log --oneline -5 main
fi
