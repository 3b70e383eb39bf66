#!/usr/bin/env bash
# A pyenv-style shim: a few helpers to find out where it runs and which
# interpreter to use, then `exec` of that interpreter on the real program.
#     bash shim.sh PYTHON PROGRAM ARGS...
set -e
python=$1
shift
arch=$(uname -p)                       # a helper that forks and execs uname
found=$(command -v python3 || true)    # a forked subshell for the substitution
( : "$arch" "$found" )                 # a subshell that does nothing
exec "$python" "$@"
