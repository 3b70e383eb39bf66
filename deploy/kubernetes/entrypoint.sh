#!/bin/sh
# Run ramwatchd with the node's kernel headers (its /lib/modules and /usr/src
# are mounted), or with the image's where the node has none for its kernel.
modules=/lib/modules/$(uname -r)
if [ ! -e "$modules/build/include/linux/kconfig.h" ] && [ ! -e "$modules/source/include/linux/kconfig.h" ]; then
  export BCC_KERNEL_SOURCE=/opt/headers
  echo "ramwatchd: no kernel headers for $(uname -r) on this node; using the image's generic ones" >&2
fi
exec /usr/bin/ramwatchd "$@"
