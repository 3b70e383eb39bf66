"""Process churn, traced on the real kernel: thousands of helpers forked a
second, launchers that start hundreds of programs, a shim that execs the
interpreter, pids reused within a capture and under the daemon, and processes
that rename themselves. Every test asserts what was captured, not only that
ramwatchd survived it."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import RAMWATCHD, MiB, assert_near, process
from test_daemon import daemon, fetch, wait_until, workloads   # noqa: F401 (fixtures)

PROGRAMS = Path(__file__).resolve().parent / "programs"
NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def churn(iterations):
    """test 1's shell loop: two /bin/true a turn, one of them in the background."""
    return (f"i=0; while [ $i -lt {iterations} ]; do /bin/true & /bin/true; i=$((i+1)); done; wait")


# ---- processes this module starts, and their clean-up --------------------------

def tagged_pids(tag):
    """Live (not zombie) processes whose command line holds tag."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if tag.encode() in cmdline:
            pids.append(int(entry))
    return pids


def start_time(pid):
    """The start time of the process now on pid (clock ticks since boot), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(raw[raw.rindex(b")") + 2:].split()[19])


def describe(pid):
    """What the process on pid is now, and a second later."""
    def now():
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:60]
        except OSError:
            return "gone"
        fields = stat[stat.rindex(b")") + 2:].split()
        return f"state {fields[0].decode()} ppid {int(fields[1])} {stat[:stat.index(b')') + 1].decode()} {cmdline!r}"
    first = now()
    time.sleep(1)
    return f"{first}; a second later: {now()}"


def same_process(pid, start):
    """Is the process that started at start (a capture's tick count) still on pid?"""
    now = start_time(pid)
    return now is not None and abs(now - start) <= 1


@pytest.fixture
def tag():
    """A word unique to this test, to put in command lines; every process that
    still carries it at the end is killed, by its pid."""
    word = f"rwdchurn{uuid.uuid4().hex[:10]}"
    yield word
    deadline = time.monotonic() + 10
    while (pids := tagged_pids(word)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


@pytest.fixture
def spawned():
    """Popen(argv, **kw), killed and reaped at the end of the test."""
    procs = []

    def go(argv, **kw):
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, **kw)
        procs.append(proc)
        return proc
    yield go
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def wait_for_file(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"pid {proc.pid} exited ({proc.returncode}) before {path.name}"
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.02)


# ---- what every capture must satisfy ---------------------------------------------

def run_ramwatchd(args, timeout=180):
    """Run ramwatchd to its end, its output in files: a process it left behind
    that holds a pipe of ours cannot make this wait (that is asserted apart)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(RAMWATCHD + args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


def finished_capture(done, out):
    """The capture exited 0 without a traceback, printed its summary and saved
    a loadable JSON: returns that."""
    both = done.stdout + done.stderr
    assert done.returncode == 0, f"ramwatchd exited {done.returncode}:\n{both[-4000:]}"
    assert "Traceback" not in both, both[-6000:]
    assert "== ramwatchd summary" in done.stdout, done.stdout[-3000:]
    assert f"capture saved to {out}" in done.stdout
    result = json.loads(Path(out).read_text())
    for key in ("processes", "short_lived", "timeline", "ended_because", "own_cpu_s", "run_s", "kernel_stats"):
        assert key in result, key
    return result


def assert_looked_reconciled(result):
    """Every process looked at has classes that add up to its VmRSS at every look."""
    for p in result["processes"]:
        check = p["reconciliation"]
        if check["samples"] > 0:
            assert check["failed"] == 0, f"pid {p['pid']} ({p['comm']}): {check}"


def folded_on_timeline(result):
    """The helpers the timeline's "short-lived" lines counted."""
    return sum(int(e["text"].split()[0]) for e in result["timeline"] if e["kind"] == "short-lived")


