"""Start N short-lived processes one after another, as a launcher does at
start-up: mostly /bin/true, every fifth a fresh `python -c pass`.

    python spawner.py N
"""
import subprocess
import sys

n = int(sys.argv[1])
for i in range(n):
    argv = [sys.executable, "-c", "pass"] if i % 5 == 4 else ["/bin/true"]
    subprocess.run(argv, check=True)
    if (i + 1) % 100 == 0:
        print(f"spawned {i + 1}", flush=True)
print("spawner done", flush=True)
