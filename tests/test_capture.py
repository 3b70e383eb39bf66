"""Captures of real processes with known allocations, traced on the real kernel."""
import json
import os
import subprocess
import sys

import pytest

from conftest import RAMWATCHD, MiB, assert_near, assert_reconciled, growth, process, run_ramwatchd


def causes(result, cls):
    return " ".join(e["cause"] for e in result["timeline"] if e["cls"] == cls)


def test_private_anonymous_mmap(capture):
    result, _ = capture(["sleep:0.3", "anon:256M", "sleep:1"])
    p = process(result)
    assert_near(growth(p, "anon"), 256 * MiB, what="anon")
    assert "mmap 256.0 MiB RW- PRIVATE|ANON" in causes(result, "anon")
    assert growth(p, "shm_anon") < 4 * MiB
    assert_reconciled(result)


def test_malloc_grows_the_heap_through_brk(capture):
    result, _ = capture(["sleep:0.3", "malloc:128M", "sleep:1"])
    p = process(result)
    assert_near(growth(p, "anon_heap"), 128 * MiB, what="anon_heap")
    assert "brk" in causes(result, "anon_heap")
    assert_reconciled(result)


def test_shared_anonymous_is_shm_anon_not_pinned(capture):
    result, _ = capture(["sleep:0.2", "shared:128M", "sleep:1"])
    p = process(result)
    assert_near(growth(p, "shm_anon"), 128 * MiB, what="shm_anon")
    assert growth(p, "cuda_pinned") == 0
    assert "SHARED|ANON" in causes(result, "shm_anon")
    assert_reconciled(result)


def test_lazily_mapped_weights_half_touched(capture, tmp_path):
    weights = tmp_path / "model.safetensors"
    result, _ = capture(["sleep:0.3", f"weights:{weights}:256M:0.5", "sleep:1"])
    p = process(result)
    assert_near(growth(p, "file_weights"), 128 * MiB, what="file_weights")
    f = next(f for f in result["files"] if f["path"] == str(weights))
    assert f["class"] == "file_weights"
    assert_near(f["resident"], 128 * MiB, what="resident")
    # Creating the file filled the whole of it into the page cache.
    assert f["page_cache"] >= 128 * MiB
    assert f["filled"] >= 128 * MiB
    assert_reconciled(result)


def test_dev_shm_mapped_by_two_processes_counts_once(capture):
    name = f"ramwatchd-test-{os.getpid()}"
    try:
        result, _ = capture([f"shm:{name}:128M", f"spawn:attach:{name},sleep:30", "sleep:30"],
                            "--duration", "4")
    finally:
        os.unlink(f"/dev/shm/{name}")
    mappers = [p for p in result["processes"] if p["latest"]["classes"]["shm_posix"] >= 120 * MiB]
    assert len(mappers) == 2, [p["latest"]["classes"] for p in result["processes"]]
    shared = next(s for s in result["shared"] if s["name"] == f"/dev/shm/{name}")
    assert len(shared["pids"]) == 2
    assert_near(shared["rss_max"], 128 * MiB, what="resident")
    assert_near(shared["pss_sum"], 128 * MiB, what="node-level (PSS) sum")
    assert_reconciled(result)


def test_children_by_fork_and_by_spawn(capture):
    result, _ = capture(["fork:anon:128M,sleep:0.5,unmap,sleep:0.5",
                         "spawn:anon:64M,sleep:0.5,unmap,sleep:0.5", "wait"])
    assert len(result["processes"]) == 3
    root, forked, spawned = result["processes"]
    assert forked["ppid"] == root["pid"] and spawned["ppid"] == root["pid"]
    # Held, then released: the size is the rise above where each child settles
    # (a new interpreter's own start-up memory is no part of it).
    for child, size in ((forked, 128 * MiB), (spawned, 64 * MiB)):
        anon = [h["classes"]["anon"] for h in child["history"]]
        assert_near(max(anon) - anon[-1], size, what=f"pid {child['pid']} anon")
    kinds = [(e["pid"], e["kind"]) for e in result["timeline"]]
    assert (forked["pid"], "fork") in kinds and (spawned["pid"], "exec") in kinds
    assert all(p["exited_at"] is not None for p in result["processes"])
    assert_reconciled(result)