def assert_nothing_left(result, tag, grace=5.0):
    """The program of `run` and everything it started is gone once ramwatchd has
    returned: no process of the capture lives on, nor any with its tag. A
    process signalled at the end may take a moment to die: grace seconds."""
    def captured_alive():
        return [p for p in result["processes"] if same_process(p["pid"], p["start"])]
    deadline = time.monotonic() + grace
    while (captured_alive() or tagged_pids(tag)) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = captured_alive()
    assert not alive, "captured processes still running after the capture: " + "; ".join(
        f"pid {p['pid']} ({p['comm']}, seen {p['first_seen']:.2f}s, ended {p['ended']!r}): {describe(p['pid'])}"
        for p in alive)
    left = tagged_pids(tag)
    assert not left, (f"{len(left)} processes of the program still running {grace:g} s after the capture, "
                      f"none of them in the capture: pids {left[:10]}...: {describe(left[0])}")


# ---- 1, 2, 4: fork churn -------------------------------------------------------------

def test_fork_churn_under_run(tmp_path, tag):
    out = tmp_path / "churn.json"
    done = run_ramwatchd(["run", "--duration", "8", "--json", str(out), "--", "sh", "-c", churn(20000), tag],
                         timeout=240)
    result = finished_capture(done, out)
    assert "--duration" in result["ended_because"], result["ended_because"]
    assert result["exit_code"] is None           # the program was still running: ramwatchd ended it
    assert_nothing_left(result, tag)

    short = result["short_lived"]
    assert short["count"] >= 1000, short["count"]
    assert len(short["processes"]) == min(short["count"], 1000)
    for p in short["processes"]:
        assert p["execs"] == ["/bin/true"] and p["exited_at"] - p["first_seen"] < 1.0, p
    assert folded_on_timeline(result) == short["count"]
    assert "short-lived processes came and went: true x" in done.stdout

    root = process(result)
    assert tag in root["cmdline"] and root["reconciliation"]["samples"] > 0
    assert_looked_reconciled(result)
    assert result["kernel_stats"]["events_lost"] == 0, result["kernel_stats"]

    # The saved capture renders the summary printed live.
    report = run_ramwatchd(["report", str(out)], timeout=60)
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr
    live = done.stdout[done.stdout.index("\n== ramwatchd summary"):done.stdout.index("capture saved to")]
    assert report.stdout == live


def test_fork_churn_under_attach(tmp_path, tag, spawned):
    out = tmp_path / "attach.json"
    shell = spawned(["sh", "-c", churn(10 ** 7), tag])
    wait_until("the shell's first children", lambda: Path(f"/proc/{shell.pid}/task/{shell.pid}/children")
               .read_text().strip(), timeout=30)
    done = run_ramwatchd(["--pid", str(shell.pid), "--children", "--duration", "6", "--json", str(out)],
                         timeout=240)
    result = finished_capture(done, out)
    assert "--duration" in result["ended_because"], result["ended_because"]
    assert shell.poll() is None, "a --pid capture must leave its target running"

    root = process(result)
    assert root["pid"] == shell.pid and root["origin"] == "attached"
    assert root["baseline"] is not None and root["reconciliation"]["samples"] > 0
    short = result["short_lived"]
    assert short["count"] >= 1000, short["count"]
    assert folded_on_timeline(result) == short["count"]
    assert {p["ppid"] for p in short["processes"]} == {shell.pid}
    assert_looked_reconciled(result)


def test_children_started_until_the_end_do_not_outlive_run(tmp_path, tag):
    # A program that keeps forking children that live on (a growing worker
    # pool): every one of them, however late it came, ends with the capture.
    out = tmp_path / "forker.json"
    done = run_ramwatchd(["run", "--quiet", "--duration", "3", "--json", str(out), "--",
                          sys.executable, str(PROGRAMS / "forker.py"), "0.02", tag], timeout=180)
    result = finished_capture(done, out)
    assert "--duration" in result["ended_because"], result["ended_because"]
    assert len(result["processes"]) > 20, len(result["processes"])
    assert_nothing_left(result, tag)


