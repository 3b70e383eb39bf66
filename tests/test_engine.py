"""A capture of an inference engine's start-up, shaped like vLLM's
(ramwatchd.workloads.engine): the story its timeline tells must be true."""
import json
import sys

import pytest

from conftest import MiB, assert_near, assert_reconciled, run_ramwatchd

ENGINE = [sys.executable, "-m", "ramwatchd.workloads.engine"]
WEIGHTS, KV = 256 * MiB, 1024 * MiB


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """One capture of the engine's start-up, shared by the tests of this file."""
    tmp = tmp_path_factory.mktemp("engine")
    out, weights = tmp / "capture.json", tmp / "model.safetensors"
    proc = run_ramwatchd(["run", "--quiet", "--json", str(out), "--", *ENGINE, "--weights", str(weights),
                          "--weights-size", "256M", "--kv", "1G"], timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(out.read_text()), proc, str(weights)


def by_name(result, comm):
    return next(p for p in result["processes"] if p["comm"] == comm)


def test_processes_follow_their_renames(engine):
    result, _, _ = engine
    engine_core, worker = by_name(result, "VLLM::EngineCor"), by_name(result, "VLLM::Worker")
    assert engine_core["cmdline"] == "VLLM::EngineCore" and worker["cmdline"] == "VLLM::Worker"
    assert worker["ppid"] == engine_core["pid"]
    renames = [e for e in result["timeline"] if e["kind"] == "rename"]
    assert {e["pid"] for e in renames} >= {engine_core["pid"], worker["pid"]}
    # Entries after the rename carry the new name.
    assert all(e["comm"] == "VLLM::Worker" for e in result["timeline"]
               if e["pid"] == worker["pid"] and e["kind"] == "grow" and e["cls"] == "anon" and
               e["name"].startswith("[anon mmap"))


def test_helpers_are_folded_not_listed(engine):
    result, _, _ = engine
    helpers = {p["comm"] for p in result["short_lived"]["processes"]}
    assert {"uname", "lscpu"} <= helpers
    assert not [p for p in result["processes"] if p["comm"] in ("uname", "lscpu")]


def test_phases_are_each_process_own_messages(engine):
    result, _, _ = engine
    worker = by_name(result, "VLLM::Worker")
    names = {(p["pid"], p["name"]) for p in result["phases"]}
    assert (worker["pid"], "Starting to load model") in names
    # The log prefix is gone; the message stays.
    assert not [p for p in result["phases"] if p["name"].startswith(("(", "INFO"))], result["phases"]
    # The KV cache is made in the worker's phase after the weights load.
    kv = [e for e in result["timeline"] if e["kind"] in ("grow", "mapping") and e["name"].startswith("[anon mmap 1.0 GiB")]
    assert kv and all(e["phase"].startswith("Loading weights took") for e in kv), kv


def test_the_weights_mapping_is_seen_at_its_highest(engine):
    result, _, weights = engine
    worker = by_name(result, "VLLM::Worker")
    mapped = [m for m in result["mappings"] if m["name"] == weights and m["pid"] == worker["pid"]]
    assert len(mapped) == 1, result["mappings"]
    assert mapped[0]["class"] == "file_weights"
    assert_near(mapped[0]["peak"], WEIGHTS, rel=0.1, what="weights resident at their highest")
    assert mapped[0]["page_cache"] >= 0.9 * WEIGHTS
    assert any(e["kind"] == "mapping" and e["name"] == weights for e in result["timeline"])


def test_the_kv_cache_is_its_own_object_and_names_its_mmap(engine):
    # Looks at a process of a thousand mappings are rationed: whether or not
    # one fell in the KV cache's life, its mapping line says what it held.
    result, _, _ = engine
    kv = [e for e in result["timeline"] if e["name"].startswith("[anon mmap 1.0 GiB")]
    assert kv and all(e["cause"].startswith("mmap 1.0 GiB RW- PRIVATE|ANON") for e in kv if e["kind"] != "release")
    assert all(e["cause"].startswith("munmap 1.0 GiB") for e in kv if e["kind"] == "release"), kv
    (mapped,) = [e for e in kv if e["kind"] == "mapping"]
    assert_near(mapped["delta"], 0.8 * KV, rel=0.1, what="KV cache resident at its highest")
    assert sum(e["delta"] for e in kv if e["kind"] == "grow") <= mapped["delta"]


def test_no_false_spike_and_true_peaks(engine):
    result, _, _ = engine
    assert result["spikes"] == []
    for p in result["processes"]:
        seen = [h["vm_rss"] for h in p["history"]] + [total for _, total in p["rss_steps"]]
        assert p["peak"]["bytes"] >= max(seen), p["comm"]
    worker = by_name(result, "VLLM::Worker")
    assert worker["peak"]["bytes"] >= WEIGHTS + 0.8 * KV


def test_the_shared_segment_counts_once(engine):
    result, _, _ = engine
    (segment,) = [s for s in result["shared"] if "/dev/shm/ramwatchd-engine-psm" in s["name"]]
    assert len(segment["pids"]) == 2
    assert_near(segment["pss_sum"], 16 * MiB, rel=0.1, what="the segment's PSS over both")


def test_every_look_reconciles(engine):
    result, proc, _ = engine
    assert_reconciled(result)
    assert "Traceback" not in proc.stderr
