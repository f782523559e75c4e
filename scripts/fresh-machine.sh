#!/usr/bin/env bash
# Run the README's setup on a newcomer's machine: a minimal Debian root with only python3
# (+venv), make, git and CA certificates (debootstrap --variant=minbase), entered with chroot
# and a clean environment (env -i), the project cloned from this repository's HEAD.
#
# The root is cached as a tarball keyed by suite and package list, for 30 days (debootstrap
# takes one to two minutes; unpacking a few seconds). The machine's CA bundle, resolv.conf, hosts and pip.conf
# are copied in so that pip and uv reach the package index the way the host does
# (../shared/ENVIRONMENT.md, "A fresh machine for the README's two commands"). The root is a
# tmpfs; on any exit what runs in it is stopped, the mounts are undone and the root is gone.
#
# Usage: scripts/fresh-machine.sh [--suite SUITE] [--mirror URL] [--cache DIR] [--rebuild]
#                                 [--keep] [--uv-cache DIR] [--] [COMMAND]
#   --suite     Debian suite (bookworm: Python 3.11; trixie: 3.13)        [bookworm]
#   --mirror    Debian mirror URL          [the first one in this machine's apt sources]
#   --cache     where the root tarballs are kept           [/var/cache/mlops-fresh-machine]
#   --rebuild   debootstrap again even when a cached root exists
#   --keep      keep the root after the run (its path is printed) for a look inside
#   --uv-cache  a host folder bind-mounted as uv's download cache in the root, so that
#               repeated runs do not download the stack again        [none: a cold cache]
#   --tmpfs-size  upper bound of the tmpfs that holds the root (it uses what is written) [8g]
#   COMMAND     run with bash -c in /p, the project's clone [the fast tier: see FAST_TIER]
# Needs root (debootstrap, mount, chroot). Exit status: the command's; 2 on a setup failure.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE="bookworm"
MIRROR=""
CACHE="/var/cache/mlops-fresh-machine"
REBUILD=0
KEEP=0
UV_CACHE=""
TMPFS_SIZE="8g"
INCLUDE="python3,python3-venv,make,git,ca-certificates"
# The README's setup, then the fast tier: unit tests through the README's own `make test`,
# the config check and the first two pipeline steps on the example configs.
FAST_TIER='set -ex
python3 --version
make test MARKERS=unit
.venv/bin/mlops config check --configs configs
make train-validate'

die() { echo "fresh-machine: error: $*" >&2; exit 2; }
say() { echo "fresh-machine: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --suite) SUITE="${2:?--suite needs a value}"; shift 2 ;;
    --mirror) MIRROR="${2:?--mirror needs a value}"; shift 2 ;;
    --cache) CACHE="${2:?--cache needs a value}"; shift 2 ;;
    --rebuild) REBUILD=1; shift ;;
    --keep) KEEP=1; shift ;;
    --uv-cache) UV_CACHE="${2:?--uv-cache needs a value}"; shift 2 ;;
    --tmpfs-size) TMPFS_SIZE="${2:?--tmpfs-size needs a value}"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown argument '$1' (see --help)" ;;
    *) break ;;
  esac
done
COMMAND="${*:-$FAST_TIER}"

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, mount, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/install-system-deps.sh)"
case "$SUITE" in *[!a-z0-9-]*|"") die "--suite '$SUITE' is not a Debian suite name" ;; esac
git -C "$REPO_ROOT" rev-parse --verify -q HEAD >/dev/null || die "$REPO_ROOT has no commit to clone"
if [ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no)" ]; then
  say "warning: uncommitted changes in $REPO_ROOT are not part of the clone (HEAD only)"
fi

# The first mirror of the configured apt sources that serves a suite (shared lookup).
# shellcheck source=scripts/lib/apt-mirror.sh
source "$REPO_ROOT/scripts/lib/apt-mirror.sh"

# ------------------------------------------------------------------ cleanup (any exit)
WORKDIR="$(mktemp -d /var/tmp/fresh-machine.XXXXXX)"
ROOT="$WORKDIR/root"
MOUNTED=()

mounts_under_workdir() {
  awk -v dir="$WORKDIR" '$2 == dir || index($2, dir "/") == 1 { print $2 }' /proc/mounts
}

# Processes whose root directory is ROOT: whatever the command left running in the chroot.
processes_in_root() {
  local proc
  for proc in /proc/[0-9]*; do
    [ "$(readlink "$proc/root" 2>/dev/null)" != "$ROOT" ] || echo "${proc#/proc/}"
  done
}

