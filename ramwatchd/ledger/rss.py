"""A process's RSS over time, from the kernel's counters: its series, its peak,
and the transient spikes in it that no look at smaps would catch.

The counters are read each time the kernel says they moved (or, with
--exact-rss, sent by the kernel itself), and at every look. An exec starts a
new image: its counters start over, so a spike never spans an exec and the
peak is the new program's own.
"""
import bisect
from dataclasses import dataclass

from ..kernel.events import ANON, FILE, SHMEM

DEFAULT_MIN_RISE = 256 << 20
DEFAULT_MAX_HOLD_S = 0.1


@dataclass
class Peak:
    bytes: int
    t: float
    members: tuple     # (file, anon, swap, shmem) at the peak


@dataclass
class Spike:
    rise_t: float     # when the rise began
    peak_t: float     # when the peak was reached
    fall_t: float     # when the fall that followed it ended
    base: int         # RSS before the rise
    peak: int
    size: int         # how far it rose above the higher of the levels around it
    member: str       # the rss_stat counter that rose most: anon, file or shmem

    @property
    def hold_s(self):
        return self.fall_t - self.peak_t


@dataclass
class SpikeRule:
    min_rise: int = DEFAULT_MIN_RISE
    max_hold_s: float = DEFAULT_MAX_HOLD_S


class RssSeries:
    """(t, total, members) points of one process, in time order, per image.
    Without keep_points (the daemon, which runs for months) only the last
    reading and the peak are kept."""

    def __init__(self, keep_points=True):
        self.keep_points = keep_points
        self.last = 0               # the last reading's total
        self.images = [[]]          # one list of points per exec'd program
        self.peak = None            # of the current image
        self.earlier_peaks = []     # of the images before
        self._searched = 0          # points of the current image already searched for spikes

    @property
    def points(self):
        return self.images[-1]

    def add(self, t, total, members):
        """A reading of the counters. Readings arrive nearly in order (the
        kernel's own times and read times mix): keep them sorted."""
        self.last = total
        if self.peak is None or total > self.peak.bytes:
            self.peak = Peak(total, t, members)
        if not self.keep_points:
            return
        points = self.images[-1]
        if points and t < points[-1][0]:
            i = bisect.bisect_right(points, t, key=lambda p: p[0])
            points.insert(i, (t, total, members))
            self._searched = min(self._searched, i)
        else:
            points.append((t, total, members))

    def raise_peak(self, peak):
        """A peak the kernel kept (--exact-rss), if higher than any reading."""
        if peak.bytes and (self.peak is None or peak.bytes > self.peak.bytes):
            self.peak = peak

    def new_image(self):
        """An exec: the counters start over."""
        if self.peak is not None:
            self.earlier_peaks.append(self.peak)
        self.images.append([])
        self.peak = None
        self._searched = 0

    def new_spikes(self, rule, now):
        """Spikes of the current image not returned before: those whose fall
        window has closed by `now`."""
        points = self.points
        spikes, done = find_spikes(points, rule, start=self._searched, until=now - rule.max_hold_s)
        self._searched = done
        return spikes

    def all_spikes(self, rule):
        return [s for points in self.images for s in find_spikes(points, rule)[0]]


def find_spikes(points, rule, start=0, until=None):
    """Spikes among points[start:]: peaks at least rule.min_rise above the level
    their rise began from, that fall back by at least min_rise within
    max_hold_s of being reached. Only peaks reached by `until` are judged.
    Returns (spikes, the index from which peaks are still to be judged)."""
    spikes = []
    n = len(points)
    i = max(start, 1)
    while i < n:
        t_peak, peak, members = points[i]
        if until is not None and t_peak > until:
            return spikes, i
        if points[i - 1][1] >= peak:
            i += 1
            continue        # not where a rise tops out
        top = i
        while top + 1 < n and points[top + 1][1] == peak:
            top += 1        # a flat top counts once
        if top + 1 < n and points[top + 1][1] > peak:
            i = top + 1
            continue        # still rising
        spike = _spike_at(points, i, top, rule)
        if spike is not None:
            spikes.append(spike)
        i = top + 1
    return spikes, n


def _spike_at(points, i, top, rule):
    t_peak, peak, members = points[i]
    rise = i
    while rise > 0 and points[rise - 1][1] <= points[rise][1]:
        rise -= 1
    base = points[rise][1]
    if peak - base < rule.min_rise:
        return None
    fall = None
    for j in range(top + 1, len(points)):
        if points[j][0] - t_peak > rule.max_hold_s:
            break
        if points[j][1] <= peak - rule.min_rise:
            fall = j
            break
    if fall is None:
        return None
    # Follow the fall to its bottom, as long as it is one quick release.
    while (fall + 1 < len(points) and points[fall + 1][1] < points[fall][1]
           and points[fall + 1][0] - t_peak <= rule.max_hold_s):
        fall += 1
    after = points[fall][1]
    return Spike(points[min(rise + 1, i)][0], t_peak, points[fall][0], base, peak,
                 peak - max(base, after), _fell_most(members, points[fall][2]))


_MEMBERS = ((ANON, "anon"), (FILE, "file"), (SHMEM, "shmem"))


def _fell_most(at_peak, after):
    """The counter that gave back the most: what came and went (a weights
    file unmapped after its tensors were copied out is file, not the anon
    that rose with it and stayed)."""
    return max(_MEMBERS, key=lambda m: at_peak[m[0]] - after[m[0]])[1]
