#!/usr/bin/env bash
# Makes a local Python base image for the Dockerfiles' PYTHON_IMAGE when no registry can serve python:3.11-slim:
# Debian bookworm (debootstrap --variant=minbase, from the mirror apt already uses) with python3 and its venv module,
# `python` as a name for python3, and ca-certificates, imported into podman (or docker) as one layer.
#
#   deploy/scripts/base-image.sh [IMAGE]          # default localhost/kefu-python:3.11-bookworm; ~1 minute, ~200 MB
#
# The host's CA bundle goes in too (and pip is told to use it): where outbound TLS is re-signed by a proxy, pip inside
# a build would otherwise fail with CERTIFICATE_VERIFY_FAILED. Settings: DEBIAN_MIRROR (default: apt's own),
# SUITE (bookworm), ENGINE (podman, or docker). Needs root and debootstrap (.ci/install-podman installs it).
set -euo pipefail
IMAGE=${1:-localhost/kefu-python:3.11-bookworm}
SUITE=${SUITE:-bookworm}
ENGINE=${ENGINE:-podman}
HOST_CA=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
if [ -z "${DEBIAN_MIRROR:-}" ]; then
    # the mirror apt uses for the suite itself (not -security or -updates); $(...) is apt's format, not the shell's
    # shellcheck disable=SC2016
    DEBIAN_MIRROR=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null | awk -v s="$SUITE" '$2 == s {print $1; exit}')
fi
if [ -z "$DEBIAN_MIRROR" ]; then
    echo "no Debian mirror for $SUITE in apt's sources: set DEBIAN_MIRROR" >&2
    exit 2
fi

ROOTFS=$(mktemp -d /var/tmp/kefu-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$DEBIAN_MIRROR" >/dev/null
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python-is-python3 ca-certificates >/dev/null
if [ -s "$HOST_CA" ]; then
    cp "$HOST_CA" "$ROOTFS/usr/local/share/ca-certificates/host-ca-bundle.crt"
    chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$ROOTFS/etc/pip.conf"
fi
chroot "$ROOTFS" apt-get clean
# what python:3.11-slim leaves out too: apt's lists and caches, documentation, translations (~35 MB)
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* \
    "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
tar -C "$ROOTFS" -c . | "$ENGINE" import \
    --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$IMAGE" >/dev/null
echo "$IMAGE: $("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE") bytes"
