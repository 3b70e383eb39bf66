#!/bin/sh
# Run ramwatchd with the node's kernel headers, or the image's where it has none.
kv=$(uname -r)
if [ ! -e "/lib/modules/$kv/build/include" ]; then
  BCC_KERNEL_SOURCE=$(ls -d /opt/headers/linux-headers-*-amd64 | tail -1)
  export BCC_KERNEL_SOURCE
  echo "ramwatchd: no headers for $kv on this node; using $BCC_KERNEL_SOURCE" >&2
fi
exec /opt/ramwatchd/.venv/bin/ramwatchd "$@"
