"""The memory classes: a partition of a process's resident bytes by mapping.

Every mapping falls in exactly one class, so a process's classes add up to the
kernel's VmRSS. Being CUDA-pinned is an attribute a mapping can carry on top of
its class (a registered /dev/shm region is shm_posix and pinned), except for
memory the driver allocated itself, which has class cuda_pinned.
"""
import fnmatch
import os
import re

from .pinned import overlaps
from .procfs import Vma

ANON_HEAP = "anon_heap"
ANON = "anon"
STACK = "stack"
FILE_WEIGHTS = "file_weights"
FILE_CODE = "file_code"
FILE_OTHER = "file_other"
SHM_POSIX = "shm_posix"
SHM_SYSV = "shm_sysv"
SHM_ANON = "shm_anon"
CUDA_PINNED = "cuda_pinned"
DEVICE = "device"

CLASSES = (ANON_HEAP, ANON, STACK, FILE_WEIGHTS, FILE_CODE, FILE_OTHER, SHM_POSIX, SHM_SYSV,
           SHM_ANON, CUDA_PINNED, DEVICE)

DEFAULT_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.ckpt",
                           "*.onnx", "*.h5", "*.msgpack", "*.npy", "*.npz")

# glibc gives each extra malloc arena a 64 MiB-aligned reservation (HEAP_MAX_SIZE
# on 64-bit) and grows its read-write part inside it.
_ARENA_BYTES = 64 << 20
_KERNEL_CODE = {"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]"}
_SHARED_LIBRARY = re.compile(r"\.so(\.[0-9]+)*$")


class Classifier:
    """Assigns classes to the mappings of one process."""

    def __init__(self, weight_patterns=DEFAULT_WEIGHT_PATTERNS):
        self.weight_patterns = tuple(weight_patterns)
        self._weights = {}      # path -> is_weights(path)

    def is_weights(self, path):
        """Whether path is a model file; remembered, since a look asks for
        every mapping of a process with hundreds of libraries."""
        known = self._weights.get(path)
        if known is None:
            name = os.path.basename(path)
            known = self._weights[path] = any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(path, p)
                                              for p in self.weight_patterns)
        return known

    def classify(self, vmas, pinned_allocations=()):
        """[Vma] in address order -> [class] of the same length.
        pinned_allocations: (start, end) of ranges the CUDA driver allocated."""
        code_files = {(v.dev, v.inode) for v in vmas if v.inode and "x" in v.perms}
        return [CUDA_PINNED if overlaps(v, pinned_allocations) else self._one(v, i, vmas, code_files)
                for i, v in enumerate(vmas)]

    def classify_range(self, start, end, path, shared):
        """The class of a range an mm call made, before any look: its file's or
        its kind of anonymous memory's."""
        vma = Vma(start, end, "rw-s" if shared else "rw-p", 0, (0, 0), 0, path)
        return self._one(vma, 0, [vma], set())

    def _one(self, v, i, vmas, code_files):
        path = v.file_path
        if path == "[heap]" or (not path and _is_malloc_arena(v, i, vmas)):
            return ANON_HEAP
        if path.startswith("[stack"):
            return STACK
        if path in _KERNEL_CODE:
            return FILE_CODE
        if not path or path.startswith("[anon"):
            return SHM_ANON if v.shared else ANON
        if path.startswith("/dev/shm/"):
            return SHM_POSIX
        if path.startswith("/SYSV"):
            return SHM_SYSV
        if path == "/dev/zero" or path.startswith("/memfd:"):
            return SHM_ANON if v.shared else ANON
        if path.startswith("/dev/"):
            return DEVICE
        if self.is_weights(path):
            return FILE_WEIGHTS
        if (v.dev, v.inode) in code_files or _SHARED_LIBRARY.search(path):
            return FILE_CODE
        return FILE_OTHER


def _is_malloc_arena(v, i, vmas):
    """A private rw anonymous mapping at the start of a 64 MiB-aligned block,
    followed by the block's unused, inaccessible remainder. (An arena grown to
    the full 64 MiB loses that shape and is counted as plain anon.)"""
    if v.shared or v.perms[:2] != "rw" or v.start % _ARENA_BYTES:
        return False
    nxt = vmas[i + 1] if i + 1 < len(vmas) else None
    return (nxt is not None and nxt.start == v.end and nxt.perms[:3] == "---"
            and not nxt.path and v.size + nxt.size == _ARENA_BYTES)
