#!/bin/bash
# Write ramwatchd(1) from the program's own help, so that it cannot fall behind
# the program: `ramwatchd --help` as help2man reads it, a section for each
# command with its `--help`, and the sections only a man page has (ramwatchd.h2m).
#
#   manpage.sh PROGRAM OUTPUT      (PROGRAM: the ramwatchd to document)
set -euo pipefail
program=$1 output=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# help2man expects GNU's "Usage:" on one line; argparse writes "usage:" and
# wraps it at the terminal's width.
cat >"$work/ramwatchd" <<EOF
#!/bin/sh
COLUMNS=1000 "$program" "\$@" | sed 's/^usage:/Usage:/'
EOF
chmod +x "$work/ramwatchd"

# Each command's help, verbatim, escaped for roff.
roff_verbatim() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }
cp "$here/ramwatchd.h2m" "$work/include.h2m"
commands=$("$program" --help | awk '/^  COMMAND/ {on = 1; next} on && /^$/ {exit} on && /^    [a-z]/ {print $1}')
for command in $commands; do
    printf '\n[COMMAND: %s]\n.nf\n' "$command"
    COLUMNS=80 "$program" "$command" --help | roff_verbatim
    printf '.fi\n'
done >>"$work/include.h2m"

help2man --no-info --include="$work/include.h2m" --output="$output" "$work/ramwatchd"
