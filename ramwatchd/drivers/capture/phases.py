"""Phases: the names a program gives the stretches of its run, from its output
lines (under `run`) and its marks (ramwatchd.mark()), kept in time order."""
import bisect


class Phases:
    def __init__(self):
        self.phases = []     # {"t", "pid", "name", "source"}, in time order
        self._times = []

    def add(self, t, pid, name, source):
        """A phase begins at t. Marks come with the kernel's events and lines
        through a pipe, so they may arrive out of order."""
        i = bisect.bisect_right(self._times, t)
        self._times.insert(i, t)
        phase = {"t": t, "pid": pid, "name": name[:120], "source": source}
        self.phases.insert(i, phase)
        return phase

    def at(self, t):
        """The name of the phase t falls in, or ""."""
        i = bisect.bisect_right(self._times, t) - 1
        return self.phases[i]["name"] if i >= 0 else ""
