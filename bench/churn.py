"""What a capture costs while it follows process churn.

A workload forks short-lived processes at a steady rate: fork, exec of
/bin/true, exit, --rate times a second for --seconds (a C loop, built with gcc
at start, paced to absolute deadlines and reaping as it goes). It runs
alternately alone and under `ramwatchd run --quiet --json F -- WORKLOAD`
(base, traced, base, traced, ...), --pairs times. Measured:

  rate      forks a second the workload achieved, counted by the workload
            itself; traced/base is the slowdown (1.0: it kept the pace)
  cpu       the workload's CPU per fork, parent and children (its rusage):
            the capture's kernel side runs in their context, so this shows its
            cost even while the pace is kept
  own cpu   ramwatchd's own CPU from the capture's JSON, own_cpu_s / run_s,
            as % of one core, and per followed process
  seen      the capture's short_lived count against the forks made, and
            whether its kernel_stats show anything dropped
  crashes   traced runs that exited non-zero, wrote "Traceback" on stderr, or
            wrote no JSON

Then the loop from the issue, literally (--issue-passes only scales it for a
quick try), once alone and once under `ramwatchd run --quiet --json F --duration 40`:

  sh -c 'i=0; while [ $i -lt 20000 ]; do /bin/true & /bin/true; i=$((i+1)); done; wait'

Run as root:  .venv/bin/python bench/churn.py [--rate 1000] [--seconds 20] [--pairs 3] [--json FILE]
Exit 0 whenever the measurement ran (crashes and a missed pace are reported),
1 with one line when it could not run.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BenchError, add_cpu_option, check_cpu, leave_cpu

# The churn workload. Starts PROG (execv, no PATH search) RATE times a second
# for SECONDS: the n-th fork is due at n/RATE s after the start, on an absolute
# clock, so a late fork is followed at once by the next ones until it is back on
# pace. Children are reaped as they exit; at most MAX_INFLIGHT live at once.
# Writes "key value" lines to OUT at the end. Exit 0 once OUT is written.
CHURN_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_INFLIGHT 256

static struct timespec t0;
static long reaped, bad_exits;

static double since_start(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9;
}

static void reap(int flags)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, flags)) > 0) {
		reaped++;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			bad_exits++;
		if (flags == 0)
			return;          /* blocking: one is enough */
	}
}

static double cpu_s(struct rusage *r)
{
	return r->ru_utime.tv_sec + r->ru_utime.tv_usec / 1e6 + r->ru_stime.tv_sec + r->ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: %s RATE SECONDS CPU OUT PROG [ARG...]\n", argv[0]);
		return 2;
	}
	double rate = atof(argv[1]), seconds = atof(argv[2]);
	int cpu = atoi(argv[3]);
	const char *out = argv[4];
	char **prog = argv + 5;
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof set, &set)) {
			perror("churn: sched_setaffinity");
			return 1;
		}
	}
	long total = (long)(rate * seconds + 0.5), started = 0, fork_errors = 0;
	double lag_max = 0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (started < total) {
		double due = started / rate, now = since_start();
		if (due > now) {
			reap(WNOHANG);
			struct timespec at = t0;
			double whole = (double)(long)due;
			at.tv_sec += (long)whole;
			at.tv_nsec += (long)((due - whole) * 1e9);
			if (at.tv_nsec >= 1000000000L) {
				at.tv_sec++;
				at.tv_nsec -= 1000000000L;
			}
			while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
				;
		} else if (now - due > lag_max) {
			lag_max = now - due;
		}
		if (started - reaped >= MAX_INFLIGHT) {
			reap(0);
			continue;
		}
		pid_t pid = fork();
		if (pid == 0) {
			execv(prog[0], prog);
			_exit(127);
		}
		if (pid < 0) {
			fork_errors++;
			if (started == reaped) {
				perror("churn: fork");
				break;
			}
			reap(0);
			continue;
		}
		started++;
		reap(WNOHANG);
	}
	while (reaped < started)
		reap(0);
	double elapsed = since_start();
	struct rusage self, children;
	getrusage(RUSAGE_SELF, &self);
	getrusage(RUSAGE_CHILDREN, &children);
	FILE *f = fopen(out, "w");
	if (!f) {
		perror(out);
		return 1;
	}
	fprintf(f, "started %ld\nelapsed_s %.6f\nlag_max_s %.6f\nbad_exits %ld\nfork_errors %ld\n"
		"cpu_self_s %.6f\ncpu_children_s %.6f\n",
		started, elapsed, lag_max, bad_exits, fork_errors, cpu_s(&self), cpu_s(&children));
	return fclose(f) ? 1 : 0;
}
"""

