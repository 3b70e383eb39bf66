"""Bad input: one clear line naming what is wrong, a non-zero exit, no traceback."""
import os
import subprocess
import sys

import pytest

from conftest import RAMWATCHD, run_ramwatchd


def one_line_error(proc, code, *words):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def free_pid():
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_a_pid_that_does_not_exist():
    one_line_error(run_ramwatchd(["--pid", str(free_pid())]), 1, "no process with pid")


def test_a_kernel_thread():
    one_line_error(run_ramwatchd(["--pid", "2"]), 1, "kernel thread")


def test_a_thread_id_names_its_process():
    import threading
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        line = one_line_error(run_ramwatchd(["--pid", str(t.native_id)]), 1, "is a thread of process")
        assert str(os.getpid()) in line
    finally:
        stop.set()
        t.join()


def test_a_caller_without_privileges():
    # Root with every capability dropped: the same as an unprivileged user.
    proc = subprocess.run(["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"]
                          + RAMWATCHD + ["--pid", "1"], capture_output=True, text=True)
    one_line_error(proc, 1, "privilege", "root")


def test_bcc_missing():
    code = "import sys; sys.modules['bcc'] = None; from ramwatchd.cli import main; sys.exit(main(['--pid', '1']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    one_line_error(proc, 1, "bcc is not importable", "python3-bpfcc")


def test_no_target_and_bad_values():
    one_line_error(run_ramwatchd([]), 2, "--pid PID")
    one_line_error(run_ramwatchd(["--pid", "1", "--min-change", "lots"]), 2, "not a size: 'lots'")
    one_line_error(run_ramwatchd(["--pid", "1", "--duration", "-3"]), 2, "--duration")
    one_line_error(run_ramwatchd(["run"]), 2, "run needs a command")


@pytest.mark.parametrize("option, value, words", [
    ("--duration", "nan", ["must be above 0 and at most 604800 seconds"]),
    ("-d", "inf", ["must be above 0 and at most"]),
    ("--duration", "1e400", ["must be above 0 and at most"]),
    ("--duration", "0", ["must be above 0"]),
    ("--rss-step", "0", ["must be at least 1.0 MiB"]),
    ("--fault-sample", "0", ["from 1 to 1,000,000, not 0"]),
    ("--fault-sample", "-5", ["from 1 to 1,000,000, not -5"]),
    ("--fault-sample", "many", ["not a whole number"]),
    ("--spike", "0", ["must be at least 1.0 MiB"]),
    ("--min-change", "99999999TiB", ["more memory than any machine has"]),
    ("--max-rss", "0", ["must be above 0"]),
    ("--max-class", "heap=1GiB", ["unknown class 'heap'"]),
    ("--max-class", "anon", ["expected CLASS=SIZE"]),
    ("--weights", "", ["an empty pattern matches no file"]),
    ("--phase", "(", ["bad regular expression"]),
    ("-p", "0", ["a process id from 1 to"]),
    ("--pid", "99999999", ["a process id from 1 to"]),
])
def test_every_number_and_pattern_is_checked(option, value, words):
    args = [option, value] if option in ("-p", "--pid") else ["--pid", "1", option, value]
    one_line_error(run_ramwatchd(args), 2, option, *words)


@pytest.mark.parametrize("args, words", [
    (["--json", "F", "--duration", "2", "report", "F"], ["is an option of a capture", "not of report"]),
    (["--pid", "1", "run", "--", "true"], ["--pid attaches to a process; run starts one"]),
    (["--children", "run", "--", "true"], ["--children goes with --pid"]),
    (["-o", "a.json", "--json", "b.json", "--pid", "1"], ["give -o FILE or --json FILE, not both"]),
    (["--json", "a", "--format", "folded", "--pid", "1"], ["--json writes JSON"]),
    (["--no-stacks", "--format", "folded", "-o", "a", "--pid", "1"], ["--format folded needs the call sites"]),
    (["run", "--png", "-", "--", "true"], ["--png needs a file"]),
    (["--bogus", "report", "F"], ["unrecognized arguments: --bogus"]),
])
def test_options_that_do_not_go_together_are_refused(args, words):
    one_line_error(run_ramwatchd(args), 2, *words)


def test_a_command_that_does_not_exist():
    one_line_error(run_ramwatchd(["run", "--", "no-such-program-here"]), 1, "command not found")


def test_report_of_a_file_that_is_not_a_capture(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    one_line_error(run_ramwatchd(["report", str(bad)]), 2, "not a ramwatchd capture")
    one_line_error(run_ramwatchd(["report", str(tmp_path / "none.json")]), 2, "No such file")
