"""`ramwatchd diff`: two real captures of the same program, run with known
different allocations, compared by process, class, phase and call site."""
import json
import re
from pathlib import Path

import pytest

from conftest import MiB, WORKLOAD, assert_near, run_ramwatchd
from test_bad_input import one_line_error

# The same program twice: the second maps 32 MiB more, adds 32 MiB of shared
# memory, and its spawned worker maps 32 MiB more.
BEFORE = ["anon:64M", "malloc:16M", "spawn:anon:16M,sleep:1", "wait", "sleep:0.2"]
AFTER = ["anon:96M", "malloc:16M", "shared:32M", "spawn:anon:48M,sleep:1", "wait", "sleep:0.2"]
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diff")
    paths = []
    for name, steps in (("before", BEFORE), ("after", AFTER)):
        path = folder / f"{name}.json"
        done = run_ramwatchd(["run", "-q", "-o", str(path), "--", *WORKLOAD, *steps], timeout=300)
        assert done.returncode == 0, done.stderr
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def diff(captures):
    done = run_ramwatchd(["diff", *captures])
    assert done.returncode == 0, done.stderr
    return done.stdout


def section(text, title):
    """The rows of one section's table, each a list of its cells."""
    part = text.split(f"== {title}", 1)[1].split("\n== ", 1)[0]
    return [re.split(r"\s{2,}", line.strip()) for line in part.splitlines()[2:] if line.strip()]


def find(rows, first, *words):
    """The one row whose first cell is `first` and which holds every word."""
    found = [r for r in rows if r[0] == first and all(any(w in cell for cell in r) for w in words)]
    assert len(found) == 1, (first, words, rows)
    return found[0]


def size(cell):
    """'+32.0 MiB' -> bytes; 'new', 'gone' and '-' -> None."""
    m = re.fullmatch(r"([+-]?)(\d+(?:\.\d+)?) (B|KiB|MiB|GiB)", cell.strip())
    return None if m is None else float(m.group(2)) * UNITS[m.group(3)] * (-1 if m.group(1) == "-" else 1)


def moved(cell):
    """'anon +32.0 MiB, shm_anon +32.0 MiB' -> {class: bytes}."""
    return {cls: size(change) for cls, change in re.findall(r"(\w+) ([+-][\d.]+ \w+)", cell)}


def test_processes_are_matched_by_name_not_pid(diff):
    assert "2 processes matched by name" in diff
    rows = section(diff, "by process")
    root = moved(find(rows, "python")[4])
    assert_near(root["shm_anon"], 32 * MiB, rel=0.05, what="root shm_anon")
    assert_near(root["anon"], 32 * MiB, rel=0.1, what="root anon")
    worker = moved(find(rows, "python > python")[4])
    assert_near(worker["anon"], 32 * MiB, rel=0.1, what="worker anon")


def test_classes_add_up_across_processes(diff):
    rows = section(diff, "by class")
    shared = find(rows, "shm_anon")
    assert size(shared[1]) == 0
    assert_near(size(shared[2]), 32 * MiB, rel=0.05, what="shm_anon after")
    assert_near(size(find(rows, "anon")[3]), 64 * MiB, rel=0.1, what="anon change (root and worker)")


def phase_change(path, name):
    """What a capture's timeline says grew and was released in the phase `name`."""
    timeline = json.loads(Path(path).read_text())["timeline"]
    return sum(e["delta"] for e in timeline if e["kind"] in ("grow", "release") and e["phase"] == name)


def assert_shows(cell, expected):
    """A size as the diff prints it: to a tenth of its unit."""
    assert abs(size(cell) - expected) <= 0.051 * MiB, (cell, expected / MiB)


def test_phases_are_matched_with_their_numbers_set_aside(captures, diff):
    # What a phase shows depends on when the capture looked at the process
    # (a look may fall in the middle of a step): each figure is checked
    # against the captures' own timelines.
    before, after = captures
    rows = section(diff, "by phase")
    root = find(rows, "step anon:64M -> step anon:96M", "python")
    assert root[1] == "python"
    assert_shows(root[2], phase_change(before, "step anon:64M"))
    assert_shows(root[3], phase_change(after, "step anon:96M"))
    assert_shows(root[4], phase_change(after, "step anon:96M") - phase_change(before, "step anon:64M"))
    new = find(rows, "step shared:32M")
    assert new[2] == "-" and new[4] == "new"
    assert_shows(new[3], phase_change(after, "step shared:32M"))
    # The worker's phase of the same name is its own.
    every = section(run_ramwatchd(["diff", "--min-change", "0", *captures]).stdout, "by phase")
    assert find(every, "step anon:16M -> step anon:48M", "python > python")[1] == "python > python"


def test_call_sites_are_matched_by_function(diff):
    rows = section(diff, "by call site")
    shared = find(rows, "python", "Workload.do_shared")
    assert size(shared[3]) == 0
    assert_near(size(shared[5]), 32 * MiB, rel=0.05, what="do_shared")
    for who in ("python", "python > python"):
        assert_near(size(find(rows, who, "Workload.do_anon")[5]), 32 * MiB, rel=0.1, what=f"{who}: do_anon")


def test_a_capture_against_itself_shows_no_change(captures):
    done = run_ramwatchd(["diff", captures[0], captures[0]])
    assert done.returncode == 0, done.stderr
    for nothing in ("no process changed", "no phase changed", "no call site changed"):
        assert nothing in done.stdout


def test_diff_refuses_what_is_not_a_capture(captures, tmp_path):
    one_line_error(run_ramwatchd(["diff", captures[0], str(tmp_path)]), 2, "is a directory")
    one_line_error(run_ramwatchd(["diff", captures[0], captures[1], "--min-change", "-1"]), 2, "--min-change")