ISSUE_PASSES = 20000
ISSUE_LOOP = "i=0; while [ $i -lt {passes} ]; do /bin/true & /bin/true; i=$((i+1)); done; wait"
ISSUE_DURATION_S = 40
TRUE = "/bin/true"
# kernel_stats: every counter is a loss but calls_shed, mm calls counted in the
# kernel instead of sent one by one, not a loss.
NOT_DROPS = ("calls_shed",)
PACE_SLACK = 0.02              # a base run below 98 % of --rate did not hold the pace


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def pct(x):
    return "?" if x is None else f"{x:.1f}"


# ---- setup ------------------------------------------------------------------

def find_ramwatchd():
    beside = Path(sys.executable).parent / "ramwatchd"
    found = str(beside) if beside.is_file() else shutil.which("ramwatchd")
    if not found:
        raise BenchError(f"ramwatchd not found beside {sys.executable} nor on PATH")
    return found


def build_spawner(workdir, prebuilt=None):
    if prebuilt:
        if not os.access(prebuilt, os.X_OK):
            raise BenchError(f"--spawner {prebuilt} is not an executable file")
        return prebuilt
    if not shutil.which("gcc"):
        raise BenchError("gcc not found: it builds the churn workload "
                         "(or pass --spawner with one built elsewhere from bench/churn.py's CHURN_C)")
    src, exe = workdir / "churn.c", workdir / "churn"
    src.write_text(CHURN_C)
    cc = subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], capture_output=True, text=True)
    if cc.returncode != 0:
        raise BenchError(f"gcc failed: {cc.stderr.strip()}")
    return str(exe)


def read_workload_figures(path):
    """The spawner's "key value" lines, or None if it wrote none."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    figures = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        figures[key] = float(value)
    if "started" not in figures or "elapsed_s" not in figures:
        return None
    figures["forks_per_s"] = figures["started"] / figures["elapsed_s"] if figures["elapsed_s"] else 0.0
    figures["cpu_per_fork_us"] = (1e6 * (figures["cpu_self_s"] + figures["cpu_children_s"])
                                  / max(figures["started"], 1))
    return figures


def kill_group(proc):
    """End proc and what it started (its own session): by its process group id."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# ---- a capture --------------------------------------------------------------