def test_threads_are_the_process_not_children(capture):
    # 16 threads allocate, then a child is forked: the kernel skips threads by
    # their clone flags, so the only child is the forked one, and the threads'
    # memory is the process's own.
    result, _ = capture(["sleep:0.3", "threads:16:8M", "sleep:0.3", "fork:anon:32M,sleep:0.5", "wait"])
    root, *children = result["processes"]
    assert len(children) == 1 and children[0]["ppid"] == root["pid"]
    assert [e["pid"] for e in result["timeline"] if e["kind"] == "fork"] == [children[0]["pid"]]
    grown = sum(e["delta"] for e in result["timeline"]
                if e["pid"] == root["pid"] and e["kind"] == "grow" and e["cls"] == "anon")
    assert_near(grown, 16 * 8 * MiB, what="anon grown by the threads")
    assert_reconciled(result)


def test_releases_by_madv_dontneed_and_munmap(capture):
    # Each state is held for 1 s: longer than a look's interval on a loaded
    # machine (20 x its cost), so a look sees each whole before it goes.
    result, _ = capture(["sleep:0.3", "anon:256M", "sleep:1", "dontneed", "sleep:1",
                         "anon:128M", "sleep:1", "unmap", "sleep:0.3"])
    released = [e for e in result["timeline"] if e["kind"] == "release" and e["cls"] == "anon"]
    assert_near(-sum(e["delta"] for e in released), 384 * MiB, what="released anon")
    why = " ".join(e["cause"] for e in released)
    assert "madvise DONTNEED 256.0 MiB" in why and "munmap 128.0 MiB" in why
    assert_reconciled(result)


@pytest.mark.parametrize("mode", [[], ["--exact-rss"]], ids=["counters-read-on-change", "exact-rss"])
def test_a_512_mib_spike_of_50_ms_is_seen(capture, mode):
    result, _ = capture(["sleep:0.3", "spike:512M:50", "sleep:0.3"], *mode)
    spikes = result["spikes"]
    assert len(spikes) == 1, spikes
    spike = spikes[0]
    assert_near(spike["size"], 512 * MiB, rel=0.1, what="spike")
    assert spike["member"] == "anon"
    assert spike["fall_t"] - spike["peak_t"] <= 0.1
    peak = process(result)["peak"]
    assert peak["bytes"] >= 512 * MiB
    assert any(e["kind"] == "spike" for e in result["timeline"])
    assert_reconciled(result)


def test_phases_from_output_lines_and_marks(capture):
    result, _ = capture(["mark:loading weights", "anon:64M", "sleep:1"])
    phases = [(p["source"], p["name"]) for p in result["phases"]]
    assert ("mark", "loading weights") in phases
    assert ("output", "step anon:64M") in phases
    grew = [e for e in result["timeline"] if e["kind"] == "grow" and e["cls"] == "anon"]
    assert grew and grew[0]["phase"] == "step anon:64M"


def test_a_call_just_before_the_next_line_stays_in_its_phase(capture):
    # The spike's munmap comes microseconds before "step sleep:0.3" is written,
    # and ramwatchd reads that line later still: the line takes the time of
    # the write that sent it, so the release stays in the spike's phase.
    result, _ = capture(["sleep:0.2", "spike:256M:30", "sleep:0.3", "fork:sleep:0.1", "wait"])
    released = [e for e in result["timeline"] if e["kind"] == "release" and e["cls"] == "anon"]
    assert released and {e["phase"] for e in released} == {"step spike:256M:30"}, released
    lines = {p["name"]: p for p in result["phases"] if p["source"] == "output"}
    child = next(p["pid"] for p in result["processes"][1:])
    assert lines[f"child {child}: step sleep:0.1"]["pid"] == child   # the writer, from the kernel