def test_ten_consecutive_churn_runs(tmp_path, tag):
    failures = []
    for i in range(10):
        out = tmp_path / f"churn{i}.json"
        done = run_ramwatchd(["run", "--quiet", "--duration", "1", "--json", str(out), "--",
                              "sh", "-c", churn(20000), tag], timeout=120)
        try:
            result = finished_capture(done, out)
            assert "--duration" in result["ended_because"], result["ended_because"]
            assert result["short_lived"]["count"] > 0
            assert_looked_reconciled(result)
            assert_nothing_left(result, tag)
        except AssertionError as err:
            failures.append(f"run {i + 1}: {err}")
    assert not failures, f"{len(failures)} of 10 runs failed:\n" + "\n".join(failures)


# ---- 3: a launcher of 500 short-lived programs -----------------------------------------

def test_python_spawning_500_short_lived_processes(tmp_path):
    out = tmp_path / "spawner.json"
    done = run_ramwatchd(["run", "--quiet", "--json", str(out), "--",
                          sys.executable, str(PROGRAMS / "spawner.py"), "500"], timeout=300)
    result = finished_capture(done, out)
    assert result["exit_code"] == 0
    assert result["ended_because"] == "every traced process exited"

    root = process(result)
    assert root["cmdline"].endswith("spawner.py 500"), root["cmdline"]
    assert root["exited_at"] is not None
    assert root["reconciliation"]["samples"] > 0 and root["latest"] is not None
    assert root["history"] and root["peak"] is not None and root["peak"]["bytes"] > 0
    assert root["latest"]["vm_rss"] > 0 and root["latest"]["classes"]["file_code"] > 0
    # Every child is accounted for: folded as a helper, or listed.
    children = result["short_lived"]["count"] + len(result["processes"]) - 1
    assert children == 500, (result["short_lived"]["count"], [p["comm"] for p in result["processes"]])
    assert result["kernel_stats"]["events_lost"] == 0, result["kernel_stats"]
    assert ("output", "spawner done") in [(p["source"], p["name"]) for p in result["phases"]]
    assert_looked_reconciled(result)


# ---- 5: a pyenv-style shim -------------------------------------------------------------

def test_shim_that_execs_the_interpreter(tmp_path):
    out = tmp_path / "shim.json"
    done = run_ramwatchd(["run", "--json", str(out), "--", "bash", str(PROGRAMS / "shim.sh"),
                          sys.executable, str(PROGRAMS / "hold_anon.py"), "128", "1.5"], timeout=180)
    result = finished_capture(done, out)
    assert result["exit_code"] == 0

    python = os.path.basename(sys.executable)
    pythons = [p for p in result["processes"]
               if p["execs"] and os.path.basename(p["execs"][-1]["filename"]) == python]
    assert len(pythons) == 1, [(p["pid"], p["execs"]) for p in result["processes"]]
    p = pythons[0]
    assert p["pid"] == process(result)["pid"]     # the shim's own process became python
    assert [os.path.basename(e["filename"]) for e in p["execs"]] == ["bash", python], p["execs"]
    assert "hold_anon.py 128" in p["cmdline"], p["cmdline"]

    # Held, then released: the rise of anon over the python program's looks.
    since = p["execs"][-1]["t"]
    anon = [h["classes"]["anon"] for h in p["history"] if h["t"] >= since]
    assert len(anon) >= 2, p["history"]
    assert_near(max(anon) - anon[-1], 128 * MiB, rel=0.1, what="anon held by python")
    grew = [e for e in result["timeline"] if e["pid"] == p["pid"] and e["kind"] == "grow" and e["cls"] == "anon"]
    assert any("mmap 128.0 MiB" in e["cause"] for e in grew), grew

    # The shim's helpers (uname, the substitution, the subshell): folded or shown.
    helpers = result["short_lived"]["processes"] + [q for q in result["processes"] if q is not p]
    assert len(helpers) >= 3, helpers
    assert result["short_lived"]["count"] + len(result["processes"]) - 1 == len(helpers)
    execs = [e if isinstance(e, str) else e["filename"] for q in helpers for e in q["execs"]]
    assert any(os.path.basename(e) == "uname" for e in execs), execs
    assert all(q["ppid"] == p["pid"] for q in helpers), helpers
    assert_looked_reconciled(result)


