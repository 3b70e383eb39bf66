"""Transient spikes: memory that rose and fell back between two looks at /proc.

The probes report a process's RSS every time it moves by a step (16 MiB by
default), with the kernel's timestamp, so a 512 MiB allocation that lives 50 ms
is seen even though no snapshot of smaps ever catches it.
"""
from dataclasses import dataclass

DEFAULT_MIN_RISE = 256 << 20
DEFAULT_MAX_HOLD_S = 0.1


@dataclass
class Spike:
    pid: int
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


_MEMBERS = ((1, "anon"), (0, "file"), (3, "shmem"))


def find_spikes(pid, series, min_rise=DEFAULT_MIN_RISE, max_hold_s=DEFAULT_MAX_HOLD_S):
    """series: [(t, total, members)] in time order. A spike is a peak at least
    min_rise above the level its rise began from, that falls back by at least
    min_rise within max_hold_s of being reached."""
    spikes = []
    n = len(series)
    for i in range(1, n):
        t_peak, peak, members = series[i]
        if series[i - 1][1] >= peak:
            continue  # not where a rise tops out
        top = i
        while top + 1 < n and series[top + 1][1] == peak:
            top += 1  # a flat top counts once
        if top + 1 < n and series[top + 1][1] > peak:
            continue  # still rising
        start = i
        while start > 0 and series[start - 1][1] <= series[start][1]:
            start -= 1
        base = series[start][1]
        fall = next((j for j in range(top + 1, n) if series[j][1] <= peak - min_rise), None)
        if peak - base < min_rise or fall is None or series[fall][0] - t_peak > max_hold_s:
            continue
        # Follow the fall to its bottom, as long as it is one quick release.
        while (fall + 1 < n and series[fall + 1][1] < series[fall][1]
               and series[fall + 1][0] - t_peak <= max_hold_s):
            fall += 1
        after = series[fall][1]
        rise_t = series[min(start + 1, i)][0]
        spikes.append(Spike(pid, rise_t, t_peak, series[fall][0], base, peak,
                            peak - max(base, after), _dominant(series[start][2], members)))
    return spikes


def _dominant(before, at_peak):
    return max(_MEMBERS, key=lambda m: at_peak[m[0]] - before[m[0]])[1]
