#!/usr/bin/env bash
# Build a Debian bookworm base image with Python 3.11 from the Debian mirror, for machines where no
# container registry answers (so `python:3.11-slim` cannot be pulled). debootstrap (minbase) writes a
# root filesystem, `docker import` turns it into an image. The servelab Dockerfile takes it as
# PYTHON_IMAGE; the stand-ins in deploy/standins/ take it as BASE.
#   scripts/build-base-image.sh [--force] [TAG]      (default TAG: servelab-base/debian-python:bookworm)
# Needs root, debootstrap and a running Docker daemon. An image already tagged TAG is reused unless
# --force. The mirror is DEBIAN_MIRROR, else the first Debian URI this machine's apt uses, else
# http://deb.debian.org/debian.
set -euo pipefail

FORCE=0
if [ "${1:-}" = "--force" ]; then FORCE=1; shift; fi
case "${1:-}" in -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
TAG=${1:-servelab-base/debian-python:bookworm}
SUITE=bookworm

if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists: reusing it (--force rebuilds)"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "error: debootstrap not on PATH (apt-get install debootstrap)" >&2; exit 2; }

mirror_from_apt() {
  # deb822 sources (URIs: ...) first, then one-line sources.list entries; skip the security archive.
  { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
  } | grep -v security | grep -m1 debian || true
}
MIRROR=${DEBIAN_MIRROR:-$(mirror_from_apt)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

ROOTFS=$(mktemp -d /tmp/servelab-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap $SUITE (minbase + python3) from $MIRROR"
start=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
  echo "error: debootstrap failed; last lines of its log:" >&2
  tail -20 "$ROOTFS.log" >&2
  rm -f "$ROOTFS.log"
  exit 1
}
rm -f "$ROOTFS.log"
# What an image does not need: downloaded packages, package lists (apt-get update refreshes them),
# documentation and translations.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
  -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' \
  -c "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase + python3 (debootstrap from $MIRROR)\"" \
  - "$TAG" >/dev/null
echo "built base image $TAG in $((SECONDS - start)) s"
