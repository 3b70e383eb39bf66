"""What a capture itself costs in CPU while it follows a server's start-up.

    sudo .venv/bin/python bench/capture_cost.py [--runs 3] [--vllm PYTHON] [--json FILE]

Each run starts the program twice, alone and under `ramwatchd run --quiet`,
and reports:
  own CPU   ramwatchd's own CPU time (user + system, from the start of its
            loop to its end, as the capture's JSON says), as % of one core
            averaged over the capture: the budget is 5 %
  wall      the program's run time under the capture against alone
The programs: the engine-shaped workload (ramwatchd.workloads.engine: a
spawned engine and worker that import for --imports seconds each, helpers,
~1,000 mappings, a 256 MiB weights file, a 1 GiB KV cache), and with --vllm
PYTHON a real vLLM's offline inference (bench/vllm/offline.py run by that
interpreter; bench/vllm/README.md).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET = 0.05


class BenchError(Exception):
    pass


def programs(args, tmp):
    out = {"engine": [sys.executable, "-m", "ramwatchd.workloads.engine",
                      "--weights", str(tmp / "model.safetensors"), "--imports", str(args.imports)]}
    if args.vllm:
        out["vllm"] = [args.vllm, str(REPO / "bench" / "vllm" / "offline.py"), args.model]
    return out


def alone(argv, env):
    started = time.monotonic()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if done.returncode:
        raise BenchError(f"{argv[0]} exited {done.returncode} on its own")
    return time.monotonic() - started


def traced(argv, env, tmp):
    out = tmp / "capture.json"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ramwatchd", "run", "--quiet", "--json", str(out), "--", *argv],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - started
    if done.returncode or not out.exists():
        raise BenchError(f"ramwatchd exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(out.read_text())
    return {"own_cpu_s": result["own_cpu_s"], "run_s": result["run_s"], "program_s": result["duration_s"],
            "share": result["own_cpu_s"] / result["run_s"], "looks": sum(
                p["reconciliation"]["samples"] for p in result["processes"]), "wall_s": wall}


def measure(name, argv, runs, tmp):
    env = dict(os.environ, PYTHONPATH=str(REPO), VLLM_CPU_KVCACHE_SPACE="1")
    rows = []
    for i in range(runs):
        print(f"{name}: run {i + 1} of {runs} ...", file=sys.stderr, flush=True)
        base = alone(argv, env)
        rows.append(dict(traced(argv, env, tmp), base_s=base))
    shares = [r["share"] for r in rows]
    return {"runs": rows, "share_median": statistics.median(shares), "share_max": max(shares),
            "slowdown_median": statistics.median(r["program_s"] / r["base_s"] for r in rows) - 1}


def report(name, figures):
    print(f"{name}:")
    for r in figures["runs"]:
        print(f"  own CPU {r['own_cpu_s']:6.2f} s in {r['run_s']:6.1f} s = {r['share']:5.1%} of one core; "
              f"{r['looks']} looks; program {r['program_s']:.1f} s traced, {r['base_s']:.1f} s alone")
    verdict = "met" if figures["share_max"] <= BUDGET else "NOT met"
    print(f"  median {figures['share_median']:.1%}, worst {figures['share_max']:.1%} of one core "
          f"(budget {BUDGET:.0%}: {verdict}); program slowed {figures['slowdown_median']:+.1%} (median)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--imports", type=float, default=12.0,
                   help="seconds the engine-shaped workload's engine and worker each spend importing "
                        "(vLLM's take ~15 s on this machine; default 12)")
    p.add_argument("--vllm", metavar="PYTHON", help="an interpreter with vllm-cpu (bench/vllm/install.sh)")
    p.add_argument("--model", default="/opt/ramwatchd-vllm/model", help="with --vllm: the model directory")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("capture_cost.py: run as root (the capture loads BPF programs)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        try:
            figures = {name: measure(name, argv, args.runs, Path(tmp))
                       for name, argv in programs(args, Path(tmp)).items()}
        except BenchError as err:
            print(f"capture_cost.py: {err}", file=sys.stderr)
            return 1
    for name, f in figures.items():
        report(name, f)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