# ---- 6: a pid reused within one capture -------------------------------------------------

def test_pid_reused_within_a_capture(tmp_path):
    out, told = tmp_path / "reuse.json", tmp_path / "reuse-result.json"
    done = run_ramwatchd(["run", "--quiet", "--json", str(out), "--", sys.executable,
                          str(PROGRAMS / "reuse_pid.py"), "200", "16", "1.5", str(told)], timeout=180)
    result = finished_capture(done, out)
    assert result["exit_code"] == 0
    info = json.loads(told.read_text())
    assert info["reused"], f"the second child never got pid {info['pid']}: {info['attempts']}"

    lives = sorted((p for p in result["processes"] if p["pid"] == info["pid"]), key=lambda p: p["first_seen"])
    assert len(lives) == 2, [(p["pid"], p["start"], p["first_seen"]) for p in lives]
    first, second = lives
    assert first["start"] != second["start"]
    assert first["ppid"] == second["ppid"] == info["parent"]
    assert first["exited_at"] is not None and first["exited_at"] <= second["first_seen"]
    assert second["exited_at"] is not None
    forks = [e for e in result["timeline"] if e["kind"] == "fork" and e["pid"] == info["pid"]]
    assert len(forks) == 2, forks

    def highest(p, key):
        return max(h["classes"][key] if key in h["classes"] else h[key] for h in p["history"])

    assert highest(first, "anon") >= 0.95 * 200 * MiB, first["history"]
    # The second life holds its own 16 MiB, and nothing of the first's 200 MiB.
    assert 0.95 * 16 * MiB <= highest(second, "anon") < 100 * MiB, second["history"]
    assert highest(second, "vm_rss") < 100 * MiB
    assert second["largest"]["vm_rss"] < 100 * MiB
    assert all(total < 100 * MiB for _, total in second["rss_steps"]), second["rss_steps"]
    if second["peak"] is not None:
        assert second["peak"]["bytes"] < 100 * MiB, second["peak"]
    for p in (first, second):
        assert p["reconciliation"]["samples"] > 0 and p["reconciliation"]["failed"] == 0, p["reconciliation"]
    assert_looked_reconciled(result)


# ---- the daemon's metrics ---------------------------------------------------------------

SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def samples(text, name):
    """[(labels, value)] of the series name in a /metrics text."""
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))), float(m.group(3))))
    return out


def value(text, name, **labels):
    found = [v for l, v in samples(text, name) if all(l.get(k) == w for k, w in labels.items())]
    return sum(found) if found else None


def groups_in(text):
    return {l["group"] for l, _ in samples(text, "ramwatchd_processes")}


def metrics(d):
    assert d.proc.poll() is None, d.output()[-4000:]
    return fetch(d.url)[1]


def stopped_cleanly(d):
    """SIGTERM ends the daemon with status 0, and it never logged a traceback."""
    assert d.proc.poll() is None, d.output()[-4000:]
    d.stop()
    assert d.proc.returncode == 0 and "Traceback" not in d.output(), d.output()[-4000:]


def wait_metrics(d, what, check, uid, timeout=60, poll=0.2):
    """The first /metrics text for which check(text) holds; on timeout, the
    series of this test's groups (their names hold uid) say what was there."""
    deadline = time.monotonic() + timeout
    while True:
        text = metrics(d)
        if check(text):
            return text
        if time.monotonic() >= deadline:
            ours = [l for l in text.splitlines()
                    if uid in l and not l.startswith(("ramwatchd_mapping", "ramwatchd_proportional"))]
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; series now:\n"
                                 + "\n".join(ours) + "\ndaemon log:\n" + d.output()[-3000:])
        time.sleep(poll)


