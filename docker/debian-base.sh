#!/usr/bin/env bash
# Build a Debian bookworm base image locally, for machines that cannot pull from a registry:
#
#   docker/debian-base.sh elasticsr-base:bookworm
#   docker build -f docker/Dockerfile --build-arg BASE=elasticsr-base:bookworm -t elasticsr:cpu .
#
# debootstrap's minbase variant is close to debian:bookworm-slim (apt, dpkg, coreutils; no python).
# The root filesystem is kept as a tarball under build/ so a second run only re-imports it.
# Needs root and Debian's debootstrap; MIRROR defaults to this machine's first apt source.
set -euo pipefail
tag=${1:-elasticsr-base:bookworm}
cd "$(dirname "$0")/.."
cache=build/docker-base
tarball=$cache/bookworm-minbase.tar

if [ ! -s "$tarball" ]; then
    mirror=${MIRROR:-$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')}
    mirror=${mirror:-$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')}
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
    # Same sources as the host, so apt-get inside builds reaches the same (reachable) mirror.
    if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
        rm -f "$rootfs/etc/apt/sources.list"
        cp /etc/apt/sources.list.d/*.sources "$rootfs/etc/apt/sources.list.d/"
    elif [ -f /etc/apt/sources.list ]; then
        cp /etc/apt/sources.list "$rootfs/etc/apt/sources.list"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    mkdir -p "$cache"
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi
docker import --change 'CMD ["/bin/bash"]' "$tarball" "$tag" >/dev/null
echo "$tag"
