#!/bin/bash
# The GPU proof, every step, on a machine with an NVIDIA GPU, torch and cupy,
# as root, from the repository root:
#
#   bash .device/bootstrap.sh && . /tmp/bcc_env.sh && OUT=/tmp/gpu bash results/gpu/run.sh
#
# (.device comes from ../shared/gpu/fetch-debs.sh: Debian's bcc for a machine
# without it.) Every output goes to $OUT; results/gpu/ keeps a copy of them.
#   1-2. pinned_proof.py under `ramwatchd run`: four kinds of host memory, the
#        pinned ranges and the call sites of each.
#   3-4. the daemon (daemon.yaml) starts, scrape.py scrapes it every 2 s, then
#        pinned_tree.py (a parent and two spawned workers) runs under
#        `ramwatchd run --duration 60`, which ends it while the workers hold
#        their memory; the daemon keeps running 15 s after the tree is gone.
#   5.   pinned_proof.py alone, without ramwatchd, for comparison.
#   Then check.py compares it all and says PASS or FAIL for each claim.
# A capture stopped by an internal error is made again with --no-stacks
# (NAME-nostacks.*), so that what does not depend on call sites is still shown.
# RAMWATCHD_SRC: the folder holding the ramwatchd/ and bpf/ to run (default:
# this checkout), e.g. an export of one commit:
#   git archive HEAD ramwatchd bpf | tar -x -C results/gpu/tmp/src
set -uo pipefail
out=${OUT:-/tmp/ramwatchd-gpu}
src=${RAMWATCHD_SRC:-$PWD}
mkdir -p "$out"
export PYTHONPATH=$src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONWARNINGS=ignore::SyntaxWarning     # bcc 0.26's regexes, on Python 3.12
ramwatchd() { python3 -m ramwatchd "$@"; }
metrics() { python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9725/metrics', timeout=10).read().decode())"; }
say() { echo "== $(date +%T) $*"; }
ended() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['ended_because'])" "$1" 2>&1; }

# capture NAME LIMIT_S [RUN OPTIONS] -- CMD...: ramwatchd run into $out/NAME.*;
# again with --no-stacks if it stopped by an internal error.
capture() {
    local name=$1 limit=$2; shift 2
    timeout -s INT -k 20 "$limit" python3 -m ramwatchd run --json "$out/$name.json" "$@" > "$out/$name.txt" 2>&1
    echo "ramwatchd run exit $?" >> "$out/$name.txt"
    ramwatchd report "$out/$name.json" --flamegraph "$out/$name.folded" > /dev/null 2>&1
    echo "   $name: $(ended "$out/$name.json")"
    if ended "$out/$name.json" | grep -q "internal error"; then
        grep -B2 -A12 "Traceback" "$out/$name.txt" | head -40
        say "   again with --no-stacks: $name-nostacks"
        timeout -s INT -k 20 "$limit" python3 -m ramwatchd run --no-stacks --json "$out/$name-nostacks.json" "$@" \
            > "$out/$name-nostacks.txt" 2>&1
        echo "ramwatchd run exit $?" >> "$out/$name-nostacks.txt"
        echo "   $name-nostacks: $(ended "$out/$name-nostacks.json")"
    fi
}

# The daemon's basic-auth support needs bcrypt; a machine without a package
# registry gets the wheel carried in .device/wheels.
if ! python3 -c "import bcrypt" 2>/dev/null && ls .device/wheels/bcrypt-*.whl >/dev/null 2>&1; then
    python3 -m zipfile -e .device/wheels/bcrypt-*.whl /tmp/ramwatchd-pydeps
    export PYTHONPATH=$PYTHONPATH:/tmp/ramwatchd-pydeps
fi

say environment
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import sys, sysconfig, torch, cupy; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cupy', cupy.__version__, '| libpython shared:', sysconfig.get_config_var('Py_ENABLE_SHARED'))"
    echo "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "python3 is $(command -v python3) -> $(readlink -f "$(command -v python3)")"
    echo "ramwatchd from $src$(test -f "$src/COMMIT" && echo ", commit $(cat "$src/COMMIT")")"
} 2>&1 | tee "$out/environment.txt"

say doctor
ramwatchd doctor > "$out/doctor.txt" 2>&1
echo "doctor exit $?" >> "$out/doctor.txt"
grep -v "^OK    tracepoint" "$out/doctor.txt"

say "1-2. ramwatchd run -- python3 results/gpu/pinned_proof.py"
capture pinned_proof 120 -- python3 results/gpu/pinned_proof.py

say "3-4. ramwatchd daemon --config results/gpu/daemon.yaml"
PYTHONFAULTHANDLER=1 python3 -m ramwatchd daemon --config results/gpu/daemon.yaml > "$out/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 60); do
    metrics > /dev/null 2>&1 && break
    kill -0 $daemon 2>/dev/null || break
    sleep 0.5
done
say "daemon serving"
rm -f "$out/.stop"
python3 results/gpu/scrape.py http://127.0.0.1:9725/metrics "$out" "$out/.stop" 2 2> "$out/scrape.log" &
scraper=$!
sleep 4
say "3. ramwatchd run --duration 60 -- python3 results/gpu/pinned_tree.py (daemon running)"
export HOLD_S=300                # the workers' hold: longer than the capture
capture pinned_tree 100 --duration 60 -- python3 results/gpu/pinned_tree.py
sleep 15                       # the daemon sees the tree gone; its groups leave the scrape
touch "$out/.stop"
wait $scraper
metrics > "$out/metrics_after.txt"
say "stopping the daemon"
kill -TERM $daemon
for _ in $(seq 20); do kill -0 $daemon 2>/dev/null || break; sleep 0.5; done
if kill -0 $daemon 2>/dev/null; then
    echo "daemon still running 10 s after SIGTERM: its threads, then SIGKILL" | tee -a "$out/daemon.log"
    kill -ABRT $daemon; sleep 2; kill -KILL $daemon 2>/dev/null
fi
wait $daemon
echo "daemon exit $?" >> "$out/daemon.log"
rm -f "$out/.stop" /dev/shm/ramwatchd-gpu-proof /dev/shm/ramwatchd-gpu-tree

say "5. python3 results/gpu/pinned_proof.py alone, without ramwatchd, for comparison"
timeout 120 python3 results/gpu/pinned_proof.py > "$out/alone.txt" 2>&1
echo "exit $?" >> "$out/alone.txt"
tail -2 "$out/alone.txt"
rm -f /dev/shm/ramwatchd-gpu-proof

say check
python3 results/gpu/check.py "$out" 2>&1 | tee "$out/checks.txt"
exit "${PIPESTATUS[0]}"