# ---- 7: a pid reused under the daemon ---------------------------------------------------

def start_on_pid(workloads, steps, pid):   # noqa: F811 (the fixture's function)
    """Start a workload on pid: the kernel gives the next process
    ns_last_pid + 1, unless another fork comes in between (then try again)."""
    deadline = time.monotonic() + 30
    while True:
        NS_LAST_PID.write_text(str(pid - 1))
        proc = workloads(*steps)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
        assert time.monotonic() < deadline, f"could not start a process on pid {pid}"
        time.sleep(0.05)


@pytest.mark.parametrize("new", ["retagged", "untagged"])
def test_daemon_pid_reused_by_another_process(daemon, workloads, new):   # noqa: F811
    uid = uuid.uuid4().hex[:8]
    old_group, new_group = f"test-old{uid}", f"test-new{uid}"
    d = daemon("groups:\n  - name: \"test-{1}\"\n    match: {cmdline: 'ramwatchd\\.workloads tag:(\\w+)'}\n"
               "collection: {smaps_min_interval: 500ms, discovery_interval: 1s, node_interval: 1s}\n")
    d.wait_ready()
    old = workloads(f"tag:old{uid}", "anon:64M")
    anon = {"class": "anon"}
    wait_metrics(d, "the old process in its group", lambda t: (
        value(t, "ramwatchd_processes", group=old_group) == 1
        and (value(t, "ramwatchd_resident_bytes", group=old_group, **anon) or 0) >= 60 * MiB), uid)

    # The old process ends, and at once a new one takes its pid.
    pid = old.pid
    old.kill()
    old.wait()
    steps = ([f"tag:new{uid}"] if new == "retagged" else []) + ["anon:16M"]
    start_on_pid(workloads, steps, pid)

    # Once a process started after it is in its group, the daemon has seen the new one.
    workloads(f"tag:later{uid}")
    wait_metrics(d, "the later process", lambda t: value(t, "ramwatchd_processes", group=f"test-later{uid}") == 1,
                 uid)
    text = wait_metrics(d, "the old group to go", lambda t: old_group not in groups_in(t), uid, timeout=30)
    assert not [l for l, _ in samples(text, "ramwatchd_resident_bytes") if l["group"] == old_group]
    if new == "retagged":
        # In its own group, with its own 16 MiB: nothing of the old process's 64 MiB.
        text = wait_metrics(d, "the new process's anon", lambda t: (
            value(t, "ramwatchd_processes", group=new_group) == 1
            and (value(t, "ramwatchd_resident_bytes", group=new_group, **anon) or 0) >= 15 * MiB), uid)
        got = value(text, "ramwatchd_resident_bytes", group=new_group, **anon)
        assert 15 * MiB <= got < 48 * MiB, got / MiB
    else:
        assert new_group not in groups_in(text)
    assert old_group not in groups_in(metrics(d))
    stopped_cleanly(d)


# ---- 8: renamed processes join their new group ------------------------------------------

RENAME = r"""
import ctypes, os, time
from pathlib import Path

def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.01)

Path(os.environ["RWD_READY"]).touch()
wait_for(os.environ["RWD_GO"])
name = os.environ["RWD_NAME"].encode()
if os.environ["RWD_HOW"] == "prctl":
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0) == 0, ctypes.get_errno()   # PR_SET_NAME
else:
    # setproctitle's way: overwrite the argv area in place (arg_start, arg_end:
    # fields 48 and 49 of /proc/self/stat), keeping its last byte a NUL.
    raw = Path("/proc/self/stat").read_bytes()
    fields = raw[raw.rindex(b")") + 2:].split()
    start, end = int(fields[45]), int(fields[46])
    assert len(name) < end - start
    ctypes.memmove(start, name + b"\0" * (end - start - len(name)), end - start)
Path(os.environ["RWD_DONE"]).touch()
time.sleep(300)
"""

