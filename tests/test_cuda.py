"""CUDA pinned host memory through the real uprobe path, without a GPU: a stand-in
driver library exports the same entry points and maps memory as the driver does."""
import os

from conftest import MiB, assert_near, assert_reconciled, growth, process

def pinned_entries(result):
    return [e["text"] for e in result["timeline"] if e["kind"] == "pinned"]


def test_allocated_and_registered_pinned_memory(capture, driver_dir, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", str(driver_dir))
    name = f"ramwatchd-pinned-{os.getpid()}"
    try:
        result, _ = capture(["pin:libcuda.so.1:300M", "sleep:0.3", f"register:libcuda.so.1:{name}:128M",
                             "sleep:0.3", "shared:64M", "sleep:1"])
    finally:
        os.unlink(f"/dev/shm/{name}")
    p = process(result)
    assert_near(growth(p, "cuda_pinned"), 300 * MiB, what="cuda_pinned")
    assert_near(growth(p, "shm_posix"), 128 * MiB, what="shm_posix")
    # Shared anonymous memory the driver never saw is shm_anon, never pinned.
    assert_near(growth(p, "shm_anon"), 64 * MiB, what="shm_anon")
    allocated = [r for r in p["pinned_latest"] if r["how"] == "allocated"]
    registered = [r for r in p["pinned_latest"] if r["how"] == "registered"]
    assert len(allocated) == 1 and len(registered) == 1
    assert allocated[0]["requested"] == 300 * MiB and allocated[0]["mapped"] == 300 * MiB
    assert allocated[0]["classes"] == ["cuda_pinned"] and allocated[0]["symbol"] == "cuMemHostAlloc"
    assert registered[0]["requested"] == 128 * MiB and registered[0]["mapped"] == 128 * MiB
    assert registered[0]["classes"] == ["shm_posix"] and registered[0]["symbol"] == "cuMemHostRegister_v2"
    shm = next(o for o in p["objects_latest"] if o["name"] == f"/dev/shm/{name}")
    assert shm["class"] == "shm_posix" and shm["pinned"] == 128 * MiB
    # The range the driver mapped inside the call is pinned memory to its end, not shm_anon.
    assert [m["class"] for m in result["mappings"] if m["size"] == 300 * MiB] == ["cuda_pinned"]
    texts = pinned_entries(result)
    assert any(t.startswith("cuMemHostAlloc 300.0 MiB at 0x") and "called from libffi" in t for t in texts)
    assert any(t.startswith("cuMemHostRegister_v2 128.0 MiB") for t in texts)
    assert_reconciled(result)


def test_freed_pinned_memory_leaves_the_class(capture, driver_dir, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", str(driver_dir))
    result, _ = capture(["pin:libcuda.so.1:128M", "sleep:0.3", "unpin:libcuda.so.1", "sleep:1"])
    p = process(result)
    assert p["pinned_latest"] == [] and p["latest"]["classes"]["cuda_pinned"] == 0
    assert [r["requested"] for r in p["pinned_largest"]] == [128 * MiB]
    released = [e for e in result["timeline"] if e["kind"] == "release" and e["cls"] == "cuda_pinned"]
    assert_near(-sum(e["delta"] for e in released), 128 * MiB, what="released")
    assert any(t.startswith("cuMemFreeHost 0x") for t in pinned_entries(result))


def test_a_driver_loaded_from_elsewhere_after_the_start_is_found(capture, driver_dir):
    """Not on LD_LIBRARY_PATH nor in the linker cache, as in a container: the
    load is seen, the library found in /proc/PID/maps and probed then."""
    lib = driver_dir / "libcuda.so.1"
    result, _ = capture(["sleep:0.3", f"load:{lib}", "sleep:0.5", f"pin:{lib}:64M", "sleep:1"])
    p = process(result)
    assert [r["requested"] for r in p["pinned_latest"]] == [64 * MiB]
    assert_near(growth(p, "cuda_pinned"), 64 * MiB, what="cuda_pinned")
    assert any(e["kind"] == "cuda" and str(lib) in e["text"] for e in result["timeline"])