def capture(ramwatchd, argv, log_base, timeout, extra=(), preexec_fn=None):
    """Run argv under `ramwatchd run --quiet --json`; return what became of it:
    its exit, whether it crashed (and how), and the capture's JSON."""
    json_path, err_path, out_path = f"{log_base}.json", f"{log_base}.err", f"{log_base}.out"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([ramwatchd, "run", "--quiet", "--json", json_path, *extra, "--", *argv],
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=preexec_fn)
    started = time.monotonic()
    try:
        rc = proc.wait(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        rc, hung = proc.returncode, True
    wall_s = time.monotonic() - started
    stderr = Path(err_path).read_text(errors="replace")
    tracing = any(l.startswith("ramwatchd: tracing ") for l in stderr.splitlines())
    if not tracing and not hung and "Traceback" not in stderr:
        # It never started tracing: the capture could not run at all here.
        line = next((l for l in reversed(stderr.splitlines()) if l.strip()), f"exit {rc}, no output")
        raise BenchError(f"ramwatchd could not start a capture: {line.strip()}")
    try:
        result = json.loads(Path(json_path).read_text())
    except (FileNotFoundError, ValueError):
        result = None
    why = []
    if hung:
        why.append(f"still running after {timeout:.0f} s, killed")
    elif rc != 0:
        why.append(f"exit {rc}")
    if "Traceback" in stderr:
        last = [l for l in stderr.splitlines() if l.strip() and not l.startswith(" ")]
        why.append(f"Traceback on stderr ({last[-1].strip() if last else '?'})")
    if result is None:
        why.append("no JSON written")
    return {"rc": rc, "wall_s": wall_s, "crashed": bool(why), "crash": "; ".join(why),
            "result": result, "pid": proc.pid}


def capture_figures(result, forks):
    """What the capture says about itself: own CPU, what it counted, drops."""
    if result is None:
        return {}
    stats = result.get("kernel_stats") or {}
    own, run = result.get("own_cpu_s", 0.0), result.get("run_s", 0.0)
    short = result.get("short_lived", {}).get("count", 0)
    return {"own_cpu_s": own, "run_s": run, "own_cpu_pct": 100 * own / run if run else None,
            "own_cpu_per_fork_us": 1e6 * own / forks if forks else None,
            "short_lived": short, "processes_listed": len(result.get("processes", [])),
            "kernel_stats": stats, "dropped": {k: v for k, v in stats.items() if v and k not in NOT_DROPS},
            "ended_because": result.get("ended_because")}


# ---- the paced workload, base and traced ------------------------------------

def run_pair_member(mode, spawner, ramwatchd, args, workdir, i):
    out = workdir / f"run{i}.figures"
    argv = [spawner, str(args.rate), str(args.seconds), str(-1 if args.cpu is None else args.cpu), str(out), TRUE]
    timeout = 3 * args.seconds + 120
    run = {"mode": mode}
    if mode == "base":
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the churn workload alone ran past {timeout:.0f} s") from None
        if done.returncode != 0:
            raise BenchError(f"the churn workload failed alone (exit {done.returncode}): "
                             f"{done.stderr.strip() or 'no message'}")
    else:
        cap = capture(ramwatchd, argv, workdir / f"run{i}", timeout)
        run.update(rc=cap["rc"], crashed=cap["crashed"], crash=cap["crash"])
    figures = read_workload_figures(out)
    if figures is None and mode == "base":
        raise BenchError("the churn workload wrote no figures")
    run["workload"] = figures
    if mode == "traced":
        run["capture"] = capture_figures(cap["result"], figures["started"] if figures else 0)
    return run


def describe(i, total, run, target):
    w = run["workload"]
    text = f"[{i + 1}/{total}] {run['mode']:6}"
    if w:
        text += (f" {w['forks_per_s']:7.1f} forks/s of {target:g} ({w['started']:.0f} in {w['elapsed_s']:.2f} s, "
                 f"lag at most {w['lag_max_s'] * 1000:.0f} ms), workload CPU {w['cpu_per_fork_us']:.0f} us/fork")
    else:
        text += " the workload wrote no figures"
    c = run.get("capture")
    if c:
        text += (f"; ramwatchd {pct(c['own_cpu_pct'])} % of a core, short-lived {c['short_lived']}"
                 + (f", dropped {c['dropped']}" if c["dropped"] else ""))
    if run.get("crashed"):
        text += f"; CRASHED: {run['crash']}"
    return text


def measure_pairs(spawner, ramwatchd, args, workdir):
    runs = []
    total = 2 * args.pairs
    for i in range(total):
        mode = "traced" if i % 2 else "base"
        runs.append(run_pair_member(mode, spawner, ramwatchd, args, workdir, i))
        log(describe(i, total, runs[-1], args.rate))
    return runs


def summarise_pairs(runs, args):
    base = [r["workload"] for r in runs if r["mode"] == "base"]
    traced_runs = [r for r in runs if r["mode"] == "traced"]
    traced = [r["workload"] for r in traced_runs if r["workload"]]
    caps = [r["capture"] for r in traced_runs if r.get("capture")]
    med = statistics.median
    s = {"target_forks_per_s": args.rate,
         "base_forks_per_s": [w["forks_per_s"] for w in base],
         "traced_forks_per_s": [w["forks_per_s"] for w in traced],
         "base_cpu_per_fork_us": [w["cpu_per_fork_us"] for w in base],
         "traced_cpu_per_fork_us": [w["cpu_per_fork_us"] for w in traced],
         "median_base_forks_per_s": med(w["forks_per_s"] for w in base),
         "base_held_pace": all(w["forks_per_s"] >= (1 - PACE_SLACK) * args.rate for w in base),
         "crashes": sum(r["crashed"] for r in traced_runs), "traced_runs": len(traced_runs),
         "crash_reasons": [r["crash"] for r in traced_runs if r["crashed"]],
         "dropped_runs": sum(bool(c["dropped"]) for c in caps),
         "dropped": [c["dropped"] for c in caps if c["dropped"]]}
    if traced:
        s["median_traced_forks_per_s"] = med(w["forks_per_s"] for w in traced)
        s["rate_ratio"] = s["median_traced_forks_per_s"] / s["median_base_forks_per_s"]
        s["median_base_cpu_per_fork_us"] = med(s["base_cpu_per_fork_us"])
        s["median_traced_cpu_per_fork_us"] = med(s["traced_cpu_per_fork_us"])
        s["cpu_per_fork_ratio"] = s["median_traced_cpu_per_fork_us"] / s["median_base_cpu_per_fork_us"]
        pairs = [t["forks_per_s"] / b["forks_per_s"] for b, t in zip(base, (r["workload"] for r in traced_runs))
                 if t is not None]
        s["pair_rate_ratios"] = pairs
    pcts = [c["own_cpu_pct"] for c in caps if c.get("own_cpu_pct") is not None]
    if pcts:
        s["own_cpu_pct"] = pcts
        s["median_own_cpu_pct"] = med(pcts)
        per_fork = [c["own_cpu_per_fork_us"] for c in caps if c["own_cpu_per_fork_us"] is not None]
        s["median_own_cpu_per_fork_us"] = med(per_fork) if per_fork else None
    s["short_lived"] = [c["short_lived"] for c in caps]
    s["forks_traced"] = [int(r["workload"]["started"]) for r in traced_runs if r["workload"] and r.get("capture")]
    return s


# ---- the loop from the issue -------------------------------------------------

def issue_loop(ramwatchd, workdir, args, cpus):
    """The issue's shell loop, alone and under a capture, both free to use
    every CPU this script had at start."""
    spread = lambda: os.sched_setaffinity(0, cpus)   # noqa: E731
    loop = ISSUE_LOOP.format(passes=args.issue_passes)
    forks = 2 * args.issue_passes    # each pass: one /bin/true in the background, one in front
    argv = ["sh", "-c", loop]
    timeout = 600
    log(f"the issue's loop alone: {forks} fork+exec+exit ...")
    t0 = time.monotonic()
    try:
        done = subprocess.run(argv, preexec_fn=spread, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the issue's loop alone ran past {timeout} s") from None
    base_s = time.monotonic() - t0
    if done.returncode != 0:
        raise BenchError(f"the issue's loop failed alone (exit {done.returncode})")
    out = {"loop": loop, "forks": forks, "base_s": base_s, "base_forks_per_s": forks / base_s,
           "duration_limit_s": args.issue_duration}
    log(f"  {out['base_forks_per_s']:.0f} forks/s ({base_s:.1f} s)")
    log(f"the issue's loop under ramwatchd run --duration {args.issue_duration:g} ...")
    cap = capture(ramwatchd, argv, workdir / "issue", args.issue_duration + 180,
                  extra=("--duration", str(args.issue_duration)), preexec_fn=spread)
    out.update(rc=cap["rc"], crashed=cap["crashed"], crash=cap["crash"])
    result = cap["result"]
    if result is not None:
        root = next((p for p in result.get("processes", []) if p.get("ppid") == cap["pid"]), None)
        seen = len(result.get("processes", [])) - (root is not None) + result["short_lived"]["count"]
        finished = result.get("exit_code") == 0 and root is not None and root.get("exited_at") is not None
        if finished:
            # It ran to its end: all of its forks, over the root shell's life.
            span, done_forks = root["exited_at"] - root["first_seen"], forks
        elif root is not None and "--duration" in (result.get("ended_because") or ""):
            # Cut short by --duration: the forks the capture saw, from the
            # shell's start until the capture stopped looking.
            span, done_forks = args.issue_duration - root["first_seen"], seen
        else:
            # Ended otherwise (a crash?): the forks it saw, over its whole run.
            span, done_forks = result.get("run_s") or cap["wall_s"], seen
        out.update(finished=finished, traced_s=span, traced_forks=done_forks,
                   traced_forks_per_s=done_forks / span if span else 0.0, processes_seen=seen,
                   **capture_figures(result, done_forks))
        out["rate_ratio"] = out["traced_forks_per_s"] / out["base_forks_per_s"]
    log("  " + (f"{out['traced_forks_per_s']:.0f} forks/s, ramwatchd {pct(out['own_cpu_pct'])} % of a core"
                if result is not None else "no capture JSON")
        + (f"; CRASHED: {out['crash']}" if out["crashed"] else ""))
    return out


# ---- report -----------------------------------------------------------------

def report(r):
    cfg, runs, s = r["config"], r["runs"], r["summary"]
    where = f"on CPU {cfg['workload_cpu']}" if cfg["workload_cpu"] is not None else "on any CPU"
    print(f"churn: fork+exec+exit of {TRUE}, paced to {cfg['rate']:g}/s for {cfg['seconds']:g} s, "
          f"workload {where}; {cfg['pairs']} pair{'s' if cfg['pairs'] != 1 else ''}: alone, then under "
          "ramwatchd run")
    for i, run in enumerate(runs):
        w, c = run["workload"], run.get("capture") or {}
        line = f"  {i + 1:2} {run['mode']:6}"
        line += (f" {w['forks_per_s']:8.1f} forks/s  lag max {w['lag_max_s'] * 1000:5.0f} ms  "
                 f"workload {w['cpu_per_fork_us']:5.0f} us CPU/fork" if w else "  (no workload figures)")
        if c:
            line += (f"  ramwatchd {pct(c['own_cpu_pct']):>5} % of a core ({c['own_cpu_s']:.2f} s in "
                     f"{c['run_s']:.1f} s; {pct(c['own_cpu_per_fork_us'])} us/fork)"
                     f"  short-lived {c['short_lived']} of {int(w['started']) if w else '?'}"
                     f"  dropped: {', '.join(f'{k} {v}' for k, v in c['dropped'].items()) or 'none'}")
        if run.get("crashed"):
            line += f"  CRASHED: {run['crash']}"
        print(line)
    print(f"forks/s: median base {s['median_base_forks_per_s']:.1f}, traced "
          + (f"{s['median_traced_forks_per_s']:.1f}: ratio traced/base {s['rate_ratio']:.4f} "
             f"({100 * (s['rate_ratio'] - 1):+.2f} %); pairs "
             + " ".join(f"{x:.4f}" for x in s["pair_rate_ratios"]) if "rate_ratio" in s else "none measured"))
    if not s["base_held_pace"]:
        print(f"  NOTE: a base run fell below {100 * (1 - PACE_SLACK):.0f} % of {cfg['rate']:g}/s: without "
              "ramwatchd the pace was not held, so the ratio is not the capture's alone (a busy machine? "
              "else lower --rate, or --cpu -1)")
    if "cpu_per_fork_ratio" in s:
        print(f"workload CPU per fork (parent + children): base {s['median_base_cpu_per_fork_us']:.0f} us, "
              f"traced {s['median_traced_cpu_per_fork_us']:.0f} us: ratio {s['cpu_per_fork_ratio']:.3f}")
    if "median_own_cpu_pct" in s:
        print(f"ramwatchd's own CPU (own_cpu_s / run_s): median {s['median_own_cpu_pct']:.1f} % of one core "
              f"(runs: {', '.join(f'{x:.1f}' for x in s['own_cpu_pct'])}), "
              f"{pct(s['median_own_cpu_per_fork_us'])} us per followed fork")
    print("short-lived processes counted by the capture / forks made: "
          + ", ".join(f"{a}/{b}" for a, b in zip(s["short_lived"], s["forks_traced"])))
    print("kernel side: " + ("nothing dropped in any traced run" if not s["dropped_runs"] else
                             f"dropped in {s['dropped_runs']} of {s['traced_runs']} runs: {s['dropped']}"))
    print(f"crashes: {s['crashes']} of {s['traced_runs']} traced runs"
          + (": " + " | ".join(s["crash_reasons"]) if s["crashes"] else ""))
    il = r.get("issue_loop")
    if il:
        print(f"the issue's loop (sh -c '{il['loop']}'), traced with --duration {il['duration_limit_s']:g}:")
        print(f"  alone: {il['base_forks_per_s']:.0f} forks/s ({il['forks']} in {il['base_s']:.1f} s)")
        if "traced_forks_per_s" in il:
            how = (f"{il['traced_forks']} in {il['traced_s']:.1f} s" if il["finished"] else
                   f"cut short: {il['traced_forks']} seen in {il['traced_s']:.1f} s ({il['ended_because']})")
            print(f"  traced: {il['traced_forks_per_s']:.0f} forks/s ({how}); ratio traced/alone "
                  f"{il['rate_ratio']:.3f}; ramwatchd {pct(il['own_cpu_pct'])} % of one core; "
                  f"processes seen {il['processes_seen']} (short-lived {il['short_lived']}); kernel side: "
                  + (", ".join(f"{k} {v}" for k, v in il["dropped"].items()) or "nothing dropped"))
        print(f"  crashed: {'YES: ' + il['crash'] if il['crashed'] else 'no'}")


# ---- main -------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=1000, help="forks a second (default 1000)")
    p.add_argument("--seconds", type=float, default=20, help="seconds each run forks (default 20)")
    p.add_argument("--pairs", type=int, default=3, help="base/traced pairs (default 3)")
    add_cpu_option(p)
    p.add_argument("--spawner", metavar="EXE", help="the churn workload already built from "
                   "bench/churn.py's CHURN_C, for a machine without gcc")
    p.add_argument("--issue-duration", type=float, default=ISSUE_DURATION_S, metavar="S",
                   help=f"--duration of the capture of the issue's loop (default {ISSUE_DURATION_S})")
    p.add_argument("--issue-passes", type=int, default=ISSUE_PASSES, metavar="N",
                   help=f"passes of the issue's loop, two forks each (default {ISSUE_PASSES}, as in the issue)")
    p.add_argument("--no-issue-loop", action="store_true", help="skip the issue's shell loop")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = p.parse_args()
    if args.pairs < 1 or args.issue_passes < 1 or args.rate <= 0 or args.seconds <= 0 or args.issue_duration <= 0:
        p.error("--pairs and --issue-passes must be at least 1; --rate, --seconds and --issue-duration above 0")
    check_cpu(p, args)
    return args


def bench(args):
    if os.geteuid() != 0:
        raise BenchError("must run as root (ramwatchd loads BPF programs)")
    ramwatchd = find_ramwatchd()
    if not os.access(TRUE, os.X_OK):
        raise BenchError(f"{TRUE} not found")
    cpus = os.sched_getaffinity(0)
    workdir = Path(tempfile.mkdtemp(prefix="ramwatchd-churn-bench-", dir="/tmp"))
    try:
        spawner = build_spawner(workdir, args.spawner)
        leave_cpu(args.cpu)   # ramwatchd inherits it; the workload pins itself
        runs = measure_pairs(spawner, ramwatchd, args, workdir)
        results = {"config": {"rate": args.rate, "seconds": args.seconds, "pairs": args.pairs,
                              "workload_cpu": args.cpu, "program": TRUE},
                   "runs": runs, "summary": summarise_pairs(runs, args)}
        if not args.no_issue_loop:
            results["issue_loop"] = issue_loop(ramwatchd, workdir, args, cpus)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main():
    args = parse_args()
    try:
        results = bench(args)
    except (BenchError, OSError) as err:
        print(f"churn: {err}", file=sys.stderr)
        return 1
    report(results)
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        except OSError as err:
            print(f"churn: cannot write {args.json}: {err.strerror}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