DISCOVERY_S = 1.0
MARGIN_S = 2.0


@pytest.mark.parametrize("how", ["prctl", "argv"])
def test_renamed_process_joins_its_new_group(daemon, workloads, spawned, tmp_path, how):   # noqa: F811
    uid = uuid.uuid4().hex[:8]
    name = f"rwdc-{uid}" if how == "prctl" else f"rwdt-{uid} --serving"
    group = f"comm-{uid}" if how == "prctl" else f"title-{uid}"
    d = daemon("groups:\n"
               "  - name: \"title-{1}\"\n    match: {cmdline: '^rwdt-(\\w+)'}\n"
               "  - name: \"comm-{1}\"\n    match: {comm: '^rwdc-(\\w+)$'}\n"
               "  - name: \"test-{1}\"\n    match: {cmdline: 'ramwatchd\\.workloads tag:(\\w+)'}\n"
               f"collection: {{smaps_min_interval: 500ms, discovery_interval: {DISCOVERY_S:g}s, "
               "node_interval: 1s}\n")
    d.wait_ready()
    ready, go, renamed = tmp_path / "ready", tmp_path / "go", tmp_path / "renamed"
    env = dict(os.environ, RWD_READY=str(ready), RWD_GO=str(go), RWD_DONE=str(renamed),
               RWD_NAME=name, RWD_HOW=how)
    proc = spawned([sys.executable, "-c", RENAME], env=env)
    wait_for_file(ready, proc)
    # A process started after it in its group: the daemon has seen the python one.
    workloads(f"tag:seen{uid}")
    text = wait_metrics(d, "the later process",
                        lambda t: value(t, "ramwatchd_processes", group=f"test-seen{uid}") == 1, uid)
    assert {g for g in groups_in(text) if uid in g} == {f"test-seen{uid}"}, groups_in(text)

    go.touch()
    wait_for_file(renamed, proc)
    renamed_at = time.monotonic()
    if how == "prctl":
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == name
    else:
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0] == name.encode()
    text = wait_metrics(d, f"pid {proc.pid} in group {group} at most {DISCOVERY_S + MARGIN_S:g} s after its rename",
                        lambda t: value(t, "ramwatchd_processes", group=group) == 1, uid,
                        timeout=renamed_at + DISCOVERY_S + MARGIN_S - time.monotonic(), poll=0.1)
    # In the group, and in no other group; its memory is looked at there.
    assert {g for g in groups_in(text) if uid in g} == {group, f"test-seen{uid}"}, groups_in(text)
    wait_metrics(d, "the renamed process's figures",
                 lambda t: (value(t, "ramwatchd_resident_bytes", group=group) or 0) > 1 * MiB, uid)
    stopped_cleanly(d)


# ---- a large program's exit ------------------------------------------------------------

def test_a_large_program_s_own_exit_code_is_kept(tmp_path):
    """The kernel's exit event comes before the program has given back 1 GiB
    and can be reaped: the capture waits for it rather than ending it."""
    program = "import mmap, sys; m = mmap.mmap(-1, 1 << 30); m.write(b'\\1' * (1 << 30)); sys.exit(3)"
    for i in range(2):
        out = tmp_path / f"large{i}.json"
        done = run_ramwatchd(["run", "--quiet", "--json", str(out), "--", sys.executable, "-c", program],
                             timeout=120)
        assert done.returncode == 3 and "Traceback" not in done.stderr, (done.returncode, done.stderr[-2000:])
        result = json.loads(out.read_text())
        assert result["exit_code"] == 3
        assert result["ended_because"] == "every traced process exited"