cleanup() {
  local status=$? index left pids
  trap - INT TERM
  pids="$(processes_in_root)"
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    sleep 3
    pids="$(processes_in_root)"
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  fi
  # Last in, first out; with --keep the tmpfs holding the root (MOUNTED[0]) stays.
  for ((index = ${#MOUNTED[@]} - 1; index >= KEEP; index--)); do
    umount "${MOUNTED[index]}" 2>/dev/null || umount -l "${MOUNTED[index]}" 2>/dev/null \
      || echo "fresh-machine: error: cannot unmount ${MOUNTED[index]}" >&2
  done
  left="$(mounts_under_workdir)"
  if [ "$KEEP" -eq 1 ]; then
    echo "fresh-machine: root kept at $ROOT (a tmpfs: umount $WORKDIR && rm -r $WORKDIR)" >&2
  elif [ -n "$left" ]; then
    # Never rm -rf through a live bind mount of /dev or /sys.
    echo "fresh-machine: error: still mounted, $WORKDIR left in place:" >&2
    echo "$left" >&2
    [ "$status" -ne 0 ] || status=2
  else
    rm -rf "$WORKDIR"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bind() {  # bind SOURCE TARGET_IN_ROOT
  mkdir -p "$ROOT$2"
  mount --bind "$1" "$ROOT$2" || die "mount --bind $1 $ROOT$2 failed"
  MOUNTED+=("$ROOT$2")
}

# ------------------------------------------------------------------ the root (cached)
started=$SECONDS
key="$(printf '%s %s' "$SUITE" "$INCLUDE" | sha256sum | cut -c1-12)"
TARBALL="$CACHE/$SUITE-minbase-$key.tar"
# The root lives in memory (about 2 GB once the stack is installed): removing a root on disk
# takes minutes on a busy machine, unmounting a tmpfs no time.
mount -t tmpfs -o "size=$TMPFS_SIZE,mode=0755" fresh-machine "$WORKDIR" \
  || die "cannot mount a tmpfs on $WORKDIR"
MOUNTED+=("$WORKDIR")
mkdir -p "$ROOT" "$CACHE"
# A month-old root is made again, so that the suite's point releases reach the test.
if [ "$REBUILD" -eq 0 ] && [ -s "$TARBALL" ] && [ -n "$(find "$TARBALL" -mtime -30)" ]; then
  tar -C "$ROOT" -xf "$TARBALL" || die "cannot unpack $TARBALL (--rebuild makes it again)"
  say "root from cache $TARBALL in $((SECONDS - started)) s"
else
  if [ -z "$MIRROR" ]; then
    MIRROR="$(apt_mirror "$SUITE" | head -n 1)"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
  fi
  say "debootstrap --variant=minbase $SUITE from $MIRROR (about a minute)"
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOT" "$MIRROR" \
    >"$WORKDIR/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORKDIR/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  }
  rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
  tar -C "$ROOT" -cf "$TARBALL.partial" . && mv "$TARBALL.partial" "$TARBALL"
  say "debootstrap done in $((SECONDS - started)) s, cached as $TARBALL"
fi
[ -x "$ROOT/usr/bin/python3" ] || die "the root has no /usr/bin/python3"

# What a newcomer's machine has too: DNS, a localhost entry, the network's CA bundle and the
# package index settings.
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/hosts "$ROOT/etc/hosts"
[ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$ROOT/etc/pip.conf"

bind /proc /proc
bind /sys /sys
bind /dev /dev
bind /dev/pts /dev/pts
mount -t tmpfs -o mode=1777 shm "$ROOT/dev/shm" || die "cannot mount a tmpfs on $ROOT/dev/shm"
MOUNTED+=("$ROOT/dev/shm")
if [ -n "$UV_CACHE" ]; then
  mkdir -p "$UV_CACHE"
  bind "$UV_CACHE" /root/.cache/uv
fi

git clone --quiet "$REPO_ROOT" "$ROOT/p" || die "git clone $REPO_ROOT failed"
say "cloned $(git -C "$ROOT/p" log -1 --format='%h %s') into $ROOT/p"

setup_done=$SECONDS
say "running in the chroot: $COMMAND"
status=0
# In the background so that a signal to this script is handled at once (cleanup then stops
# what runs in the chroot); bash runs traps only between foreground commands.
chroot "$ROOT" /usr/bin/env -i \
  HOME=/root \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 \
  SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  bash -c "cd /p && $COMMAND" &
wait "$!" || status=$?
say "setup $((setup_done - started)) s, command $((SECONDS - setup_done)) s, exit status $status"
exit "$status"
