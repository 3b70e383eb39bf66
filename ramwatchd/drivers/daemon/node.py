"""The daemon's node tier: memory the node holds outside any one process's
classes (meminfo, cgroups, /dev/shm objects, weights in the page cache), and
the table of shared objects and their mappers that keeps PSS figures true."""
from collections import Counter
from dataclasses import dataclass, field

from ...ledger import node
from ...ledger.classes import FILE_WEIGHTS, SHM_ANON, SHM_POSIX, SHM_SYSV

# Objects whose sharing moves other processes' PSS (libraries would wake everyone).
SHARED_CLASSES = {SHM_POSIX, SHM_SYSV, SHM_ANON, FILE_WEIGHTS}


@dataclass
class SharedObject:
    """A shared object (a /dev/shm file, a weights file...) and who maps it."""
    name: str
    cls: str
    mappers: dict = field(default_factory=dict)   # Process -> its resident bytes of it


class NodeTier:
    def __init__(self, config):
        self.config = config
        self.shared = {}             # (major, minor, inode) -> SharedObject
        self.meminfo = {}
        self.cgroups = {}            # path -> (anon, file, shmem)
        self.shm = []                # (name, bytes, mapping processes)
        self.shm_orphaned = 0        # /dev/shm bytes no process maps
        self.page_cache = {}         # path -> bytes cached
        self.cut = Counter()         # limit -> series cut by it

    def read(self, groups, tracker):
        self.meminfo = node.meminfo()
        self.cgroups = self._cgroups(groups)
        self.shm = self._shm()
        self.page_cache = self._page_cache()

    # ---- shared objects ----------------------------------------------------

    def share_news(self, p, tracker):
        """When one process's share of a shared object changes, so do the PSS
        figures of the others that map it: they are looked at again too."""
        seen = set()
        for obj in p.latest.objects.values():
            if obj.cls not in SHARED_CLASSES or not obj.inode:
                continue
            key = (*obj.dev, obj.inode)
            seen.add(key)
            shared = self.shared.setdefault(key, SharedObject(obj.name, obj.cls))
            if shared.mappers.get(p) != obj.rss:
                shared.mappers[p] = obj.rss
                for other in shared.mappers:
                    if other is not p:
                        tracker.touch(other)
        for key in list(self.shared):
            if key not in seen:
                self._unmap(key, p, tracker)

    def unmap_all(self, p, tracker):
        for key in list(self.shared):
            self._unmap(key, p, tracker)

    def _unmap(self, key, p, tracker):
        """p no longer maps the shared object at key: the others' share grew."""
        shared = self.shared[key]
        if shared.mappers.pop(p, None) is None:
            return
        for other in shared.mappers:
            tracker.touch(other)
        if not shared.mappers:
            del self.shared[key]

    # ---- readings ----------------------------------------------------------

    def _cgroups(self, groups):
        paths = sorted({p.cgroup for g in groups.live() for p in g.members})
        limit = self.config.limits.max_cgroups
        self.cut["cgroups"] += max(0, len(paths) - limit)
        out = {}
        for path in paths[:limit]:
            charged = node.cgroup_memory(path)
            if charged is not None:
                out[path or "/"] = charged
        return out

    def _shm(self):
        objects = sorted(node.shm_objects().items(), key=lambda kv: -kv[1][1])
        limit = self.config.limits.max_shm_objects
        self.cut["shm_objects"] += max(0, len(objects) - limit)
        # Orphans are summed over all objects, shown or not.
        self.shm_orphaned = sum(size for key, (_, size) in objects if key not in self.shared)
        return [(name, size, len(self.shared[key].mappers) if key in self.shared else 0)
                for key, (name, size) in objects[:limit]]

    def _page_cache(self):
        files = sorted((o for o in self.shared.values() if o.cls == FILE_WEIGHTS),
                       key=lambda o: -max(o.mappers.values()))
        limit = self.config.limits.max_files
        self.cut["files"] += max(0, len(files) - limit)
        out = {}
        for name in (o.name for o in files[:limit]):
            cached = node.page_cache_bytes(name)
            if cached is not None:
                out[name] = cached
        return out