def attach(pid, go, *options):
    """Run `ramwatchd --pid`, and let the workload go on once it is tracing."""
    ramwatchd = subprocess.Popen(RAMWATCHD + ["--pid", str(pid), "--quiet", *options],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in ramwatchd.stderr:
        if line.startswith("ramwatchd: tracing"):
            go.touch()
            break
    stdout, stderr = ramwatchd.communicate(timeout=60)
    assert ramwatchd.returncode == 0, stderr
    return stdout


def test_attach_to_a_running_process_keeps_its_baseline(workload, tmp_path):
    go, out = tmp_path / "go", tmp_path / "attach.json"
    proc = workload(["anon:192M", "ready:READY", f"await:{go}", "anon:64M", "sleep:30"])
    stdout = attach(proc.pid, go, "--duration", "3", "--json", str(out))
    result = json.loads(out.read_text())
    p = process(result)
    assert_near(p["baseline"]["classes"]["anon"], 192 * MiB, rel=0.1, what="anon before attach")
    assert_near(growth(p, "anon"), 64 * MiB, what="anon after attach")
    assert "baseline at attach" in stdout
    assert_reconciled(result)


def test_process_exiting_mid_capture_ends_it_cleanly(workload, tmp_path):
    go = tmp_path / "go"
    proc = workload(["anon:32M", "ready:READY", f"await:{go}", "sleep:0.5"])
    stdout = attach(proc.pid, go, "--duration", "60")
    assert "ended: every traced process exited" in stdout
    assert "ramwatchd summary" in stdout


@pytest.mark.parametrize("mode", [[], ["--exact-rss"]], ids=["counters-read-on-change", "exact-rss"])
def test_a_child_that_grows_steadily_has_no_spike_and_its_own_peak(capture, mode):
    # The child's counters start as a copy of its parent's; nothing of that
    # copy may pass for a rise and fall, in either RSS mode.
    result, _ = capture(["sleep:0.3", "anon:64M", "fork:sleep:0.2,anon:400M,sleep:0.5", "wait"], *mode)
    assert result["spikes"] == [] and not [e for e in result["timeline"] if e["kind"] == "spike"]
    root, child = result["processes"][:2]
    assert child["ppid"] == root["pid"]
    assert_near(child["peak"]["bytes"], 464 * MiB + (child["history"][0]["vm_rss"] - 64 * MiB), rel=0.1,
                what="the child's peak")
    assert child["peak"]["bytes"] <= child["peak"]["vm_hwm"] + 4 * MiB


@pytest.mark.parametrize("mode", [[], ["--exact-rss"]], ids=["counters-read-on-change", "exact-rss"])
def test_a_helper_forked_and_execd_has_its_own_peak(capture, mode):
    # A 300 MiB parent forks and execs a program that lives long enough to be
    # listed: its peak is its own, not the parent's copy.
    result, _ = capture(["sleep:0.3", "anon:300M", "run:sleep 1.5", "sleep:0.2"], *mode)
    shell = next(p for p in result["processes"] if p["comm"] == "sleep")
    assert shell["execs"] and shell["peak"]["bytes"] < 32 * MiB, shell["peak"]
    assert not [e for e in result["timeline"] if e["kind"] == "release" and e["pid"] == shell["pid"]]
    assert result["spikes"] == []
    assert_reconciled(result)


LOGS = r"""
import mmap, sys, time
def say(text): sys.stdout.write(text + "\n"); sys.stdout.flush()
time.sleep(0.3)
say("(Worker pid=1) INFO 12-01 20:33:41 [loader.py:12] Loading weights from disk")
m = mmap.mmap(-1, 128 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for off in range(0, 128 << 20, 4096): m[off] = 1
say("/x/y.py:3: UserWarning: something odd")
say("  warnings.warn(something)")
say("Traceback (most recent call last):")
say('  File "x.py", line 1, in <module>')
say("ValueError: not a phase")
say(" 45%|####      | 45/100 [00:01<00:02, 30.1it/s]")
time.sleep(0.5)
"""


def test_phases_are_messages_not_log_noise(tmp_path):
    out = tmp_path / "capture.json"
    proc = run_ramwatchd(["run", "--json", str(out), "--", sys.executable, "-c", LOGS])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert [p["name"] for p in result["phases"]] == ["Loading weights from disk"]
    grew = [e for e in result["timeline"] if e["kind"] == "grow" and e["cls"] == "anon"]
    assert grew and {e["phase"] for e in grew} == {"Loading weights from disk"}
    # Every line is shown, noise too; only phases are chosen.
    assert "ValueError: not a phase" in proc.stdout


def test_chosen_lines_mark_phases(tmp_path):
    out = tmp_path / "capture.json"
    proc = run_ramwatchd(["run", "--quiet", "--phase", "Traceback|ValueError", "--json", str(out), "--",
                          sys.executable, "-c", LOGS])
    assert proc.returncode == 0, proc.stderr
    names = [p["name"] for p in json.loads(out.read_text())["phases"]]
    assert names == ["Traceback (most recent call last):", "ValueError: not a phase"], names


def test_quiet_hides_the_timeline_not_the_program(tmp_path):
    proc = run_ramwatchd(["run", "--quiet", "--", sys.executable, "-c", "print('hello from the program')"])
    assert proc.returncode == 0, proc.stderr
    assert "hello from the program" in proc.stdout
    assert "| hello" not in proc.stdout and "== ramwatchd summary" in proc.stdout
