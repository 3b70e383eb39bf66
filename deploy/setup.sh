#!/bin/bash
# Prepare this machine for ramwatchd and install it as a Debian package built
# from this checkout: /usr/bin/ramwatchd, the ramwatchd service, its config in
# /etc/ramwatchd, a man page and bash completion. Also makes sure of kernel
# headers and tracefs. Safe to run again: each step checks for its own earlier
# work first. Run as root (it installs packages and mounts tracefs); Debian 12
# or Ubuntu 22.04+.
#
#   deploy/setup.sh          install
#   deploy/setup.sh demo     install, then capture the built-in demo workload
#   deploy/setup.sh test     install, then run the test suite from a virtualenv (.venv)
#
# Sourced (`source deploy/setup.sh`), it only defines its steps, so that each
# can be run and checked alone.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${RAMWATCHD_VENV:-$root/.venv}
mode=""
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }

install_packages() {
  # Beyond the package's own dependencies: its build tools (see
  # deploy/debian/control); python3-matplotlib for the demo's picture; and for
  # the tests, a virtualenv, prometheus (and promtool), a C compiler, openssl
  # and systemd-analyze.
  local want=(python3-bpfcc libbpfcc python3-prometheus-client python3-yaml python3-bcrypt
              debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
              help2man bash-completion)
  case "$mode" in
    demo) want+=(python3-matplotlib) ;;
    test) want+=(python3-venv prometheus curl gcc libc6-dev openssl systemd tmux) ;;
  esac
  local missing=()
  for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# bcc compiles BPF C against /lib/modules/$(uname -r)/build. Prefer the running
# kernel's own headers; where the distro publishes none (custom or VM kernels),
# link its newest generic headers. That is sound for ramwatchd because its BPF
# programs read only tracepoint arguments, perf-event data and pt_regs, whose
# layouts come from tracefs and the ABI, never from kernel struct definitions.
install_headers() {
  local kv modules build
  kv=$(uname -r)
  modules=/lib/modules/$kv
  build=$modules/build
  # Headers are whole when the build tree has its generated config and the
  # kernel's own headers are found, in it or in the source tree beside it
  # (Debian splits them in two). A link made by an earlier run passes too.
  if [ -e "$build/include/generated/autoconf.h" ] &&
     { [ -e "$build/include/linux/kconfig.h" ] || [ -e "$modules/source/include/linux/kconfig.h" ]; }; then
    say "kernel headers: $build -> $(readlink -f "$build")"
    return 0
  fi
  if apt_get install -y -qq "linux-headers-$kv" >/dev/null 2>&1; then
    say "installed linux-headers-$kv"
    return 0
  fi
  local arch meta hdr common
  arch=$(dpkg --print-architecture)
  meta=linux-headers-$arch
  say "no headers published for kernel $kv; using the distro's newest ($meta) instead"
  apt_get install -y -qq "$meta" >/dev/null
  hdr=$(ls -d /usr/src/linux-headers-*-"$arch" | sort -V | tail -1)
  common=${hdr%-*}-common
  mkdir -p "$modules"
  ln -sfn "$hdr" "$build"
  [ -d "$common" ] && ln -sfn "$common" "$modules/source"
  say "linked $build -> $hdr"
}

mount_tracefs() {
  mountpoint -q /sys/kernel/tracing && return 0
  mount -t tracefs nodev /sys/kernel/tracing
  say "mounted tracefs at /sys/kernel/tracing"
}

# Earlier versions of this script linked /usr/local/bin/ramwatchd to a clone's
# virtualenv; it would shadow the package's /usr/bin/ramwatchd on PATH.
remove_old_link() {
  local link=/usr/local/bin/ramwatchd
  if [ -L "$link" ] && [[ $(readlink "$link") == */.venv/bin/ramwatchd ]]; then
    rm "$link"
    say "removed $link (a link into a clone; the package installs /usr/bin/ramwatchd)"
  fi
}

install_package() {
  local out deb
  out=$(mktemp -d)
  chmod 755 "$out"      # apt reads the .deb as its own unprivileged user
  say "building the Debian package"
  deb=$(bash "$root/deploy/debian/build.sh" "$out")
  apt_get install -y -qq --reinstall "$deb" >/dev/null
  rm -rf "$out"
  say "installed $(basename "$deb"): $(/usr/bin/ramwatchd --version) at /usr/bin/ramwatchd"
}

# The tests run against the checkout itself, from a virtualenv that sees the
# distro's bcc through one symlink (no other distro Python package leaks in).
make_venv() {
  local py=${PYTHON:-python3}
  [ -x "$venv/bin/python" ] || { say "creating $venv"; "$py" -m venv "$venv"; }
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$root[test,report]"
  say "the checkout's ramwatchd is in $venv ($("$venv/bin/ramwatchd" --version))"
}

main() {
  set -euo pipefail
  mode=${1:-}
  case "$mode" in ""|demo|test) ;; *) echo "usage: $0 [demo|test]" >&2; exit 2;; esac
  [ "$(id -u)" = 0 ] || { echo "setup.sh: must run as root (it installs packages and mounts tracefs)" >&2; exit 1; }
  install_packages
  install_headers
  mount_tracefs
  remove_old_link
  install_package
  case "$mode" in
    # From /, so that the demo's own python3 imports the installed ramwatchd, not this checkout.
    demo) cd / && exec /usr/bin/ramwatchd demo --json /tmp/ramwatchd-demo.json --png /tmp/ramwatchd-demo.png ;;
    test) make_venv; cd "$root"; exec "$venv/bin/python" -m pytest -v ;;
  esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
