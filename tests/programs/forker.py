"""Keep starting children that live on: every INTERVAL seconds, fork a child
that sleeps (a worker pool that grows, a server's per-request processes).
Children are forks of this program, so their command line is its own.

    python forker.py INTERVAL_S TAG
"""
import os
import sys
import time

interval = float(sys.argv[1])
while True:
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
    while True:     # reap any that ended
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    time.sleep(interval)
