"""The capture's timeline: entries printed in time order, a moment after they
happen, with the short lives of helper processes folded into a count."""
import heapq
import itertools
from collections import Counter

from ...views.timeline import Entry

PRINT_DELAY_S = 1.0    # an entry is printed this long after its time, in order
SHORT_LIVED_S = PRINT_DELAY_S
LIFE_KINDS = {"fork", "exec", "rename", "exit"}


class Timeline:
    """A forked process whose whole life (fork, exec, exit) lasts less than
    SHORT_LIVED_S, with nothing else on the timeline, is a helper: its entries
    are folded into one count (`sh -c lscpu`, `uname -p`, a shell's `true`)."""

    def __init__(self, sink):
        self.sink = sink
        self.entries = []              # printed, in time order
        self.short_lived = []          # the helpers folded
        self._held = []                # heap of (t, seq, entry)
        self._seq = itertools.count()
        self._folded = set()           # ids of held entries folded away
        self._quiet = {}               # helper candidate -> its held life entries
        self._tally = Counter()        # names folded since the last count printed
        self._tallied_at = 0.0

    def add(self, entry, process=None):
        """Hold entry for printing. process: the one it is about, if any."""
        if process is not None:
            if entry.kind in LIFE_KINDS and (process in self._quiet or entry.kind == "fork"):
                self._quiet.setdefault(process, []).append(entry)
            else:
                self._quiet.pop(process, None)    # it did something: never folded
        heapq.heappush(self._held, (entry.t, next(self._seq), entry))

    def keep(self, process):
        """process did something worth its own lines (named a phase, say): its
        life is never folded."""
        self._quiet.pop(process, None)

    def ended(self, process, entry):
        """process exited: fold its life if it was a quiet helper."""
        life = self._quiet.pop(process, None)
        if life is not None and process.exited_at - process.first_seen < SHORT_LIVED_S:
            self._folded.update(id(e) for e in life)
            self._tally[process.comm] += 1
            self.short_lived.append(process)
            return
        self.add(entry)

    def flush(self, now, final=False):
        """Print every entry older than PRINT_DELAY_S (all of them if final)."""
        until = float("inf") if final else now - PRINT_DELAY_S
        while self._held and self._held[0][0] <= until:
            _, _, entry = heapq.heappop(self._held)
            if id(entry) in self._folded:
                self._folded.discard(id(entry))
                continue
            self._print(entry)
        if self._tally and (final or until - self._tallied_at >= PRINT_DELAY_S):
            self._print_tally(min(now, until))

    def _print_tally(self, t):
        self._tallied_at = t
        names = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in self._tally.most_common(4))
        more = len(self._tally) - 4
        count = sum(self._tally.values())
        text = (f"{count} short-lived process{'es' if count > 1 else ''} came and went: {names}"
                + (f" and {more} more names" if more > 0 else ""))
        self._tally.clear()
        self._print(Entry(t, 0, "-", "short-lived", text))

    def _print(self, entry):
        self.entries.append(entry)
        self.sink(entry)
