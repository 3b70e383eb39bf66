"""What the daemon costs on a node of many processes, beside Debian's
prometheus-process-exporter reading smaps of the same processes.

    sudo .venv/bin/python bench/daemon.py [--processes 1000] [--churn-processes 10000] [--json FILE]

Measured, for ramwatchd and process-exporter (-gather-smaps) alike, with both
watching the same N idle processes:
  scrape    median and worst time of GET /metrics, over --scrapes scrapes
  cpu       CPU time used per scrape, and while idle (% of one core)
and for ramwatchd only:
  churn     --churn-processes short-lived processes (`sleep 0.3`, run as
            `churn-sleep` so that they form a group of their own), started
            --churn-rate a second by a helper process, on top of the N idle
            ones. The daemon adopts each at its exec. Its VmRSS before, at
            most during and after a --settle, and its scrape time (median,
            worst) before, during and after, as ratios against before: the
            baseline of the same run. Bounded means it settles back, not that
            it never moves.
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
CHURN_COMM = "churn-sleep"     # the churn's processes: their comm, so their group


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


def find_process_exporter():
    exe = shutil.which("prometheus-process-exporter")
    if exe is None:
        raise BenchError("prometheus-process-exporter not found: apt-get install prometheus-process-exporter "
                         "(or pass --no-process-exporter to skip the comparison)")
    return exe


def start_process_exporter(workdir, port):
    exe = find_process_exporter()
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


def group_size(text, group):
    """ramwatchd_processes of group in a scrape; 0 when the group is gone."""
    return sum(float(l.split()[1]) for l in metric(text, f'ramwatchd_processes{{group="{group}"}}'))


def check_alive(proc, workdir, when):
    if proc.poll() is not None:
        lines = [l for l in (workdir / "ramwatchd.log").read_text(errors="replace").splitlines() if l.strip()]
        raise BenchError(f"ramwatchd daemon exited {proc.returncode} {when}: "
                         f"{lines[-1].strip() if lines else 'no log'}")


def churn_workload(n, rate, life, exe):
    """The churn helper (this file, run as a child, so that its reaping cannot
    take the idle processes from this script): start exe `life` n times,
    `rate` a second on an absolute clock, reaping as they end; print what it
    achieved as JSON."""
    argv, env = [os.path.basename(exe), life], dict(os.environ)
    n, rate = int(n), float(rate)
    started, live, lag_max = 0, 0, 0.0
    t0 = time.monotonic()
    while started < n:
        due = t0 + started / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            lag_max = max(lag_max, now - due)
        os.posix_spawn(exe, argv, env)
        last_start = time.monotonic()
        started += 1
        live += 1
        while live and os.waitpid(-1, os.WNOHANG)[0]:
            live -= 1
    while live:
        os.waitpid(-1, 0)
        live -= 1
    elapsed = time.monotonic() - t0
    # The rate of starts: n starts span n - 1 intervals, the last one's life not counted.
    rate = (started - 1) / (last_start - t0) if started > 1 and last_start > t0 else float(started)
    print(json.dumps({"started": started, "elapsed_s": elapsed, "rate": rate, "lag_max_s": lag_max}))


def measure_churn(proc, url, args, workdir):
    """VmRSS and scrape times before, during and after --churn-processes
    short-lived processes; the ratios are against before."""
    exe = workdir / CHURN_COMM
    os.symlink(shutil.which("sleep") or "/bin/sleep", exe)    # comm and group: churn-sleep
    before = {**measure_scrapes(proc, url, args.scrapes), "scrapes": args.scrapes, "rss": vm_rss(proc.pid)}
    print(f"ramwatchd: churn of {args.churn_processes} processes at {args.churn_rate:g}/s ...",
          file=sys.stderr, flush=True)
    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
    helper = subprocess.Popen([sys.executable, __file__, "_churn", str(args.churn_processes),
                               str(args.churn_rate), str(args.churn_life), str(exe)],
                              stdout=subprocess.PIPE, text=True)
    times, rss, sizes = [], [], []
    try:
        while helper.poll() is None:
            check_alive(proc, workdir, "during the churn")
            t = time.perf_counter()
            text = get(url)
            times.append(time.perf_counter() - t)
            rss.append(vm_rss(proc.pid))
            sizes.append(group_size(text, CHURN_COMM))
            time.sleep(0.2)
        out, _ = helper.communicate()
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
    wall = time.monotonic() - t0
    cpu = cpu_seconds(proc.pid) - cpu0
    if helper.returncode != 0 or not out.strip():
        raise BenchError(f"the churn helper failed (exit {helper.returncode})")
    if not times:
        raise BenchError("the churn ended before a single scrape: raise --churn-processes")
    achieved = json.loads(out)
    check_alive(proc, workdir, "during the churn")
    print(f"  {achieved['started']} started at {achieved['rate']:.1f}/s, all ended {achieved['elapsed_s']:.1f} s "
          f"after the first; "
          f"settling {args.settle:g} s ...", file=sys.stderr, flush=True)
    time.sleep(args.settle)
    check_alive(proc, workdir, "after the churn")
    after = {**measure_scrapes(proc, url, args.scrapes), "scrapes": args.scrapes, "rss": vm_rss(proc.pid),
             "group_size": group_size(get(url), CHURN_COMM)}
    during = {"scrape_median_s": statistics.median(times), "scrape_max_s": max(times), "scrapes": len(times),
              "rss_max": max(rss), "cpu_pct": 100 * cpu / wall, "group_size_max": max(sizes)}
    ratios = {"scrape_median_during": during["scrape_median_s"] / before["scrape_median_s"],
              "scrape_max_during": during["scrape_max_s"] / before["scrape_max_s"],
              "scrape_median_after": after["scrape_median_s"] / before["scrape_median_s"],
              "scrape_max_after": after["scrape_max_s"] / before["scrape_max_s"],
              "rss_max_during": during["rss_max"] / before["rss"], "rss_after": after["rss"] / before["rss"]}
    return {"processes": achieved["started"], "target_rate": args.churn_rate, "life_s": args.churn_life,
            "achieved_rate": achieved["rate"], "elapsed_s": achieved["elapsed_s"],
            "lag_max_s": achieved["lag_max_s"], "settle_s": args.settle,
            "before": before, "during": during, "after": after, "ratio_to_before": ratios}


def log_problems(workdir):
    """Tracebacks and errors ramwatchd logged while it ran."""
    text = (workdir / "ramwatchd.log").read_text(errors="replace")
    lines = [l.strip() for l in text.splitlines()]
    return {"tracebacks": text.count("Traceback"),
            "errors": [l for l in lines if l.startswith("ramwatchd:") and ("rror" in l or "xception" in l)][:10]}


def bench(args):
    if os.geteuid() != 0:
        raise BenchError("must run as root (ramwatchd loads BPF programs)")
    if not args.no_process_exporter:
        find_process_exporter()    # before the long part, not after it
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
            check_alive(rw, workdir, "at start")
            try:
                text = get(url)
            except OSError:
                return False
            n = [float(l.split()[1]) for l in metric(text, 'ramwatchd_processes{group="sleep"}')]
            reads = [float(l.split()[1]) for l in metric(text, "ramwatchd_smaps_reads_total")]
            return n and n[0] >= args.processes and reads and reads[0] >= args.processes
        wait_for("ramwatchd to read every process", all_read, timeout=300)
        time.sleep(5)
        print("ramwatchd: scrapes, idle ...", file=sys.stderr, flush=True)
        results["ramwatchd"] = {**measure_scrapes(rw, url, args.scrapes), **measure_idle(rw, args.idle),
                                "metrics_bytes": len(get(url))}
        results["ramwatchd"]["churn"] = measure_churn(rw, url, args, workdir)
        rw.terminate()
        rw.wait(timeout=30)
        results["ramwatchd"]["log"] = log_problems(workdir)

        if not args.no_process_exporter:
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
    if "process_exporter" in results:
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
    rw, pe = r["ramwatchd"], r.get("process_exporter")
    mib = 1 << 20
    print(f"{n} idle processes watched by each" if pe else f"{n} idle processes watched "
          "(process-exporter skipped)")
    for name, x in (("ramwatchd", rw), ("process-exporter -gather-smaps", pe)):
        if x is None:
            continue
        print(f"{name}:\n  scrape median {x['scrape_median_s'] * 1000:.1f} ms, worst "
              f"{x['scrape_max_s'] * 1000:.1f} ms; CPU {x['cpu_per_scrape_s'] * 1000:.1f} ms a scrape; "
              f"idle {x['idle_cpu_pct']:.2f} % of a core; exposition {x['metrics_bytes'] / 1024:.0f} KiB")
    c = rw["churn"]
    b, d, a, q = c["before"], c["during"], c["after"], c["ratio_to_before"]
    print(f"ramwatchd under churn: {c['processes']} processes (sleep {c['life_s']:g} as {CHURN_COMM}) started "
          f"{c['achieved_rate']:.1f}/s of {c['target_rate']:g}/s (all ended after {c['elapsed_s']:.1f} s), beside "
          f"the {n} idle ones;\n  its group held {d['group_size_max']:.0f} at most during, {a['group_size']:.0f} after")
    print(f"  {'':20} {'VmRSS':>20} {'scrape median':>22} {'scrape worst':>22}")
    print(f"  {'before':20} {b['rss'] / mib:>14.1f} MiB{'':5} {b['scrape_median_s'] * 1000:>10.1f} ms{'':9} "
          f"{b['scrape_max_s'] * 1000:>10.1f} ms")
    print(f"  {'during (RSS: max)':20} {d['rss_max'] / mib:>14.1f} MiB x{q['rss_max_during']:<5.3f}"
          f"{d['scrape_median_s'] * 1000:>10.1f} ms x{q['scrape_median_during']:<7.3f}"
          f"{d['scrape_max_s'] * 1000:>10.1f} ms x{q['scrape_max_during']:.3f}")
    after_label = f"after {c['settle_s']:g} s settle"
    print(f"  {after_label:20} {a['rss'] / mib:>14.1f} MiB x{q['rss_after']:<5.3f}"
          f"{a['scrape_median_s'] * 1000:>10.1f} ms x{q['scrape_median_after']:<7.3f}"
          f"{a['scrape_max_s'] * 1000:>10.1f} ms x{q['scrape_max_after']:.3f}")
    print(f"  (x: ratio to before; {d['scrapes']} scrapes during, {b['scrapes']} before and after); "
          f"ramwatchd's CPU during the churn, these scrapes included: {d['cpu_pct']:.1f} % of a core")
    problems = rw["log"]
    print("ramwatchd's log: " + ("no tracebacks, no errors" if not problems["tracebacks"] and not problems["errors"]
                                 else f"{problems['tracebacks']} tracebacks; " + " | ".join(problems["errors"][:3])))
    if pe:
        print(f"ratio ramwatchd / process-exporter: scrape time {r['ratio']['scrape_median']:.3f}, "
              f"CPU a scrape {r['ratio']['cpu_per_scrape']:.3f}")
    ok_scrape = rw["scrape_median_s"] <= 0.1
    ok_idle = rw["idle_cpu_pct"] <= 1.0
    print(f"verdict scrape <= 100 ms: {'yes' if ok_scrape else 'NO'}; idle <= 1 % of a core: "
          f"{'yes' if ok_idle else 'NO'}")


def main():
    if sys.argv[1:2] == ["_churn"]:
        return churn_workload(*sys.argv[2:6])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=1000, help="idle processes watched (default 1000)")
    p.add_argument("--scrapes", type=int, default=20, help="scrapes before and after the churn (default 20)")
    p.add_argument("--idle", type=float, default=30, metavar="S", help="idle CPU measured over S seconds")
    p.add_argument("--churn-processes", type=int, default=10000, metavar="N",
                   help="short-lived processes started during the churn (default 10000)")
    p.add_argument("--churn-rate", type=float, default=200, metavar="N",
                   help="of them started a second, evenly (default 200)")
    p.add_argument("--churn-life", type=float, default=0.3, metavar="S",
                   help="how long each lives (default 0.3)")
    p.add_argument("--settle", type=float, default=10, metavar="S",
                   help="wait after the churn before measuring 'after' (default 10)")
    p.add_argument("--no-process-exporter", action="store_true",
                   help="skip the comparison with prometheus-process-exporter")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    if min(args.processes, args.scrapes, args.churn_processes) < 1 or min(args.churn_rate, args.churn_life) <= 0 \
            or min(args.idle, args.settle) < 0:
        p.error("--processes, --scrapes and --churn-processes must be at least 1, --churn-rate and "
                "--churn-life above 0, --idle and --settle not negative")
    try:
        results = bench(args)
    except (BenchError, OSError, subprocess.SubprocessError) as err:
        print(f"daemon bench: {err}", file=sys.stderr)
        return 1
    report(results, args.processes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"processes": args.processes, "scrapes": args.scrapes, **results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
