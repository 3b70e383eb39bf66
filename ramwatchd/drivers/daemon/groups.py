"""The daemon's groups: which group each process is in, as the config says,
and what each group has counted. A group lives while it has processes; once
emptied, its counters are exported at one more scrape (so a last increment,
an OOM kill say, is seen) and then dropped with its slot.
"""
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from . import config as configuration

OTHER = "other"               # where processes go once max_groups is reached
EMPTIED_KEEP_S = 60.0         # an emptied group is dropped then even if no scrape came


@dataclass
class Group:
    name: str
    members: set = field(default_factory=set)          # Process
    faults_retired: Counter = field(default_factory=Counter)   # class -> faults of members gone
    oom_kills: int = 0
    peak: int = 0                                       # highest sum of its members' VmRSS
    emptied_at: float = None


class Groups:
    def __init__(self, config):
        self.config = config
        self.groups = {}          # name -> Group
        self.member_of = {}       # Process -> (Group, its fault counts when it joined)
        self.cut = 0              # processes put in OTHER by max_groups

    # ---- membership --------------------------------------------------------

    def assign(self, p):
        """Put p in the group its names say (again: after an exec or a rename,
        or a reload); p is watched only if it is in one."""
        name = self._group_of(p)
        current = self.member_of.get(p)
        if current is not None and current[0].name == name:
            return
        self.leave(p)
        p.watched = name is not None
        if name is None:
            return
        group = self._group(name)
        group.members.add(p)
        group.emptied_at = None
        self.member_of[p] = (group, Counter(p.fault_classes))

    def leave(self, p):
        entry = self.member_of.pop(p, None)
        if entry is None:
            return
        group, joined = entry
        group.faults_retired.update(_since(p.fault_classes, joined))
        group.members.discard(p)
        if not group.members:
            group.emptied_at = time.monotonic()

    def group_of(self, p):
        entry = self.member_of.get(p)
        return entry[0] if entry else None

    def _group(self, name):
        group = self.groups.get(name)
        if group is None:
            if len(self.groups) >= self.config.limits.max_groups:
                self.cut += 1
                name = OTHER
                group = self.groups.get(OTHER)
            if group is None:
                group = self.groups[name] = Group(name)
        return group

    def _group_of(self, p):
        """The group name p falls in, or None if no group matches it."""
        for g in self.config.groups:
            captures = []
            for pattern, text in ((g.comm, p.comm), (g.exe, p.exe), (g.cmdline, p.cmdline), (g.cgroup, p.cgroup)):
                if pattern is None:
                    continue
                m = pattern.search(text)
                if m is None:
                    break
                captures += [c or "" for c in m.groups()]
            else:
                return configuration.group_name(g.name, captures, comm=p.comm, exe=os.path.basename(p.exe),
                                                 cgroup=p.cgroup)
        return None

    # ---- what the groups counted -------------------------------------------

    def faults(self):
        """{(group, class): sampled faults} of every group, emptied ones too."""
        out = Counter()
        for group in self.groups.values():
            for cls, n in group.faults_retired.items():
                out[(group.name, cls)] += n
            for p in group.members:
                for cls, n in _since(p.fault_classes, self.member_of[p][1]).items():
                    out[(group.name, cls)] += n
        return out

    def update_peaks(self):
        for group in self.groups.values():
            total = sum(p.rss.last for p in group.members)
            group.peak = max(group.peak, total)

    def live(self):
        return [g for g in self.groups.values() if g.members]

    def drop_emptied(self, scraped):
        """Drop the groups emptied before this scrape (scraped=True), or long
        enough ago: their last counts have been exported."""
        now = time.monotonic()
        for name, group in list(self.groups.items()):
            if group.emptied_at is not None and (scraped or now - group.emptied_at >= EMPTIED_KEEP_S):
                del self.groups[name]

    def reload(self, config, processes):
        self.config = config
        for p in processes:
            self.assign(p)


def _since(counts, base):
    return Counter({k: v - base.get(k, 0) for k, v in counts.items() if v - base.get(k, 0) > 0})
