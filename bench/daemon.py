"""What the daemon costs on a node of many processes, beside Debian's
prometheus-process-exporter reading smaps of the same processes.

    sudo .venv/bin/python bench/daemon.py [--processes 1000] [--json FILE]

Measured, for ramwatchd and process-exporter (-gather-smaps) alike, with both
watching the same N idle processes:
  scrape    median and worst time of GET /metrics, over --scrapes scrapes
  cpu       CPU time used per scrape, and while idle (% of one core)
and for ramwatchd only:
  churn     its VmRSS while processes start and exit for --churn seconds:
            bounded means it settles back, not that it never moves.
Budgets (ramwatchd): scrape <= 100 ms with 1000 processes, idle <= 1 % of a core.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_rss(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    return 0


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def wait_for(what, check, timeout=120):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.5)


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            yield line


def start_sleepers(n):
    """N idle processes, all named 'sleep': the node's population."""
    return [subprocess.Popen(["sleep", "3600"]) for _ in range(n)]


def start_ramwatchd(workdir, port):
    cfg = workdir / "ramwatchd.yaml"
    cfg.write_text(f"listen: {{address: 127.0.0.1, port: {port}}}\n"
                   "collection: {smaps_per_second: 200}\n")
    exe = Path(sys.executable).parent / "ramwatchd"
    return subprocess.Popen([str(exe), "daemon", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "ramwatchd.log", "w"))


def start_process_exporter(workdir, port):
    exe = shutil.which("prometheus-process-exporter")
    if exe is None:
        raise BenchError("prometheus-process-exporter not found: apt-get install prometheus-process-exporter")
    cfg = workdir / "process-exporter.yaml"
    cfg.write_text('process_names:\n  - name: "{{.Comm}}"\n    cmdline: [".+"]\n')
    return subprocess.Popen([exe, "-config.path", str(cfg), "-gather-smaps=true",
                             "-web.listen-address", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "process-exporter.log", "w"))


def measure_scrapes(proc, url, scrapes):
    times = []
    cpu0 = cpu_seconds(proc.pid)
    for _ in range(scrapes):
        t = time.perf_counter()
        get(url)
        times.append(time.perf_counter() - t)
        time.sleep(0.2)
    return {"scrape_median_s": statistics.median(times), "scrape_max_s": max(times),
            "cpu_per_scrape_s": (cpu_seconds(proc.pid) - cpu0) / scrapes}


def measure_idle(proc, seconds):
    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(seconds)
    return {"idle_cpu_pct": 100 * (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)}


def measure_churn(proc, seconds, rate):
    """Start and end `rate` short processes a second; sample the daemon's VmRSS."""
    samples, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        batch = [subprocess.Popen(["sleep", "0.5"]) for _ in range(rate)]
        time.sleep(1)
        for p in batch:
            p.wait()
        samples.append(vm_rss(proc.pid))
    time.sleep(5)   # let exits and discovery settle
    after = vm_rss(proc.pid)
    return {"churn_rss_start": samples[0], "churn_rss_max": max(samples), "churn_rss_after": after,
            "churn_processes": rate * len(samples)}


def bench(args):
    if os.geteuid() != 0:
        raise BenchError("must run as root (ramwatchd loads BPF programs)")
    workdir = Path(tempfile.mkdtemp(prefix="ramwatchd-daemon-bench-"))
    sleepers, daemons = [], []
    results = {}
    try:
        print(f"starting {args.processes} idle processes ...", file=sys.stderr, flush=True)
        sleepers = start_sleepers(args.processes)
        port = free_port()
        rw = start_ramwatchd(workdir, port)
        daemons.append(rw)
        url = f"http://127.0.0.1:{port}/metrics"
        print("waiting for ramwatchd to see and read them all ...", file=sys.stderr, flush=True)

        def all_read():
            try:
                text = get(url)
            except OSError:
                return False
            n = [float(l.split()[1]) for l in metric(text, 'ramwatchd_processes{group="sleep"}')]
            reads = [float(l.split()[1]) for l in metric(text, "ramwatchd_smaps_reads_total")]
            return n and n[0] >= args.processes and reads and reads[0] >= args.processes
        wait_for("ramwatchd to read every process", all_read, timeout=300)
        time.sleep(5)
        print("ramwatchd: scrapes, idle, churn ...", file=sys.stderr, flush=True)
        results["ramwatchd"] = {**measure_scrapes(rw, url, args.scrapes), **measure_idle(rw, args.idle),
                                **measure_churn(rw, args.churn, args.churn_rate),
                                "metrics_bytes": len(get(url))}
        rw.terminate()
        rw.wait(timeout=30)

        port = free_port()
        pe = start_process_exporter(workdir, port)
        daemons.append(pe)
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for("process-exporter", lambda: _up(url), timeout=60)
        get(url)   # its first scrape builds its state
        print("process-exporter: scrapes, idle ...", file=sys.stderr, flush=True)
        results["process_exporter"] = {**measure_scrapes(pe, url, args.scrapes),
                                       **measure_idle(pe, args.idle), "metrics_bytes": len(get(url))}
    finally:
        for p in daemons + sleepers:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    rw, pe = results["ramwatchd"], results["process_exporter"]
    results["ratio"] = {"scrape_median": rw["scrape_median_s"] / pe["scrape_median_s"],
                        "cpu_per_scrape": rw["cpu_per_scrape_s"] / max(pe["cpu_per_scrape_s"], 1e-9)}
    return results


def _up(url):
    try:
        get(url)
        return True
    except OSError:
        return False


def report(r, n):
    rw, pe = r["ramwatchd"], r["process_exporter"]
    mib = 1 << 20
    print(f"{n} idle processes watched by each")
    for name, x in (("ramwatchd", rw), ("process-exporter -gather-smaps", pe)):
        print(f"{name}:\n  scrape median {x['scrape_median_s'] * 1000:.1f} ms, worst "
              f"{x['scrape_max_s'] * 1000:.1f} ms; CPU {x['cpu_per_scrape_s'] * 1000:.1f} ms a scrape; "
              f"idle {x['idle_cpu_pct']:.2f} % of a core; exposition {x['metrics_bytes'] / 1024:.0f} KiB")
    print(f"ramwatchd under churn ({rw['churn_processes']} processes started and ended): VmRSS "
          f"{rw['churn_rss_start'] / mib:.1f} MiB at the start, {rw['churn_rss_max'] / mib:.1f} MiB at most, "
          f"{rw['churn_rss_after'] / mib:.1f} MiB after")
    print(f"ratio ramwatchd / process-exporter: scrape time {r['ratio']['scrape_median']:.3f}, "
          f"CPU a scrape {r['ratio']['cpu_per_scrape']:.3f}")
    ok_scrape = rw["scrape_median_s"] <= 0.1
    ok_idle = rw["idle_cpu_pct"] <= 1.0
    print(f"verdict scrape <= 100 ms: {'yes' if ok_scrape else 'NO'}; idle <= 1 % of a core: "
          f"{'yes' if ok_idle else 'NO'}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=1000)
    p.add_argument("--scrapes", type=int, default=20)
    p.add_argument("--idle", type=float, default=30, metavar="S", help="idle CPU measured over S seconds")
    p.add_argument("--churn", type=float, default=30, metavar="S")
    p.add_argument("--churn-rate", type=int, default=50, metavar="N", help="processes started a second")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    try:
        results = bench(args)
    except (BenchError, OSError, subprocess.SubprocessError) as err:
        print(f"daemon bench: {err}", file=sys.stderr)
        return 1
    report(results, args.processes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"processes": args.processes, **results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
