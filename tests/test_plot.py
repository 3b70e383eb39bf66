"""The PNG of a capture, checked on what it draws: a stack that adds up to the
total at every time, a total that is the kernel's, shared objects counted once,
and phase labels that never overlap each other or the data."""
import json
import os
from bisect import bisect_right
from itertools import combinations

import pytest

from conftest import MiB, WORKLOAD, run_ramwatchd
from ramwatchd.views.plot import MAX_NUMBERED_PHASES, timeline_figure, timeline_series

LONG_NAME = "a phase whose name is far too long to fit anywhere near its marker"
MARKS = [f"mark:{i} {LONG_NAME}" for i in range(12)]    # each prints a line and marks: 24 phases


def saved_capture(folder, steps):
    out = folder / "capture.json"
    done = run_ramwatchd(["run", "--quiet", "--json", str(out), "--", *WORKLOAD, *steps])
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Growth, a spike and releases, with many phases in a few milliseconds."""
    return saved_capture(tmp_path_factory.mktemp("one"), [
        "anon:96M", *MARKS, "anon:64M", "spike:256M:30", "dontneed", "sleep:0.3", "unmap", "sleep:0.3"])


@pytest.fixture(scope="module")
def three_mappers(tmp_path_factory):
    """A /dev/shm region made by one process and mapped by a forked child and a
    spawned program too, all three alive together for a while."""
    name = f"ramwatchd-plot-{os.getpid()}"
    try:
        yield saved_capture(tmp_path_factory.mktemp("shared"), [
            f"shm:{name}:64M", f"fork:attach:{name},sleep:3", f"spawn:attach:{name},sleep:3", "wait"])
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")


def test_the_stack_adds_up_to_the_total_everywhere(one_process, three_mappers):
    for result in (one_process, three_mappers):
        s = timeline_series(result)
        assert len(s.times) > 10
        for i, t in enumerate(s.times):
            stack = sum(row[i] for row in s.classes.values()) + s.moved[i]
            assert stack == s.total[i], f"at {t:.3f}s the stack is {stack}, the total {s.total[i]}"


def test_the_total_is_the_kernels_counters_not_the_last_look(one_process):
    (p,) = one_process["processes"]
    readings = p["rss_steps"]
    # The kernel's newest figure at any time: its counters as read on each
    # change, or VmRSS as a look read it where that is newer (a reading at
    # the same time is the newer).
    figures = sorted([(h["t"], h["vm_rss"]) for h in p["history"]] + [tuple(r[:2]) for r in readings],
                     key=lambda f: f[0])
    first_look = p["history"][0]["t"]
    s = timeline_series(one_process)
    compared = 0
    for t, total in zip(s.times, s.total):
        i = bisect_right([f[0] for f in figures], t) - 1
        if t < first_look or (p["exited_at"] is not None and t >= p["exited_at"]):
            continue
        assert total == figures[i][1], f"at {t:.3f}s: total {total / MiB:.1f} MiB, " \
                                       f"kernel {figures[i][1] / MiB:.1f} MiB"
        compared += 1
    # Readings far outnumber looks: the total follows each one, between looks too.
    assert compared > len(p["history"]) * 2
    peak = max(s.total)
    assert peak >= (96 + 64 + 256) * MiB, f"the 256 MiB spike is missing: peak {peak / MiB:.1f} MiB"


def test_the_line_drawn_is_the_total(one_process):
    s = timeline_series(one_process)
    fig = timeline_figure(one_process)
    (ax,) = fig.axes
    (line,) = [l for l in ax.get_lines() if l.get_label().startswith("total")]
    scale = 1 << 30 if ax.get_ylabel() == "GiB" else MiB
    assert list(line.get_xdata()) == s.times
    assert [round(y * scale) for y in line.get_ydata()] == [round(v) for v in s.total]


def looked_at(p, t):
    """The process's last look at or before t, while it lives."""
    if t < p["history"][0]["t"] or (p["exited_at"] is not None and t >= p["exited_at"]):
        return None
    return p["history"][bisect_right([h["t"] for h in p["history"]], t) - 1]


def test_a_region_three_processes_map_is_counted_once(three_mappers):
    s = timeline_series(three_mappers)
    procs = three_mappers["processes"]
    assert len(procs) == 3
    shared_at = []
    for i, t in enumerate(s.times):
        held = [look["classes"]["shm_posix"] for look in (looked_at(p, t) for p in procs) if look]
        counted = s.classes["shm_posix"][i]
        # Counted once: as much as the one that holds most of it holds, never the sum.
        assert counted == max(held, default=0), f"at {t:.3f}s: {counted / MiB:.1f} MiB of {held}"
        if sum(h >= 60 * MiB for h in held) >= 2:
            shared_at.append(t)
    assert shared_at, "the region was never seen held by two processes at once"
    assert all(abs(s.classes["shm_posix"][s.at(t)] - 64 * MiB) <= 4 * MiB for t in shared_at)


def bboxes(fig, gid, renderer):
    """The boxes a reader sees of the texts tagged gid: a marker's circle, a key's text."""
    out = []
    for artist in fig.findobj(lambda a: a.get_gid() == gid):
        patch = artist.get_bbox_patch()
        out.append((patch or artist).get_window_extent(renderer))
    return out


def overlap(a, b):
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5


def test_phase_labels_overlap_nothing(one_process):
    phases = one_process["phases"]
    assert len(phases) > MAX_NUMBERED_PHASES, "the capture should have more phases than get numbers"
    fig = timeline_figure(one_process)
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    (ax,) = fig.axes
    markers, key = bboxes(fig, "phase-marker", renderer), bboxes(fig, "phase-key", renderer)
    assert len(markers) == MAX_NUMBERED_PHASES and len(key) == MAX_NUMBERED_PHASES + 1
    data = ax.get_window_extent(renderer)
    axis_labels = ax.xaxis.get_tightbbox(renderer)
    legend = ax.get_legend().get_window_extent(renderer)
    labels = markers + key + bboxes(fig, "title", renderer)
    for a, b in combinations(labels, 2):
        assert not overlap(a, b), f"labels overlap: {a} and {b}"
    for box in labels:
        assert not overlap(box, data), f"a label runs into the data: {box}"
        assert not overlap(box, legend), f"a label runs into the legend: {box}"
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), box
    for box in key:
        assert not overlap(box, axis_labels), f"the key runs into the time axis: {box}"


def test_each_number_points_at_its_phase_and_names_it_in_the_key(one_process):
    fig = timeline_figure(one_process)
    markers = fig.findobj(lambda a: a.get_gid() == "phase-marker")
    key = [t.get_text() for t in fig.findobj(lambda a: a.get_gid() == "phase-key")]
    by_time = sorted(one_process["phases"], key=lambda p: p["t"])
    numbered = [p for p in by_time if any(abs(m.xy[0] - p["t"]) < 1e-9 for m in markers)]
    assert len(numbered) == len(markers)
    marks = [p for p in by_time if p["source"] == "mark"]
    assert marks and all(p in numbered for p in marks), "explicit marks always get a number"
    for n, (marker, phase) in enumerate(zip(sorted(markers, key=lambda m: m.xy[0]), numbered), 1):
        assert marker.get_text() == str(n) and marker.xy[0] == phase["t"]
        number, when, name = key[n - 1].split(maxsplit=2)
        assert number == str(n) and when == f"{phase['t']:.2f}s"
        assert phase["name"].startswith(name.rstrip("…")), (name, phase["name"])
    left_out = len(one_process["phases"]) - MAX_NUMBERED_PHASES
    assert key[-1].strip() == f"and {left_out} more phases, not numbered"
