"""The pure parts of the data path: classifying mappings and finding spikes."""
from ramwatchd.ledger.classes import Classifier
from ramwatchd.ledger.procfs import Vma
from ramwatchd.ledger.rss import SpikeRule, find_spikes

MiB = 1 << 20


def vma(start, size, path="", perms="rw-p", inode=0):
    return Vma(start, start + size, perms, 0, (0, 1 if inode else 0), inode, path)


def classify(*vmas, patterns=None):
    c = Classifier(patterns) if patterns else Classifier()
    return c.classify(list(vmas))


def test_each_kind_of_mapping_gets_its_class():
    got = classify(
        vma(0x1000, 4096, "[heap]"),
        vma(0x10000, 4096),                                     # private anonymous
        vma(0x20000, 4096, "/dev/zero (deleted)", "rw-s", 7),   # MAP_SHARED|MAP_ANONYMOUS
        vma(0x30000, 4096, "/memfd:weights (deleted)", "rw-s", 8),
        vma(0x40000, 4096, "/dev/shm/kv-offload", "rw-s", 9),
        vma(0x50000, 4096, "/SYSV0000162e (deleted)", "rw-s", 10),
        vma(0x60000, 4096, "/models/llama/model-00001.safetensors", "r--s", 11),
        vma(0x70000, 4096, "/usr/lib/libc.so.6", "r--p", 12),
        vma(0x80000, 4096, "/usr/lib/libc.so.6", "r-xp", 12),
        vma(0x90000, 4096, "/etc/hosts", "r--p", 13),
        vma(0xa0000, 4096, "/dev/nvidiactl", "rw-s", 14),
        vma(0xb0000, 4096, "[stack]"),
        vma(0xc0000, 4096, "[vdso]", "r-xp"),
    )
    assert got == ["anon_heap", "anon", "shm_anon", "shm_anon", "shm_posix", "shm_sysv",
                   "file_weights", "file_code", "file_code", "file_other", "device", "stack",
                   "file_code"]


def test_an_executable_counts_as_code_in_all_its_segments():
    got = classify(vma(0x1000, 4096, "/opt/app/server", "r--p", 5),
                   vma(0x2000, 4096, "/opt/app/server", "r-xp", 5))
    assert got == ["file_code", "file_code"]


def test_deleted_weights_and_configured_patterns():
    assert classify(vma(0x1000, 4096, "/m/x.gguf (deleted)", "r--s", 3)) == ["file_weights"]
    assert classify(vma(0x1000, 4096, "/m/x.gguf", "r--s", 3), patterns=["*.bin"]) == ["file_other"]
    assert classify(vma(0x1000, 4096, "/m/shard.bin", "r--s", 3), patterns=["*.bin"]) == ["file_weights"]


def test_a_glibc_arena_is_heap_but_a_lone_aligned_mapping_is_not():
    arena = 64 * MiB * 3
    got = classify(vma(arena, 8 * MiB), vma(arena + 8 * MiB, 56 * MiB, perms="---p"),
                   vma(64 * MiB * 5, 64 * MiB))
    assert got == ["anon_heap", "anon", "anon"]


def series(*points):
    return [(t, level * MiB, (0, level * MiB, 0, 0)) for t, level in points]


def test_a_short_rise_and_fall_is_a_spike():
    s = series((0.0, 100), (1.0, 300), (1.01, 612), (1.06, 100), (2.0, 100))
    (spike,) = find_spikes(s, SpikeRule())[0]
    assert spike.size == 512 * MiB and spike.member == "anon"
    assert abs(spike.hold_s - 0.05) < 1e-9


def test_a_flat_top_is_one_spike_and_flat_steps_on_the_way_up_are_part_of_its_rise():
    s = series((0.0, 100), (0.5, 300), (0.5, 300), (1.0, 612), (1.0, 612), (1.03, 612), (1.05, 100))
    (spike,) = find_spikes(s, SpikeRule())[0]
    assert spike.peak_t == 1.0 and abs(spike.hold_s - 0.05) < 1e-9


def test_memory_that_stays_is_no_spike():
    assert find_spikes(series((0.0, 100), (1.0, 612), (1.5, 100)), SpikeRule())[0] == []   # held 500 ms
    assert find_spikes(series((0.0, 100), (1.0, 300), (1.05, 100)), SpikeRule())[0] == []  # rose 200 MiB
    assert find_spikes(series((0.0, 100), (1.0, 612)), SpikeRule())[0] == []               # never fell
