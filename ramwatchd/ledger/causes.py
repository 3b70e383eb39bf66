"""Why an object's resident bytes moved: the mm calls that acted on its
mappings, and the page faults sampled in them."""
import bisect
import itertools

from ..kernel.events import Brk
from .classes import ANON_HEAP


class Ranges:
    """An object's mappings, sorted, for asking which addresses and spans they
    cover: an object such as [anonymous] has a thousand."""

    def __init__(self, ranges):
        ranges = sorted(ranges)
        self.starts = [start for start, _ in ranges]
        self.reach = list(itertools.accumulate((end for _, end in ranges), max))   # the furthest end so far

    def overlaps(self, start, end):
        """Some range starting before `end` reaches past `start`."""
        i = bisect.bisect_left(self.starts, end)
        return i > 0 and self.reach[i - 1] > start

    def holds(self, addr):
        return self.overlaps(addr, addr + 1)


def explain(change, calls, faults):
    """(cause text, kernel ns of the largest then earliest call that touched
    the object's mappings, or None)."""
    ranges = Ranges(change.ranges)
    hits, first = {}, None   # calls sorted: the first hit is the largest
    for call in sorted(calls, key=lambda c: (-c.size, c.ts_ns)):
        if _touches(call, change, ranges):
            what = call.describe() + (f" at {call.stack.name()}" if call.stack and call.stack.python else "")
            hits[what] = hits.get(what, 0) + 1
            if first is None:
                first = call.ts_ns
    parts = [what if n == 1 else f"{what} x{n}" for what, n in hits.items()]
    if len(parts) > 3:
        parts = parts[:2] + [f"{len(parts) - 2} more kinds of call"]
    if faults:
        parts.append(f"~{faults:,} faults")
    return "; ".join(parts), first


def _touches(call, change, ranges):
    if isinstance(call, Brk):
        return change.cls == ANON_HEAP
    span = call.span
    return span is not None and ranges.overlaps(*span)
