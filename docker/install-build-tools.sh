#!/usr/bin/env bash
# What building and running the image needs on a Debian machine with no registry access (the slow
# image test, README "Deploy"): Debian's Docker engine (dockerd), debootstrap for the base image,
# docker-compose for the local stack. Installs only what is missing; needs root or sudo.
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-compose >/dev/null || need+=(docker-compose)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" iptables >/dev/null
