#!/bin/bash
# Build the ramwatchd Debian package from this checkout, with the distro's own
# tools (debhelper, dh-python), and print the path of the .deb.
#
#   deploy/debian/build.sh [OUTDIR]     (default OUTDIR: the current folder)
#
# dpkg-buildpackage wants debian/ at the top of the source tree; the sources are
# staged in a scratch folder with this folder as debian/, so the checkout is
# left as it was. Missing build dependencies are installed (root only).
set -euo pipefail
out=$(realpath "${1:-.}")
root=$(cd "$(dirname "$0")/../.." && pwd)
# The distro's Python builds the package, not one that happens to come first
# on PATH (a pyenv or a virtualenv): the package runs on /usr/bin/python3.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
stage=$(mktemp -d /tmp/ramwatchd-build.XXXXXX)
trap 'rm -rf "$stage"' EXIT

mkdir "$stage/src"
tar -C "$root" --exclude=__pycache__ --exclude='*.egg-info' -c \
    pyproject.toml README.md ramwatchd bpf deploy | tar -C "$stage/src" -x
cp -r "$root/deploy/debian" "$stage/src/debian"
cd "$stage/src"

if ! command -v dpkg-checkbuilddeps >/dev/null || ! dpkg-checkbuilddeps 2>/dev/null; then
    [ "$(id -u)" = 0 ] || { dpkg-checkbuilddeps; exit 1; }
    echo "build.sh: installing the build dependencies" >&2
    DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq -o DPkg::Lock::Timeout=300 . >/dev/null
fi

if ! dpkg-buildpackage -b -us -uc >"$stage/build.log" 2>&1; then
    tail -40 "$stage/build.log" >&2
    echo "build.sh: dpkg-buildpackage failed (the last 40 lines of its log are above)" >&2
    exit 1
fi
deb=$(ls "$stage"/ramwatchd_*_all.deb)
mkdir -p "$out"
mv "$deb" "$out/"
echo "$out/$(basename "$deb")"
