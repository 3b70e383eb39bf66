#!/bin/bash
# Prepare this machine for ramwatchd: distro bcc, kernel headers, tracefs, and a
# virtualenv (.venv) holding the package. Safe to run again; it only adds what is missing.
# Needs root (apt-get, /lib/modules, mount). Debian 12 or Ubuntu 22.04+.
#
#   deploy/setup.sh          set up only
#   deploy/setup.sh demo     set up, then capture the built-in demo workload
#   deploy/setup.sh test     set up, then run the test suite
set -euo pipefail
mode=${1:-}
case "$mode" in ""|demo|test) ;; *) echo "usage: $0 [demo|test]" >&2; exit 2;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${RAMWATCHD_VENV:-$root/.venv}
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup.sh: must run as root (it installs packages and mounts tracefs)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

install_packages() {
  # prometheus (and promtool), openssl and systemd's systemd-analyze serve the tests.
  local want=(python3-bpfcc libbpfcc python3-venv prometheus curl gcc libc6-dev openssl systemd)
  local missing=()
  for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# bcc compiles BPF C against /lib/modules/$(uname -r)/build. Prefer the running
# kernel's own headers; where the distro publishes none (custom or VM kernels),
# link its newest generic headers. That is sound for ramwatchd because its BPF
# programs read only tracepoint arguments, perf-event data and pt_regs, whose
# layouts come from tracefs and the ABI, never from kernel struct definitions.
install_headers() {
  local kv build
  kv=$(uname -r)
  build=/lib/modules/$kv/build
  [ -e "$build/include/linux/kconfig.h" ] && return 0
  if apt-get install -y -qq "linux-headers-$kv" >/dev/null 2>&1; then
    say "installed linux-headers-$kv"
    return 0
  fi
  local meta="linux-headers-$(dpkg --print-architecture)"
  say "no headers published for kernel $kv; using the distro's newest ($meta) instead"
  apt-get install -y -qq "$meta" >/dev/null
  local hdr common
  hdr=$(ls -d /usr/src/linux-headers-*-"$(dpkg --print-architecture)" | sort -V | tail -1)
  common=${hdr%-*}-common
  mkdir -p "/lib/modules/$kv"
  ln -sfn "$hdr" "$build"
  [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$kv/source"
  say "linked $build -> $hdr"
}

mount_tracefs() {
  mountpoint -q /sys/kernel/tracing && return 0
  mount -t tracefs nodev /sys/kernel/tracing
  say "mounted tracefs at /sys/kernel/tracing"
}

# The virtualenv sees bcc through one symlink to the distro module, not the whole
# dist-packages folder, so no other distro Python package leaks in.
make_venv() {
  local py=${PYTHON:-python3}
  [ -x "$venv/bin/python" ] || { say "creating $venv"; "$py" -m venv "$venv"; }
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$root[test,report]"
  ln -sfn "$venv/bin/ramwatchd" /usr/local/bin/ramwatchd   # where deploy/systemd expects it
  say "ramwatchd installed in $venv ($("$venv/bin/ramwatchd" --version)), linked from /usr/local/bin"
}

install_packages
install_headers
mount_tracefs
make_venv
cd "$root"
case "$mode" in
  demo) exec "$venv/bin/ramwatchd" demo --json /tmp/ramwatchd-demo.json --png /tmp/ramwatchd-demo.png ;;
  test) exec "$venv/bin/python" -m pytest -v ;;
esac
