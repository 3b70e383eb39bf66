"""Why an object's resident bytes moved: the mm calls that acted on its
mappings, and the page faults sampled in them."""
import bisect
import itertools

from ..kernel.events import Brk
from .classes import ANON_HEAP


def explain(change, calls, faults):
    """(cause text, kernel ns of the largest then earliest call that touched
    the object's mappings, or None)."""
    ranges = sorted(change.ranges)
    starts = [s for s, _ in ranges]
    reach = list(itertools.accumulate((e for _, e in ranges), max))   # the furthest end so far
    hits, first = {}, None   # calls sorted: the first hit is the largest
    for call in sorted(calls, key=lambda c: (-c.size, c.ts_ns)):
        if _touches(call, change, starts, reach):
            what = call.describe()
            hits[what] = hits.get(what, 0) + 1
            if first is None:
                first = call.ts_ns
    parts = [what if n == 1 else f"{what} x{n}" for what, n in hits.items()]
    if len(parts) > 3:
        parts = parts[:2] + [f"{len(parts) - 2} more kinds of call"]
    if faults:
        parts.append(f"~{faults:,} faults")
    return "; ".join(parts), first


def _touches(call, change, starts, reach):
    """Whether call acted on one of the object's ranges, sorted by start (an
    object such as [anonymous] has a thousand): some range starting before
    the call's end must reach past its start."""
    if isinstance(call, Brk):
        return change.cls == ANON_HEAP
    span = call.span
    if span is None:
        return False
    i = bisect.bisect_left(starts, span[1])
    return i > 0 and reach[i - 1] > span[0]
