"""The command line as operators expect it of bcc tools and py-spy: options
before or after the subcommand, signals that end a capture as Ctrl-C does, a
saved capture that is whole, private and in a documented format, budgets that
fail a CI job, and advice instead of tracebacks."""
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MiB, RAMWATCHD, WORKLOAD, assert_near, growth, process, run_ramwatchd
from test_bad_input import one_line_error

from ramwatchd.views import capture_format

REPO = Path(__file__).resolve().parent.parent
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def wait_for_file(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"ramwatchd exited ({proc.returncode}) before {path.name}:\n" \
                                    + proc.stderr.read()
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.02)


def start(args):
    return subprocess.Popen(RAMWATCHD + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_private_and_whole(path):
    """Saved by its owner for its owner, renamed into place: no temporary file left beside it."""
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")] == []
    return json.loads(path.read_text())


# ---- a capture with options given before `run` -----------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A capture made with its options before the subcommand, as people type them."""
    out = tmp_path_factory.mktemp("saved") / "capture.json"
    started = time.monotonic()
    done = run_ramwatchd(["--json", str(out), "-d", "3", "-q", "run", "--", *WORKLOAD, "anon:64M", "sleep:600"],
                         timeout=300)
    assert done.returncode == 0, done.stderr
    return out, done, time.monotonic() - started


def test_options_before_the_subcommand_are_honoured(saved):
    out, done, _ = saved
    result = assert_private_and_whole(out)
    assert result["ended_because"] == "--duration 3 s reached"
    assert 3 <= result["duration_s"] < 10
    assert_near(growth(process(result), "anon"), 64 * MiB, rel=0.1, what="anon")
    assert f"capture saved to {out}" in done.stdout


def test_a_saved_capture_follows_its_documented_format(saved):
    result = json.loads(saved[0].read_text())
    assert result["format"] == capture_format.VERSION
    assert capture_format.problem(result) is None
    assert undocumented(result, capture_format.CAPTURE) == []


def undocumented(data, spec, where=""):
    """Keys of data that spec does not list: a field written but not described."""
    if isinstance(spec, capture_format.Maybe):
        return [] if data is None else undocumented(data, spec.spec, where)
    if isinstance(spec, capture_format.Table):
        return [k for key, value in data.items() for k in undocumented(value, spec.spec, f"{where}.{key}")]
    if isinstance(spec, dict):
        listed = {key.rstrip("?"): value for key, value in spec.items()}
        found = [f"{where}.{key}" for key in data if key not in listed]
        return found + [k for key, value in data.items() if key in listed
                        for k in undocumented(value, listed[key], f"{where}.{key}")]
    if isinstance(spec, (list, tuple)):
        specs = spec if isinstance(spec, tuple) else spec * len(data)
        return [k for i, (item, s) in enumerate(zip(data, specs)) for k in undocumented(item, s, f"{where}[{i}]")]
    return []


def refused_report(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return one_line_error(run_ramwatchd(["report", str(path)]), 2, str(path))


def test_report_refuses_what_it_cannot_read_with_one_line(saved, tmp_path):
    result = json.loads(saved[0].read_text())
    assert run_ramwatchd(["report", str(saved[0])]).returncode == 0
    assert "is a directory" in one_line_error(run_ramwatchd(["report", str(tmp_path)]), 2)
    assert "not JSON" in refused_report(tmp_path, "text.json", "engine used 4 GiB\n")
    assert "not JSON" in refused_report(tmp_path, "binary.json", bytes(range(256)))
    dashboard = (REPO / "deploy" / "grafana" / "node.json").read_text()
    assert "not a ramwatchd capture" in refused_report(tmp_path, "dashboard.json", dashboard)
    for version, age in ((capture_format.VERSION + 1, "a later"), (capture_format.VERSION - 1, "an earlier")):
        line = refused_report(tmp_path, f"v{version}.json", dict(result, format=version))
        assert f"capture format {version}, written by {age} ramwatchd" in line
    missing = copy.deepcopy(result)
    del missing["processes"][0]["peak"]
    assert "processes[0].peak: missing" in refused_report(tmp_path, "missing.json", missing)
    wrong = copy.deepcopy(result)
    wrong["timeline"][0]["t"] = "soon"
    assert "timeline[0].t: a string, not a number" in refused_report(tmp_path, "wrong.json", wrong)


# ---- signals -------------------------------------------------------------------

@pytest.mark.parametrize("sig, output", [(signal.SIGTERM, "file"), (signal.SIGHUP, "-")],
                         ids=["SIGTERM-to-a-file", "SIGHUP-to-stdout"])
def test_a_signal_ends_a_capture_as_ctrl_c_does(tmp_path, sig, output):
    ready, out = tmp_path / "ready", tmp_path / "capture.json"
    proc = start(["run", "-q", "-o", str(out) if output == "file" else "-", "--",
                  *WORKLOAD, "anon:64M", f"ready:{ready}", "sleep:600"])
    wait_for_file(ready, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    if output == "file":
        result, human = assert_private_and_whole(out), stdout
    else:       # stdout is the capture alone; the summary and the program's own lines go to stderr
        result, human = json.loads(stdout), stderr
        assert "step anon:64M" in stderr
    assert result["ended_because"] == {signal.SIGTERM: "terminated (SIGTERM)",
                                       signal.SIGHUP: "hung up (SIGHUP)"}[sig]
    assert "== ramwatchd summary" in human and "Traceback" not in stderr
    assert_near(growth(process(result), "anon"), 64 * MiB, rel=0.1, what="anon")


def test_a_second_ctrl_c_while_finishing_leaves_a_whole_capture(tmp_path):
    # The program shrugs off the SIGTERM the capture's end sends it, so ending
    # takes seconds: the second Ctrl-C lands while it does.
    ready, ending, out = tmp_path / "ready", tmp_path / "ending", tmp_path / "capture.json"
    script = f'trap "touch {ending}" TERM; touch {ready}; while :; do sleep 0.05; done'
    proc = start(["run", "-q", "-o", str(out), "--", "sh", "-c", script])
    wait_for_file(ready, proc)
    proc.send_signal(signal.SIGINT)
    wait_for_file(ending, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    result = assert_private_and_whole(out)
    assert result["ended_because"] == "interrupted"
    assert run_ramwatchd(["report", str(out)]).returncode == 0


# ---- outputs -----------------------------------------------------------------------

@pytest.mark.parametrize("options", [["-o", "{tmp}/no/such/folder/c.json"], ["--json", "{tmp}"],
                                     ["-o", "{tmp}/c.json", "--png", "/proc/c.png"]],
                         ids=["missing-folder", "a-directory", "a-picture-nowhere"])
def test_an_output_that_cannot_be_written_is_refused_before_the_capture(tmp_path, options):
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    line = one_line_error(run_ramwatchd(["run", *options, "--", "true"]), 1, "cannot write", options[-1])
    assert "compiling" not in line
    assert [p.name for p in tmp_path.iterdir()] == []     # nothing half-made left behind


# ---- budgets -----------------------------------------------------------------------

def test_a_process_over_budget_fails_with_its_breakdown(tmp_path):
    out = tmp_path / "capture.json"
    done = run_ramwatchd(["run", "-q", "--max-rss", "100MiB", "--max-class", "anon=48MiB", "-o", str(out),
                          "--", *WORKLOAD, "anon:128M", "sleep:1"], timeout=300)
    assert done.returncode == 3, done.stderr
    result = assert_private_and_whole(out)
    root = process(result)
    who = f"pid {root['pid']} (python)"
    assert f"OVER: {who} peaked at" in done.stdout and "above --max-rss 100.0 MiB" in done.stdout
    assert f"OVER: {who} held" in done.stdout and "of anon" in done.stdout
    assert "above --max-class anon=48.0 MiB" in done.stdout
    assert "Workload.do_anon" in done.stdout.split("== budget")[1]    # the code that holds it
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ramwatchd: over budget: {who} peaked at")


def test_a_process_within_budget_passes(tmp_path):
    out = tmp_path / "growth.folded"
    done = run_ramwatchd(["run", "-q", "--max-rss", "1GiB", "--max-class", "anon=256MiB", "-o", str(out),
                          "--format", "folded", "--", *WORKLOAD, "anon:64M", "sleep:1"], timeout=300)
    assert done.returncode == 0, done.stderr
    assert "within budget: the highest peak was" in done.stdout
    stacks = [line.rsplit(" ", 1) for line in out.read_text().splitlines()]
    held = sum(int(weight) for stack, weight in stacks if "Workload.do_anon" in stack)
    assert_near(held, 64 * MiB, rel=0.1, what="folded do_anon")


def test_the_programs_own_failure_comes_before_the_budget():
    program = "import mmap, sys; m = mmap.mmap(-1, 64 << 20); m.write(bytes(64 << 20)); sys.exit(7)"
    done = run_ramwatchd(["run", "-q", "--max-rss", "16MiB", "--", sys.executable, "-c", program], timeout=300)
    assert done.returncode == 7, done.stderr
    assert "OVER:" in done.stdout and "above --max-rss 16.0 MiB" in done.stdout


# ---- advice, not tracebacks ----------------------------------------------------------

def test_doctor_as_an_unprivileged_user_gives_advice():
    done = subprocess.run(NOBODY + RAMWATCHD + ["doctor"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, done.stderr
    assert "FAIL  tracefs at /sys/kernel/tracing is not readable by this user" in done.stdout
    assert "fix: run as root (sudo)" in done.stdout
    assert "not tried: loading a probe needs root" in done.stdout    # headers are not blamed


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("target", [["--pid", "1"], ["run", "--", "true"], ["daemon", "--listen"]],
                         ids=["attach", "run", "daemon"])
def test_a_capture_as_an_unprivileged_user_gives_advice(target):
    target = target + [f"127.0.0.1:{free_port()}"] if target[0] == "daemon" else target
    done = subprocess.run(NOBODY + RAMWATCHD + target, capture_output=True, text=True, timeout=120)
    one_line_error(done, 1, "not enough privilege", "run as root")


def test_a_virtualenv_that_cannot_see_python3_bpfcc_is_told_so(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "ramwatchd-checkout.pth").write_text(f"{REPO}\n")     # ramwatchd, and nothing else
    doctor = subprocess.run([python, "-m", "ramwatchd", "doctor"], capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor.stderr
    assert (f"FAIL  bcc is not importable by {python}: python3-bpfcc is installed "
            f"(/usr/lib/python3/dist-packages/bcc) but this Python does not see it") in doctor.stdout
    assert f"fix: ln -s /usr/lib/python3/dist-packages/bcc {site}/bcc" in doctor.stdout
    capture = subprocess.run([python, "-m", "ramwatchd", "--pid", "1"], capture_output=True, text=True, timeout=120)
    one_line_error(capture, 1, "python3-bpfcc is installed", "does not see it")


def test_help_documents_the_exit_codes():
    text = run_ramwatchd(["--help"]).stdout
    for line in ("0   done", "1   nothing was captured", "2   bad input", "3   a process passed --max-rss",
                 "70  a defect of ramwatchd"):
        assert line in text, line
