"""Two children on one pid: the first maps and touches FIRST MiB, holds it and
exits; then the next child is forced onto the same pid (through
/proc/sys/kernel/ns_last_pid, retried if another fork took it first), maps
and touches SECOND MiB, holds it and exits. Writes what happened, as JSON, to
RESULT.

    python reuse_pid.py FIRST_MIB SECOND_MIB HOLD_S RESULT
"""
import json
import mmap
import os
import sys
import time

first_mib, second_mib, hold, result = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


def hold_anon(mib):
    size = mib << 20
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, size, mmap.PAGESIZE):
        region[off] = 1
    time.sleep(hold)


def child(mib, must_be=None):
    """Fork a child that holds mib MiB and exits; a child that did not get the
    pid must_be exits at once. Returns its pid, once reaped."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if must_be is None or os.getpid() == must_be:
                hold_anon(mib)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    return pid


first = child(first_mib)
attempts = []
for _ in range(50):
    with open(NS_LAST_PID, "w") as f:
        f.write(str(first - 1))
    second = child(second_mib, must_be=first)
    attempts.append(second)
    if second == first:
        break
with open(result, "w") as f:
    json.dump({"parent": os.getpid(), "pid": first, "attempts": attempts, "reused": attempts[-1] == first}, f)
