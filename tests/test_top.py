"""`ramwatchd top`: driven through a real terminal (tmux: keys sent, the screen
read back) and as a script, with real workloads of known size."""
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import RAMWATCHD, WORKLOAD, MiB, assert_near

REPO = Path(__file__).resolve().parent.parent
TOP = RAMWATCHD + ["top"]
TAG = f"top{os.getpid()}"      # workloads of this run, and not another's
TAGGED = f"""\
groups:
  - name: "top-{{1}}"
    match: {{cmdline: 'ramwatchd\\.workloads tag:{TAG}(\\w+)'}}
"""
SIZE_UNITS = {"K": 1 << 10, "M": MiB, "G": 1 << 30, "T": 1 << 40}


def wait_until(what, check, timeout=120, seen=lambda: ""):
    """check()'s first true value; seen() says what there was, if it never came."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}; saw:\n{seen()}"
        time.sleep(0.2)


def size(text):
    """'256M', '1.50G', '812K', '0' as top shows them -> bytes."""
    return 0 if text == "0" else int(float(text[:-1]) * SIZE_UNITS[text[-1]])


class Table:
    """The table of one frame: its columns (the sorted one marked *) and rows."""

    def __init__(self, lines):
        at = next(i for i, line in enumerate(lines) if line.split()[:1] in (["PID"], ["PROCS"]))
        self.header = lines[:at]
        titles = lines[at].split()
        self.sorted = next((t.rstrip("*") for t in titles if t.endswith("*")), None)
        self.columns = [t.rstrip("*") for t in titles]
        self.rows = []
        for line in lines[at + 1:]:
            fields = line.split(None, len(self.columns) - 1)
            if len(fields) < len(self.columns) or not fields[0].isdigit():
                break     # the footer, or the screen's empty lines
            self.rows.append(dict(zip(self.columns, fields)))

    def row(self, column, value):
        return next((r for r in self.rows if r[column] == str(value)), None)

    def order(self, column, values):
        """The given values of column, in the order the rows show them."""
        return [r[column] for r in self.rows if r[column] in values]


@pytest.fixture
def workloads(tmp_path):
    procs = []

    def go(*steps):
        """Start a workload; return once it reaches its step ready:READY (by
        default, after the given steps)."""
        ready = tmp_path / f"ready{len(procs)}"
        steps = steps if "ready:READY" in steps else (*steps, "ready:READY")
        p = subprocess.Popen(WORKLOAD + [s.replace("READY", str(ready)) for s in steps] + ["sleep:300"],
                             stdout=subprocess.DEVNULL)
        procs.append(p)
        wait_until("the workload", lambda: ready.exists() or p.poll() is not None)
        assert p.poll() is None, f"workload {steps} failed"
        return p
    yield go
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def shm_name():
    name = f"ramwatchd-top-{os.getpid()}"
    yield name
    if os.path.exists(f"/dev/shm/{name}"):
        os.unlink(f"/dev/shm/{name}")


class Terminal:
    """A tmux server of its own with one window running argv. The exit status
    is written by the shell that waits for argv: tmux itself can miss the
    SIGCHLD of a program that closes its terminal a while before it has
    exited, as one detaching BPF programs does (libutempter's handler, set
    while tmux records the pane's end, takes the signal)."""

    def __init__(self, tmp_path, argv, width=80, height=24):
        conf = tmp_path / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g status off\n")
        self.status = tmp_path / "status"
        self.tmux = ["tmux", "-L", f"ramwatchd-top-{os.getpid()}", "-f", str(conf)]
        command = f"{shlex.join(argv)}; echo $? > {shlex.quote(str(self.status))}"
        subprocess.run(self.tmux + ["new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height),
                                    "-c", str(REPO), command], check=True)

    def screen(self, history=False):
        """The lines on screen; with history, those scrolled off it too, wrapped lines joined."""
        more = ["-S", "-", "-J"] if history else []
        out = subprocess.run(self.tmux + ["capture-pane", "-p", "-t", "top"] + more, capture_output=True, text=True)
        return out.stdout.splitlines()

    def table(self):
        """The table on screen, or None while there is none."""
        lines = self.screen()
        return Table(lines) if any(line.split()[:1] in (["PID"], ["PROCS"]) for line in lines) else None

    def shows(self, what, check, timeout=120):
        """The table on screen once check(table) holds; fails at once if the command ended."""
        def now():
            assert self.exit_status() is None, "\n".join(self.screen(history=True))
            table = self.table()
            return table if table and check(table) else None
        return wait_until(what, now, timeout, seen=lambda: "\n".join(self.screen()))

    def press(self, key):
        subprocess.run(self.tmux + ["send-keys", "-t", "top", key], check=True)

    def resize(self, width, height=24):
        subprocess.run(self.tmux + ["resize-window", "-t", "top", "-x", str(width), "-y", str(height)], check=True)

    def exit_status(self):
        """The command's exit status once it ended, else None."""
        written = self.status.read_text() if self.status.exists() else ""
        return int(written) if written.endswith("\n") else None

    def close(self):
        socket = subprocess.run(self.tmux + ["display-message", "-p", "#{socket_path}"],
                                capture_output=True, text=True).stdout.strip()
        subprocess.run(self.tmux + ["kill-server"], capture_output=True)
        if socket:
            Path(socket).unlink(missing_ok=True)     # tmux leaves it behind


@pytest.fixture
def terminal(tmp_path):
    opened = []

    def go(argv, **kw):
        t = Terminal(tmp_path, argv, **kw)
        opened.append(t)
        return t
    yield go
    for t in opened:
        t.close()


def cold_file(path, size_bytes):
    """A file of random bytes with none of it in the page cache."""
    with open(path, "wb") as f:
        for _ in range(size_bytes // MiB):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def test_once_prints_every_process_with_known_sizes(workloads, shm_name, tmp_path):
    weights = tmp_path / "model.safetensors"
    cold_file(weights, 64 * MiB)
    big = workloads(f"tag:{TAG}big", "anon:256M", "shared:64M")
    loader = workloads(f"tag:{TAG}loader", f"shm:{shm_name}:128M", f"weights:{weights}:64M:0.5")
    out = subprocess.run(TOP + ["--once"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    table = Table(out.stdout.splitlines())

    # Every watched process, not only ours, largest PSS first.
    assert len(table.rows) > 2
    assert table.sorted is None and "sorted by PSS, largest first" in "\n".join(table.header)
    pss = [size(r["PSS"]) for r in table.rows]
    assert pss == sorted(pss, reverse=True)

    row = table.row("PID", big.pid)
    assert row is not None, out.stdout
    assert_near(size(row["ANON"]), 256 * MiB, what="anon")
    assert_near(size(row["SHMANON"]), 64 * MiB, what="shared anonymous")
    assert size(row["RSS"]) >= 320 * MiB and 320 * MiB <= size(row["PSS"]) <= size(row["RSS"])
    comm = Path(f"/proc/{big.pid}/comm").read_text().strip()
    assert row["GROUP"] == comm and f"ramwatchd.workloads tag:{TAG}big" in row["COMMAND"]

    row = table.row("PID", loader.pid)
    assert_near(size(row["SHM"]), 128 * MiB, what="/dev/shm")
    assert_near(size(row["WEIGHTS"]), 32 * MiB, what="weights resident")
    assert_near(size(row["WCACHE"]), 32 * MiB, rel=0.1, what="weights in the page cache")

    # The node: its figures are /proc/meminfo's, with the headroom the alert counts.
    header = " ".join(table.header).split()
    total, available = size(header[header.index("memory") + 1]), size(header[header.index("available") + 1])
    with open("/proc/meminfo") as f:
        meminfo = {line.split(":")[0]: int(line.split()[1]) << 10 for line in f}
    assert_near(total, meminfo["MemTotal"], rel=0.01, what="MemTotal")
    assert 0 < available < total
    assert header[header.index("headroom") + 1].endswith("%")


def test_screen_shows_sizes_sorts_by_key_and_quits(workloads, shm_name, terminal, tmp_path, driver_dir):
    config = tmp_path / "top.yaml"
    config.write_text(TAGGED)
    go = tmp_path / "go"
    driver = driver_dir / "libcuda.so.1"
    big = workloads(f"tag:{TAG}big", "anon:384M", "shared:64M")
    small = workloads(f"tag:{TAG}small", "anon:32M", f"shm:{shm_name}:128M")
    gpu = workloads(f"tag:{TAG}gpu", f"load:{driver}", "ready:READY", f"await:{go}", f"pin:{driver}:300M")
    term = terminal(TOP + ["--config", str(config), "--interval", "1"])
    pids = {str(p.pid): name for p, name in ((big, "big"), (small, "small"), (gpu, "gpu"))}

    term.shows("the three workloads", lambda t: len(t.rows) == 3)
    go.touch()
    table = term.shows("the pinned allocation", lambda t: (t.row("PID", gpu.pid) or {}).get("PINREQ") == "300M")
    # 80x24: the columns that hold the most memory are the ones kept.
    assert {"PID", "RSS", "PSS", "ANON", "SHM", "PINNED", "PINREQ", "PINMAP", "COMMAND"} <= set(table.columns)
    assert table.row("PID", gpu.pid)["PINMAP"] == "300M"
    assert_near(size(table.row("PID", gpu.pid)["PINNED"]), 300 * MiB, what="cuda_pinned")
    assert_near(size(table.row("PID", big.pid)["ANON"]), 384 * MiB, what="anon")
    assert_near(size(table.row("PID", small.pid)["SHM"]), 128 * MiB, what="/dev/shm")
    assert table.sorted == "PSS"
    assert [pids[p] for p in table.order("PID", pids)] == ["big", "gpu", "small"]

    # > moves the sort along the columns shown, one key at a time, up to SHM.
    for _ in table.columns:
        if table.sorted == "SHM":
            break
        before = table.sorted
        term.press(">")
        table = term.shows("the next sort column", lambda t: t.sorted != before)
    assert table.sorted == "SHM"
    assert [pids[p] for p in table.order("PID", pids)][0] == "small"
    term.press("r")
    table = term.shows("the reversed order", lambda t: [pids[p] for p in t.order("PID", pids)][-1] == "small")
    assert "smallest first" in " ".join(table.header)

    # g: the config's groups, with the sort kept.
    term.press("g")
    table = term.shows("the groups", lambda t: t.columns[0] == "PROCS")
    groups = {"top-big", "top-small", "top-gpu"}
    assert table.sorted == "SHM" and table.order("GROUP", groups)[-1] == "top-small"
    assert all(table.row("GROUP", g)["PROCS"] == "1" for g in groups)

    # Wider, every column that holds memory shows; narrower, the least full go first.
    term.resize(200)
    table = term.shows("the wide screen", lambda t: "SHMANON" in t.columns)
    assert_near(size(table.row("GROUP", "top-big")["SHMANON"]), 64 * MiB, what="shared anonymous")
    wide = len(table.columns)
    term.resize(50)
    table = term.shows("the narrow screen", lambda t: len(t.columns) < wide and t.columns[-1] == "GROUP")
    assert {"PROCS", "RSS", "PSS", "SHM", "GROUP"} <= set(table.columns)
    assert "headroom" in " ".join(table.header)     # the header wraps rather than losing its end

    term.press("q")
    wait_until("top to quit", lambda: term.exit_status() is not None)
    assert term.exit_status() == 0


def test_sigterm_gives_the_terminal_back(terminal, tmp_path):
    config = tmp_path / "top.yaml"
    config.write_text(TAGGED)
    term = terminal(TOP + ["--config", str(config)])
    term.shows("the screen", lambda t: True)
    shell = subprocess.run(term.tmux + ["display-message", "-p", "-t", "top", "#{pane_pid}"],
                           capture_output=True, text=True, check=True).stdout.strip()
    top = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
    assert len(top) == 1
    os.kill(int(top[0]), signal.SIGTERM)
    wait_until("top to end", lambda: term.exit_status() is not None, timeout=60)
    assert term.exit_status() == 128 + signal.SIGTERM
    # curses has left the screen: what was there before it came back.
    assert term.table() is None and "compiling" in "\n".join(term.screen(history=True))


def test_an_unknown_terminal_is_one_line(terminal, tmp_path):
    term = terminal(["env", "TERM=no-such-terminal"] + TOP)
    wait_until("top to end", lambda: term.exit_status() is not None, timeout=60)
    screen = [line for line in term.screen(history=True) if line.strip() and not line.startswith("Pane is dead")]
    assert term.exit_status() == 1
    assert len(screen) == 1, screen
    assert screen[0].startswith("ramwatchd: cannot draw on terminal 'no-such-terminal'") and "--once" in screen[0]


@pytest.mark.parametrize("args, what", [
    (["--interval", "0"], "--interval: must be between"),
    (["--interval", "nan"], "--interval: must be between"),
    (["--interval", "1e400"], "--interval: must be between"),
    (["--interval", "soon"], "not a number of seconds"),
    (["--sort", "cpu"], "no column 'cpu'"),
    (["--config", "/nonexistent/top.yaml"], "/nonexistent/top.yaml: cannot read"),
])
def test_bad_input_is_one_line(args, what):
    out = subprocess.run(TOP + args + ["--once"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1 and what in out.stderr, out.stderr
    assert out.stdout == ""
