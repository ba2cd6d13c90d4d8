#!/usr/bin/env bash
# Build a real QEMU migration stream from Debian's packages (run as root; needs network for apt).
#
#   scripts/make_qemu_stream.sh OUTDIR [--fixture DIR] [--no-pending]
#
# Installs qemu-system-arm, enables the arm64 architecture, downloads the newest
# linux-image-*-cloud-arm64-unsigned kernel and busybox-static (arm64), unpacks them, then runs
# scripts/make_qemu_stream.py, which boots the guest and writes OUTDIR/stream.bin,
# OUTDIR/interrupts.txt (the guest's /proc/interrupts) and OUTDIR/guest.json.
# PYTHON selects the interpreter (it needs numpy and this checkout's vlpi; default python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: $0 OUTDIR [--fixture DIR] [--no-pending]}"
shift
py="${PYTHON:-python3}"
export DEBIAN_FRONTEND=noninteractive
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if ! command -v qemu-system-aarch64 >/dev/null; then
    $sudo apt-get update -q
    $sudo apt-get install -y -q qemu-system-arm >/dev/null
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $sudo dpkg --add-architecture arm64
fi
$sudo apt-get update -q >/dev/null
kpkg="$(apt-cache pkgnames linux-image- | grep -E '^linux-image-[0-9][0-9.]*-[0-9]+-cloud-arm64-unsigned$' | sort -V | tail -n 1)"
if [ -z "$kpkg" ]; then
    echo "make_qemu_stream.sh: no linux-image-*-cloud-arm64-unsigned package found" >&2
    exit 1
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
debs="$out/debs"
rm -rf "$debs" "$out/root"
mkdir -p "$debs" "$out/root"
(cd "$debs" && apt-get download -q "$kpkg:arm64" busybox-static:arm64 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$out/root"; done
ls "$out"/root/boot/vmlinuz-* >/dev/null
echo "== kernel package $kpkg; $(qemu-system-aarch64 --version | head -n 1)"
"$py" "$here/make_qemu_stream.py" --root "$out/root" --out "$out" "$@"
