#!/usr/bin/env bash
# A Python 3.11 base image built from Debian's own packages, for machines that cannot pull
# python:3.11-slim from Docker Hub but can reach a Debian mirror.
#
#   deploy/debian_base.sh [--tag fedpafi-base:bookworm] [--mirror http://deb.debian.org/debian]
#
# debootstrap --variant=minbase bookworm (Python 3.11, as python:3.11-slim), plus python3-venv
# and CA certificates, apt's caches removed, then `docker import`. Build the project on it with
#   docker build --build-arg BASE_IMAGE=fedpafi-base:bookworm .
# Needs root, debootstrap and a running Docker engine.
set -euo pipefail

tag="fedpafi-base:bookworm"
mirror="http://deb.debian.org/debian"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "debian_base.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for tool in debootstrap docker; do
  command -v "$tool" >/dev/null || { echo "debian_base.sh: '$tool' is required" >&2; exit 2; }
done
[[ $(id -u) == 0 ]] || { echo "debian_base.sh: debootstrap needs root" >&2; exit 2; }

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { echo "debian_base.sh: debootstrap failed, last lines of $root.log:" >&2; tail -5 "$root.log" >&2; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
  "$root"/usr/share/man "$root"/usr/share/locale
# python:3.11-slim answers to `python`; Debian's python3 does too with this link
ln -sf python3 "$root/usr/bin/python"
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "base image $tag: $(docker image inspect --format '{{.Size}}' "$tag" | numfmt --to=iec)"
